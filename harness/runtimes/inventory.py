"""Inventories: the machines the ssh runtime may use, read from TOML or `terraform output -json`.

TOML (see fixtures/inventories/example.toml):

    [defaults]                 # every host, unless the host says otherwise
    user = "root"              # log in as; not root: set sudo = true for iptables
    key = "~/.ssh/id_ed25519"  # private key (relative paths: from the inventory's folder)
    port = 22
    sudo = false               # run Host.exec (iptables) through `sudo -n`
    preinstalled = false       # true: python3 there imports refserver; or that Python's path

    [[hosts]]
    name = "h1"
    address = "10.0.0.11"      # how this machine and its peers reach it (ssh and servers)
    role = "node"              # "node" or "store"; absent: either
    extra_addresses = []       # more addresses it owns: a second node on it binds one

    [toxiproxy]
    on = "host"                # "host": on the store's host; "control": on this machine,
    listen = "10.0.0.1"        #   listening on an address of it the hosts reach

`terraform output -json` prints `{name: {"value": ...}}`: the hosts are the output whose value
is a list of objects (or a map name -> object) with `host` or `address`, `user`, `key` or
`private_key_path`, `port` (and the optional keys above); an output `toxiproxy` may hold the
[toxiproxy] table. Every problem is one InventoryError naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import HarnessError

ROLES = ("node", "store")
TOXIPROXY_PLACES = ("host", "control")
# Names terraform modules commonly give these fields, mapped to ours.
ALIASES = {"host": "address", "username": "user", "private_key_path": "key", "key_file": "key"}
HOST_KEYS = ("name", "address", "user", "key", "port", "role", "sudo", "preinstalled",
             "extra_addresses")
DEFAULT_KEYS = ("user", "key", "port", "sudo", "preinstalled")


class InventoryError(HarnessError):
    """A malformed or missing inventory; the message names the file and the key."""


@dataclass(frozen=True)
class HostEntry:
    """One machine of the inventory and how to log in to it."""

    name: str
    address: str
    user: str = "root"
    key: str | None = None  # None: the ssh agent's or ~/.ssh's default keys
    port: int = 22
    role: str | None = None
    sudo: bool = False
    preinstalled: bool | str = False
    extra_addresses: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.address, *self.extra_addresses)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "extra_addresses": list(self.extra_addresses)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostEntry:
        return cls(**{**data, "extra_addresses": tuple(data.get("extra_addresses", ()))})


@dataclass(frozen=True)
class Inventory:
    source: str
    hosts: tuple[HostEntry, ...]
    toxiproxy_on: str = "host"
    toxiproxy_listen: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


def load_inventory(path: str | Path) -> Inventory:
    """Read a TOML or terraform JSON inventory (by its suffix; `.json` is terraform's)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(f"{path}: inventory file not found") from None
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InventoryError(f"{path}: not valid JSON: {exc}") from None
        return parse_terraform(document, str(path), path.parent)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    return parse_inventory(document, str(path), path.parent)


def parse_terraform(document: Any, source: str, base: Path) -> Inventory:
    if not isinstance(document, dict):
        raise InventoryError(f"{source}: expected the object `terraform output -json` prints")
    values = {name: out.get("value") if isinstance(out, dict) and "value" in out else out
              for name, out in document.items()}
    found = [name for name, value in values.items() if name != "toxiproxy" and _hostlike(value)]
    if len(found) > 1:
        found = [name for name in found if name in ("hosts", "inventory")] or found
    if len(found) != 1:
        what = f"several ({', '.join(found)}); name one `hosts`" if found else "none"
        raise InventoryError(f"{source}: expected one output listing hosts (objects with host or "
                             f"address), found {what}")
    listed: Any = values[found[0]]
    hosts = [{"name": name, **entry} for name, entry in listed.items()] \
        if isinstance(listed, dict) else listed
    renamed = [{ALIASES.get(k, k): v for k, v in entry.items()} for entry in hosts]
    document = {"hosts": renamed}
    if isinstance(values.get("toxiproxy"), dict):
        document["toxiproxy"] = values["toxiproxy"]
    return parse_inventory(document, f"{source} (output {found[0]})", base)


def _hostlike(value: Any) -> bool:
    entries = list(value.values()) if isinstance(value, dict) else value
    return isinstance(entries, list) and bool(entries) and all(
        isinstance(e, dict) and ("host" in e or "address" in e) for e in entries)


def parse_inventory(document: Mapping[str, Any], source: str, base: Path) -> Inventory:
    def bad(key: str, problem: str) -> InventoryError:
        return InventoryError(f"{source}: {key}: {problem}")

    unknown = sorted(set(document) - {"defaults", "hosts", "toxiproxy"})
    if unknown:
        raise bad(unknown[0], "unknown section; known: [defaults], [[hosts]], [toxiproxy]")
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise bad("defaults", "must be a table")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise bad(f"defaults.{key}", f"unknown key; known: {', '.join(DEFAULT_KEYS)}")
    listed = document.get("hosts")
    if not isinstance(listed, list) or not listed:
        raise bad("hosts", "expected at least one [[hosts]] entry with a name and an address")
    hosts = [_host(entry, i, defaults, base, bad) for i, entry in enumerate(listed)]
    for attr in ("name", "address"):
        seen = [getattr(h, attr) for h in hosts]
        doubles = sorted({x for x in seen if seen.count(x) > 1})
        if doubles:
            raise bad(f"hosts.{attr}", f"{doubles[0]!r} is given to two hosts")
    proxy = document.get("toxiproxy", {})
    if not isinstance(proxy, dict) or set(proxy) - {"on", "listen"}:
        raise bad("toxiproxy", "expected a table with `on` (host|control) and `listen`")
    on = proxy.get("on", "host")
    if on not in TOXIPROXY_PLACES:
        raise bad("toxiproxy.on", f"expected 'host' or 'control', got {on!r}")
    listen = proxy.get("listen")
    if on == "control" and not isinstance(listen, str):
        raise bad("toxiproxy.listen", "on = 'control' needs the address of this machine that "
                  "the hosts reach (e.g. the bridge or VPN address)")
    return Inventory(source, tuple(hosts), on, listen, dict(defaults))


def _host(entry: Any, index: int, defaults: Mapping[str, Any], base: Path,
          bad: Any) -> HostEntry:
    where = f"hosts[{index}]"
    if not isinstance(entry, dict):
        raise bad(where, "must be a table with name and address")
    for key in entry:
        if key not in HOST_KEYS:
            raise bad(f"{where}.{key}", f"unknown key; known: {', '.join(HOST_KEYS)}")
    values = {**defaults, **entry}
    values.setdefault("name", f"h{index + 1}")
    where = f"{where} ({values['name']})"
    types: dict[str, tuple[type, ...]] = {
        "name": (str,), "address": (str,), "user": (str,), "key": (str,), "port": (int,),
        "role": (str,), "sudo": (bool,), "preinstalled": (bool, str), "extra_addresses": (list,)}
    for key, expected in types.items():
        if key in values and (not isinstance(values[key], expected)
                              or (expected == (int,) and isinstance(values[key], bool))):
            raise bad(f"{where}.{key}", f"expected {'/'.join(t.__name__ for t in expected)}, got "
                      f"{values[key]!r}")
    if not values.get("address"):
        raise bad(f"{where}.address", "missing: the host name or IP address to reach it at")
    if values.get("role") not in (None, *ROLES):
        raise bad(f"{where}.role", f"expected node or store, got {values['role']!r}")
    if not 1 <= values.get("port", 22) <= 65535:
        raise bad(f"{where}.port", f"expected 1..65535, got {values['port']}")
    for extra in values.get("extra_addresses", []):
        try:
            ipaddress.ip_address(extra)
        except ValueError:
            raise bad(f"{where}.extra_addresses", f"{extra!r} is not an IP address") from None
    if values.get("key"):
        key_path = (base / Path(values["key"]).expanduser()).resolve()
        if not key_path.is_file():
            raise bad(f"{where}.key", f"no key file at {key_path}")
        values["key"] = str(key_path)
    return HostEntry.from_json(values)


def write_inventory(inventory: Inventory, path: Path, header: str = "") -> None:
    """Write `inventory` as TOML that `load_inventory` reads back (keys are absolute paths)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for entry in inventory.hosts:
        lines += ["", "[[hosts]]"]
        for key, value in entry.to_json().items():
            if value is not None and value != [] and not (key == "sudo" and not value) \
                    and not (key == "preinstalled" and value is False):
                lines.append(f"{key} = {json.dumps(value)}")
    lines += ["", "[toxiproxy]", f"on = {json.dumps(inventory.toxiproxy_on)}"]
    if inventory.toxiproxy_listen:
        lines.append(f"listen = {json.dumps(inventory.toxiproxy_listen)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
