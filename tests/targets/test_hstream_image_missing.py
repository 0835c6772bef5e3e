"""`--target hstream:hstreamdb/hstream:v0.20.3` where that image is absent fails fast, naming
it, and leaves nothing behind (a real Docker engine; nothing is pulled or started)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harness import images
from harness.cleanup import REPORTS_ENV
from harness.cluster import start_cluster
from harness.runtimes.docker import IMAGE_ENV, LABEL_SESSION
from harness.targets import ImageMissing
from harness.targets.hstream import DEFAULT_IMAGE, ZOOKEEPER_IMAGE_ENV
from harness.topology import SESSION_ENV, ClusterSpec

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine() -> docker.DockerClient:
    try:
        client = images.connect()
    except images.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        client.images.get(DEFAULT_IMAGE)
        pytest.skip(f"{DEFAULT_IMAGE} is present here")
    except docker.errors.ImageNotFound:
        pass
    refserver = os.environ.get(IMAGE_ENV) or images.REFSERVER_IMAGE
    try:
        client.images.get(refserver)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the harness's own image {refserver} is not built")
    return client


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.setenv(REPORTS_ENV, str(tmp_path / "reports"))
    monkeypatch.delenv(SESSION_ENV, raising=False)
    # ZooKeeper from an image that is present, so the one missing image is the target's
    # (the backend names the first missing image it meets, and ZooKeeper starts first).
    monkeypatch.setenv(ZOOKEEPER_IMAGE_ENV, os.environ.get(IMAGE_ENV) or images.REFSERVER_IMAGE)
    yield {**os.environ}


def leftovers(engine: docker.DockerClient, session: str) -> list[str]:
    selector = {"label": f"{LABEL_SESSION}={session}"}
    return [
        *(f"container {c.name}" for c in engine.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in engine.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in engine.volumes.list(filters=selector)),
    ]


def test_missing_hstream_image_is_named_in_the_api(
    engine: docker.DockerClient, isolated: dict[str, str]
) -> None:
    session = f"hstream-absent-{os.getpid()}"
    spec = ClusterSpec(nodes=3, backend="docker", session=session,
                       target=f"hstream:{DEFAULT_IMAGE}")
    with pytest.raises(ImageMissing) as caught:
        start_cluster(spec, progress=lambda line: None)
    assert caught.value.image == DEFAULT_IMAGE, str(caught.value)
    assert f"image '{DEFAULT_IMAGE}'" in str(caught.value)
    assert leftovers(engine, session) == []


def test_missing_hstream_image_is_named_on_the_command_line(
    engine: docker.DockerClient, isolated: dict[str, str]
) -> None:
    session = f"hstream-absent-cli-{os.getpid()}"
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "cluster", "up", "--backend", "docker",
         "--target", f"hstream:{DEFAULT_IMAGE}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**isolated, SESSION_ENV: session})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert f"image '{DEFAULT_IMAGE}'" in output, output
    assert leftovers(engine, session) == []
