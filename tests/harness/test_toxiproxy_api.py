"""Toxiproxy's REST API as clients see it: routes, bodies, status codes, error JSON, and the
unmodified toxiproxy-python client; plus the embedded server's lifetime and error reporting.

The API tests run against a real Toxiproxy too (`--toxiproxy-url` / HSTREAM_TOXIPROXY_URL);
lifetime tests always start their own embedded server.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import toxiproxy

import harness
from harness.faults.toxiproxy import (
    ToxiproxyError,
    ToxiproxyHandle,
    connect_toxiproxy,
    find_toxiproxy,
    start_toxiproxy,
)

_names = itertools.count()
# An upstream nothing listens on: the API must accept it (Toxiproxy dials only per client).
DEAD_UPSTREAM = "127.0.0.1:20999"
EXPLICIT_LISTEN_PORT = 20501


@pytest.fixture(scope="module")
def toxiproxy_server(request: pytest.FixtureRequest) -> Iterator[ToxiproxyHandle]:
    url = os.environ.get("HSTREAM_TOXIPROXY_URL") or request.config.getoption(
        "--toxiproxy-url", default=None)
    handle = find_toxiproxy(url)
    yield handle
    handle.stop()


@pytest.fixture
def name(toxiproxy_server: ToxiproxyHandle) -> Iterator[str]:
    """A unique proxy name; whatever proxy got that name is deleted afterwards."""
    proxy_name = f"api_{os.getpid()}_{next(_names)}"
    yield proxy_name
    toxiproxy_server.request("DELETE", f"/proxies/{proxy_name}")


def call(handle: ToxiproxyHandle, method: str, path: str, body: object = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    if raw is not None:
        response = handle._session.request(method, handle.url + path, data=raw, timeout=10)
    else:
        response = handle.request(method, path, body)
    return response.status_code, (response.json() if response.content.strip() else None)


def test_version(toxiproxy_server: ToxiproxyHandle) -> None:
    response = toxiproxy_server.request("GET", "/version")
    # Toxiproxy 2.6+ answers {"version": "..."}; 2.5 and older answer the bare version text
    text = response.text.strip()
    version = response.json()["version"] if text.startswith("{") else text
    assert response.status_code == 200 and version.startswith("2."), response.text
    assert version == toxiproxy_server.version


def test_proxy_lifecycle(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    status, created = call(toxiproxy_server, "POST", "/proxies",
                           {"name": name, "listen": "127.0.0.1:0", "upstream": DEAD_UPSTREAM})
    assert status == 201, created
    assert isinstance(created, dict)
    host, port = created["listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0, f"port 0 not replaced: {created}"
    fields = ("name", "listen", "upstream", "enabled", "toxics")
    # compare Toxiproxy's documented fields only: 2.5.0 also leaks an internal "Logger": {}
    assert {k: created.get(k) for k in fields} == {
        "name": name, "listen": created["listen"], "upstream": DEAD_UPSTREAM,
        "enabled": True, "toxics": []}
    assert call(toxiproxy_server, "GET", f"/proxies/{name}") == (200, created)
    status, listing = call(toxiproxy_server, "GET", "/proxies")
    assert status == 200 and isinstance(listing, dict) and listing[name] == created
    status, updated = call(toxiproxy_server, "POST", f"/proxies/{name}", {"enabled": False})
    assert status == 200 and isinstance(updated, dict) and updated["enabled"] is False
    assert call(toxiproxy_server, "DELETE", f"/proxies/{name}") == (204, None)
    assert call(toxiproxy_server, "GET", f"/proxies/{name}") == (
        404, {"error": "proxy not found", "status": 404})


def test_explicit_listen_port(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    listen = f"127.0.0.1:{EXPLICIT_LISTEN_PORT}"
    proxy = toxiproxy_server.create_proxy(name, listen, DEAD_UPSTREAM)
    assert proxy.listen == listen
    with socket.create_connection(("127.0.0.1", EXPLICIT_LISTEN_PORT), timeout=2):
        pass  # accepted, then closed by the proxy since the upstream is down


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"upstream": DEAD_UPSTREAM}, 400, "missing required field: name"),
    ({"name": "x"}, 400, "missing required field: upstream"),
])
def test_create_proxy_missing_field(toxiproxy_server: ToxiproxyHandle, body: dict[str, str],
                                    status: int, error: str) -> None:
    assert call(toxiproxy_server, "POST", "/proxies", body) == (
        status, {"error": error, "status": status})


def test_create_proxy_bad_body(toxiproxy_server: ToxiproxyHandle) -> None:
    status, body = call(toxiproxy_server, "POST", "/proxies", raw=b"{not json")
    assert status == 400 and isinstance(body, dict), body
    assert body["status"] == 400 and body["error"].startswith("bad request body"), body


def test_create_proxy_conflicts(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    first = toxiproxy_server.create_proxy(name, "127.0.0.1:0", DEAD_UPSTREAM)
    assert call(toxiproxy_server, "POST", "/proxies",
                {"name": name, "listen": "127.0.0.1:0", "upstream": DEAD_UPSTREAM}) == (
        409, {"error": "proxy already exists", "status": 409})
    other = f"{name}_busy"
    try:
        status, body = call(toxiproxy_server, "POST", "/proxies",
                            {"name": other, "listen": first.listen, "upstream": DEAD_UPSTREAM})
        assert status == 500 and isinstance(body, dict), body
        assert "listen tcp" in body["error"] and "address already in use" in body["error"], body
    finally:
        toxiproxy_server.request("DELETE", f"/proxies/{other}")


def test_toxic_crud(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    toxiproxy_server.create_proxy(name, "127.0.0.1:0", DEAD_UPSTREAM)
    status, toxic = call(toxiproxy_server, "POST", f"/proxies/{name}/toxics",
                         {"type": "latency", "attributes": {"latency": 100}})
    assert status == 200, toxic
    assert toxic == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                     "toxicity": 1, "attributes": {"latency": 100, "jitter": 0}}
    path = f"/proxies/{name}/toxics/latency_downstream"
    assert call(toxiproxy_server, "GET", path) == (200, toxic)
    status, updated = call(toxiproxy_server, "POST", path, {"attributes": {"jitter": 20}})
    assert status == 200 and isinstance(updated, dict), updated
    assert updated["attributes"] == {"latency": 100, "jitter": 20}, "update must keep latency"
    status, listed = call(toxiproxy_server, "GET", f"/proxies/{name}/toxics")
    assert status == 200 and listed == [updated]
    assert call(toxiproxy_server, "GET", f"/proxies/{name}")[1]["toxics"] == [updated]
    assert call(toxiproxy_server, "DELETE", path) == (204, None)
    assert call(toxiproxy_server, "GET", path) == (404, {"error": "toxic not found",
                                                        "status": 404})
    assert call(toxiproxy_server, "DELETE", path) == (404, {"error": "toxic not found",
                                                           "status": 404})


@pytest.mark.parametrize(("type_name", "attributes", "shown"), [
    ("latency", {"latency": 5, "jitter": 1}, {"latency": 5, "jitter": 1}),
    ("bandwidth", {"rate": 10}, {"rate": 10}),
    ("slow_close", {"delay": 5}, {"delay": 5}),
    ("timeout", {"timeout": 5}, {"timeout": 5}),
    ("reset_peer", {"timeout": 5}, {"timeout": 5}),
    ("slicer", {"average_size": 8}, {"average_size": 8, "size_variation": 0, "delay": 0}),
    ("limit_data", {"bytes": 5}, {"bytes": 5}),
])
def test_toxic_attribute_names(toxiproxy_server: ToxiproxyHandle, name: str, type_name: str,
                               attributes: dict[str, int], shown: dict[str, int]) -> None:
    toxiproxy_server.create_proxy(name, "127.0.0.1:0", DEAD_UPSTREAM)
    created = toxiproxy_server.add_toxic(name, type_name, attributes, stream="upstream",
                                         name="t")
    assert created["attributes"] == shown and created["stream"] == "upstream", created


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"type": "nope"}, 400, "invalid toxic type"),
    ({"type": "latency", "stream": "sideways"}, 400,
     "stream was invalid, can be either upstream or downstream"),
])
def test_toxic_bad_input(toxiproxy_server: ToxiproxyHandle, name: str, body: dict[str, str],
                         status: int, error: str) -> None:
    toxiproxy_server.create_proxy(name, "127.0.0.1:0", DEAD_UPSTREAM)
    assert call(toxiproxy_server, "POST", f"/proxies/{name}/toxics", body) == (
        status, {"error": error, "status": status})


def test_toxic_errors(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    assert call(toxiproxy_server, "POST", f"/proxies/{name}/toxics", {"type": "latency"}) == (
        404, {"error": "proxy not found", "status": 404})
    toxiproxy_server.create_proxy(name, "127.0.0.1:0", DEAD_UPSTREAM)
    toxiproxy_server.add_toxic(name, "latency", {"latency": 1})
    assert call(toxiproxy_server, "POST", f"/proxies/{name}/toxics", {"type": "latency"}) == (
        409, {"error": "toxic already exists", "status": 409})
    status, body = call(toxiproxy_server, "POST", f"/proxies/{name}/toxics",
                        {"type": "latency", "name": "bad",
                         "attributes": {"latency": "slow"}})
    assert status == 400 and isinstance(body, dict), body
    assert body["error"].startswith("bad request body"), body


def test_populate(toxiproxy_server: ToxiproxyHandle, name: str) -> None:
    second = f"{name}_b"
    spec = [{"name": name, "listen": "127.0.0.1:0", "upstream": DEAD_UPSTREAM},
            {"name": second, "listen": "127.0.0.1:0", "upstream": DEAD_UPSTREAM}]
    try:
        status, body = call(toxiproxy_server, "POST", "/populate", spec)
        assert status == 201 and isinstance(body, dict), body
        assert [p["name"] for p in body["proxies"]] == [name, second]
        first_listen = body["proxies"][0]["listen"]
        # same fields again: the existing proxy is kept, not restarted on a new port
        again = [{**spec[0], "listen": first_listen}]
        status, body = call(toxiproxy_server, "POST", "/populate", again)
        assert status == 201 and body["proxies"][0]["listen"] == first_listen, body
        # a new upstream replaces it
        moved = [{**again[0], "upstream": "127.0.0.1:20998"}]
        status, body = call(toxiproxy_server, "POST", "/populate", moved)
        assert status == 201 and body["proxies"][0]["upstream"] == "127.0.0.1:20998", body
        # validation happens before anything is created
        third = f"{name}_c"
        status, body = call(toxiproxy_server, "POST", "/populate",
                            [{"name": third, "upstream": DEAD_UPSTREAM}, {"name": "no_up"}])
        assert status == 400 and isinstance(body, dict), body
        assert body["error"] == "missing required field: upstream at proxy 2", body
        assert call(toxiproxy_server, "GET", f"/proxies/{third}")[0] == 404
    finally:
        toxiproxy_server.request("DELETE", f"/proxies/{second}")


def test_toxiproxy_python_client_drives_it(toxiproxy_server: ToxiproxyHandle,
                                           name: str) -> None:
    client = toxiproxy_server.client
    assert client.running() and client.version()
    proxy = client.create(upstream=DEAD_UPSTREAM, name=name, listen="127.0.0.1:0")
    assert name in client.proxies() and client.get_proxy(name).upstream == DEAD_UPSTREAM
    with pytest.raises(toxiproxy.exceptions.ProxyExists):
        client.create(upstream=DEAD_UPSTREAM, name=name)
    proxy.add_toxic(type="latency", attributes={"latency": 10}, stream="upstream")
    toxic = proxy.get_toxic("latency_upstream")
    assert toxic is not None and toxic.attributes == {"latency": 10, "jitter": 0}
    with pytest.raises(toxiproxy.exceptions.InvalidToxic):
        proxy.add_toxic(type="no_such_toxic")
    with proxy.down():
        assert client.get_proxy(name).enabled is False
    assert client.get_proxy(name).enabled is True
    proxy.destroy_toxic("latency_upstream")
    assert proxy.toxics() == {}
    client.reset()
    assert client.destroy(proxy) is True
    with pytest.raises(toxiproxy.exceptions.NotFound):
        proxy.destroy()


# -- the embedded server's lifetime (always started here, whatever --toxiproxy-url says) --

def test_embedded_start_stop_is_clean() -> None:
    handle = start_toxiproxy()
    assert handle.kind == "embedded" and "hstream-embedded" in handle.version
    process, log_dir = handle.process, handle.log_path.parent if handle.log_path else None
    assert process is not None and process.poll() is None
    assert connect_toxiproxy(handle.url).kind == "embedded"
    handle.stop()
    handle.stop()  # idempotent
    assert process.poll() is not None, "server process still running after stop()"
    assert log_dir is not None and not log_dir.exists(), "temporary log directory left behind"
    with pytest.raises(ToxiproxyError, match="no Toxiproxy answers at"):
        connect_toxiproxy(handle.url)


def test_embedded_server_exits_when_parent_pipe_closes() -> None:
    handle = start_toxiproxy()
    try:
        assert handle.process is not None and handle.process.stdin is not None
        handle.process.stdin.close()  # what the kernel does when the test process dies
        handle.process.wait(timeout=5)
    finally:
        handle.stop()


def test_connect_error_is_one_clear_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ToxiproxyError) as caught:
            connect_toxiproxy(f"127.0.0.1:{port}")
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}" in message and "\n" not in message, message


@pytest.mark.parametrize("argv", [["--port", "70000"], ["--config", "no/such/file.json"]])
def test_cli_rejects_bad_arguments(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "harness.faults.toxiproxy", *argv],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--port" in result.stderr or "--config" in result.stderr, result.stderr


def test_cli_busy_port_is_one_clear_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "harness.faults.toxiproxy", "--port", str(port)],
            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert time.monotonic() - started < 20


def test_find_prefers_a_toxiproxy_server_on_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A `toxiproxy-server` that takes the Go binary's `-host H -port P` flags and runs the
    # embedded server: checks the PATH lookup, the flag convention and the readiness wait.
    binary = tmp_path / "toxiproxy-server"
    binary.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m harness.faults.toxiproxy --host \"$2\" "
        "--port \"$4\"\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(Path(harness.__file__).resolve().parent.parent))
    handle = find_toxiproxy(None, log_dir=tmp_path / "logs")
    try:
        assert handle.process is not None
        argv = handle.process.args
        assert isinstance(argv, list) and argv[0] == str(binary), argv
        assert connect_toxiproxy(handle.url).version == handle.version
    finally:
        handle.stop()
    assert handle.process is None


def test_find_falls_back_to_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    handle = find_toxiproxy(None)
    try:
        assert handle.kind == "embedded" and handle.process is not None
    finally:
        handle.stop()
