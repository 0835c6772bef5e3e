"""Inventories (TOML and `terraform output -json`) and the ssh runtime's placement over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.runtimes.inventory import (
    HostEntry,
    Inventory,
    InventoryError,
    load_inventory,
    write_inventory,
)
from harness.runtimes.ssh import plan
from harness.targets import ProcessLayout
from harness.targets.reference import ReferenceTarget
from harness.topology import ClusterSpec, build_spec, load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "inventories"


@pytest.fixture
def home_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ~/.ssh/id_ed25519 for the examples, which name it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / ".ssh" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("not read by the parser, only required to exist\n")
    return key


def write(tmp_path: Path, text: str, name: str = "inv.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_example_reads_with_defaults_and_roles(home_key: Path) -> None:
    inventory = load_inventory(EXAMPLES / "example.toml")
    assert [h.name for h in inventory.hosts] == ["store", "h1", "h2", "h3"]
    assert inventory.hosts[0].role == "store" and inventory.hosts[1].role is None
    assert {h.key for h in inventory.hosts} == {str(home_key)}
    assert {(h.user, h.port) for h in inventory.hosts} == {("root", 22)}
    assert inventory.toxiproxy_on == "host"


def test_terraform_output_example_reads_aliases(home_key: Path) -> None:
    inventory = load_inventory(EXAMPLES / "terraform-output.json")
    assert [(h.name, h.address, h.user, h.sudo) for h in inventory.hosts][:2] == [
        ("store", "10.0.0.10", "admin", True), ("h1", "10.0.0.11", "admin", True)]
    assert inventory.hosts[1].key == str(home_key)
    assert "output cluster_hosts" in inventory.source


def test_terraform_map_output_names_hosts_by_key(tmp_path: Path) -> None:
    key = write(tmp_path, "key", "id")
    document = {"machines": {"value": {"a": {"address": "10.1.0.1", "key": "id"},
                                       "b": {"host": "10.1.0.2", "key_file": str(key),
                                             "username": "ops", "port": 2222}}},
                "toxiproxy": {"value": {"on": "control", "listen": "10.1.0.254"}}}
    inventory = load_inventory(write(tmp_path, json.dumps(document), "out.json"))
    assert [(h.name, h.address, h.user, h.port) for h in inventory.hosts] == [
        ("a", "10.1.0.1", "root", 22), ("b", "10.1.0.2", "ops", 2222)]
    assert inventory.hosts[0].key == str(key)
    assert (inventory.toxiproxy_on, inventory.toxiproxy_listen) == ("control", "10.1.0.254")


def test_written_inventory_reads_back(tmp_path: Path) -> None:
    hosts = (HostEntry("store", "10.2.0.10", role="store"),
             HostEntry("h1", "10.2.0.11", role="node", extra_addresses=("10.2.0.101",)))
    path = tmp_path / "out" / "inventory.toml"
    write_inventory(Inventory("x", hosts), path, header="made by a test")
    again = load_inventory(path)
    assert again.hosts == hosts and again.toxiproxy_on == "host"


@pytest.mark.parametrize(("text", "expected"), [
    ("[[hosts]]\nname = 'a'\n", "hosts[0] (a).address: missing"),
    ("[[hosts]]\naddress = '10.0.0.1'\nport = 'x'\n", "hosts[0] (h1).port: expected int"),
    ("[[hosts]]\naddress = '10.0.0.1'\nrole = 'db'\n", "hosts[0] (h1).role: expected node or"),
    ("[[hosts]]\naddress = '10.0.0.1'\nkey = 'nope'\n", "hosts[0] (h1).key: no key file at"),
    ("[[hosts]]\naddress = '10.0.0.1'\nadress = 'x'\n", "hosts[0].adress: unknown key"),
    ("[[hosts]]\naddress = '10.0.0.1'\nextra_addresses = ['host-b']\n",
     "extra_addresses: 'host-b' is not an IP address"),
    ("[[hosts]]\naddress = '10.0.0.1'\n[[hosts]]\naddress = '10.0.0.1'\n",
     "hosts.address: '10.0.0.1' is given to two hosts"),
    ("[defaults]\npassword = 'x'\n[[hosts]]\naddress = '10.0.0.1'\n", "defaults.password: unknown"),
    ("[[hosts]]\naddress = '10.0.0.1'\n[toxiproxy]\non = 'control'\n", "toxiproxy.listen:"),
    ("[[hosts]]\naddress = '10.0.0.1'\n[toxiproxy]\non = 'cloud'\n", "toxiproxy.on: expected"),
    ("[machines]\n", "machines: unknown section"),
    ("", "hosts: expected at least one [[hosts]]"),
    ("[[hosts]\n", "not valid TOML"),
])
def test_malformed_toml_is_one_error_naming_file_and_key(tmp_path: Path, text: str,
                                                         expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


@pytest.mark.parametrize(("document", "expected"), [
    ({"vpc": {"value": "vpc-1"}}, "expected one output listing hosts"),
    ({"a": {"value": [{"host": "10.0.0.1"}]}, "b": {"value": [{"host": "10.0.0.2"}]}},
     "several (a, b)"),
    ({"hosts": {"value": [{"host": "10.0.0.1", "port": 0}]}}, "(output hosts): hosts[0] (h1)"
     ".port: expected 1..65535"),
    ([1, 2], "expected the object `terraform output -json` prints"),
])
def test_malformed_terraform_output(tmp_path: Path, document: object, expected: str) -> None:
    path = write(tmp_path, json.dumps(document), "out.json")
    with pytest.raises(InventoryError, match=r"^" + str(path)) as caught:
        load_inventory(path)
    assert expected in str(caught.value)


def test_missing_inventory_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="inventory file not found"):
        load_inventory(tmp_path / "absent.toml")


def test_topology_and_option_carry_the_inventory(tmp_path: Path) -> None:
    topology = write(tmp_path, "[cluster]\nbackend = 'ssh'\ninventory = 'hosts.toml'\n", "t.toml")
    assert load_topology(topology).inventory == "hosts.toml"
    assert build_spec(None, backend="ssh", inventory="x.toml").inventory == "x.toml"
    spec = ClusterSpec(backend="ssh", inventory="x.toml")
    assert ClusterSpec.from_json(spec.to_json()) == spec


# -- placement ------------------------------------------------------------------------
def inventory_of(nodes: int, extra: int = 0, store: bool = True) -> Inventory:
    hosts = [HostEntry(f"h{i}", f"10.0.0.{10 + i}", role="node",
                       extra_addresses=tuple(f"10.0.{k}.{10 + i}" for k in range(1, extra + 1)))
             for i in range(1, nodes + 1)]
    if store:
        hosts.append(HostEntry("s", "10.0.0.10", role="store"))
    return Inventory("inv.toml", tuple(hosts))


def layouts(nodes: int) -> list[ProcessLayout]:
    spec = ClusterSpec(nodes=nodes)
    return ReferenceTarget(spec).layout(spec)


def test_nodes_get_hosts_of_their_own_and_the_store_its_host() -> None:
    where, store, refusal = plan(inventory_of(3), layouts(3))
    assert store.name == "s" and where["store"] == (store, "10.0.0.10") and refusal is None
    assert {name: (h.name, a) for name, (h, a) in where.items() if name != "store"} == {
        "node-1": ("h1", "10.0.0.11"), "node-2": ("h2", "10.0.0.12"),
        "node-3": ("h3", "10.0.0.13")}


def test_more_nodes_than_hosts_bind_extra_addresses_round_robin() -> None:
    where, _, refusal = plan(inventory_of(3, extra=1), layouts(5))
    assert (where["node-4"][0].name, where["node-4"][1]) == ("h1", "10.0.1.11")
    assert (where["node-5"][0].name, where["node-5"][1]) == ("h2", "10.0.1.12")
    assert refusal == ("node-1 and node-4 share host h1: partition rules hold for a whole host; "
                       "give each node a host of its own (`hstream-conformance hosts up 5`)")


def test_without_roles_the_last_host_takes_the_store() -> None:
    hosts = tuple(HostEntry(f"m{i}", f"10.0.0.{i}") for i in range(1, 5))
    where, store, _ = plan(Inventory("inv.toml", hosts), layouts(3))
    assert store.name == "m4" and {where[f"node-{i}"][0].name for i in (1, 2, 3)} == {
        "m1", "m2", "m3"}


def test_a_single_host_carries_everything_and_refuses_partitions() -> None:
    where, store, refusal = plan(Inventory("inv.toml", (HostEntry("m", "10.0.0.1"),)), layouts(1))
    assert {h.name for h, _ in where.values()} == {"m"} and store.name == "m"
    assert refusal is not None and refusal.startswith("store and node-1 share host m")


def test_too_few_addresses_is_one_line_saying_how_many() -> None:
    with pytest.raises(InventoryError) as caught:
        plan(inventory_of(3), layouts(5))
    assert str(caught.value) == (
        "inv.toml: 3 node address(es) on 3 host(s) for 5 nodes: add hosts or extra_addresses "
        "(`hstream-conformance hosts up 5` makes enough)")
