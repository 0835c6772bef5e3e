"""hstream-conformance: a protocol-conformance and chaos-testing harness for HStreamDB.

Every error the harness raises on purpose derives from `HarnessError`; its message says what
went wrong and how to fix it, so the CLI and the pytest plugin print it as one line instead of
a traceback.
"""

from __future__ import annotations

__version__ = "0.1.0"


class HarnessError(Exception):
    """A problem the user can fix (bad input, a busy port, a missing image, a failed start)."""
