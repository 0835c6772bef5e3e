"""Protocol definitions of the reference server and their generated stubs.

`HStreamGossip.proto` and `HStreamInternal.proto` carry HStreamDB's own gossip wire format;
`Store.proto` is the reference store's private protocol. Stubs are generated with
grpcio-tools at build time (setup.py) and, should a checkout lack them, on first import.
`HStreamInternal.proto` imports the official `HStream/Server/HStreamApi.proto`, which is not
shipped as source: it is resolved from the descriptor embedded in the `hstreamdb-api`
stubs, so `hstream.server.HStreamVersion` is the very type the official package defines.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
# protoc sees the repository (or site-packages) root, so generated modules import each
# other as `refserver.protos.X_pb2`.
IMPORT_ROOT = PROTO_DIR.parent.parent
PROTOS = ("HStreamInternal.proto", "HStreamGossip.proto", "Store.proto")


def _stale() -> bool:
    for name in PROTOS:
        source = PROTO_DIR / name
        stem = name[: -len(".proto")]
        generated_files = (
            PROTO_DIR / f"{stem}_pb2.py",
            PROTO_DIR / f"{stem}_pb2.pyi",
            PROTO_DIR / f"{stem}_pb2_grpc.py",
        )
        for generated in generated_files:
            if not generated.exists() or generated.stat().st_mtime < source.stat().st_mtime:
                return True
    return False


def _api_descriptor_set(path: Path) -> None:
    """Write a FileDescriptorSet holding HStreamApi.proto and what it imports."""
    from google.protobuf import descriptor_pb2
    from HStream.Server import HStreamApi_pb2

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file_descriptor) -> None:  # type: ignore[no-untyped-def]
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


def generate() -> None:
    """Run protoc (from grpcio-tools) over the project's protos, in place."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "hstream_api.pb"
        _api_descriptor_set(descriptor_set)
        args = [
            "protoc",
            f"--proto_path={IMPORT_ROOT}",
            f"--descriptor_set_in={descriptor_set}",
            f"--python_out={IMPORT_ROOT}",
            f"--pyi_out={IMPORT_ROOT}",  # type stubs, so mypy can check the code using them
            f"--grpc_python_out={IMPORT_ROOT}",
            *(f"refserver/protos/{name}" for name in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTOS)}: {' '.join(args)}")


def ensure_generated() -> None:
    if _stale():
        if not os.access(PROTO_DIR, os.W_OK):
            raise RuntimeError(
                f"generated stubs in {PROTO_DIR} are missing or stale and the folder is not "
                "writable; reinstall the package (pip install .) to regenerate them"
            )
        generate()
        importlib.invalidate_caches()


ensure_generated()
