"""The stress family on the docker runtime: throttling through the container's CPU quota,
stress-ng run inside the node's container, both measured and undone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.cluster import Cluster
from harness.images import connect
from harness.nemesis import Fault, Nemesis
from harness.nemesis.stress import run_delay_seconds

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.cluster(nodes=3, backend="docker", target="reference", defects=(),
                        toxiproxy=False),
]

MEASURE_S = 3.0
THROTTLED_MIN_S = 0.05  # throttled time gained by the container while its quota is 5 %
STARVED_FACTOR = 3.0  # run-queue wait under the hogs, at least this many times before


def container(cluster: Cluster, n: int):
    return connect().containers.get(cluster.node(n).container_id)


def throttled_s(c) -> float:
    data = c.stats(stream=False)["cpu_stats"].get("throttling_data") or {}
    return int(data.get("throttled_time", 0)) / 1e9


def test_throttle_sets_and_restores_the_container_quota(cluster: Cluster):
    c = container(cluster, 1)
    c.reload()
    before_quota = c.attrs["HostConfig"].get("CpuQuota") or 0
    nemesis = Nemesis(cluster)
    fault = Fault("throttle-cpu", attributes={"quota_percent": 5, "period_ms": 100}).on(1)
    try:
        nemesis.invoke(fault, "start")
        c.reload()
        assert (c.attrs["HostConfig"]["CpuQuota"], c.attrs["HostConfig"]["CpuPeriod"]) == (
            5000, 100_000)
        before = throttled_s(c)
        # The node spends CPU on every exec'd busy loop too: the quota is the container's.
        c.exec_run(["sh", "-c", f"timeout {MEASURE_S:g} sh -c 'while :; do :; done'"])
        gained = throttled_s(c) - before
        nemesis.invoke(fault, "stop")
    finally:
        nemesis.teardown()
    c.reload()
    assert gained >= THROTTLED_MIN_S, f"the quota held the container back only {gained:.3f} s"
    assert (c.attrs["HostConfig"].get("CpuQuota") or 0) <= max(0, before_quota)


def test_cpu_stress_runs_in_the_container_and_is_undone(cluster: Cluster):
    c = container(cluster, 2)
    c.reload()
    pid = int(c.attrs["State"]["Pid"])  # the node, as this machine sees it
    if not Path(f"/proc/{pid}/schedstat").exists():
        pytest.skip("this kernel keeps no schedstat (CONFIG_SCHED_INFO): no run delay to read")

    def rate() -> float:
        start, t0 = run_delay_seconds(pid), time.monotonic()
        time.sleep(MEASURE_S)
        return (run_delay_seconds(pid) - start) / (time.monotonic() - t0)

    nemesis = Nemesis(cluster)
    fault = Fault("stress-cpu").on(2)
    try:
        idle = rate()
        nemesis.invoke(fault, "start")
        code, _ = c.exec_run(["pgrep", "stress-ng"])
        assert code == 0, "no stress-ng in the node's container"
        starved = rate()
        nemesis.invoke(fault, "stop")
    finally:
        nemesis.teardown()
    code, _ = c.exec_run(["pgrep", "stress-ng"])
    assert code != 0, "stress-ng still runs in the container after the fault stopped"
    c.reload()
    assert c.attrs["HostConfig"].get("CpusetCpus") in ("", None) or "-" in \
        c.attrs["HostConfig"]["CpusetCpus"], c.attrs["HostConfig"]["CpusetCpus"]
    # The node's main thread can wait at most about 1 s per second: on a machine already
    # busy (idle > 1/3), STARVED_FACTOR times idle is out of reach, so the hogs must then
    # take at least half of the wait that was left.
    wanted = min(STARVED_FACTOR * idle, idle + (1.0 - idle) / 2)
    assert starved >= wanted and starved > 0.05, (
        f"node 2 waited {starved:.3f} s/s for its CPU under stress-cpu, {idle:.3f} s/s before "
        f"(wanted at least {wanted:.3f})")
