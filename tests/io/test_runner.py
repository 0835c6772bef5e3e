"""The connector runner against real processes: good runs, and each kind of bad input or
misbehaviour giving one clear ConnectorError (connector, command, offending line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.io.runner import Connector, ConnectorError, DockerImage, LocalExecutable

CATALOG = {"streams": []}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state letter says whether it really runs.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_good_connector_round_trip(fake):
    conn = fake("good")
    assert conn.spec()["connectionSpecification"]["required"] == ["count"]
    assert conn.check({"count": 3}) == {"status": "SUCCEEDED"}
    assert conn.check({"count": "x"})["status"] == "FAILED"
    assert [s["name"] for s in conn.discover({"count": 3})["streams"]] == ["items"]
    msgs = list(conn.read({"count": 7}, CATALOG))
    records = [m["record"]["data"]["id"] for m in msgs if m["type"] == "RECORD"]
    assert records == list(range(1, 8))
    inv = conn.invocations[-1]
    assert inv.exit_code == 0 and inv.counts["RECORD"] == 7 and inv.counts["STATE"] == 2
    # Inputs and the transcript are kept for replay.
    assert (inv.folder / "config.json").exists() and inv.stdout_path.read_text().count("\n") == 10


def test_write_feeds_stdin_and_streams_echoed_states(fake):
    conn = fake("good")
    sent = [{"type": "RECORD", "record": {"stream": "items", "data": {"id": 1},
                                          "emitted_at": 1}},
            {"type": "STATE", "state": {"type": "LEGACY", "data": {"n": 1}}}]
    out = list(conn.write({"count": 1}, CATALOG, sent))
    assert [m for m in out if m["type"] == "STATE"] == [sent[1]]


def test_missing_executable_is_a_clear_error(tmp_path):
    conn = Connector("ghost", LocalExecutable(tmp_path / "no-such-connector"), tmp_path)
    with pytest.raises(ConnectorError, match="does not exist; install the connector"):
        conn.spec()


@pytest.mark.docker
def test_unknown_image_is_a_clear_error(tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not installed")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("docker engine not reachable")
    image = "hstream-conformance/no-such-connector:never-built"
    conn = Connector("phantom", DockerImage(image), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        conn.spec()
    message = str(err.value)
    assert image in message and "not present locally" in message and "build it" in message
    assert time.monotonic() - t0 < 30, "an absent image must fail fast, not time out"


def test_bad_config_surfaces_the_connectors_own_reason(fake):
    conn = fake("good")
    # The fake's read indexes config["count"]; a config without it crashes the connector.
    with pytest.raises(ConnectorError) as err:
        list(conn.read({"cuont": 3}, CATALOG))
    e = err.value
    assert e.exit_code == 1 and "KeyError: 'count'" in str(e) and "read --config" in str(e)


def test_config_that_is_not_json_is_rejected_before_starting(fake):
    conn = fake("good")
    with pytest.raises(ValueError, match="config is not JSON-serializable"):
        conn.check({"count": object()})
    assert conn.invocations == []


def test_garbage_on_stdout_names_the_line(fake):
    conn = fake("garbage")
    with pytest.raises(ConnectorError) as err:
        list(conn.read({"count": 5}, CATALOG))
    e = err.value
    assert e.line_no == 4 and e.line == "hello from a print() left in the connector"
    assert "malformed output: not JSON" in str(e) and e.connector == "fake-garbage"
    assert e.command.startswith("read --config")


def test_invalid_message_names_the_missing_field(fake):
    with pytest.raises(ConnectorError, match=r"record: 'emitted_at' is a required property"):
        list(fake("invalid-message").read({"count": 5}, CATALOG))


def test_crash_reports_exit_code_trace_and_stderr(fake):
    conn = fake("crash")
    seen = []
    with pytest.raises(ConnectorError) as err:
        for msg in conn.read({"count": 9}, CATALOG):
            seen.append(msg["type"])
    e = err.value
    assert seen.count("RECORD") == 3, "messages before the crash are still delivered"
    assert e.exit_code == 3 and "the upstream API went away" in str(e)
    assert e.stderr_path is not None and "RuntimeError: boom" in e.stderr_path.read_text()
    assert "RuntimeError: boom" in str(e), "the stderr tail is part of the message"


def test_timeout_kills_the_connector(fake, tmp_path: Path):
    conn = fake("hang", read=2.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match=r"timed out after 2\.0s \(killed\)"):
        list(conn.read({"count": 5}, CATALOG))
    assert time.monotonic() - t0 < 10
    pid = int((tmp_path / "hang.pid").read_text())
    assert not _alive(pid), f"connector pid {pid} survived its time-out"


def test_stopping_early_kills_the_connector(fake, tmp_path: Path):
    conn = fake("hang")
    messages = conn.read({"count": 5}, CATALOG)
    first = next(messages)
    assert first["type"] == "LOG"
    deadline = time.monotonic() + 10
    pidfile = tmp_path / "hang.pid"
    next(messages)  # the first record; the connector then writes its pid and sleeps
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    messages.close()
    pid = int(pidfile.read_text())
    assert not _alive(pid), f"connector pid {pid} survived an abandoned read"


def test_single_message_commands_require_exactly_one(fake):
    conn = fake("good")
    # `read` is not `discover`: no CATALOG message comes back, and the error says so.
    with pytest.raises(ConnectorError, match="expected exactly one CATALOG message, got 0"):
        conn._single("read", {"config": {"count": 1}, "catalog": CATALOG}, "CATALOG", "catalog")


def test_close_kills_a_read_that_was_never_consumed(fake, tmp_path: Path):
    conn = fake("hang")
    conn.read({"count": 5}, CATALOG)  # started, never iterated
    pidfile = tmp_path / "hang.pid"
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert _alive(pid)
    conn.close()
    assert not _alive(pid), f"connector pid {pid} survived Connector.close()"
