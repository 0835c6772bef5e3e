"""hstream-conformance: a protocol-conformance and chaos-testing harness for HStreamDB.

Every error the harness raises on purpose derives from `HarnessError`; its message says what
went wrong and how to fix it, so the CLI and the pytest plugin print it as one line instead of
a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"


def machine_cache() -> Path:
    """What the harness keeps per machine, not per checkout (connector venvs, test
    durations): $HSTREAM_CONFORMANCE_CACHE, else the user's cache folder."""
    base = os.environ.get("HSTREAM_CONFORMANCE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hstream-conformance"


class HarnessError(Exception):
    """A problem the user can fix (bad input, a busy port, a missing image, a failed start)."""
