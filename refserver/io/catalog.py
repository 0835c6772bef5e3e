"""Which program runs a connector type: the node's connector catalogue.

HStreamDB maps a connector target (`CREATE SOURCE CONNECTOR c FROM mysql ...` → "mysql")
to a Docker image per kind (its `source-images` / `sink-images` options). The reference
server maps it to a command instead, from a JSON file the node is given at start:

    {"sources": {"faker": {"command": ["/venvs/faker/bin/source-faker"]}},
     "sinks":   {"sqlite": {"command": ["/venvs/sqlite/bin/destination-sqlite"],
                            "env": {"SOME": "value"}}},
     "images":  {...}}   # optional: an entry may give "image" instead of "command",
                         # run as `docker run --rm -i --network host IMAGE`

Each command is an Airbyte connector: it takes `spec | check | discover | read | write`
plus `--config FILE` etc. and answers with JSON lines on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE = "SOURCE"
SINK = "SINK"
_SECTIONS = {SOURCE: "sources", SINK: "sinks"}


class CatalogError(ValueError):
    """The catalogue file is unreadable or an entry is malformed."""


class UnknownConnector(LookupError):
    """No connector of that kind and target is in the catalogue."""


@dataclass(frozen=True)
class ConnectorLaunch:
    """How to start one connector program: argv prefix and extra environment."""

    target: str
    kind: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    image: str = ""


def kind_of(text: str) -> str:
    """`source`/`sink` in any case (HStreamDB accepts both spellings) → SOURCE/SINK."""
    kind = text.strip().upper()
    if kind not in _SECTIONS:
        raise ValueError(f"connector type must be SOURCE or SINK, got {text!r}")
    return kind


class ConnectorCatalog:
    def __init__(self, launches: Mapping[tuple[str, str], ConnectorLaunch] | None = None) -> None:
        self._launches = dict(launches or {})

    @classmethod
    def from_json(cls, doc: Any, where: str = "connector catalogue") -> ConnectorCatalog:
        if not isinstance(doc, dict):
            raise CatalogError(f"{where}: expected a JSON object with `sources` and `sinks`")
        unknown = sorted(set(doc) - set(_SECTIONS.values()))
        if unknown:
            raise CatalogError(
                f"{where}: unknown section(s) {unknown}; use `sources` and `sinks`"
            )
        launches: dict[tuple[str, str], ConnectorLaunch] = {}
        for kind, section in _SECTIONS.items():
            entries = doc.get(section, {})
            if not isinstance(entries, dict):
                raise CatalogError(f"{where}: `{section}` must map target names to entries")
            for target, entry in entries.items():
                launches[(kind, target)] = _entry(
                    kind, target, entry, f"{where}: {section}.{target}")
        return cls(launches)

    @classmethod
    def load(cls, path: Path) -> ConnectorCatalog:
        """Read a catalogue file; CatalogError says what is wrong with it."""
        try:
            text = path.read_text()
        except OSError as error:
            raise CatalogError(
                f"cannot read connector catalogue {path}: {error.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as error:
            raise CatalogError(f"connector catalogue {path} is not JSON: {error}") from None
        return cls.from_json(doc, str(path))

    def lookup(self, kind: str, target: str) -> ConnectorLaunch:
        launch = self._launches.get((kind, target))
        if launch is None:
            known = sorted(t for k, t in self._launches if k == kind)
            raise UnknownConnector(
                f"no {kind.lower()} connector {target!r} in this server's connector catalogue "
                f"(known: {', '.join(known) or 'none'})"
            )
        return launch

    def targets(self, kind: str) -> list[str]:
        return sorted(t for k, t in self._launches if k == kind)


def _entry(kind: str, target: str, entry: Any, where: str) -> ConnectorLaunch:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected an object with `command` or `image`")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise CatalogError(f"{where}: `env` must map names to strings")
    command, image = entry.get("command"), entry.get("image")
    if command is not None:
        if not isinstance(command, list) or not command or \
                not all(isinstance(part, str) for part in command):
            raise CatalogError(f"{where}: `command` must be a non-empty list of strings")
        return ConnectorLaunch(target, kind, tuple(command), dict(env))
    if isinstance(image, str) and image:
        # The connector reaches HStream-independent services on the host, like the real
        # server's tasks do on its `tasks-network`; config files are mounted by the runner.
        return ConnectorLaunch(target, kind, ("docker", "run", "--rm", "-i", "--network", "host"),
                               dict(env), image)
    raise CatalogError(f"{where}: give `command` (a list of strings) or `image` (a string)")
