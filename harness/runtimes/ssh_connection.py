"""One SSH session to an inventory host (paramiko): connects with one-line errors that name the
host and what to fix, runs argv (quoted with shlex.join, never assembled in a shell), and
moves files over SFTP."""

from __future__ import annotations

import errno
import shlex
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import paramiko

from harness.runtimes import HostDown
from harness.runtimes.inventory import HostEntry

CONNECT_TIMEOUT_S = 10.0


class SshUnreachable(HostDown):
    """The host cannot be logged in to; the message names it and what to fix."""


def connect(entry: HostEntry, source: str, timeout_s: float = CONNECT_TIMEOUT_S
            ) -> paramiko.SSHClient:
    where = f"host {entry.name} ({entry.user}@{entry.address}:{entry.port})"
    key = entry.key or "the ssh agent's and ~/.ssh's keys"
    client = paramiko.SSHClient()
    # Test hosts make new host keys at every start and cloud machines are new at every apply:
    # an unknown host key is accepted, as `StrictHostKeyChecking=accept-new` would.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        # Loaded here, not by connect(key_filename=...), which reports a refused key as the
        # last of its failed guesses at the key's type.
        pkey = paramiko.PKey.from_path(entry.key) if entry.key else None
    except paramiko.PasswordRequiredException:
        raise SshUnreachable(f"{where}: key {key} is passphrase-protected: load it into "
                             f"ssh-agent and drop `key` from {source}") from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise SshUnreachable(f"{where}: key {key} cannot be read ({exc}): give a private key "
                             f"in {source}") from None
    try:
        client.connect(entry.address, port=entry.port, username=entry.user, pkey=pkey,
                       timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                       allow_agent=pkey is None, look_for_keys=pkey is None)
    except paramiko.AuthenticationException:
        raise SshUnreachable(
            f"{where}: {key} not accepted for {entry.user}: add the public key to "
            f"~{entry.user}/.ssh/authorized_keys there, or fix user/key in {source}") from None
    except TimeoutError:
        raise SshUnreachable(
            f"{where}: no answer within {timeout_s:.0f}s: check the address in {source}, that "
            f"the machine is up and that port {entry.port} is reachable from here") from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        if all(e.errno == errno.ECONNREFUSED for e in exc.errors.values()):
            raise SshUnreachable(
                f"{where}: connection refused: start sshd there (`systemctl start ssh`) or fix "
                f"the port in {source}") from None
        reason = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        raise SshUnreachable(f"{where}: cannot connect ({reason}): check the address in "
                             f"{source} and that the machine is up") from None
    except paramiko.SSHException as exc:
        raise SshUnreachable(
            f"{where}: sshd ended the session ({exc}): read sshd's log there (MaxStartups, "
            "allowed key exchanges and ciphers, a firewall in between)") from None
    except OSError as exc:
        raise SshUnreachable(f"{where}: cannot connect ({exc.strerror or exc}): check the "
                             f"address in {source}") from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(15)
    return client


class Session:
    """A lazily (re)connected SSH session; channels may run concurrently, SFTP is locked."""

    def __init__(self, entry: HostEntry, source: str,
                 timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.entry = entry
        self.source = source
        self.timeout_s = timeout_s
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()
        self._sftp_lock = threading.Lock()

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self._sftp = None
                self._client = connect(self.entry, self.source, self.timeout_s)
            return self._client

    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout_s: float = 30.0
            ) -> tuple[int, str]:
        """(exit status, stdout+stderr) of argv on the host; 124 when it timed out."""
        transport = self.client().get_transport()
        assert transport is not None
        channel: paramiko.Channel | None = None
        try:
            channel = transport.open_session(timeout=CONNECT_TIMEOUT_S)
            channel.set_combine_stderr(True)
            channel.settimeout(timeout_s)
            channel.exec_command(shlex.join(argv))
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            output = bytearray()
            deadline = time.monotonic() + timeout_s
            while chunk := channel.recv(65536):
                output += chunk
                if time.monotonic() > deadline:
                    raise TimeoutError
            if not channel.status_event.wait(max(0.1, deadline - time.monotonic())):
                raise TimeoutError
            status = channel.recv_exit_status()
        except TimeoutError:
            if channel is not None:
                channel.close()
            return 124, f"(timed out after {timeout_s:.0f}s)"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshUnreachable(f"host {self.entry.name}: the SSH session broke ({exc})") \
                from None
        channel.close()
        return status, output.decode(errors="replace")

    @contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        with self._sftp_lock:
            client = self.client()
            if self._sftp is None:
                self._sftp = client.open_sftp()
            try:
                yield self._sftp
            except (paramiko.SSHException, EOFError) as exc:
                self._sftp = None
                raise SshUnreachable(f"host {self.entry.name}: SFTP failed ({exc})") from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = self._sftp = None
