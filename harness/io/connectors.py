"""Connector definitions: the ``fixtures/connectors/*.toml`` files, loaded and checked.

A definition says what a connector is (``kind`` source or destination), how to run it
(``[package]`` = PyPI requirements and/or local package folders installed into a private
venv, or ``image`` = a Docker image), a good and a bad config, and what the acceptance
checks may expect of its reads (fields that legitimately vary, an incremental stream).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.io.install import ConnectorPackage, install
from harness.io.runner import Connector, DockerImage, Launch, LocalExecutable

REPO_ROOT = Path(__file__).resolve().parents[2]
CONNECTORS_DIR = REPO_ROOT / "fixtures" / "connectors"
KINDS = ("source", "destination")


class DefinitionError(ValueError):
    """A connector definition file is missing something or has a wrong type."""


@dataclass(frozen=True)
class IncrementalSettings:
    stream: str
    cursor_field: tuple[str, ...]
    inclusive: bool = True


@dataclass(frozen=True)
class ConnectorDefinition:
    name: str
    kind: str
    source_file: Path
    config: dict[str, Any]
    bad_config: dict[str, Any] | None = None
    package: ConnectorPackage | None = None
    image: str | None = None
    volatile_fields: tuple[str, ...] = ()
    deterministic: bool = False
    min_records: int = 1
    incremental: IncrementalSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def launch(self, prefer_image: bool = False, data_dir: Path | None = None) -> Launch:
        """How to run it: the image when asked and defined, else the installed executable.

        ``data_dir`` (the folder ``{workdir}`` stands for) is mounted into a container at
        the same path, so a config naming a file there means the same file in both modes.
        """
        if self.image and (prefer_image or self.package is None):
            mounts = ((data_dir, str(data_dir.resolve())),) if data_dir else ()
            return DockerImage(self.image, mounts=mounts)
        if self.package is None:
            raise DefinitionError(f"{self.source_file}: neither [package] nor image is defined")
        return LocalExecutable(install(self.package))

    def connector(self, workdir: Path, prefer_image: bool = False,
                  data_dir: Path | None = None) -> Connector:
        """A Connector keeping its run evidence under ``workdir``."""
        return Connector(self.name, self.launch(prefer_image, data_dir), workdir)

    def good_config(self, workdir: Path) -> dict[str, Any]:
        """The good config with ``{workdir}`` in string values replaced by ``workdir``."""
        return _fill(self.config, workdir)

    def bad_config_for(self, workdir: Path) -> dict[str, Any] | None:
        return None if self.bad_config is None else _fill(self.bad_config, workdir)


def _fill(value: Any, workdir: Path) -> Any:
    # A destination's output file must live in the test's own folder; the definition
    # says where with a `{workdir}` placeholder.
    if isinstance(value, str):
        return value.replace("{workdir}", str(workdir))
    if isinstance(value, dict):
        return {k: _fill(v, workdir) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, workdir) for v in value]
    return value


def _need(doc: dict[str, Any], key: str, kind: type, where: Path, default: Any = ...) -> Any:
    if key not in doc:
        if default is ...:
            raise DefinitionError(f"{where}: missing `{key}` ({kind.__name__}); add it")
        return default
    value = doc[key]
    if not isinstance(value, kind):
        raise DefinitionError(
            f"{where}: `{key}` must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def image_override_variable(name: str) -> str:
    return "HSTREAM_CONNECTOR_IMAGE_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def load_definition(path: Path) -> ConnectorDefinition:
    """Parse one definition file; DefinitionError says what is wrong and where."""
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{path}: not valid TOML ({exc})") from None
    name = _need(doc, "name", str, path)
    kind = _need(doc, "kind", str, path)
    if kind not in KINDS:
        raise DefinitionError(f"{path}: `kind` must be one of {KINDS}, got {kind!r}")
    package = None
    if "package" in doc:
        pkg = _need(doc, "package", dict, path)
        reqs = _need(pkg, "requirements", list, path, [])
        locals_ = [path.parent / p for p in _need(pkg, "local_paths", list, path, [])]
        for p in locals_:
            if not p.is_dir():
                raise DefinitionError(f"{path}: local path {p} is not a folder")
        if not reqs and not locals_:
            raise DefinitionError(f"{path}: [package] needs requirements or local_paths")
        package = ConnectorPackage(
            name=name,
            requirements=tuple(str(r) for r in reqs),
            entry_point=_need(pkg, "entry_point", str, path),
            local_paths=tuple(locals_),
        )
    image = _need(doc, "image", str, path, None)
    # `HSTREAM_CONNECTOR_IMAGE_<NAME>` runs the connector from that image instead, e.g. one
    # the docker image build made from the same package.
    override = os.environ.get(image_override_variable(name))
    if override:
        image, package = override, None
    if package is None and image is None:
        raise DefinitionError(f"{path}: define [package] or `image` so the connector can run")
    read = _need(doc, "read", dict, path, {})
    incremental = None
    if "incremental" in doc:
        inc = _need(doc, "incremental", dict, path)
        incremental = IncrementalSettings(
            stream=_need(inc, "stream", str, path),
            cursor_field=tuple(_need(inc, "cursor_field", list, path)),
            inclusive=_need(inc, "inclusive", bool, path, True),
        )
    return ConnectorDefinition(
        name=name,
        kind=kind,
        source_file=path,
        config=_need(doc, "config", dict, path, {}),
        bad_config=_need(doc, "bad_config", dict, path, None),
        package=package,
        image=image,
        volatile_fields=tuple(_need(read, "volatile_fields", list, path, [])),
        deterministic=_need(read, "deterministic", bool, path, False),
        min_records=_need(read, "min_records", int, path, 1),
        incremental=incremental,
        extra={k: v for k, v in doc.items() if k not in {
            "name", "kind", "package", "image", "config", "bad_config", "read", "incremental"}},
    )


def load_connectors(folder: Path = CONNECTORS_DIR, kind: str | None = None,
                    ) -> list[ConnectorDefinition]:
    """Every definition in ``folder`` (sorted by name), optionally only one kind."""
    defs = [load_definition(p) for p in sorted(folder.glob("*.toml"))]
    names = [d.name for d in defs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DefinitionError(f"{folder}: connector names defined twice: {sorted(dupes)}")
    return [d for d in defs if kind is None or d.kind == kind]
