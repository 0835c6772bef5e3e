"""What the ssh runtime's tests look at on the hosts and in the cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.cluster import Cluster
from harness.probes import DescribeClusterProbe
from harness.runtimes.inventory import Inventory
from harness.runtimes.ssh_connection import Session
from harness.runtimes.ssh_host import SshHost
from harness.runtimes.ssh_install import ensure_launcher


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # the probe's failure is the evidence we report
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout_s}s; last probe: {last!r}")


def view(cluster: Cluster, observer: int) -> dict[str, str]:
    probe = DescribeClusterProbe(nodes=[n.id for n in cluster.nodes])
    try:
        return probe.view(cluster.node(observer))
    finally:
        probe.close()


def leftovers(inventory: Inventory, label: str) -> dict[str, Any]:
    """Per host: live processes of the cluster, `ps` lines naming it, and its directory."""
    found: dict[str, Any] = {}
    for entry in inventory.hosts:
        host = SshHost(Session(entry, inventory.source), label)
        host.launcher = ensure_launcher(host.session)
        _, ps = host.session.run(["ps", "-eo", "pid,args"])
        status, _ = host.session.run(["test", "-e", host.dir])
        seen = {"pids": host.labelled(), "ps": [line for line in ps.splitlines() if label in line],
                "dir": status == 0}
        if any(seen.values()):
            found[entry.name] = seen
        host.session.close()
    return found
