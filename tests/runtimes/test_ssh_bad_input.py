"""Bad input on the ssh runtime is one line naming the host and what to fix, and leaves
nothing of the cluster running on any host."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from ssh_probes import leftovers, wait_until

from harness import HarnessError
from harness.cluster import UnsupportedFault, start_cluster
from harness.images import connect
from harness.runtimes.inventory import HostEntry, Inventory, write_inventory
from harness.runtimes.ssh_connection import SshUnreachable
from harness.runtimes.ssh_connection import connect as ssh_connect
from harness.testhosts.sshd import HostSet
from harness.topology import ClusterSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def hosts(ssh_hosts) -> HostSet:
    return ssh_hosts(3)


def inventory_with(hosts: HostSet, tmp_path: Path, **changes: object) -> Path:
    """The set's inventory with host h1 changed."""
    entries = tuple(dataclasses.replace(h, **changes) if h.name == "h1" else h
                    for h in hosts.inventory.hosts)
    path = tmp_path / "inventory.toml"
    write_inventory(Inventory("", entries), path)
    return path


def fails_in_one_line(inventory: Path, hosts: HostSet, *expected: str) -> str:
    spec = ClusterSpec(backend="ssh", inventory=str(inventory), name="bad")
    with pytest.raises(HarnessError) as caught:
        start_cluster(spec, progress=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, message
    reachable = Inventory("", tuple(h for h in hosts.inventory.hosts if h.name != "h1"))
    assert leftovers(reachable, spec.label) == {}
    return message


@contextmanager
def in_container(hosts: HostSet, host: str, change: str, undo: str) -> Iterator[None]:
    container = connect().containers.get(hosts.container(host))
    result = container.exec_run(["sh", "-c", change])
    assert result.exit_code == 0, result.output
    try:
        yield
    finally:
        container.exec_run(["sh", "-c", undo])


def test_unreachable_host(hosts: HostSet, tmp_path: Path) -> None:
    nowhere = hosts.inventory.hosts[1].address.rsplit(".", 1)[0] + ".99"
    fails_in_one_line(inventory_with(hosts, tmp_path, address=nowhere, extra_addresses=()),
                      hosts, f"host h1 (root@{nowhere}:22): ", "check the address in")


def test_wrong_key(hosts: HostSet, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    paramiko.ECDSAKey.generate().write_private_key_file(str(stranger))
    fails_in_one_line(inventory_with(hosts, tmp_path, key=str(stranger)), hosts,
                      "host h1 (root@", f"{stranger} not accepted for root: add the public key "
                      "to ~root/.ssh/authorized_keys there")


def test_no_sshd_on_the_port(hosts: HostSet, tmp_path: Path) -> None:
    fails_in_one_line(inventory_with(hosts, tmp_path, port=2222), hosts,
                      "host h1 (", ":2222): connection refused: start sshd there")


def test_sshd_refusing_the_session(hosts: HostSet, tmp_path: Path) -> None:
    entry = next(h for h in hosts.inventory.hosts if h.name == "h1")
    config = "/etc/ssh/sshd_config.d/kex.conf"
    # A key exchange paramiko does not speak: sshd ends every session it offers.
    with in_container(hosts, "h1",
                      f"echo 'KexAlgorithms sntrup761x25519-sha512@openssh.com' > {config}"
                      " && pkill -HUP -o sshd", f"rm -f {config} && pkill -HUP -o sshd"):
        wait_until("sshd refusing paramiko's key exchanges", lambda: _refuses(entry))
        fails_in_one_line(inventory_with(hosts, tmp_path), hosts,
                          "host h1 (", "sshd ended the session (", "read sshd's log there")
    wait_until("sshd letting root in again", lambda: not _refuses(entry))


def _refuses(entry: HostEntry) -> bool:
    try:
        ssh_connect(entry, "test", timeout_s=3).close()
    except SshUnreachable as exc:
        return "ended the session" in str(exc)
    return False


def test_no_python3(hosts: HostSet, tmp_path: Path) -> None:
    with in_container(hosts, "h1", "mv /usr/bin/python3 /usr/bin/python3-away",
                      "mv /usr/bin/python3-away /usr/bin/python3"):
        fails_in_one_line(inventory_with(hosts, tmp_path), hosts,
                          "host h1 has no python3: install it there")


def test_preinstalled_host_without_the_server(hosts: HostSet, tmp_path: Path) -> None:
    fails_in_one_line(inventory_with(hosts, tmp_path, preinstalled=True), hosts,
                      "host h1: python3 cannot import the reference server (",
                      "install hstream-conformance there or drop `preinstalled` from ")


def test_no_iptables_refuses_partitions_naming_the_host(hosts: HostSet, tmp_path: Path) -> None:
    with in_container(hosts, "h1", "mkdir -p /root/away && mv /usr/sbin/iptables* /root/away/",
                      "mv /root/away/* /usr/sbin/"):
        spec = ClusterSpec(backend="ssh", inventory=str(hosts.inventory_path), name="noipt",
                           base_port=46590)
        with start_cluster(spec, progress=lambda line: None) as cluster:
            reason = cluster.refusal("partition")
            assert reason is not None and "\n" not in reason
            assert reason.startswith("host h1 cannot run iptables (") and \
                "install it there (`apt-get install iptables`)" in reason
            with pytest.raises(UnsupportedFault, match="host h1 cannot run iptables"):
                cluster.partition({1: frozenset({2})})
            assert cluster.refusal("pause") is None
    assert leftovers(hosts.inventory, spec.label) == {}
