"""Client-behaviour suites: every check runs once per client driver.

`client` is parametrized over the official Python client, the raw gRPC baseline and the
official Erlang client (skipped, with the exact reason, when its driver is not built).
Expected behaviour is stated per check; where an official client deviates, the check stays
as strict as it is and carries `@pytest.mark.client_deviation(client, finding)`: a strict
xfail that names the finding, so a fixed client turns it into a failure to update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.clients.driver import CLIENTS, ClientDriver, DriverUnavailable, driver_command
from harness.history import History, history_path
from harness.nemesis import Nemesis


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        client = params.params.get("client_name") if params else None
        # A parameter's own deviation (e.g. only under `pause`) is more precise than the
        # test's, so it is looked at first.
        param_marks = [m for m in (params.marks if params else []) if m.name == "client_deviation"]
        for mark in [*param_marks, *item.iter_markers("client_deviation")]:
            deviating, finding = mark.args
            if client == deviating:
                # raises=AssertionError: only the check itself may fail; a driver that hangs
                # or a harness error is a real failure, not the known deviation.
                item.add_marker(
                    pytest.mark.xfail(
                        strict=True,
                        raises=AssertionError,
                        reason=f"known {client} deviation: {finding}",
                    )
                )
                break


@pytest.fixture(params=CLIENTS)
def client_name(request: pytest.FixtureRequest) -> str:
    try:
        driver_command(request.param)
    except DriverUnavailable as reason:
        pytest.skip(str(reason))
    return request.param


@pytest.fixture
def history(request: pytest.FixtureRequest) -> Iterator[History]:
    path = history_path(request.node.nodeid)
    with History(path) as recorded:
        yield recorded
    request.node.user_properties.append(("history", str(path)))


@pytest.fixture
def nemesis(cluster, history: History) -> Iterator[Nemesis]:
    """Faults on the module's cluster, recorded in the test's history; healed after it."""
    injector = Nemesis(cluster, history)
    try:
        yield injector
    finally:
        injector.teardown()


@pytest.fixture
def drivers(history: History) -> Iterator[Callable[..., ClientDriver]]:
    started: list[ClientDriver] = []

    def start(client: str) -> ClientDriver:
        driver = ClientDriver(client, history=history, evidence_dir=Path("reports") / "drivers")

        def lacks(op: str, reply) -> None:  # type: ignore[no-untyped-def]
            pytest.skip(f"the {client} client cannot {op}: {reply.error}")

        driver.on_unsupported = lacks
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.close()


@pytest.fixture
def client(client_name: str, drivers, endpoints: list[str]) -> ClientDriver:
    """The client under test, connected to the cluster."""
    driver = drivers(client_name)
    reply = driver.connect(endpoints)
    assert reply.ok, f"{client_name} could not connect to {endpoints}: {reply.error}"
    return driver


@pytest.fixture
def baseline(drivers, endpoints: list[str]) -> ClientDriver:
    """The raw gRPC driver, for setup and for reading back what a client claims it wrote."""
    driver = drivers("raw")
    reply = driver.connect(endpoints)
    assert reply.ok, f"raw driver could not connect: {reply.error}"
    return driver
