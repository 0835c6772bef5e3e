"""A reference cluster on the ssh runtime, on sshd containers standing in for machines: the
processes run on the hosts the inventory names, faults reach them over SSH, logs come back,
and nothing of the cluster is left on any host after it stops or is swept."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from ssh_probes import leftovers, view, wait_until

from harness.cleanup import sweep
from harness.cluster import Cluster, start_cluster
from harness.runtimes.inventory import Inventory, load_inventory, write_inventory
from harness.runtimes.ssh_connection import Session
from harness.runtimes.ssh_install import ROOT_VENV, Wheels, ensure_python, wanted_stamp
from harness.testhosts.sshd import HostSet
from harness.topology import ClusterSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# A member confirmed dead comes back only through the reconnect loop: at its default of 30 s
# the heal below would race its 30 s wait.
GOSSIP = {"probe_interval_ms": 300, "roundtrip_timeout_ms": 150, "gossip_interval_ms": 150,
          "suspicion_mult": 3, "reconnect_interval_ms": 1000}
ALL_ALIVE = {"1": "alive", "2": "alive", "3": "alive"}


def spec_for(inventory: Path | str, **overrides: object) -> ClusterSpec:
    return ClusterSpec(backend="ssh", inventory=str(inventory), gossip=GOSSIP, **overrides)


@pytest.fixture(scope="module")
def hosts(ssh_hosts) -> HostSet:
    return ssh_hosts(3)


@pytest.fixture(scope="module")
def ssh_cluster(hosts: HostSet) -> Iterator[Cluster]:
    cluster = start_cluster(spec_for(hosts.inventory_path, name="ssh"), progress=print)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_each_node_runs_on_a_host_of_its_own(ssh_cluster: Cluster) -> None:
    assert [node.host for node in ssh_cluster.nodes] == ["h1", "h2", "h3"]
    assert ssh_cluster.processes["store"].host.name == "store"
    assert ssh_cluster.extra["toxiproxy"]["host"] == "store"
    wait_until("every node sees all three alive",
               lambda: all(view(ssh_cluster, n) == ALL_ALIVE for n in (1, 2, 3)))


def test_kill_then_restart_a_node(ssh_cluster: Cluster) -> None:
    ssh_cluster.kill(2)
    box = ssh_cluster.processes["node-2"]
    assert box.handle is not None and box.host.exit_status(box.handle) == -9
    wait_until("node 1 sees node 2 gone", lambda: view(ssh_cluster, 1).get("2") != "alive")
    ssh_cluster.restart(2)
    assert ssh_cluster.node(2).state == "running"
    wait_until("node 1 sees node 2 back", lambda: view(ssh_cluster, 1) == ALL_ALIVE)


def test_pause_then_resume_a_node(ssh_cluster: Cluster) -> None:
    ssh_cluster.pause(3)
    box = ssh_cluster.processes["node-3"]
    assert box.handle is not None and box.host.exit_status(box.handle) is None
    wait_until("node 1 sees paused node 3 gone", lambda: view(ssh_cluster, 1).get("3") != "alive")
    ssh_cluster.resume(3)
    wait_until("node 1 sees node 3 back", lambda: view(ssh_cluster, 1) == ALL_ALIVE)


def test_partition_isolates_one_node_until_healed(ssh_cluster: Cluster) -> None:
    assert ssh_cluster.refusal("partition") is None
    ssh_cluster.partition({3: frozenset({1, 2}), 1: frozenset({3}), 2: frozenset({3})})
    rules = ssh_cluster.partition_rules(3)
    assert "-A HSC-GRUDGE-IN -s 172." in rules[0] and len(rules) > 2
    wait_until("the majority sees node 3 gone",
               lambda: view(ssh_cluster, 1).get("3") != "alive"
               and view(ssh_cluster, 2).get("3") != "alive")
    assert view(ssh_cluster, 1).get("2") == "alive"  # the majority still sees itself
    ssh_cluster.heal()
    assert ssh_cluster.partition_rules(3) == []
    wait_until("every node sees all alive after the heal",
               lambda: all(view(ssh_cluster, n) == ALL_ALIVE for n in (1, 2, 3)))


def test_logs_come_back_from_the_hosts(ssh_cluster: Cluster) -> None:
    logs = ssh_cluster.logs()
    assert set(logs) == {"store", "node-1", "node-2", "node-3", "toxiproxy"}
    text = logs["node-2"].read_text()
    assert text.count("Server is started on port") == 2  # both incarnations, in order
    assert "=== harness: restarting node-2" in text


def test_toxiproxy_on_the_control_machine_and_nothing_left_after_stop(
        hosts: HostSet, tmp_path: Path) -> None:
    gateway = hosts.inventory.hosts[0].address.rsplit(".", 1)[0] + ".1"
    mine = tmp_path / "control.toml"
    write_inventory(Inventory("", hosts.inventory.hosts, "control", gateway), mine)
    cluster = start_cluster(spec_for(mine, name="ctl", base_port=46570), progress=print)
    try:
        assert cluster.toxiproxy_url == f"http://{gateway}:46573"
        assert cluster.node(1).client.host == gateway
        wait_until("every node sees all three alive",
                   lambda: all(view(cluster, n) == ALL_ALIVE for n in (1, 2, 3)))
        # Installed once: the stamp now matches, so a second cluster uploads nothing.
        again: list[str] = []
        session = Session(hosts.inventory.hosts[1], "test")
        ensure_python(session, Wheels(again.append), wanted_stamp())
        session.close()
        assert again == []
    finally:
        cluster.stop()
    assert leftovers(load_inventory(mine), cluster.spec.label) == {}


def test_sweep_of_a_dead_run_kills_its_processes_on_every_host(hosts: HostSet) -> None:
    cluster = start_cluster(spec_for(hosts.inventory_path, name="swept", base_port=46580),
                            progress=lambda line: None)
    label = cluster.spec.label
    try:
        assert leftovers(hosts.inventory, label)  # running: found on the hosts
        # What a later run does for a record whose owner died: the pid registry's part, then
        # the runtime named in the record (SshRuntime.sweep) on the hosts it lists.
        assert sweep(only=label).clusters == [label]
        assert leftovers(hosts.inventory, label) == {}
    finally:
        cluster.stop()


def test_more_nodes_than_hosts_bind_extra_addresses_and_refuse_partitions(
        hosts: HostSet) -> None:
    with start_cluster(spec_for(hosts.inventory_path, name="big", nodes=4, base_port=46600),
                       progress=lambda line: None) as cluster:
        h1 = next(h for h in hosts.inventory.hosts if h.name == "h1")
        assert (cluster.node(4).host, cluster.node(4).direct_client.host) == (
            "h1", h1.extra_addresses[0])
        reason = cluster.refusal("partition")
        assert reason is not None and reason.startswith("node-1 and node-4 share host h1: ")
        everyone = {str(n): "alive" for n in (1, 2, 3, 4)}
        wait_until("every node sees all four alive",
                   lambda: all(view(cluster, n) == everyone for n in (1, 2, 3, 4)))


def test_preinstalled_hosts_get_nothing_uploaded(hosts: HostSet, ssh_cluster: Cluster,
                                                 tmp_path: Path) -> None:
    # The module's cluster installed the server in ROOT_VENV: name that Python as installed.
    mine = tmp_path / "preinstalled.toml"
    entries = tuple(dataclasses.replace(h, preinstalled=f"{ROOT_VENV}/bin/python")
                    for h in hosts.inventory.hosts)
    write_inventory(Inventory("", entries), mine)
    lines: list[str] = []
    with start_cluster(spec_for(mine, name="pre", base_port=46610),
                       progress=lines.append) as cluster:
        assert not [line for line in lines if "wheels" in line or "installing" in line]
        _, ps = cluster.exec("node-1", ["ps", "-eo", "args"])
        assert f"{ROOT_VENV}/bin/python -m refserver --server-id 1 --port 46610" in ps
