"""Fixtures for the runtimes' tests: `ssh_hosts(n)`, sshd containers standing in for machines."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from harness.testhosts.sshd import HostSet, running_hosts


@pytest.fixture(scope="session")
def ssh_hosts() -> Iterator[Callable[[int], HostSet]]:
    """`ssh_hosts(n)`: n node hosts and a store host, made once per session and size."""
    made: dict[int, HostSet] = {}
    with ExitStack() as stack:

        def get(n: int) -> HostSet:
            if n not in made:
                made[n] = stack.enter_context(running_hosts(n, f"t{os.getpid()}n{n}",
                                                            progress=lambda line: None))
            return made[n]

        yield get
