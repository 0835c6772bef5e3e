"""Clock faults: a node's realtime clock set apart from true time, per node, while it runs
(Jepsen's clock nemesis), through the clock layer (harness.clocklayer: libfaketime,
present only on clusters started with `ClusterSpec.clock_faults`).

Modes (`Fault.clock`, attributes in `faults.CLOCKS`):

* ``offset``: the clock is ``offset_ms`` off true time while the fault lasts (a constant
  skew, whatever it was before); stop puts back the offset the node had before.
* ``bump``: the clock jumps by ``delta_ms`` (forward or back) from where it is, and stays
  jumped; stop jumps it back.
* ``strobe``: the clock flips between its offset and that plus ``delta_ms`` every
  ``period_ms`` for ``duration_ms``, then settles back (stop ends it early).
* ``rate``: the clock runs at ``rate_permille`` / 1000 of true speed; stop puts it back
  where it was before, a jump of what it drifted.

Only the realtime clock moves, in every mode; the monotonic clock stays true (the layer
sets FAKETIME_DONT_FAKE_MONOTONIC=1). That is what a clock error does to a real machine: NTP
or an operator steps or slews CLOCK_REALTIME, nothing changes CLOCK_MONOTONIC, so a server
is right to time its deadlines and failure detectors on the monotonic clock and the faults
show which ones it times on the wall clock. A rate is made by moving the offset every
`RATE_TICK_S` rather than by libfaketime's own rate, which counts from each process's start,
so that the measurement below (a process of its own) sees what the node sees.

Around every action each affected node's clock is read as the node sees it (a process
under the same layer and spec file on the node's host, harness.clocklayer.measure_argv);
the history's completion holds ``clock``: node -> the offset set, and the measured offset
(node time minus true time) before and after, so checkers can tell skew from delay. A
clock fault takes nobody down: a node with a wrong clock still runs and answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from harness.clocklayer import MeasureError, measure_argv, parse_measurement, write_argv
from harness.nemesis.base import Context, Family, NemesisError, Undo
from harness.nemesis.faults import FaultInstance
from harness.runtimes import ExecOutputLost, HostDown, exec_retrying

RATE_TICK_S = 0.1  # how often a rate fault moves the offset (its clock steps this often)
WRITE_TIMEOUT_S = 15.0
DRIVER_JOIN_S = 20.0

# plan(elapsed seconds) -> (offset to set, seconds until the next step), or None: done.
Plan = Callable[[float], "tuple[float, float] | None"]


class _Driver:
    """A thread moving some nodes' offsets over time (strobe, rate) until done or stopped."""

    def __init__(self, name: str, plan: Plan, write: Callable[[float], None]) -> None:
        self.plan = plan
        self.write = write
        self.stopping = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name=f"clock {name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        began = time.monotonic()
        last: float | None = None
        while not self.stopping.is_set():
            planned = self.plan(time.monotonic() - began)
            if planned is None:
                return
            offset, wait_s = planned
            if offset != last:
                try:
                    self.write(offset)
                except Exception as exc:  # reported when the fault stops
                    self.error = exc
                    return
                last = offset
            self.stopping.wait(max(0.0, wait_s))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(DRIVER_JOIN_S)
        if self.thread.is_alive():
            raise NemesisError(f"{self.thread.name} did not stop within {DRIVER_JOIN_S:.0f}s")
        if self.error is not None:
            raise NemesisError(f"{self.thread.name} failed: {self.error}")


def strobe_plan(base: float, delta: float, period: float, duration: float) -> Plan:
    """Flip between base + delta and base every `period` seconds; base after `duration`."""

    def step(elapsed: float) -> tuple[float, float] | None:
        if elapsed >= duration:
            return None
        flips = int(elapsed // period)
        return (base + delta if flips % 2 == 0 else base), (flips + 1) * period - elapsed

    return step


def rate_plan(base: float, rate: float) -> Plan:
    """An offset growing (or shrinking) by rate - 1 seconds per true second."""

    def step(elapsed: float) -> tuple[float, float] | None:
        return base + elapsed * (rate - 1.0), RATE_TICK_S

    return step


class Clock(Family):
    name = "clock"
    needs = ("clock",)
    kinds = ("clock",)

    def __init__(self) -> None:
        self.offsets: dict[int, float] = {}  # node -> offset its spec file says (touched ones)
        self.saved: dict[tuple[str, tuple[int, ...]], dict[int, float]] = {}  # before a start
        self.drivers: dict[tuple[str, tuple[int, ...]], _Driver] = {}
        self.evidence: dict[str, Any] = {}
        self._write_lock = threading.Lock()

    # -- one node's clock
    def _box(self, ctx: Context, n: int) -> Any:
        box = ctx.cluster.processes[ctx.cluster.node(n).name]
        if "FAKETIME_TIMESTAMP_FILE" not in box.env:
            raise NemesisError(f"node {n} runs without the clock layer (no spec file)")
        return box

    def _set(self, ctx: Context, n: int, offset_s: float) -> None:
        """Write node n's spec file: from the next clock call on, it is offset_s off."""
        box = self._box(ctx, n)
        if ctx.cluster.node(n).state == "paused":
            # A frozen container cannot run the write in its own filesystem.
            raise NemesisError(f"node {n} is paused: its clock can be changed once resumed")
        with self._write_lock:
            # A whole-file write, so asked again when an exec lost its output.
            code, output = exec_retrying(
                box.host, write_argv(box.env["FAKETIME_TIMESTAMP_FILE"], offset_s),
                WRITE_TIMEOUT_S)
            if code != 0:
                raise NemesisError(
                    f"setting node {n}'s clock on {box.host.name} failed ({code}): "
                    f"{output.strip()}"
                )
            self.offsets[n] = offset_s

    def measure(self, ctx: Context, n: int) -> dict[str, Any]:
        """Node n's clock as the node sees it: {"offset", "error"} in seconds, or why not."""
        if ctx.cluster.node(n).state == "paused":
            return {"unmeasured": "paused"}
        box = self._box(ctx, n)
        try:
            code, output = exec_retrying(
                box.host, measure_argv(box.env["FAKETIME_TIMESTAMP_FILE"]), WRITE_TIMEOUT_S)
        except (HostDown, ExecOutputLost) as exc:
            return {"unmeasured": str(exc)}
        if code != 0:
            return {"unmeasured": f"date failed ({code}): {output.strip()[:200]}"}
        try:
            return parse_measurement(output).to_json()
        except MeasureError as exc:
            return {"unmeasured": str(exc)}

    # -- the family
    def invoke(
        self, ctx: Context, instance: FaultInstance, action: str
    ) -> tuple[set[int], set[int]]:
        nodes = list(instance.nodes)
        key = (instance.name, instance.nodes)
        before = {n: self.measure(ctx, n) for n in nodes}
        if action == "start":
            self._start(ctx, instance, key)
        else:
            self._stop(ctx, key)
        after = {n: self.measure(ctx, n) for n in nodes}
        self.evidence = {"clock": {
            str(n): {"set": round(self.offsets.get(n, 0.0), 6), "before": before[n],
                     "after": after[n]}
            for n in nodes
        }}
        return set(), set()

    def _start(self, ctx: Context, instance: FaultInstance, key: tuple[str, tuple[int, ...]]
               ) -> None:
        fault = instance.fault
        a = fault.attributes
        nodes = list(instance.nodes)
        if key in self.saved:
            raise NemesisError(f"{instance.name} on nodes {nodes} is already on: stop it first")
        if fault.clock == "strobe" and (a["period_ms"] <= 0 or a["duration_ms"] <= 0):
            raise NemesisError("a strobe needs period_ms > 0 and duration_ms > 0")
        if fault.clock == "rate" and a["rate_permille"] < 0:
            raise NemesisError("a clock rate is rate_permille >= 0 (1000: true speed)")
        base = {n: self.offsets.get(n, 0.0) for n in nodes}
        self.saved[key] = base
        if fault.clock == "offset":
            for n in nodes:
                self._set(ctx, n, a["offset_ms"] / 1000)
        elif fault.clock == "bump":
            for n in nodes:
                self._set(ctx, n, base[n] + a["delta_ms"] / 1000)
        else:
            first = nodes[0]
            if fault.clock == "strobe":
                plan = strobe_plan(base[first], a["delta_ms"] / 1000, a["period_ms"] / 1000,
                                   a["duration_ms"] / 1000)
            else:
                plan = rate_plan(base[first], a["rate_permille"] / 1000)
            # One plan for every node: they move together (offsets differ by their bases).
            shift = {n: base[n] - base[first] for n in nodes}

            def write(offset: float) -> None:
                for n in nodes:
                    self._set(ctx, n, offset + shift[n])

            self.drivers[key] = _Driver(instance.name, plan, write)

    def _stop(self, ctx: Context, key: tuple[str, tuple[int, ...]]) -> None:
        undo = Undo(self.name)
        driver = self.drivers.pop(key, None)
        if driver is not None:
            undo.attempt(f"stop {key[0]}", driver.stop)
        for n, offset in self.saved.pop(key, {}).items():
            undo.attempt(f"restore node {n}'s clock", self._set, ctx, n, offset)
        undo.done()

    def teardown(self, ctx: Context) -> None:
        """Every driver stopped, every node touched back on true time (and measured)."""
        undo = Undo(self.name)
        drivers, self.drivers = list(self.drivers.items()), {}
        for (name, _), driver in drivers:
            undo.attempt(f"stop {name}", driver.stop)
        self.saved.clear()
        touched = sorted(self.offsets)
        for n in touched:
            undo.attempt(f"restore node {n}'s clock", self._set, ctx, n, 0.0)
        if touched:
            self.evidence = {"clock": {
                str(n): {"set": round(self.offsets.get(n, 0.0), 6), "after": self.measure(ctx, n)}
                for n in touched
            }}
        self.offsets = {n: o for n, o in self.offsets.items() if o != 0.0}
        undo.done()

    def take_evidence(self) -> dict[str, Any]:
        evidence, self.evidence = self.evidence, {}
        return evidence
