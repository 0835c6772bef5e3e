"""The pytest plugin: cluster options, `cluster_spec` / `cluster` / `cluster_factory` fixtures.

Options (all optional; a `--topology` file gives defaults, options override it):
  --target reference|hstream:<image>  --backend local|docker|ssh  --nodes N  --seed S
  --inventory FILE (the ssh backend's machines)
  --toxiproxy-url URL  --no-toxiproxy  --defect NAME (repeatable)  --base-port P
  --topology NAME_OR_FILE (a path, or a name in fixtures/topologies/)

A module can change its cluster with a marker, e.g. `pytestmark = pytest.mark.cluster(nodes=5,
gossip={"probe_interval_ms": 300})`. A test that breaks its cluster, or needs two, uses
`cluster_factory(**overrides)`; everything it starts is stopped after the test.
On a failing test that used a cluster, the report gets a "cluster logs" section with every
process's log path and last lines. Leftovers of runs that were SIGKILLed are swept at start.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import HarnessError
from harness.cleanup import install_signal_teardown, sweep
from harness.cluster import Cluster, start_cluster
from harness.credentials import credential_for, set_run_credential
from harness.images import DockerUnavailable
from harness.parallel import (
    INPUT_KEY,
    PORT_BLOCK,
    auto_workers,
    run_input,
    worker_base_port,
    worker_index,
    worker_session,
)
from harness.targets import settings_for, target_for
from harness.topology import ClusterSpec, build_spec

# --repeat N: each test N times, flaky tests told from failures (harness/repeat.py);
# loadscope that spreads the tests sharing nothing with their module (harness/scheduling.py).
pytest_plugins = ["harness.repeat", "harness.scheduling"]

_SPEC_KEY = pytest.StashKey[ClusterSpec]()
_CLUSTERS_KEY = pytest.StashKey[list[Cluster]]()
# Each cluster the session starts gets its own name (label) and port block (PORT_BLOCK ports
# on from the last); factory clusters may run next to the module's cluster. Under xdist each
# worker starts from its own block of ports (harness.parallel).


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hstream-conformance", "HStreamDB conformance cluster")
    group.addoption("--topology", default=None, metavar="NAME_OR_FILE",
                    help="topology TOML (a path, or a name in fixtures/topologies/)")
    group.addoption("--target", default=None,
                    help="reference (default) or hstream:<image>")
    group.addoption("--backend", default=None,
                    help="where nodes run: local processes (default) or docker containers")
    group.addoption("--inventory", default=None, metavar="FILE",
                    help="the ssh backend's machines: inventory TOML or `terraform output -json`")
    group.addoption("--nodes", type=int, default=None, help="number of server nodes (3)")
    group.addoption("--seed", type=int, default=None,
                    help="seed for every random choice of the run (default: random, printed)")
    group.addoption("--cluster-url", default=None, metavar="URL[,URL...]",
                    help="run the suites against a cluster that is already running "
                    "(hstream://host:port,...); no cluster is started for them")
    group.addoption("--toxiproxy-url", default=None,
                    help="a running Toxiproxy API (default: start the embedded one)")
    group.addoption("--no-toxiproxy", action="store_true", default=False,
                    help="no proxies in front of the nodes (network faults unavailable)")
    group.addoption("--defect", action="append", default=[], metavar="NAME",
                    help="switch on a seeded defect of the reference server (repeatable)")
    group.addoption("--profile", default=None, metavar="NAME",
                    help="the reference server's behaviour profile: protocol (default) or "
                    "hstream-0.20 (the real server's observable behaviour)")
    group.addoption("--base-port", type=int, default=None,
                    help="client port of the first cluster; gossip +1, store +2, Toxiproxy +3")
    group.addoption("--repeat", type=int, default=1, metavar="N",
                    help="run each selected test N times, each repeat its own item; a test "
                    "failing in some repeats only is reported flaky (harness/repeat.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster(**overrides): ClusterSpec settings for this module's `cluster`"
    )
    opt = config.option
    try:
        spec = build_spec(
            getattr(opt, "topology", None),
            target=getattr(opt, "target", None),
            backend=getattr(opt, "backend", None),
            inventory=getattr(opt, "inventory", None),
            nodes=getattr(opt, "nodes", None),
            seed=getattr(opt, "seed", None),
            toxiproxy_url=getattr(opt, "toxiproxy_url", None),
            toxiproxy=False if getattr(opt, "no_toxiproxy", False) else None,
            defects=tuple(getattr(opt, "defect", None) or ()),
            base_port=getattr(opt, "base_port", None),
            profile=getattr(opt, "profile", None),
        )
        if getattr(opt, "seed", None) is None and spec.seed == 0:
            spec = spec.with_(seed=random.SystemRandom().randrange(2**31))
        spec = _as_worker(config, spec)
        target_for(spec)  # target-specific checks (defect names, image syntax) fail early
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SPEC_KEY] = spec
    config.stash[_CLUSTERS_KEY] = []
    # A run against a token cluster: every channel and client of the run sends its token.
    set_run_credential(credential_for(spec))
    if not hasattr(config, "workerinput"):  # the xdist controller (or a plain run) sweeps
        swept = sweep()
        if swept.clusters:
            config.stash[_SWEPT_KEY] = swept.clusters
    install_signal_teardown()


_SWEPT_KEY = pytest.StashKey[list[str]]()


def _as_worker(config: pytest.Config, spec: ClusterSpec) -> ClusterSpec:
    """An xdist worker runs with the controller's seed, a session label of its own derived from
    the run's, and its own block of ports (see harness.parallel)."""
    index = worker_index(config)
    given = run_input(config)
    if index is None or given is None:
        return spec
    return spec.with_(
        seed=int(given["seed"]),
        session=worker_session(str(given["session"]), index),
        base_port=worker_base_port(spec.base_port, index),
    )


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) Hand each worker the run's seed and session label."""
    spec = node.config.stash.get(_SPEC_KEY, None)
    if spec is not None:
        node.workerinput[INPUT_KEY] = {"seed": spec.seed, "session": spec.session}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: sized for clusters, which mostly wait, not for CPU-bound tests."""
    return auto_workers()


def run_session(config: pytest.Config) -> str | None:
    """The run's session label: the controller's, also inside its workers (for the report)."""
    given = run_input(config)
    if given is not None:
        return str(given["session"])
    spec = config.stash.get(_SPEC_KEY, None)
    return spec.session if spec is not None else None


def pytest_report_header(config: pytest.Config) -> list[str]:
    spec = config.stash.get(_SPEC_KEY, None)
    if spec is None:
        return []
    lines = [
        f"hstream-conformance: target={spec.target} backend={spec.backend} nodes={spec.nodes} "
        f"toxiproxy={'off' if not spec.toxiproxy else spec.toxiproxy_url or 'embedded'} "
        f"seed={spec.seed} (replay with --seed {spec.seed}) session={spec.session}"
    ]
    if spec.defects:
        lines.append(f"hstream-conformance: defects on: {', '.join(spec.defects)}")
    swept = config.stash.get(_SWEPT_KEY, [])
    if swept:
        lines.append(f"hstream-conformance: swept leftovers of {len(swept)} dead run(s): "
                     + ", ".join(swept))
    return lines


def pytest_unconfigure(config: pytest.Config) -> None:
    for cluster in config.stash.get(_CLUSTERS_KEY, []):
        cluster.stop()


class _ClusterCounter:
    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next - 1


_COUNTER = _ClusterCounter()


def _start(config: pytest.Config, spec: ClusterSpec, port_given: bool = False) -> Cluster:
    """Start a cluster named c<k>, the k-th of the session.

    Without an explicit base_port its ports move by PORT_BLOCK per cluster, so a factory
    cluster never collides with the module's cluster running next to it.
    """
    index = _COUNTER.take()
    spec = spec.with_(name=f"c{index}")
    spec = _with_target_timings(spec)
    if not port_given:
        spec = spec.with_(base_port=spec.base_port + PORT_BLOCK * (index % 50))
    try:
        cluster = start_cluster(spec)
    except DockerUnavailable as exc:
        if config.stash[_SPEC_KEY].backend == spec.backend:
            pytest.fail(f"cluster did not start: {exc}", pytrace=False)
        # A test that moves to containers for what local processes cannot do (partitions)
        # needs a Docker engine the run did not ask for: skipped, saying what to install.
        pytest.skip(f"needs a Docker engine for its {spec.backend} cluster: {exc}")
    except HarnessError as exc:
        pytest.fail(f"cluster did not start: {exc}", pytrace=False)
    config.stash[_CLUSTERS_KEY].append(cluster)
    return cluster


def _with_target_timings(spec: ClusterSpec) -> ClusterSpec:
    """Suites ask for fast gossip timings; a target that takes no timings from outside (real
    HStreamDB starts gossip with its defaults) runs its own, and the suites' bounds come
    from what it reports (`cluster.settings`), so the request is dropped, not refused."""
    if not spec.gossip:
        return spec
    try:
        tunable = settings_for(spec.with_(gossip={})).tunable
    except HarnessError:
        return spec  # the start reports the problem in full
    return spec if tunable else spec.with_(gossip={})


def start_run_cluster(config: pytest.Config, spec: ClusterSpec) -> Cluster:
    """For a suite's own fixture: a cluster started like the `cluster` fixture's (named, in
    this worker's port block, stopped at the latest when the session ends)."""
    return _start(config, spec)


def stop_run_cluster(config: pytest.Config, cluster: Cluster) -> None:
    _stop(config, cluster)


def _stop(config: pytest.Config, cluster: Cluster) -> None:
    try:
        cluster.stop()
    finally:
        clusters = config.stash[_CLUSTERS_KEY]
        if cluster in clusters:
            clusters.remove(cluster)


@pytest.fixture
def cluster_base_port(request: pytest.FixtureRequest) -> int:
    """A port block of this worker's own for a cluster the test starts some other way (in a
    subprocess, say): the block the next fixture cluster would have taken, so it collides
    neither with the worker's other clusters nor, under xdist or --repeat, with another
    worker's copy of the same test."""
    index = _COUNTER.take()
    return int(request.config.stash[_SPEC_KEY].base_port) + PORT_BLOCK * (index % 50)


@pytest.fixture(scope="session")
def cluster_spec(pytestconfig: pytest.Config) -> ClusterSpec:
    """The run's ClusterSpec (from --topology and the cluster options)."""
    return pytestconfig.stash[_SPEC_KEY]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, cluster_spec: ClusterSpec) -> Iterator[Cluster]:
    """A running cluster shared by the tests of one module; stopped after the module."""
    spec = cluster_spec
    marker = request.node.get_closest_marker("cluster")
    if marker is not None:
        try:
            spec = spec.with_(**marker.kwargs)
        except HarnessError as exc:
            pytest.fail(f"bad @pytest.mark.cluster settings: {exc}", pytrace=False)
    port_given = marker is not None and "base_port" in marker.kwargs
    running = _start(request.config, spec, port_given)
    request.node.stash[_MODULE_CLUSTER_KEY] = running
    try:
        yield running
    finally:
        _stop(request.config, running)


_MODULE_CLUSTER_KEY = pytest.StashKey[Cluster]()
_TEST_CLUSTERS_KEY = pytest.StashKey[list[Cluster]]()


@pytest.fixture
def cluster_factory(
    request: pytest.FixtureRequest, cluster_spec: ClusterSpec
) -> Iterator[Callable[..., Cluster]]:
    """`cluster_factory(**overrides) -> Cluster`: a private cluster, stopped after the test."""
    started: list[Cluster] = []
    request.node.stash[_TEST_CLUSTERS_KEY] = started

    def make(**overrides: Any) -> Cluster:
        try:
            spec = cluster_spec.with_(**overrides)
        except HarnessError as exc:
            pytest.fail(f"bad cluster_factory settings: {exc}", pytrace=False)
        running = _start(request.config, spec, "base_port" in overrides)
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in reversed(started):
            _stop(request.config, running)


def _clusters_of(item: pytest.Item) -> list[Cluster]:
    found: list[Cluster] = []
    if _TEST_CLUSTERS_KEY in item.stash:
        started: list[Cluster] = item.stash[_TEST_CLUSTERS_KEY]
        found.extend(started)
    node: Any = item
    while node is not None:
        module_cluster = node.stash.get(_MODULE_CLUSTER_KEY, None)
        if module_cluster is not None:
            found.append(module_cluster)
        node = node.parent
    return found


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"    (cannot read: {exc.strerror})"
    return "\n".join(f"    {line}" for line in text) or "    (empty)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        clusters = _clusters_of(item)
        for running in clusters:
            parts = [f"cluster {running.spec.label} ({running.spec.target} on "
                     f"{running.spec.backend}, seed {running.spec.seed})"]
            for node in running.nodes:
                parts.append(f"  node {node.id}: {node.state} client {node.client}")
            for name, path in sorted(running.logs().items()):
                parts.append(f"  {name}: {path}\n{_log_tail(path)}")
            report.sections.append((f"cluster logs {running.spec.label}", "\n".join(parts)))
    return report


def spec_of(config: pytest.Config) -> ClusterSpec | None:
    """The run's ClusterSpec (from options/topology), for other plugins such as the report's."""
    return config.stash.get(_SPEC_KEY, None)
