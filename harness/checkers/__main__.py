"""`python -m harness.checkers <history.jsonl> [--checker NAME ...]`."""

from harness.checkers.cli import main

raise SystemExit(main())
