"""Connector definition files: the shipped ones load, and a broken one says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.io.connectors import (
    CONNECTORS_DIR,
    DefinitionError,
    image_override_variable,
    load_connectors,
    load_definition,
)
from harness.io.runner import DockerImage


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_shipped_definitions_load():
    defs = {d.name: d for d in load_connectors(CONNECTORS_DIR)}
    assert {"source-faker", "destination-sqlite"} <= set(defs)
    faker = defs["source-faker"]
    assert faker.kind == "source" and faker.deterministic and faker.incremental
    assert faker.config["parallelism"] == 1, "parallel faker reads are not repeatable"
    sqlite = defs["destination-sqlite"]
    assert sqlite.package and sqlite.package.local_paths[0].is_dir()


def test_workdir_placeholder_is_filled(tmp_path: Path):
    defn = load_definition(CONNECTORS_DIR / "destination-sqlite.toml")
    assert defn.good_config(tmp_path)["database_path"] == f"{tmp_path}/destination.sqlite"


@pytest.mark.parametrize(("text", "reason"), [
    ('kind = "source"\nimage = "x"', "missing `name` (str); add it"),
    ('name = "a"\nkind = "sink"\nimage = "x"', "`kind` must be one of ('source', 'destination')"),
    ('name = "a"\nkind = "source"', "define [package] or `image`"),
    ('name = "a"\nkind = "source"\nimage = 3', "`image` must be a str, got int 3"),
    ('name = "a"\nkind = "source"\n[package]\nentry_point = "x"',
     "[package] needs requirements or local_paths"),
    ('name = "a"\nkind = "source"\n[package]\nlocal_paths = ["nope"]\nentry_point = "x"',
     "is not a folder"),
    ('name = "a"\nkind = ', "not valid TOML"),
])
def test_broken_definitions_say_what_to_fix(tmp_path: Path, text: str, reason: str):
    path = _write(tmp_path, text)
    with pytest.raises(DefinitionError) as err:
        load_definition(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_duplicate_names_are_refused(tmp_path: Path):
    for n in (1, 2):
        (tmp_path / f"{n}.toml").write_text('name = "same"\nkind = "source"\nimage = "x"')
    with pytest.raises(DefinitionError, match=r"defined twice: \['same'\]"):
        load_connectors(tmp_path)


def test_image_override_replaces_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    defn_path = CONNECTORS_DIR / "source-faker.toml"
    var = image_override_variable("source-faker")
    assert var == "HSTREAM_CONNECTOR_IMAGE_SOURCE_FAKER"
    monkeypatch.setenv(var, "hstream-conformance/source-faker:dev")
    defn = load_definition(defn_path)
    assert defn.package is None
    assert defn.launch() == DockerImage("hstream-conformance/source-faker:dev")


def test_image_launch_mounts_the_data_dir_at_the_same_path(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(image_override_variable("destination-sqlite"), "some/destination:dev")
    defn = load_definition(CONNECTORS_DIR / "destination-sqlite.toml")
    launch = defn.launch(data_dir=tmp_path)
    assert launch == DockerImage("some/destination:dev",
                                 mounts=((tmp_path, str(tmp_path.resolve())),))
