"""HStreamDB's gossip wire format and the stub generation for every .proto of the project.

`HStreamGossip.proto` and `HStreamInternal.proto` are HStreamDB's own (same packages,
services and field numbers), so they live with the harness, which probes any target's
gossip port with them; the reference server speaks them too and imports them from here,
never the other way round. Stubs are generated with grpcio-tools at build time (setup.py)
and, should a checkout lack them or hold stale ones, on first import.

`HStreamInternal.proto` imports the official `HStream/Server/HStreamApi.proto`, which is not
shipped as source: it is resolved from the descriptor embedded in the `hstreamdb-api`
stubs, so `hstream.server.HStreamVersion` is the very type the official package defines.

This module imports nothing else from the project: setup.py runs it before the project is
installed.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTOS = ("HStreamInternal.proto", "HStreamGossip.proto")


def _import_root(proto_dir: Path) -> Path:
    # protoc sees the repository (or site-packages) root, so generated modules import each
    # other by their full package path (`harness.protos.X_pb2`).
    return proto_dir.parent.parent


def _generated_files(proto_dir: Path, name: str) -> tuple[Path, ...]:
    stem = name[: -len(".proto")]
    return (
        proto_dir / f"{stem}_pb2.py",
        proto_dir / f"{stem}_pb2.pyi",
        proto_dir / f"{stem}_pb2_grpc.py",
    )


def stale(proto_dir: Path, names: Sequence[str]) -> bool:
    """Whether any stub of `names` (in `proto_dir`) is missing or older than its .proto."""
    for name in names:
        source_mtime = (proto_dir / name).stat().st_mtime
        for generated in _generated_files(proto_dir, name):
            if not generated.exists() or generated.stat().st_mtime < source_mtime:
                return True
    return False


def _api_descriptor_set(path: Path) -> None:
    """Write a FileDescriptorSet holding HStreamApi.proto and what it imports."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.descriptor import FileDescriptor
    from HStream.Server import HStreamApi_pb2

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file_descriptor: FileDescriptor) -> None:
        if file_descriptor.name in files:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        files[file_descriptor.name] = proto

    add(HStreamApi_pb2.DESCRIPTOR)
    descriptor_set = descriptor_pb2.FileDescriptorSet(file=list(files.values()))
    path.write_bytes(descriptor_set.SerializeToString())


def generate(proto_dir: Path = PROTO_DIR, names: Sequence[str] = PROTOS) -> None:
    """Run protoc (from grpcio-tools) over `names` in `proto_dir`, writing stubs beside them."""
    from grpc_tools import protoc

    root = _import_root(proto_dir)
    package_path = proto_dir.relative_to(root).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "hstream_api.pb"
        _api_descriptor_set(descriptor_set)
        args = [
            "protoc",
            f"--proto_path={root}",
            f"--descriptor_set_in={descriptor_set}",
            f"--python_out={root}",
            f"--pyi_out={root}",  # type stubs, so mypy can check the code using them
            f"--grpc_python_out={root}",
            *(f"{package_path}/{name}" for name in names),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(names)}: {' '.join(args)}")


def ensure_generated(proto_dir: Path = PROTO_DIR, names: Sequence[str] = PROTOS) -> None:
    """Regenerate the stubs of `names` if any is missing or stale."""
    if not stale(proto_dir, names):
        return
    if not os.access(proto_dir, os.W_OK):
        raise RuntimeError(
            f"generated stubs in {proto_dir} are missing or stale and the folder is not "
            "writable; reinstall the package (pip install .) to regenerate them"
        )
    generate(proto_dir, names)
    importlib.invalidate_caches()


ensure_generated()
