"""Docker backend errors: one clear message each, and nothing left running afterwards."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cluster_probes import subprocess_env

from harness import HarnessError, images
from harness.cleanup import sweep
from harness.cluster import ClusterStartError, start_cluster
from harness.runtimes.docker import IMAGE_ENV, LABEL_CLUSTER, LABEL_SESSION
from harness.targets import ImageMissing
from harness.topology import ClusterSpec

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine() -> docker.DockerClient:
    try:
        return images.connect()
    except images.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")


def leftovers(engine: docker.DockerClient, session: str) -> list[str]:
    selector = {"label": f"{LABEL_SESSION}={session}"}
    return [
        *(f"container {c.name}" for c in engine.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in engine.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in engine.volumes.list(filters=selector)),
    ]


@pytest.mark.parametrize("host, problem", [
    ("unix:///nonexistent/docker.sock", "does not exist"),
    ("tcp://127.0.0.1:9", "no Docker engine answers"),
])
def test_no_engine_is_one_message_saying_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, isolated_reports: Path, host: str, problem: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    spec = ClusterSpec(nodes=1, backend="docker", session="no-engine")
    with pytest.raises(images.DockerUnavailable) as caught:
        start_cluster(spec, progress=lambda line: None)
    message = str(caught.value)
    assert problem in message and "DOCKER_HOST" in message, message
    assert "\n" not in message, message
    assert isinstance(caught.value, HarnessError)


def test_cli_without_engine_prints_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    done = subprocess.run([sys.executable, "-m", "harness.images", "build", "refserver"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: no Docker engine"), done.stderr


def test_unknown_image_fails_fast_naming_it_and_its_build(
    engine: docker.DockerClient, isolated_reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = f"bad-image-{os.getpid()}"
    spec = ClusterSpec(nodes=3, backend="docker", session=session)
    monkeypatch.setenv(IMAGE_ENV, "hstream-conformance/nope:absent")
    with pytest.raises(ImageMissing) as caught:
        start_cluster(spec, progress=lambda line: None)
    assert "hstream-conformance/nope:absent" in str(caught.value)
    assert "python -m harness.images build" in str(caught.value)
    assert leftovers(engine, session) == []


def test_build_hints_name_the_command_for_each_image() -> None:
    assert images.build_hint(images.REFSERVER_IMAGE).endswith(
        "`python -m harness.images build refserver`")
    assert images.build_hint(images.BASE_IMAGE).endswith("`python -m harness.images build base`")
    other = images.build_hint("example/else:1")
    assert "docker load" in other and "python -m harness.images build all" in other


def test_external_toxiproxy_url_is_refused(engine: docker.DockerClient,
                                           isolated_reports: Path) -> None:
    session = f"bad-url-{os.getpid()}"
    spec = ClusterSpec(nodes=1, backend="docker", session=session,
                       toxiproxy_url="http://127.0.0.1:8474")
    with pytest.raises(ClusterStartError, match="drop toxiproxy_url"):
        start_cluster(spec, progress=lambda line: None)
    assert leftovers(engine, session) == []


def test_unknown_defect_starts_nothing(engine: docker.DockerClient,
                                       isolated_reports: Path) -> None:
    session = f"bad-defect-{os.getpid()}"
    spec = ClusterSpec(nodes=1, backend="docker", session=session, defects=("no-such-defect",))
    with pytest.raises(HarnessError, match="no-such-defect"):
        start_cluster(spec, progress=lambda line: None)
    assert leftovers(engine, session) == []


READY_S = 480.0

RUN = """
import sys, time
from harness.cluster import start_cluster
from harness.topology import ClusterSpec
spec = ClusterSpec(nodes=1, backend="docker", session=sys.argv[1])
start_cluster(spec, progress=lambda line: None)
print("READY", flush=True)
time.sleep(300)
"""


@pytest.fixture
def refserver_image(engine: docker.DockerClient) -> Iterator[None]:
    images.build(["refserver"], client=engine, progress=lambda line: None)
    yield


@pytest.mark.slow
def test_sigkilled_run_leaves_containers_that_the_next_start_sweeps(
    engine: docker.DockerClient, isolated_reports: Path, refserver_image: None
) -> None:
    session = f"docker-sweep-{os.getpid()}"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUN, session], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(isolated_reports),
    )
    try:
        assert runner.stdout is not None
        # The runner checks the images on first use; under xdist it may wait for another
        # worker's image build (one builder per machine), hence more than a bring-up.
        ready = select.select([runner.stdout], [], [], READY_S)[0]
        line = runner.stdout.readline() if ready else f"(nothing within {READY_S:.0f}s)"
        assert line.strip() == "READY", (line, runner.stderr.read() if runner.poll() else "")
        left = leftovers(engine, session)
        assert any(item.startswith("container") for item in left), left
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        assert leftovers(engine, session), "SIGKILL should have left the containers behind"
        swept = sweep()
        assert f"{session}-c0" in swept.clusters, swept
        deadline = time.monotonic() + 20
        while leftovers(engine, session) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(engine, session) == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)
        for container in engine.containers.list(
            all=True, filters={"label": f"{LABEL_CLUSTER}={session}-c0"}
        ):
            container.remove(force=True)
