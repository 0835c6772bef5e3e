"""Toxics: what each Toxiproxy toxic does to the chunks flowing through one link.

A link (one direction of one proxied connection) is a chain of stages joined by bounded
channels; each stage runs one toxic's `pipe` coroutine. This mirrors Toxiproxy 2.x so that a
suite sees the same timing and the same close/reset behaviour from this server as from the Go
one. The semantics below are Toxiproxy's, including its quirks:

- latency: each chunk leaves `latency ± jitter` ms after it was *read*, so latency does not
  throttle throughput (the input holds up to 1024 chunks);
- bandwidth: `rate` is KB/s with KB = 1000 bytes; chunks larger than 100 ms worth of data are
  cut into 100 ms pieces;
- slow_close: the close (EOF) is held back `delay` ms, data passes untouched;
- timeout: all data is dropped; the link closes `timeout` ms after the toxic started or after
  the last dropped chunk (the timer restarts per chunk); 0 keeps the connection open forever.
  Removing a timeout toxic closes the connections it held (Toxiproxy's cleanup does that);
- reset_peer: on the first chunk, wait `timeout` ms, then close; the sockets of connections
  that *started* while the toxic was present carry SO_LINGER 0, so the close is a TCP RST;
- slicer: chunks are split recursively around `average_size ± size_variation` bytes, with
  `delay` µs between slices;
- limit_data: pass `bytes` bytes in total (counted across toxic restarts), then close.

Interrupts (a toxic added, updated or removed on a live link) are task cancellations; a toxic
holding a chunk when cancelled hands it on rather than dropping it, as Toxiproxy does.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

log = logging.getLogger("toxiproxy.toxics")

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DIRECTIONS = (UPSTREAM, DOWNSTREAM)


@dataclass
class Chunk:
    data: bytes
    # monotonic seconds when the proxy read the bytes; latency is measured from here
    read_at: float


class ChunkChannel:
    """A bounded FIFO between two stages, with one reader and one writer at a time.

    `put` waits while full (back-pressure towards the socket reader, like Go's channels);
    `force_put` ignores the bound and is used only for EOF and for chunks flushed during an
    interrupt, which must never block or be lost.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._items: deque[Chunk | None] = deque()
        self._capacity = max(1, capacity)
        self._changed = asyncio.Event()

    async def get(self) -> Chunk | None:
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        item = self._items.popleft()
        self._changed.set()
        return item

    async def put(self, item: Chunk | None) -> None:
        while len(self._items) >= self._capacity:
            self._changed.clear()
            await self._changed.wait()
        self.force_put(item)

    def force_put(self, item: Chunk | None) -> None:
        self._items.append(item)
        self._changed.set()

    def drain(self) -> list[Chunk | None]:
        items = list(self._items)
        self._items.clear()
        self._changed.set()
        return items


class BadAttributes(ValueError):
    """An attribute value of the wrong JSON type (Toxiproxy answers 400 bad request body)."""


@dataclass
class Toxic(abc.ABC):
    """Settings of one toxic as the API shows them; `pipe` runs it on one stage."""

    type_name: ClassVar[str] = ""
    go_struct: ClassVar[str] = ""
    buffer_size: ClassVar[int] = 1

    def attributes(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update(self, attributes: Any) -> None:
        """Decode `attributes` onto this toxic like Go's json.Decode into a typed struct:
        unknown keys are ignored, missing keys keep their value, a non-integer is an error."""
        if attributes is None:
            return
        if not isinstance(attributes, dict):
            raise BadAttributes(
                f"json: cannot unmarshal {json_kind(attributes)} into Go struct field "
                # Toxiproxy decodes the wrapper before it knows the type: the noop is named
                "ToxicWrapper.attributes of type toxics.NoopToxic"
            )
        known = {f.name for f in fields(self)}
        for key, value in attributes.items():
            if key not in known:
                continue
            where = f"into Go struct field {self.go_struct}.attributes.{key} of type int64"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadAttributes(f"json: cannot unmarshal {json_kind(value)} {where}")
            if isinstance(value, float) and not value.is_integer():
                raise BadAttributes(f"json: cannot unmarshal number {value} {where}")
            setattr(self, key, int(value))

    def new_state(self) -> Any:
        return None

    def on_remove(self, stage: Stage) -> None:
        """Called on each live stage when the toxic is removed, before it is unlinked."""
        return None  # an optional hook: only toxics that hold data back need it

    @abc.abstractmethod
    async def pipe(self, stage: Stage) -> None:
        """Move chunks from `stage.input` to `stage.output`, doing this toxic's harm."""


def json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return "number"


@dataclass
class Noop(Toxic):
    type_name: ClassVar[str] = "noop"
    go_struct: ClassVar[str] = "NoopToxic"

    async def pipe(self, stage: Stage) -> None:
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                stage.close()
                return
            await stage.send(chunk)


@dataclass
class Latency(Toxic):
    type_name: ClassVar[str] = "latency"
    go_struct: ClassVar[str] = "LatencyToxic"
    buffer_size: ClassVar[int] = 1024
    latency: int = 0
    jitter: int = 0

    def delay_s(self) -> float:
        delay = self.latency
        if self.jitter > 0:
            # Go: rand.Int63n(2*jitter) - jitter, i.e. uniform on [-jitter, jitter)
            delay += random.randrange(2 * self.jitter) - self.jitter
        return delay / 1000.0

    async def pipe(self, stage: Stage) -> None:
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                stage.close()
                return
            wait = self.delay_s() - (time.monotonic() - chunk.read_at)
            try:
                if wait > 0:
                    await asyncio.sleep(wait)
            except asyncio.CancelledError:
                # interrupted: pass the chunk on at once rather than drop it
                stage.output.force_put(chunk)
                raise
            chunk.read_at += max(wait, 0.0)
            await stage.send(chunk)


@dataclass
class Bandwidth(Toxic):
    type_name: ClassVar[str] = "bandwidth"
    go_struct: ClassVar[str] = "BandwidthToxic"
    rate: int = 0

    async def pipe(self, stage: Stage) -> None:
        # `debt` is Toxiproxy's running sleep: time owed for bytes already passed, minus the
        # oversleep of the timer, so the long-run rate stays exact despite timer granularity.
        debt = 0.0
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                stage.close()
                return
            rate = self.rate
            if rate <= 0:
                debt = 0.0
            else:
                debt += len(chunk.data) / (rate * 1000.0)
            data = chunk.data
            try:
                while rate > 0 and len(data) > rate * 100:
                    await asyncio.sleep(0.1)
                    await stage.send(Chunk(data[: rate * 100], chunk.read_at))
                    data = data[rate * 100 :]
                    debt -= 0.1
                started = time.monotonic()
                if debt > 0:
                    await asyncio.sleep(debt)
                debt -= time.monotonic() - started
            except asyncio.CancelledError:
                stage.output.force_put(Chunk(data, chunk.read_at))
                raise
            await stage.send(Chunk(data, chunk.read_at))


@dataclass
class SlowClose(Toxic):
    type_name: ClassVar[str] = "slow_close"
    go_struct: ClassVar[str] = "SlowCloseToxic"
    delay: int = 0

    async def pipe(self, stage: Stage) -> None:
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                # an interrupt during the wait leaves the EOF unforwarded, as in Toxiproxy;
                # the restarted stage will not see it again, so hand it on here instead
                try:
                    await asyncio.sleep(self.delay / 1000.0)
                except asyncio.CancelledError:
                    stage.output.force_put(None)
                    raise
                stage.close()
                return
            await stage.send(chunk)


@dataclass
class Timeout(Toxic):
    type_name: ClassVar[str] = "timeout"
    go_struct: ClassVar[str] = "TimeoutToxic"
    timeout: int = 0

    async def pipe(self, stage: Stage) -> None:
        while True:
            try:
                if self.timeout > 0:
                    chunk = await asyncio.wait_for(stage.input.get(), self.timeout / 1000.0)
                else:
                    chunk = await stage.input.get()
            except TimeoutError:
                stage.close()
                return
            if chunk is None:
                stage.close()
                return
            # data is dropped on the floor

    def on_remove(self, stage: Stage) -> None:
        stage.close()


@dataclass
class ResetPeer(Toxic):
    type_name: ClassVar[str] = "reset_peer"
    go_struct: ClassVar[str] = "ResetToxic"
    timeout: int = 0

    async def pipe(self, stage: Stage) -> None:
        await stage.input.get()
        await asyncio.sleep(self.timeout / 1000.0)
        stage.close()


@dataclass
class Slicer(Toxic):
    type_name: ClassVar[str] = "slicer"
    go_struct: ClassVar[str] = "SlicerToxic"
    average_size: int = 0
    size_variation: int = 0
    delay: int = 0

    def cut_points(self, start: int, end: int) -> list[int]:
        """Offsets as [s0, e0, s1, e1, ...]; Toxiproxy splits recursively near the middle so
        no end of the chunk favours small or large slices."""
        # Toxiproxy recurses forever on average_size <= 0 and panics on a negative variation;
        # clamp so a bad setting degrades to 1-byte slices instead of killing the server.
        average = max(1, self.average_size)
        variation = max(0, self.size_variation)
        if (end - start) - average <= variation:
            return [start, end]
        mid = start + (end - start) // 2
        if variation > 0:
            mid += random.randrange(variation * 2) - variation
        mid = min(max(mid, start + 1), end - 1)
        return self.cut_points(start, mid) + self.cut_points(mid, end)

    async def pipe(self, stage: Stage) -> None:
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                stage.close()
                return
            points = self.cut_points(0, len(chunk.data))
            for i in range(1, len(points), 2):
                await stage.send(Chunk(chunk.data[points[i - 1] : points[i]], chunk.read_at))
                try:
                    await asyncio.sleep(self.delay / 1_000_000.0)
                except asyncio.CancelledError:
                    rest = chunk.data[points[i] :]
                    if rest:
                        stage.output.force_put(Chunk(rest, chunk.read_at))
                    raise


@dataclass
class LimitDataState:
    transmitted: int = 0


@dataclass
class LimitData(Toxic):
    type_name: ClassVar[str] = "limit_data"
    go_struct: ClassVar[str] = "LimitDataToxic"
    bytes: int = 0

    def new_state(self) -> LimitDataState:
        return LimitDataState()

    async def pipe(self, stage: Stage) -> None:
        state: LimitDataState = stage.state
        while True:
            chunk = await stage.input.get()
            if chunk is None:
                stage.close()
                return
            remaining = max(0, self.bytes - state.transmitted)
            if remaining < len(chunk.data):
                chunk = Chunk(chunk.data[:remaining], chunk.read_at)
            if chunk.data:
                await stage.send(chunk)
                state.transmitted += len(chunk.data)
            if self.bytes - state.transmitted <= 0:
                stage.close()
                return


TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (Noop, Latency, Bandwidth, SlowClose, Timeout, ResetPeer, Slicer, LimitData)
}


@dataclass
class ToxicSpec:
    """A toxic as registered on a proxy: its identity, direction, toxicity and settings."""

    name: str
    stream: str
    toxicity: float
    toxic: Toxic
    index: int = field(default=-1)

    @property
    def type_name(self) -> str:
        return self.toxic.type_name

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": self.toxic.attributes(),
            "name": self.name,
            "type": self.type_name,
            "stream": self.stream,
            # Go prints a float32 1.0 as 1; keep the same text for byte-level comparisons
            "toxicity": int(self.toxicity) if self.toxicity.is_integer() else self.toxicity,
        }


NOOP_SPEC = ToxicSpec(name="", stream="", toxicity=1.0, toxic=Noop())


def report_crash(task: asyncio.Task[None]) -> None:
    """Log a proxy task that died of an exception (a bug), instead of losing it silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("proxy task %s crashed", task.get_name(), exc_info=task.exception())


class Stage:
    """One toxic running on one link; `output` is rewired when the chain changes."""

    def __init__(self, spec: ToxicSpec, input: ChunkChannel, output: ChunkChannel) -> None:
        self.spec = spec
        self.input = input
        self.output = output
        self.state: Any = spec.toxic.new_state()
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Toxicity is drawn every time the stage (re)starts, exactly like ToxicStub.Run: once
        # per connection and again whenever the chain of that link is changed.
        toxic = self.spec.toxic if random.random() < self.spec.toxicity else Noop()
        self.task = asyncio.get_running_loop().create_task(toxic.pipe(self))
        self.task.add_done_callback(report_crash)

    async def send(self, chunk: Chunk) -> None:
        try:
            await self.output.put(chunk)
        except asyncio.CancelledError:
            self.output.force_put(chunk)
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.output.force_put(None)

    async def interrupt(self) -> bool:
        """Stop the running toxic so the chain can be changed; False if the stage is closed."""
        if self.closed or self.task is None:
            return False
        self.task.cancel()
        await asyncio.wait([self.task])
        return not self.closed
