"""The IO suite's node image (refserver-io): the reference server's recipe on the connectors
image, whose default catalogue runs every fixture connector from the image's own venvs and
logs each run. Built on first use like the other images (the first build takes minutes)."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from harness import images
from harness.io.catalogue import parse_run_log
from harness.io.connector_image import CATALOGUE_PATH, RUN_LOG_DIR, packaged

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    try:
        client = images.connect()
    except images.DockerUnavailable as exc:
        pytest.skip(str(exc))
    images.ensure_image(images.REFSERVER_IO_IMAGE, client=client)
    return client


def test_every_catalogue_connector_answers_spec_in_the_node_image(engine) -> None:  # type: ignore[no-untyped-def]
    # The node's own entry point reads the catalogue the image names in its environment.
    sections = {"source": "sources", "destination": "sinks"}
    script = " && ".join(
        f"{shlex.join(['python', '-c', _RUN_SPEC, CATALOGUE_PATH, sections[d.kind], d.name])}"
        for d in packaged())
    logs = " && ".join(f"cat {RUN_LOG_DIR}/{d.name}.pids" for d in packaged())
    out = engine.containers.run(images.REFSERVER_IO_IMAGE, ["sh", "-c", f"{script} && {logs}"],
                                remove=True, network_mode="none").decode()
    specs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [s["type"] for s in specs] == ["SPEC"] * len(packaged()), out
    # Each connector's run log holds its one spec run.
    assert len(parse_run_log(out, "", "spec")) == len(packaged()), out


# Looks the connector up as the reference server does, then runs its `spec` the same way.
_RUN_SPEC = """
import json, os, subprocess, sys
from pathlib import Path
from refserver.io.catalog import SINK, SOURCE, ConnectorCatalog
path, section, name = sys.argv[1:]
assert os.environ["REFSERVER_IO_CONNECTORS"] == path
kind = SOURCE if section == "sources" else SINK
target = name.split("-", 1)[1]
launch = ConnectorCatalog.load(Path(path)).lookup(kind, target)
done = subprocess.run([*launch.argv, "spec"], env={**os.environ, **launch.env},
                      capture_output=True, text=True, check=True)
print(next(line for line in done.stdout.splitlines() if '"SPEC"' in line))
"""


@pytest.mark.parametrize("host_view", [True, False], ids=["through-root", "through-engine"])
def test_sink_output_is_read_from_running_and_killed_node_containers(engine, host_view) -> None:  # type: ignore[no-untyped-def]
    """A sink task moved off a killed node leaves its rows in that node's container: both
    copies are read (the killed one from its files, without its uncommitted transaction),
    through the running container's root here or through the engine alike."""
    from types import SimpleNamespace

    from harness.io.connector_image import OUTPUT_DIR
    from harness.io.task_programs import ContainerPrograms

    path = f"{OUTPUT_DIR}/t.sqlite"
    write = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
             "c.execute('CREATE TABLE t (v)'); "
             "[c.execute('INSERT INTO t VALUES (?)', (v,)) for v in sys.argv[2:]]")
    # The last one holds a transaction open when it is killed: its row must not be read.
    hold = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('INSERT INTO t VALUES (?)', ('uncommitted',)); "
            "print('held', flush=True); time.sleep(600)")
    containers = [engine.containers.run(images.REFSERVER_IO_IMAGE, ["sleep", "600"], detach=True,
                                        network_mode="none") for _ in range(2)]
    try:
        for index, container in enumerate(containers):
            values = [f"{index}-{n}" for n in range(3)]
            assert container.exec_run(["python3", "-c", write, path, *values]).exit_code == 0
        held = containers[1].exec_run(["python3", "-c", hold, path], stream=True)
        assert b"held" in next(held.output)
        containers[1].kill()
        nodes = [SimpleNamespace(name=f"node-{i}", container_id=c.id)
                 for i, c in enumerate(containers, 1)]
        rows = ContainerPrograms(engine, host_view).output_rows(SimpleNamespace(nodes=nodes), path,
                                                      "SELECT v FROM t")
        assert sorted(r[0] for r in rows) == [f"{i}-{n}" for i in range(2) for n in range(3)]
    finally:
        for container in containers:
            container.remove(force=True)


def test_runs_and_a_runs_process_are_found_through_the_root_as_through_the_engine(engine) -> None:  # type: ignore[no-untyped-def]
    """A running node's run log and a run's process on this machine: read through the
    container's root and cgroup here, they are what the engine's copy and `top` give; once
    the container is stopped both read its files through the engine."""
    from types import SimpleNamespace

    from harness.io.connectors import load_connectors
    from harness.io.task_programs import ContainerPrograms, alive

    faker = next(d for d in load_connectors() if d.name == "source-faker")
    # A run log naming a live process of the container (the shell's own pid there) and a
    # finished one.
    script = (f"mkdir -p {RUN_LOG_DIR} && printf '1 spec\\n' > {RUN_LOG_DIR}/{faker.name}.pids "
              f"&& echo \"$$ read\" >> {RUN_LOG_DIR}/{faker.name}.pids && exec sleep 600")
    container = engine.containers.run(images.REFSERVER_IO_IMAGE, ["sh", "-c", script],
                                      detach=True, network_mode="none")
    try:
        cluster = SimpleNamespace(nodes=[SimpleNamespace(name="node-1", container_id=container.id)])
        rooted, through = ContainerPrograms(engine), ContainerPrograms(engine, host_view=False)
        for _ in range(100):
            runs = rooted.runs(cluster, faker, "read")
            if runs:
                break
            time.sleep(0.1)
        assert runs == through.runs(cluster, faker, "read") and len(runs) == 1, runs
        assert rooted._first(container) is not None  # (read through the root, not a copy)
        pid = rooted.live_pid(cluster, runs[0])
        assert pid is not None and alive(pid) and pid == through.live_pid(cluster, runs[0])
        container.kill()
        container.wait()
        assert rooted.runs(cluster, faker, "read") == runs
        assert rooted.live_pid(cluster, runs[0]) is None
    finally:
        container.remove(force=True)
