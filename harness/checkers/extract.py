"""Which column extractor the checkers use: the compiled one (`_extract`, built from
harness/checkers/_extract.c when the project is installed) or its Python twin in table.py
and columns.py. Both give the same columns (tests/checkers/test_extract.py); the compiled
one takes a million ops and their read records in a fraction of the time, since that is
one loop per op and per record in the interpreter. On a machine without a C compiler the
install goes on without it, and `compiled()` says None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import ModuleType

try:
    from harness.checkers import _extract as _compiled  # type: ignore[attr-defined]
except ImportError:  # not built here: the Python twin runs
    _compiled = None

_ON: ContextVar[bool] = ContextVar("hstream_conformance_compiled_extractor", default=True)


def compiled() -> ModuleType | None:
    """The compiled extractor, or None where it is not built or `python_twin()` is on."""
    return _compiled if _ON.get() else None


def available() -> bool:
    """Whether the compiled extractor was built for this interpreter."""
    return _compiled is not None


@contextmanager
def python_twin() -> Iterator[None]:
    """Inside: the Python twin extracts the columns (what the tests compare with)."""
    token = _ON.set(False)
    try:
        yield
    finally:
        _ON.reset(token)
