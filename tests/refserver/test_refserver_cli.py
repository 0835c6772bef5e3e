"""Bad input to `python -m refserver` and `python -m refserver.store`: one clear line on
stderr, a non-zero exit, no traceback; and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from refcluster_launcher import STORE_HOST, Proc, free_port, launch, store_proc

pytestmark = pytest.mark.slow


def run(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, f"expected one '{prog}: error:' line, got:\n{result.stderr}"
    for word in words:
        assert word in errors[0], f"{word!r} missing from {errors[0]!r}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = store_proc(tmp_path_factory.mktemp("cli-store"), free_port(STORE_HOST))
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def store_url(proc: Proc) -> str:
    return f"{STORE_HOST}:{proc.argv[proc.argv.index('--port') + 1]}"


def node_args(store: Proc, *extra: str) -> list[str]:
    host = "127.0.0.30"
    return [
        "--server-id", "1", "--bind-address", host,
        "--port", str(free_port(host)), "--internal-port", str(free_port(host)),
        "--store", store_url(store), *extra,
    ]  # fmt: skip


def test_store_bad_input(tmp_path: Path, store: Proc) -> None:
    result = run("refserver.store", "--data-dir", str(tmp_path), "--port", "1", "--bogus")
    assert_one_line_error(result, "refserver.store", "--bogus")
    assert len(result.stderr.strip().splitlines()) == 1
    busy = store.argv[store.argv.index("--port") + 1]
    result = run("refserver.store", "--data-dir", str(tmp_path / "d"), "--port", busy)
    assert_one_line_error(result, "refserver.store", busy, "free port")
    assert len(result.stderr.strip().splitlines()) == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run(
        "refserver.store", "--data-dir", str(blocker / "sub"), "--port", str(free_port(STORE_HOST))
    )
    assert_one_line_error(result, "refserver.store", "--data-dir", "writable")


def test_node_unknown_flag_and_defect(store: Proc) -> None:
    result = run("refserver", *node_args(store, "--no-such-flag"))
    assert_one_line_error(result, "refserver", "--no-such-flag")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run("refserver", *node_args(store, "--defect", "make-it-fast"))
    assert_one_line_error(result, "refserver", "make-it-fast", "ack-before-durable")
    result = run("refserver", *node_args(store, "--seed-nodes", "host:notaport"))
    assert_one_line_error(result, "refserver", "host:notaport")


def test_node_port_in_use(store: Proc) -> None:
    host = "127.0.0.30"
    with socket.socket() as taken:
        taken.bind((host, 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = node_args(store)
        args[args.index("--port") + 1] = port
        result = run("refserver", *args)
    assert_one_line_error(result, "refserver", port, "--port")


def test_node_store_unreachable(store: Proc) -> None:
    args = node_args(store)
    args[args.index("--store") + 1] = f"{STORE_HOST}:{free_port(STORE_HOST)}"
    result = run("refserver", *args)
    assert_one_line_error(result, "refserver", "--store", "not reachable")


def test_node_seed_list_naming_nobody(store: Proc) -> None:
    nobody = f"127.0.0.31:{free_port('127.0.0.31')}"
    result = run(
        "refserver", *node_args(store, "--seed-nodes", nobody, "--join-timeout-ms", "1500")
    )
    assert_one_line_error(result, "refserver", nobody)


def test_node_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with launch(tmp_path, 1) as cluster:
        node = cluster.nodes[0].proc
        node.kill(signal.SIGTERM)
        assert node.process is not None and node.process.returncode == 0, node.log()
        assert "Server is stopping" in node.log()
        assert "Traceback" not in node.log(), node.log()
