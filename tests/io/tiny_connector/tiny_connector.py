"""Answers `spec` only: enough to prove the installed entry point runs from its venv."""

import json
import sys

GREETING = "tiny"


def main() -> None:
    if sys.argv[1:] == ["spec"]:
        spec = {"connectionSpecification": {"type": "object", "title": GREETING},
                "documentationUrl": sys.prefix}
        print(json.dumps({"type": "SPEC", "spec": spec}))
    else:
        sys.exit(f"unsupported: {sys.argv[1:]}")
