"""Proxied connections: two links (client→upstream and upstream→client) per accepted client.

Toxiproxy's closing rules, kept here because suites depend on them:
- a link ends when its chain delivers EOF (the source closed, or a toxic closed the stage);
  the link then closes its destination socket *fully*, not half-way, so the other link sees
  EOF on its source and closes the other socket in turn: one side closing closes both;
- chunks already in the other link's chain (e.g. delayed by latency) are still delivered
  before that second close;
- when a connection starts while a reset_peer toxic is on its proxy, both sockets get
  SO_LINGER 0, which turns every close of that connection into a TCP RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable

from harness.faults.toxiproxy_server.toxics import (
    NOOP_SPEC,
    Chunk,
    ChunkChannel,
    ResetPeer,
    Stage,
    ToxicSpec,
    report_crash,
)

log = logging.getLogger("toxiproxy.links")

READ_SIZE = 32 * 1024  # io.Copy's buffer size in Toxiproxy


class Link:
    """One direction of one connection: source socket → chain of stages → destination."""

    def __init__(
        self,
        direction: str,
        chain: list[ToxicSpec],
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        on_done: Callable[[Link], None],
    ) -> None:
        self.direction = direction
        self.source = source
        self.dest = dest
        self._on_done = on_done
        self.stages: list[Stage] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.input = ChunkChannel(1)
        channel = self.input
        for i, spec in enumerate(chain):
            nxt = ChunkChannel(chain[i + 1].toxic.buffer_size if i + 1 < len(chain) else 1)
            self.stages.append(Stage(spec, channel, nxt))
            channel = nxt
        self.output = channel
        self._reader: asyncio.Task[None] | None = None
        self.finished = False  # the writer has closed the destination
        self.dead = False  # the whole connection is gone: no stage may start again

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        writer = loop.create_task(self._write())
        for task in (self._reader, writer):
            task.add_done_callback(report_crash)
            self.tasks.add(task)
        for stage in self.stages:
            stage.start()

    def stop_reading(self) -> None:
        """The source socket was closed by this proxy: read nothing more from it, as a Go
        read on a closed conn fails at once even with bytes still waiting in the kernel."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            self.input.force_put(None)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.source.read(READ_SIZE)
                if not data:
                    break
                await self.input.put(Chunk(data, time.monotonic()))
        except (ConnectionError, OSError):
            pass
        await self.input.put(None)

    async def _write(self) -> None:
        try:
            while True:
                chunk = await self.output.get()
                if chunk is None:
                    break
                self.dest.write(chunk.data)
                await self.dest.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.dest.close()
            self.finished = True
            self._on_done(self)

    def all_tasks(self) -> list[asyncio.Task[None]]:
        return [*self.tasks, *(s.task for s in self.stages if s.task is not None)]

    async def add_toxic(self, spec: ToxicSpec) -> None:
        """Append a toxic at the end of the chain of this live link (Toxiproxy's AddToxic)."""
        last = self.stages[-1]
        new_input = ChunkChannel(spec.toxic.buffer_size)
        stage = Stage(spec, new_input, last.output)
        # The stage joins the list even on a closing link (as in Toxiproxy), so stage indices
        # keep matching the proxy's chain for later updates and removals.
        self.stages.append(stage)
        if await last.interrupt() and not self.dead:
            last.output = new_input
            stage.start()
            last.start()
        else:
            stage.closed = True

    async def update_toxic(self, index: int) -> None:
        stage = self.stages[index]
        if await stage.interrupt() and not self.dead:
            stage.start()

    async def remove_toxic(self, index: int) -> None:
        """Unlink stage `index`, handing on whatever it and its input still hold."""
        stage = self.stages[index]
        previous = self.stages[index - 1]
        if not await stage.interrupt() or self.dead:
            return
        stage.spec.toxic.on_remove(stage)
        if stage.closed:
            return
        await previous.interrupt()
        for chunk in stage.input.drain():
            if chunk is None:
                stage.close()
                return
            stage.output.force_put(chunk)
        previous.output = stage.output
        del self.stages[index]
        if not previous.closed and not self.dead:
            previous.start()


def set_linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Connection:
    """A client connection and its upstream connection, joined by two links."""

    def __init__(
        self,
        name: str,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        chains: dict[str, list[ToxicSpec]],
        on_closed: Callable[[Connection], None],
    ) -> None:
        self.name = name
        self.client_writer = client[1]
        self.upstream_writer = upstream[1]
        self._on_closed = on_closed
        self.links = {
            "upstream": Link("upstream", [NOOP_SPEC, *chains["upstream"]],
                             client[0], upstream[1], self._link_done),
            "downstream": Link("downstream", [NOOP_SPEC, *chains["downstream"]],
                               upstream[0], client[1], self._link_done),
        }
        if any(isinstance(s.toxic, ResetPeer) for chain in chains.values() for s in chain):
            set_linger_zero(self.client_writer)
            set_linger_zero(self.upstream_writer)
        self.closed = False

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def _link_done(self, link: Link) -> None:
        # the finished link closed its destination, which is the other link's source
        other = self.links["downstream" if link.direction == "upstream" else "upstream"]
        other.stop_reading()
        if all(lk.finished for lk in self.links.values()):
            self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        # A reader or stage can be parked on a full channel nobody drains any more; with both
        # sockets closed nothing else will wake it, so end every task of the connection here.
        current = asyncio.current_task()
        for link in self.links.values():
            link.dead = True
            for task in link.all_tasks():
                if task is not current:
                    task.cancel()
        log.info("connection %s closed", self.name)
        self._on_closed(self)

    def cut(self) -> None:
        """Drop the connection at once (the proxy was disabled, changed or deleted)."""
        for writer in (self.client_writer, self.upstream_writer):
            writer.transport.abort()
        self._finish()
