"""The runner with a connector image: the fake connector built into a tiny image on the
harness's locally built base (no registry), run with `docker run --rm -i`."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.io.runner import Connector, ConnectorError, DockerImage

FAKE = Path(__file__).with_name("fake_connector.py")
BASE_IMAGE = "hstream-conformance/base:bookworm"
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("docker") is None or _docker("info").returncode != 0:
        pytest.skip("no reachable docker engine")
    if _docker("image", "inspect", BASE_IMAGE).returncode != 0:
        pytest.skip(f"{BASE_IMAGE} not built (python -m harness.images build base)")
    ctx = tmp_path_factory.mktemp("fake-image")
    shutil.copy(FAKE, ctx / "fake_connector.py")
    (ctx / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY fake_connector.py /connector/fake_connector.py\n"
        'ENTRYPOINT ["python3", "/connector/fake_connector.py"]\n'
    )
    tag = f"hstream-conformance/io-fake-connector:{uuid.uuid4().hex[:8]}"
    built = _docker("build", "-q", "--label", "org.hstream-conformance.image=io-test",
                    "-t", tag, str(ctx), timeout=300)
    assert built.returncode == 0, f"building {tag} failed:\n{built.stderr}"
    yield tag
    _docker("image", "rm", "-f", tag)


def _conn(image: str, tmp_path: Path, mode: str, **timeouts: float) -> Connector:
    return Connector(f"fake-{mode}", DockerImage(image), tmp_path,
                     timeouts_s=timeouts or None, env={"FAKE_CONNECTOR_MODE": mode})


def _leftovers(image: str) -> list[str]:
    out = _docker("ps", "-aq", "--filter", f"ancestor={image}").stdout
    return out.split()


def test_image_connector_reads_mounted_config(fake_image: str, tmp_path: Path):
    conn = _conn(fake_image, tmp_path, "good")
    assert conn.check({"count": 2}) == {"status": "SUCCEEDED"}
    records = [m for m in conn.read({"count": 6}, {"streams": []}) if m["type"] == "RECORD"]
    assert [r["record"]["data"]["id"] for r in records] == list(range(1, 7))
    assert conn.invocations[-1].argv[:4] == ["docker", "run", "--rm", "-i"]
    assert "--network" in conn.invocations[-1].argv and "none" in conn.invocations[-1].argv


def test_image_connector_write_uses_stdin(fake_image: str, tmp_path: Path):
    conn = _conn(fake_image, tmp_path, "good")
    state = {"type": "STATE", "state": {"type": "LEGACY", "data": {"n": 1}}}
    out = list(conn.write({"count": 1}, {"streams": []}, [state]))
    assert [m for m in out if m["type"] == "STATE"] == [state]


def test_image_connector_crash_and_garbage(fake_image: str, tmp_path: Path):
    with pytest.raises(ConnectorError, match="exited with code 3"):
        list(_conn(fake_image, tmp_path / "a", "crash").read({"count": 9}, {"streams": []}))
    with pytest.raises(ConnectorError, match="malformed output: not JSON"):
        list(_conn(fake_image, tmp_path / "b", "garbage").read({"count": 9}, {"streams": []}))


def test_image_connector_timeout_removes_the_container(fake_image: str, tmp_path: Path):
    conn = _conn(fake_image, tmp_path, "hang", read=4.0)
    conn.env["FAKE_CONNECTOR_PIDFILE"] = "/connector/fake.pid"
    with pytest.raises(ConnectorError, match="timed out after 4.0s"):
        list(conn.read({"count": 5}, {"streams": []}))
    assert _leftovers(fake_image) == [], "a timed-out connector container was left running"
