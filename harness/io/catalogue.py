"""The reference server's connector catalogue for the fixtures' connectors, and their run log.

HStream IO names a connector by its target (``faker``, ``sqlite``); the fixtures name the
program (``source-faker``, ``destination-sqlite``): the target is the program's name without
its kind. Every entry runs the program through a launcher that first appends
``<pid> <subcommand>`` to a run log, then execs the program (same pid): a test finds a task's
process there, to kill it mid-read or count its reads, as a user finds a task's container on
real HStreamDB. The same catalogue serves a node on this machine (programs in the host's
connector venvs) and a node in a container (programs in the image's venvs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.io.connectors import ConnectorDefinition

RUN_LOG_ENV = "CONNECTOR_PIDS"
# sh -c LAUNCHER <program> <subcommand> ...: $0 is the program, $1 its subcommand.
LAUNCHER = f'echo "$$ $1" >> "${RUN_LOG_ENV}"; exec "$0" "$@"'
_SECTIONS = {"source": "sources", "destination": "sinks"}


def target_of(defn: ConnectorDefinition) -> str:
    """The connector target a CreateConnector names: ``source-faker`` -> ``faker``."""
    return defn.name.removeprefix(f"{defn.kind}-")


def run_log_name(defn: ConnectorDefinition) -> str:
    return f"{defn.name}.pids"


def entry(program: str, run_log: str) -> dict[str, Any]:
    """One catalogue entry: the program, started through the launcher that logs its runs."""
    return {"command": ["sh", "-c", LAUNCHER, program], "env": {RUN_LOG_ENV: run_log}}


def catalogue(entries: Iterable[tuple[ConnectorDefinition, dict[str, Any]]]) -> dict[str, Any]:
    """The catalogue document (``--io-connectors``) holding these entries under their
    targets."""
    doc: dict[str, Any] = {"sources": {}, "sinks": {}}
    for defn, value in entries:
        doc[_SECTIONS[defn.kind]][target_of(defn)] = value
    return doc


@dataclass(frozen=True)
class Run:
    """One start of a connector program: where it ran ("" on this machine, else the node
    whose container ran it) and its pid there."""

    where: str
    pid: int


def parse_run_log(text: str, where: str, subcommand: str) -> list[Run]:
    """The runs of `subcommand` in a run log, in start order. A line still being written
    (no newline yet) is left for the next read."""
    lines = text.split("\n")[:-1]
    return [Run(where, int(parts[0])) for parts in (line.split() for line in lines)
            if parts[1:2] == [subcommand] and parts[0].isdigit()]
