"""ClusterSpec: what cluster a run wants, independent of how and where it is started.

A spec comes from pytest options, CLI flags or a TOML file (fixtures/topologies/*.toml).
File format (every section and key optional; unknown ones are errors, so typos surface):

    [cluster]
    nodes = 3                  # 1..200: the nodes started (and initialised) at bring-up
    late_nodes = 0             # more node ids, laid out but started only by cluster.join(n)
    target = "reference"       # or "hstream:<image>", e.g. "hstream:hstreamdb/hstream:v0.20.0"
    backend = "local"          # or "docker", "ssh"
    inventory = "hosts.toml"   # the ssh backend's machines (harness.runtimes.inventory)
    seed = 42                  # drives every random choice of the run (faults, workloads)
    defects = ["never-confirm"]  # reference target only; see refserver --help
    tokens = ["hstream:hstream"] # client tokens the servers accept (empty: no auth)
    base_port = 6570           # client port; gossip = base_port+1, store = base_port+2
    clock_faults = false       # nodes run under the clock layer (libfaketime), for clock faults
    disk_faults = false        # the store's data dir on the lazy disk (FUSE), for disk faults

    [toxiproxy]
    enabled = true             # a proxy in front of every node's client and gossip port
    url = "http://127.0.0.1:8474"  # a running Toxiproxy; absent: the harness starts its own

    [gossip]                   # protocol timing overrides, passed to every node
    probe_interval_ms = 500      # keys: see GOSSIP_TIMING_KEYS
    roundtrip_timeout_ms = 200
    gossip_interval_ms = 250
"""

from __future__ import annotations

import os
import re
import secrets
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness import HarnessError

REFERENCE_TARGET = "reference"
HSTREAM_TARGET_PREFIX = "hstream:"
MAX_NODES = 200

# Gossip timing knobs, with what each one means. The reference target passes them to its
# servers as `--<key with dashes>` flags; the hstream target refuses them (no such flags).
GOSSIP_TIMING_KEYS: dict[str, str] = {
    "probe_interval_ms": "SWIM protocol period: one probe per period (real default 2000)",
    "roundtrip_timeout_ms": "wait for a direct ack before asking indirect probers (real 500)",
    "indirect_checks": "k, the number of peers asked to ping-req a silent member (real 1)",
    "suspicion_mult": "suspicion timeout = mult * max(1, log10 n) * probe interval",
    "retransmit_mult": "an update is piggybacked at most mult * ceil(log(n+1)) times (real 4)",
    "gossip_interval_ms": "period of piggyback gossip rounds to the fanout peers (real 1000)",
    "gossip_fanout": "peers each gossip round sends to (real 3)",
    "reconnect_interval_ms": "how often a dead member is tried again, to heal partitions",
    "join_timeout_ms": "how long a starting node tries its seeds before giving up",
}

SESSION_ENV = "HSTREAM_CONFORMANCE_SESSION"
_SESSION_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class TopologyError(HarnessError):
    """A malformed topology: the message names the source (file or option) and the key."""


def new_session_label() -> str:
    """A label unique to one run; every process, container and directory of the run carries it.

    Inherited from the environment when set, so a CLI or CI job can choose it and sub-processes
    of a labelled run stay in that run.
    """
    inherited = os.environ.get(SESSION_ENV)
    if inherited:
        return inherited
    return f"hsc-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ClusterSpec:
    """Everything needed to start one cluster. Immutable; derive variants with `.with_()`."""

    nodes: int = 3
    # Node ids nodes+1 .. nodes+late_nodes get addresses, ports and proxies at bring-up but
    # are not started; `Cluster.join(n)` starts one later, joining through the seeds (the
    # first `nodes` nodes), as a brand-new server added to a running cluster.
    late_nodes: int = 0
    target: str = REFERENCE_TARGET
    backend: str = "local"
    inventory: str | None = None  # the machines of the ssh backend (TOML or terraform JSON)
    toxiproxy: bool = True
    toxiproxy_url: str | None = None
    defects: tuple[str, ...] = ()
    seed: int = 0
    gossip: Mapping[str, int] = field(default_factory=dict)
    tokens: tuple[str, ...] = ()
    # The reference server's behaviour profile: "protocol" (protocol-correct) or one that
    # mirrors a real server's observable behaviour ("hstream-0.20"); reference target only.
    profile: str = "protocol"
    # Nodes are spawned under the clock layer (harness.clocklayer: libfaketime preloaded),
    # which the nemesis' clock faults need; never on otherwise.
    clock_faults: bool = False
    # The store's data directory is a lazy disk (harness.lazydisk: FUSE, unsynced writes
    # lost on demand, IO faults), which the nemesis' disk faults need; never on otherwise.
    disk_faults: bool = False
    base_port: int = 6570
    session: str = field(default_factory=new_session_label)
    # Distinguishes several clusters of one session (cluster_factory): part of every name.
    name: str = "c0"

    def __post_init__(self) -> None:
        _check_spec(self, source="cluster spec")

    @property
    def client_port(self) -> int:
        return self.base_port

    @property
    def gossip_port(self) -> int:
        return self.base_port + 1

    @property
    def store_port(self) -> int:
        return self.base_port + 2

    @property
    def node_ids(self) -> list[int]:
        """The nodes started at bring-up; they are the seeds."""
        return list(range(1, self.nodes + 1))

    @property
    def late_node_ids(self) -> list[int]:
        """The nodes laid out but started only on `Cluster.join(n)`."""
        return list(range(self.nodes + 1, self.nodes + self.late_nodes + 1))

    @property
    def all_node_ids(self) -> list[int]:
        return [*self.node_ids, *self.late_node_ids]

    @property
    def target_kind(self) -> str:
        """"reference" or "hstream"."""
        return "hstream" if self.target.startswith(HSTREAM_TARGET_PREFIX) else self.target

    @property
    def image(self) -> str | None:
        """The hstream-server image of an `hstream:<image>` target, else None."""
        if self.target.startswith(HSTREAM_TARGET_PREFIX):
            return self.target[len(HSTREAM_TARGET_PREFIX):]
        return None

    @property
    def label(self) -> str:
        """Session plus cluster name: unique per cluster, safe in file and container names."""
        return f"{self.session}-{self.name}"

    def with_(self, **overrides: Any) -> ClusterSpec:
        """A copy with some fields replaced (validated like the original)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise TopologyError(
                f"unknown cluster setting {', '.join(unknown)}; known: "
                f"{', '.join(f.name for f in fields(self))}"
            )
        if "defects" in overrides:
            overrides["defects"] = tuple(overrides["defects"])
        if "tokens" in overrides:
            overrides["tokens"] = tuple(overrides["tokens"])
        return replace(self, **overrides)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "late_nodes": self.late_nodes,
            "target": self.target,
            "backend": self.backend,
            "inventory": self.inventory,
            "toxiproxy": self.toxiproxy,
            "toxiproxy_url": self.toxiproxy_url,
            "defects": list(self.defects),
            "seed": self.seed,
            "gossip": dict(self.gossip),
            "tokens": list(self.tokens),
            "profile": self.profile,
            "clock_faults": self.clock_faults,
            "disk_faults": self.disk_faults,
            "base_port": self.base_port,
            "session": self.session,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterSpec:
        return cls(
            nodes=data["nodes"],
            late_nodes=data.get("late_nodes", 0),
            target=data["target"],
            backend=data["backend"],
            inventory=data.get("inventory"),
            toxiproxy=data["toxiproxy"],
            toxiproxy_url=data.get("toxiproxy_url"),
            defects=tuple(data.get("defects", ())),
            seed=data.get("seed", 0),
            gossip=dict(data.get("gossip", {})),
            tokens=tuple(data.get("tokens", ())),
            profile=data.get("profile", "protocol"),
            clock_faults=bool(data.get("clock_faults", False)),
            disk_faults=bool(data.get("disk_faults", False)),
            base_port=data.get("base_port", 6570),
            session=data["session"],
            name=data.get("name", "c0"),
        )


def _check_spec(spec: ClusterSpec, source: str) -> None:
    def bad(key: str, problem: str) -> TopologyError:
        return TopologyError(f"{source}: {key}: {problem}")

    if not isinstance(spec.nodes, int) or isinstance(spec.nodes, bool) or not (
        1 <= spec.nodes <= MAX_NODES
    ):
        raise bad("nodes", f"must be an integer in 1..{MAX_NODES}, got {spec.nodes!r}")
    if not isinstance(spec.late_nodes, int) or isinstance(spec.late_nodes, bool) or not (
        0 <= spec.late_nodes <= MAX_NODES - spec.nodes
    ):
        raise bad(
            "late_nodes",
            f"must be an integer in 0..{MAX_NODES - spec.nodes} (at most {MAX_NODES} nodes in "
            f"all), got {spec.late_nodes!r}",
        )
    if not isinstance(spec.target, str) or not (
        spec.target == REFERENCE_TARGET
        or (spec.target.startswith(HSTREAM_TARGET_PREFIX) and len(spec.target) > 8)
    ):
        raise bad(
            "target",
            f"unknown target {spec.target!r}; use 'reference' or 'hstream:<image>' "
            "(e.g. hstream:hstreamdb/hstream:v0.20.0)",
        )
    from harness.runtimes import runtime_names  # registered runtimes (entry points)

    if spec.backend not in runtime_names():
        known = ", ".join(runtime_names()) or "none: install the package (pip install -e .)"
        raise bad("backend", f"unknown backend {spec.backend!r}; registered runtimes: {known}")
    if spec.inventory is not None and not isinstance(spec.inventory, str):
        raise bad("inventory", f"must be a file path, got {spec.inventory!r}")
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool):
        raise bad("seed", f"must be an integer, got {spec.seed!r}")
    if not isinstance(spec.clock_faults, bool):
        raise bad("clock_faults", f"must be true or false, got {spec.clock_faults!r}")
    if not isinstance(spec.disk_faults, bool):
        raise bad("disk_faults", f"must be true or false, got {spec.disk_faults!r}")
    if not isinstance(spec.base_port, int) or not (1024 <= spec.base_port <= 65533):
        raise bad("base_port", f"must be an integer in 1024..65533, got {spec.base_port!r}")
    if spec.toxiproxy_url is not None and not re.match(r"^https?://[^/:]+:\d+/?$",
                                                       str(spec.toxiproxy_url)):
        raise bad("toxiproxy.url", f"expected http://host:port, got {spec.toxiproxy_url!r}")
    for key, value in spec.gossip.items():
        if key not in GOSSIP_TIMING_KEYS:
            raise bad(f"gossip.{key}", f"unknown setting; known: {', '.join(GOSSIP_TIMING_KEYS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise bad(f"gossip.{key}", f"must be a positive integer, got {value!r}")
    for defect in spec.defects:
        if not isinstance(defect, str) or not defect:
            raise bad("defects", f"defect names are non-empty strings, got {defect!r}")
    if spec.defects and spec.target != REFERENCE_TARGET:
        raise bad("defects", "seeded defects exist only in the reference target")
    for token in spec.tokens:
        if not isinstance(token, str) or not token:
            raise bad("tokens", f"tokens are non-empty strings, got {token!r}")
    if not _SESSION_RE.match(spec.session):
        raise bad("session", f"lower-case letters, digits and '-' only, got {spec.session!r}")
    if not _SESSION_RE.match(spec.name):
        raise bad("name", f"lower-case letters, digits and '-' only, got {spec.name!r}")


# TOML layout: section -> {key in file: (ClusterSpec field, expected python type)}
_TOML_KEYS: dict[str, dict[str, tuple[str, type | tuple[type, ...]]]] = {
    "cluster": {
        "nodes": ("nodes", int),
        "late_nodes": ("late_nodes", int),
        "target": ("target", str),
        "backend": ("backend", str),
        "inventory": ("inventory", str),
        "seed": ("seed", int),
        "defects": ("defects", list),
        "tokens": ("tokens", list),
        "profile": ("profile", str),
        "clock_faults": ("clock_faults", bool),
        "disk_faults": ("disk_faults", bool),
        "base_port": ("base_port", int),
    },
    "toxiproxy": {
        "enabled": ("toxiproxy", bool),
        "url": ("toxiproxy_url", str),
    },
}


def load_topology(path: str | Path, **overrides: Any) -> ClusterSpec:
    """Read a topology TOML file; `overrides` (e.g. from command-line options) win over it.

    Any problem raises one TopologyError naming the file and the offending key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"{path}: topology file not found") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read topology file: {exc.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None
    return parse_topology(document, source=str(path), **overrides)


def parse_topology(document: Mapping[str, Any], source: str, **overrides: Any) -> ClusterSpec:
    values: dict[str, Any] = {}
    for section, body in document.items():
        if section == "gossip":
            if not isinstance(body, dict):
                raise TopologyError(f"{source}: [gossip] must be a table of name = integer")
            values["gossip"] = dict(body)
            continue
        if section not in _TOML_KEYS:
            known = ", ".join([*_TOML_KEYS, "gossip"])
            raise TopologyError(f"{source}: unknown section [{section}]; known sections: {known}")
        if not isinstance(body, dict):
            raise TopologyError(f"{source}: {section} must be a table ([{section}])")
        for key, value in body.items():
            if key not in _TOML_KEYS[section]:
                known = ", ".join(_TOML_KEYS[section])
                raise TopologyError(
                    f"{source}: {section}.{key}: unknown key; known keys of [{section}]: {known}"
                )
            field_name, expected = _TOML_KEYS[section][key]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                kind = expected.__name__ if isinstance(expected, type) else str(expected)
                raise TopologyError(
                    f"{source}: {section}.{key}: expected {kind}, got {type(value).__name__} "
                    f"{value!r}"
                )
            if isinstance(value, list):
                if not all(isinstance(item, str) for item in value):
                    raise TopologyError(f"{source}: {section}.{key}: expected a list of strings")
                value = tuple(value)
            values[field_name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ClusterSpec(**values)
    except TopologyError as exc:
        # Re-word "cluster spec: key: problem" so the file name leads.
        raise TopologyError(str(exc).replace("cluster spec", source, 1)) from None
    except TypeError as exc:
        raise TopologyError(f"{source}: {exc}") from None


def topology_path(name_or_path: str, search_dir: Path | None = None) -> Path:
    """Resolve `--topology`: a path, or a name in fixtures/topologies/ (".toml" optional)."""
    candidate = Path(name_or_path)
    if candidate.exists():
        return candidate
    base = search_dir or Path(__file__).resolve().parent.parent / "fixtures" / "topologies"
    for option in (base / name_or_path, base / f"{name_or_path}.toml"):
        if option.exists():
            return option
    known = sorted(p.stem for p in base.glob("*.toml")) if base.is_dir() else []
    raise TopologyError(
        f"{name_or_path}: topology file not found (looked at it as a path and in {base}); "
        f"known topologies: {', '.join(known) or 'none'}"
    )


def build_spec(topology: str | None = None, **overrides: Any) -> ClusterSpec:
    """The spec from an optional topology file plus explicit settings (None = not given).

    What the pytest options and the CLI flags share: settings given on the command line win
    over the file, the file wins over the defaults.
    """
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    if "defects" in given:
        given["defects"] = tuple(given["defects"])
    if "tokens" in given:
        given["tokens"] = tuple(given["tokens"])
    if topology:
        return load_topology(topology_path(topology), **given)
    try:
        return ClusterSpec(**given)
    except TopologyError as exc:
        raise TopologyError(str(exc).replace("cluster spec", "command line", 1)) from None
