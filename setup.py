"""Generates the gossip and store stubs from refserver/protos/*.proto at build time."""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithStubs(build_py):
    def run(self) -> None:
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location(
            "refserver_protos", Path(__file__).parent / "refserver" / "protos" / "__init__.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # importing it regenerates stale stubs
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
