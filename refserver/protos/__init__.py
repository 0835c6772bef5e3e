"""The reference store's private protocol (`Store.proto`) and its generated stubs.

HStreamDB's gossip wire format is not here: it is the harness's (`harness.protos`), which
also owns the stub generation used below. Stubs are generated at build time (setup.py) and,
should a checkout lack them or hold stale ones, on first import.
"""

from __future__ import annotations

from pathlib import Path

from harness.protos import ensure_generated

PROTO_DIR = Path(__file__).resolve().parent
PROTOS = ("Store.proto",)

ensure_generated(PROTO_DIR, PROTOS)
