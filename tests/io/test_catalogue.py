"""The connector catalogue the harness gives reference nodes: the reference server accepts it,
it names each fixture connector by its target, and its launcher logs every run's pid before
the program takes over that pid."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from harness.io.catalogue import Run, catalogue, entry, parse_run_log, target_of
from harness.io.connector_image import IMAGE_ROOT, RUN_LOG_DIR, image_catalogue
from harness.io.connectors import load_connectors
from refserver.io.catalog import SINK, SOURCE, ConnectorCatalog


def test_targets_are_the_program_names_without_their_kind() -> None:
    assert {target_of(d) for d in load_connectors()} >= {"faker", "sqlite"}


def test_image_catalogue_names_the_image_venvs_and_loads_in_the_reference_server() -> None:
    loaded = ConnectorCatalog.from_json(image_catalogue())
    faker, sqlite = loaded.lookup(SOURCE, "faker"), loaded.lookup(SINK, "sqlite")
    assert faker.argv[-1] == f"{IMAGE_ROOT}/source-faker/bin/source-faker", faker
    assert sqlite.argv[-1] == f"{IMAGE_ROOT}/destination-sqlite/bin/destination-sqlite", sqlite
    assert faker.env["CONNECTOR_PIDS"] == f"{RUN_LOG_DIR}/source-faker.pids", faker


def test_launcher_logs_the_pid_the_program_then_runs_as(tmp_path: Path) -> None:
    program = tmp_path / "program"
    program.write_text('#!/bin/sh\necho "$$ $*"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    defn = next(d for d in load_connectors() if d.name == "source-faker")
    doc = catalogue([(defn, entry(str(program), str(tmp_path / "runs.pids")))])
    launch = ConnectorCatalog.from_json(doc).lookup(SOURCE, "faker")
    said = [subprocess.run([*launch.argv, sub, "--config", "c.json"], check=True, text=True,
                           capture_output=True, env={**os.environ, **launch.env}).stdout.split()
            for sub in ("spec", "read", "read")]
    assert [s[1:] for s in said] == [[sub, "--config", "c.json"]
                                     for sub in ("spec", "read", "read")]
    log = (tmp_path / "runs.pids").read_text()
    assert parse_run_log(log, "", "read") == [Run("", int(said[1][0])), Run("", int(said[2][0]))]
    assert parse_run_log(log, "node-1", "spec") == [Run("node-1", int(said[0][0]))]


def test_a_line_still_being_written_is_left_for_the_next_read() -> None:
    assert parse_run_log("12 read\n34 re", "", "read") == [Run("", 12)]
