"""Topology parsing: valid files, every kind of malformed file, and option precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.topology import (
    ClusterSpec,
    TopologyError,
    build_spec,
    load_topology,
    topology_path,
)

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.toml"
    path.write_text(text)
    return path


def test_full_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
[cluster]
nodes = 5
target = "hstream:hstreamdb/hstream:v0.20.0"
backend = "docker"
seed = 7
tokens = ["hstream:hstream"]
base_port = 19100
[toxiproxy]
enabled = false
url = "http://127.0.0.1:8474"
""")
    spec = load_topology(path)
    assert (spec.nodes, spec.backend, spec.seed, spec.base_port) == (5, "docker", 7, 19100)
    assert spec.image == "hstreamdb/hstream:v0.20.0" and spec.target_kind == "hstream"
    assert spec.toxiproxy is False and spec.toxiproxy_url == "http://127.0.0.1:8474"
    assert spec.tokens == ("hstream:hstream",)
    assert (spec.client_port, spec.gossip_port, spec.store_port) == (19100, 19101, 19102)


def test_gossip_section_and_defects(tmp_path: Path) -> None:
    path = write(tmp_path, """
[cluster]
defects = ["never-confirm"]
[gossip]
probe_interval_ms = 300
suspicion_mult = 2
""")
    spec = load_topology(path)
    assert spec.defects == ("never-confirm",)
    assert dict(spec.gossip) == {"probe_interval_ms": 300, "suspicion_mult": 2}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[cluster]\nnodes = ", "not valid TOML"),
        ("[clustr]\nnodes = 3\n", "unknown section [clustr]"),
        ("[cluster]\nnode = 3\n", "cluster.node: unknown key"),
        ("[cluster]\nnodes = \"three\"\n", "cluster.nodes: expected int, got str"),
        ("[cluster]\nnodes = true\n", "cluster.nodes: expected int"),
        ("[cluster]\nnodes = 0\n", "nodes: must be an integer in 1..200, got 0"),
        ("[cluster]\nlate_nodes = -1\n", "late_nodes: must be an integer in 0..197"),
        ("[cluster]\nnodes = 199\nlate_nodes = 2\n", "at most 200 nodes in all"),
        ("[cluster]\ntarget = \"kafka\"\n", "target: unknown target 'kafka'"),
        ("[cluster]\nbackend = \"k8s\"\n", "backend: unknown backend 'k8s'"),
        ("[cluster]\ndefects = [1]\n", "cluster.defects: expected a list of strings"),
        ("[toxiproxy]\nurl = \"localhost\"\n", "toxiproxy.url: expected http://host:port"),
        ("[gossip]\nprobe_ms = 3\n", "gossip.probe_ms: unknown setting"),
        ("[gossip]\nprobe_interval_ms = -1\n", "gossip.probe_interval_ms: must be a positive"),
        ("[cluster]\ntarget = \"hstream:img\"\ndefects = [\"no-refute\"]\n",
         "defects: seeded defects exist only in the reference target"),
        ("cluster = 3\n", "cluster must be a table"),
    ],
)
def test_malformed_file_names_file_and_key(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert names in message, message
    assert "\n" not in message.strip() or "TOML" in message


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="topology file not found"):
        load_topology(tmp_path / "absent.toml")
    with pytest.raises(TopologyError, match="known topologies: .*three-nodes"):
        topology_path("no-such-topology")


def test_names_resolve_in_fixtures() -> None:
    assert topology_path("three-nodes") == REPO / "fixtures/topologies/three-nodes.toml"
    for path in sorted((REPO / "fixtures/topologies").glob("*.toml")):
        assert isinstance(load_topology(path), ClusterSpec)


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[cluster]\nnodes = 5\nseed = 1\n")
    spec = build_spec(str(path), nodes=2, seed=None, defects=())
    assert (spec.nodes, spec.seed) == (2, 1)


def test_command_line_errors_say_command_line() -> None:
    with pytest.raises(TopologyError, match=r"^command line: nodes: must be an integer"):
        build_spec(None, nodes=-1)


def test_with_rejects_unknown_settings() -> None:
    with pytest.raises(TopologyError, match="unknown cluster setting nodez"):
        ClusterSpec().with_(nodez=3)


def test_json_round_trip() -> None:
    spec = ClusterSpec(nodes=4, defects=("no-refute",), gossip={"probe_interval_ms": 100})
    assert ClusterSpec.from_json(spec.to_json()) == spec
    grown = spec.with_(late_nodes=2)
    assert ClusterSpec.from_json(grown.to_json()) == grown


def test_late_node_ids_follow_the_initial_ones(tmp_path: Path) -> None:
    spec = load_topology(write(tmp_path, "[cluster]\nnodes = 3\nlate_nodes = 2\n"))
    assert (spec.node_ids, spec.late_node_ids, spec.all_node_ids) == (
        [1, 2, 3], [4, 5], [1, 2, 3, 4, 5]
    )
    assert ClusterSpec().late_node_ids == []
