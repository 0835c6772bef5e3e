"""What every suite shares: the endpoints of the cluster under test, and the nemesis audit.

Suites are target-agnostic: they reach the cluster only through its client URLs, which come
from the harness's `cluster` fixture (any target, any backend) or, with `--cluster-url`,
from a cluster someone already runs. Every fault goes through the nemesis into the test's
history; after each test the audit checks that the history holds every fault asked for.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from harness.cluster import UnsupportedFault
from harness.nemesis.audit import Ledger


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nemesis: a fault test: it injects faults, all through the nemesis, and its history "
        "must hold every one (audited after the test)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test whose history lacks a fault it asked the nemesis for, and a fault test
    (marked `nemesis`) that asked for none. A test that failed already is left as it is.

    A test that needs what its cluster cannot do (the nemesis refused a fault for a means
    the target or runtime lacks) is skipped naming the refusal: not an error, not a pass.
    """
    with Ledger() as ledger:
        try:
            result = yield
        except UnsupportedFault as refusal:
            pytest.skip(f"this cluster cannot do what the test needs: {refusal}")
    problems = ledger.problems(fault_test=item.get_closest_marker("nemesis") is not None)
    if problems:
        # Not an AssertionError: a strict xfail of a client deviation must not swallow it.
        pytest.fail("nemesis audit: " + "; ".join(problems), pytrace=False)
    return result


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
