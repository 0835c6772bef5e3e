"""`python -m harness.checkers <history.jsonl> [--checker NAME ...]`."""

from harness.checkers.commands import main

raise SystemExit(main())
