"""Fixtures for the reference server's tests: real clusters from refcluster_launcher
(a store process plus `python -m refserver` nodes on 127.0.0.x), stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from refcluster_launcher import RefCluster, launch


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefCluster]:
    """A 3-node reference cluster shared by a module's tests."""
    with launch(tmp_path_factory.mktemp("cluster3"), 3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def node1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefCluster]:
    """A single-node reference cluster shared by a module's tests."""
    with launch(tmp_path_factory.mktemp("node1"), 1) as cluster:
        yield cluster
