"""What every suite shares: the endpoints of the cluster under test.

Suites are target-agnostic: they reach the cluster only through its client URLs, which come
from the harness's `cluster` fixture (any target, any backend) or, with `--cluster-url`,
from a cluster someone already runs.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def endpoints(request: pytest.FixtureRequest) -> list[str]:
    given = request.config.getoption("cluster_url", default=None)
    if given:
        return [url.removeprefix("hstream://") for url in given.split(",") if url]
    cluster = request.getfixturevalue("cluster")
    return list(cluster.client_urls())
