"""The harness's protocol schema against the official Airbyte models.

The official models (as shipped with airbyte-cdk in the source-faker venv) judge the same
samples as ``harness.io.protocol``: nothing the harness accepts may be refused by them (a
false alarm would fail a conforming connector), and everything the harness refuses is
refused by them too, except the documented stricter rules (payload named by `type` must be
present; state payload per state type; `supported_sync_modes` non-empty as the YAML says).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from protocol_samples import INVALID, VALID

from harness.io.connectors import CONNECTORS_DIR, load_definition
from harness.io.install import InstallError, install

pytestmark = pytest.mark.slow

# Refused here, accepted by the official models' deserializer (see the module docstring).
STRICTER = {
    '{"type": "RECORD"}',
    '{"type": "STATE", "state": {"type": "STREAM"}}',
    '{"type": "STATE", "state": {"type": "GLOBAL", "global": {}}}',
    '{"type": "CATALOG", "catalog": {"streams": [{"name": "s", "json_schema": {},'
    ' "supported_sync_modes": []}]}}',
}

JUDGE = """
import json, sys
from airbyte_cdk.models import AirbyteMessageSerializer
for line in sys.stdin:
    try:
        AirbyteMessageSerializer.load(json.loads(line))
        print("accept")
    except Exception:
        print("refuse")
"""


@pytest.fixture(scope="module")
def official_judge():
    defn = load_definition(CONNECTORS_DIR / "source-faker.toml")
    assert defn.package is not None
    try:
        exe = install(defn.package)
    except InstallError as exc:
        pytest.fail(f"the source-faker venv (official models) is not installable:\n{exc}",
                    pytrace=False)
    python = exe.parent / "python"

    def judge(lines: list[str]) -> list[str]:
        out = subprocess.run([str(python), "-c", JUDGE], input="\n".join(lines) + "\n",
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    return judge


def test_official_models_accept_everything_the_harness_accepts(official_judge):
    lines = [json.dumps(m) for m in VALID]
    verdicts = official_judge(lines)
    refused = [ln for ln, v in zip(lines, verdicts, strict=True) if v != "accept"]
    assert not refused, f"the harness accepts, the official models refuse: {refused}"


def test_official_models_refuse_what_the_harness_refuses(official_judge):
    lines = [m for m, _ in INVALID if not isinstance(m, str)]
    encoded = [json.dumps(m) for m in lines]
    verdicts = official_judge(encoded)
    accepted = [ln for ln, v in zip(encoded, verdicts, strict=True)
                if v == "accept" and ln not in STRICTER]
    assert not accepted, f"refused here but accepted by the official models: {accepted}"
