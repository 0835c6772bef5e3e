"""What every suite shares: the endpoints of the cluster under test.

Suites are target-agnostic: they reach the cluster only through its client URLs, which come
from the harness's `cluster` fixture (any target, any backend) or, with `--cluster-url`,
from a cluster someone already runs.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("hstream-conformance").addoption(
        "--cluster-token",
        default=None,
        metavar="TOKEN",
        help="a token the cluster under --cluster-url accepts (e.g. hstream:hstream); "
        "the token checks need it when that cluster has tokens configured",
    )


@pytest.fixture(scope="module")
def endpoints(request: pytest.FixtureRequest) -> list[str]:
    given = request.config.getoption("cluster_url", default=None)
    urls = given.split(",") if given else request.getfixturevalue("cluster").client_urls()
    return [url.removeprefix("hstream://") for url in urls if url]


# Hypothesis profiles: `ci` is derandomized so a CI run is repeatable; `thorough` is for
# `nox -s conformance -- --hypothesis-profile=thorough`. Examples talk to a live cluster,
# so deadlines are off and health checks about slow data generation do not apply.
from hypothesis import HealthCheck, settings  # noqa: E402

_LIVE = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.register_profile("dev", max_examples=25, **_LIVE)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_LIVE)
settings.register_profile("thorough", max_examples=300, print_blob=True, **_LIVE)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
