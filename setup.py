"""Generates the gRPC stubs of harness/protos (HStreamDB's gossip wire format) and
refserver/protos (the reference store) from their .proto files at build time, and compiles
the checkers' column extractor (harness/checkers/_extract.c). The extractor is optional: on
a machine without a C compiler the build goes on, and the checkers take its Python twin
(harness/checkers/extract.py says which one runs)."""

import importlib
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self) -> None:
        # An isolated build does not put the source tree on sys.path; the stub packages
        # import only each other and the light `harness`/`refserver` package roots.
        sys.path.insert(0, str(ROOT))
        try:
            for package in ("harness.protos", "refserver.protos"):
                importlib.import_module(package)  # importing it regenerates stale stubs
        finally:
            sys.path.remove(str(ROOT))
        super().run()


setup(
    cmdclass={"build_py": BuildWithStubs},
    ext_modules=[
        Extension(
            "harness.checkers._extract",
            ["harness/checkers/_extract.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ],
)
