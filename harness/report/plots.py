"""Inline SVG plots, so the report is one file that opens offline with no plotting library.

Each plot function takes plain data (history ops as dicts, checker results as their JSON)
and returns an SVG string, or "" when there is nothing to draw:

* `membership_timeline` — every observer's view of every member over time, faults shaded;
* `throughput_latency` — acknowledged appends per second and append latency, faults shaded;
* `detection_vs_bound` — time to first suspicion, to confirmed dead and to full agreement
  of each membership check, against the bound it was judged by;
* `loss_per_fault` — lost and duplicated records in each fault window (`records_per_fault`
  attributes them);
* `consumer_lag` — per shard, acknowledged records not yet seen by any consumer or reader
  over time (the queue checker's `unseen` figure), faults shaded.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

STATE_COLOURS = {"alive": "#2e9e5b", "suspect": "#e0a526", "dead": "#c8403a"}
FAULT_FILL = "#1d243033"
FAULT_EDGE = "#1d2430"
LOST_COLOUR = "#c8403a"
DUPLICATED_COLOUR = "#e0a526"
OVER_COLOUR = "#c8403a"
WIDTH = 760
_NS = 1e9
OUTSIDE = "no fault in this history"
BEFORE = "before any fault"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _frame(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" class="plot" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>" + "".join(body) + "</svg>"
    )


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def fault_windows(ops: Sequence[dict[str, Any]], origin: int) -> list[tuple[float, float, str]]:
    """(start s, end s, name) of every fault: from a nemesis completion that hurts the
    cluster to the next one that heals it (a heal op, or one that brings nodes back up)."""
    windows: list[tuple[float, float, str]] = []
    open_faults: list[tuple[float, str]] = []
    end = max((op.get("time", 0) for op in ops), default=origin)
    for op in ops:
        if op.get("process") != "nemesis" or op.get("type") != "ok":
            continue
        t = (op.get("time", 0) - origin) / _NS
        name = str(op.get("f"))
        value = op.get("value") or {}
        if name.startswith("heal") or value.get("up") or value.get("action") == "stop":
            windows.extend((start, t, fault) for start, fault in open_faults)
            open_faults.clear()
        else:
            open_faults.append((t, name))
    windows.extend((start, (end - origin) / _NS, fault) for start, fault in open_faults)
    return windows


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / ticks
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600):
        if step >= raw:
            return step
    return 600.0 * math.ceil(raw / 600)


def _axis(x0: int, x1: int, y: int, span_s: float, unit: str = "s") -> list[str]:
    parts = [f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#999"/>']
    step = _nice_step(span_s)
    i = 0
    while i * step <= span_s + 1e-9:
        t = i * step
        x = x0 + (x1 - x0) * t / span_s
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{y + 15}" class="tick">{t:g}{unit}</text>')
        i += 1
    return parts


def _fault_shading(
    ops: Sequence[dict[str, Any]], origin: int, left: int, scale: float, top: int, height: int
) -> list[str]:
    """Translucent boxes with a dashed edge over the plot, each named at its top (unless
    the previous name would overlap it; every box names its fault on hover)."""
    parts = []
    free_from = 0.0
    for start, stop, name in fault_windows(ops, origin):
        x = left + start * scale
        parts.append(
            f'<rect x="{x:.1f}" y="{top}" width="{max(1.0, (stop - start) * scale):.1f}" '
            f'height="{height}" fill="{FAULT_FILL}" stroke="{FAULT_EDGE}" '
            f'stroke-dasharray="4,2" class="fault"><title>{_esc(name)} '
            f"{start:.1f}-{stop:.1f}s</title></rect>"
        )
        if x >= free_from:
            parts.append(f'<text x="{x + 2:.1f}" y="{top - 2}" class="tick">{_esc(name)}</text>')
            free_from = x + 2 + 5.5 * len(name)  # ~5.5 px a character at the tick size
    return parts


def membership_timeline(ops: Sequence[dict[str, Any]], title: str = "membership views") -> str:
    """One lane per (observer, member): the state the observer reported, faults shaded.

    A lane is left blank where its observer gave no view (killed, paused): a gap longer
    than five of its usual sampling intervals ends the box at one interval past the last
    sample instead of stretching the last state over it.
    """
    views = [op for op in ops if op.get("f") == "view" and op.get("type") == "ok"]
    if not views:
        return ""
    origin = min(op.get("time", 0) for op in ops)
    end = max(op.get("time", 0) for op in ops)
    span = max((end - origin) / _NS, 1.0)
    samples: dict[tuple[str, str], list[tuple[float, str]]] = {}
    sampled_at: dict[str, list[float]] = {}
    for op in views:
        value = op.get("value") or {}
        observer = str(value.get("observer"))
        t = (op.get("time", 0) - origin) / _NS
        sampled_at.setdefault(observer, []).append(t)
        for member, state in (value.get("view") or {}).items():
            samples.setdefault((observer, str(member)), []).append((t, _state(state)))
    interval = {o: _typical_interval(times) for o, times in sampled_at.items()}
    keys = sorted(samples, key=lambda k: (_num(k[0]), _num(k[1])))
    lane_h, left, right, top = 10, 90, WIDTH - 10, 42
    height = top + lane_h * len(keys) + 30
    scale = (right - left) / span
    body = [
        f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>',
        f'<text x="{right}" y="26" class="tick" text-anchor="end">observer→member: '
        + " ".join(
            f'<tspan fill="{colour}">■</tspan> {state}' for state, colour in STATE_COLOURS.items()
        )
        + "</text>",
    ]
    for i, key in enumerate(keys):
        y = top + i * lane_h
        body.append(f'<text x="{left - 4}" y="{y + 8}" class="lane">{key[0]}→{key[1]}</text>')
        for start, stop, state in _boxes(samples[key], interval[key[0]], span):
            body.append(
                f'<rect x="{left + start * scale:.1f}" y="{y + 1}" '
                f'width="{max(0.5, (stop - start) * scale):.1f}" height="{lane_h - 2}" '
                f'fill="{STATE_COLOURS[state]}"/>'
            )
    body += _fault_shading(ops, origin, left, scale, top - 4, lane_h * len(keys) + 4)
    body += _axis(left, right, top + lane_h * len(keys) + 2, span)
    return _frame(WIDTH, height, body, title)


def _typical_interval(times: Sequence[float]) -> float:
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False) if b > a)
    return gaps[len(gaps) // 2] if gaps else 0.1


def _boxes(
    lane: Sequence[tuple[float, str]], interval: float, span: float
) -> list[tuple[float, float, str]]:
    """(start, stop, state): one box per run of equal states (a sample every 100 ms would
    be thousands), broken where the observer fell silent."""
    gap = 5 * interval
    boxes: list[tuple[float, float, str]] = []
    for j, (t, state) in enumerate(lane):
        t_next = lane[j + 1][0] if j + 1 < len(lane) else span
        stop = t_next if t_next - t <= gap else t + interval
        if boxes and boxes[-1][2] == state and boxes[-1][1] >= t:
            boxes[-1] = (boxes[-1][0], stop, state)
        else:
            boxes.append((t, stop, state))
    return boxes


def _state(state: Any) -> str:
    text = str(state).lower()
    if text in ("alive", "running", "1"):
        return "alive"
    if text in ("dead", "confirm", "confirmed", "3"):
        return "dead"
    return "suspect"


def _num(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)


def _bucket_width(span: float, buckets: int = 80) -> float:
    for width in (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300):
        if span / width <= buckets:
            return width
    return 600.0


def _completions(ops: Sequence[dict[str, Any]], origin: int) -> list[tuple[float, float, str]]:
    """(completed at s, latency ms, ok/fail/info) of every append, invoke and completion
    matched by process and payload id (producers that batch have several in flight)."""
    invokes: dict[tuple[Any, Any], int] = {}
    points: list[tuple[float, float, str]] = []
    for op in ops:
        if op.get("f") != "append":
            continue
        key = (op.get("process"), (op.get("value") or {}).get("payload_id"))
        if op.get("type") == "invoke":
            invokes[key] = op.get("time", 0)
        elif key in invokes:
            started = invokes.pop(key)
            points.append(
                (
                    (op.get("time", 0) - origin) / _NS,
                    (op.get("time", 0) - started) / 1e6,
                    str(op.get("type")),
                )
            )
    return points


def throughput_latency(ops: Sequence[dict[str, Any]], title: str = "appends") -> str:
    """Acknowledged appends per second (bars, left axis), the median and slowest append
    latency of each interval (lines, log scale, right axis), failed and indeterminate
    appends (ticks under the axis), faults shaded."""
    origin = min((op.get("time", 0) for op in ops), default=0)
    points = _completions(ops, origin)
    if not points:
        return ""
    end = max(op.get("time", 0) for op in ops)
    span = max((end - origin) / _NS, 1.0)
    width = _bucket_width(span)
    n_buckets = int(span / width) + 1
    acked = [0] * n_buckets
    failed = [0] * n_buckets
    unknown = [0] * n_buckets
    latencies: list[list[float]] = [[] for _ in range(n_buckets)]
    for t, latency, kind in points:
        b = min(n_buckets - 1, int(t / width))
        latencies[b].append(latency)
        if kind == "ok":
            acked[b] += 1
        elif kind == "fail":
            failed[b] += 1
        else:
            unknown[b] += 1
    peak = max(acked) / width or 1.0
    worst = max(p[1] for p in points)
    decades = max(1, math.ceil(math.log10(max(worst, 1.0))))  # 1 ms .. 10^decades ms
    left, right, top, plot_h = 60, WIDTH - 60, 40, 140
    scale = (right - left) / span
    bottom = top + plot_h

    def y_latency(ms: float) -> float:
        return bottom - plot_h * math.log10(max(ms, 1.0)) / decades

    body = [
        f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>',
        f'<text x="{right}" y="26" class="tick" text-anchor="end">'
        '<tspan fill="#4a78c2">■</tspan> acked/s  <tspan fill="#1b3d6e">—</tspan> median '
        'latency  <tspan fill="#b5179e">—</tspan> slowest  <tspan fill="#c8403a">▮</tspan> '
        'failed  <tspan fill="#e0a526">▮</tspan> indeterminate</text>',
    ]
    body += _fault_shading(ops, origin, left, scale, top, plot_h)
    bar_w = max(1.0, width * scale - 1)
    for b, count in enumerate(acked):
        if not count:
            continue
        h = plot_h * (count / width) / peak
        body.append(
            f'<rect x="{left + b * width * scale:.1f}" y="{bottom - h:.1f}" '
            f'width="{bar_w:.1f}" height="{h:.1f}" fill="#4a78c2aa">'
            f"<title>{b * width:g}-{(b + 1) * width:g}s: {count} acked "
            f"({count / width:.0f}/s)</title></rect>"
        )
    for b, (n_fail, n_info) in enumerate(zip(failed, unknown, strict=True)):
        x = left + b * width * scale
        for row, (n, colour, what) in enumerate(
            ((n_fail, "#c8403a", "failed"), (n_info, "#e0a526", "indeterminate"))
        ):
            if n:
                body.append(
                    f'<rect x="{x:.1f}" y="{bottom + 3 + row * 5}" width="{bar_w:.1f}" '
                    f'height="4" fill="{colour}"><title>{b * width:g}s: {n} {what}</title></rect>'
                )
    for quantile, colour in ((0.5, "#1b3d6e"), (1.0, "#b5179e")):
        # One line per stretch of intervals with completions: none is drawn across a
        # silence, where there was no latency to measure.
        lines: list[list[str]] = [[]]
        for b, values in enumerate(latencies):
            if not values:
                lines.append([])
                continue
            values.sort()
            ms = values[min(len(values) - 1, int(quantile * (len(values) - 1) + 0.5))]
            lines[-1].append(f"{left + (b + 0.5) * width * scale:.1f},{y_latency(ms):.1f}")
        for line in lines:
            if len(line) == 1:  # a lone interval: a short dash
                x, y = (float(v) for v in line[0].split(","))
                line = [f"{x - 2:.1f},{y:.1f}", f"{x + 2:.1f},{y:.1f}"]
            if line:
                body.append(
                    f'<polyline points="{" ".join(line)}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5"/>'
                )
    for d in range(decades + 1):
        y = y_latency(10**d)
        label = f"{10**d} ms" if d < 3 else f"{10 ** (d - 3)} s"
        body.append(f'<text x="{right + 4}" y="{y + 3:.1f}" class="tick">{label}</text>')
    body.append(f'<text x="{left - 4}" y="{top + 8}" class="lane">{peak:.0f}/s</text>')
    body.append(f'<text x="{left - 4}" y="{bottom}" class="lane">0</text>')
    body += _axis(left, right, bottom + 14, span)
    return _frame(WIDTH, bottom + 44, body, title)


MEMBERSHIP_METRICS = (
    ("first suspicion", "first_suspicion_s", "episodes", "#e0a526"),
    ("confirmed dead", "confirmed_dead_s", "episodes", "#7b4fc4"),
    ("full agreement", "agreement_s", "epochs", "#4a78c2"),
)


def detection_vs_bound(
    checks: Iterable[tuple[str, dict[str, Any]]],
    title: str = "detection and agreement against the bound",
) -> str:
    """For each membership check (label, the checker's figures): every failure's time to
    first suspicion and to confirmed dead, and every epoch's time to full agreement (dots,
    the slowest as a bar), against the bound the check was judged by (dashed line). A bar
    past its bound is drawn red and says so."""
    rows: list[tuple[int, str, str, list[float], float | None, str]] = []
    for check, (label, figures) in enumerate(checks):
        bound = figures.get("bound_s")
        for metric, key, source, colour in MEMBERSHIP_METRICS:
            values = [
                float(item[key])
                for item in figures.get(source) or []
                if isinstance(item, dict) and item.get(key) is not None
                and (source == "epochs" or item.get("event") == "down")
            ]
            if values:
                rows.append((check, label, metric, values, bound, colour))
    if not rows:
        return ""
    top_value = max(max(max(v), b or 0.0) for _, _, _, v, b, _ in rows) * 1.05 or 1.0
    left, right, row_h, top = 330, WIDTH - 60, 16, 24
    scale = (right - left) / top_value
    body = [f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>']
    previous = None
    for i, (check, label, metric, values, bound, colour) in enumerate(rows):
        y = top + i * row_h
        if check != previous and i:
            body.append(f'<line x1="4" y1="{y}" x2="{WIDTH - 4}" y2="{y}" stroke="#e2e5ea"/>')
        name = f"{_clip(label, 44)} · {metric}" if check != previous else metric
        previous = check
        body.append(f'<text x="{left - 6}" y="{y + 11}" class="lane">{_esc(name)}</text>')
        worst = max(values)
        over = bound is not None and worst > bound
        body.append(
            f'<rect x="{left}" y="{y + 4}" width="{max(1.0, worst * scale):.1f}" '
            f'height="{row_h - 8}" fill="{OVER_COLOUR if over else colour}" '
            f'opacity="{0.9 if over else 0.55}" class="{"over" if over else "within"}">'
            f"<title>{_esc(label)}: {metric} max {worst:g} s"
            + ("" if bound is None else f", bound {bound:g} s")
            + "</title></rect>"
        )
        for v in values:
            body.append(
                f'<circle cx="{left + v * scale:.1f}" cy="{y + row_h / 2}" r="2.5" '
                f'fill="{colour}" stroke="#1d2430" stroke-width="0.5"/>'
            )
        text = f"{worst:g} s" + ("" if bound is None else f" / bound {bound:g} s")
        if over:
            text += " — OVER THE BOUND"
        body.append(
            f'<text x="{left + worst * scale + 5:.1f}" y="{y + 11}" class="tick">{text}</text>'
        )
        if bound is not None:
            x = left + bound * scale
            body.append(
                f'<line x1="{x:.1f}" y1="{y + 1}" x2="{x:.1f}" y2="{y + row_h - 1}" '
                f'stroke="#1d2430" stroke-width="1.5" stroke-dasharray="3,2" class="bound">'
                f"<title>bound {bound:g} s</title></line>"
            )
    bottom = top + row_h * len(rows) + 2
    body += _axis(left, right, bottom, top_value)
    return _frame(WIDTH, bottom + 22, body, title)


def records_per_fault(
    ops: Sequence[dict[str, Any]], stream_set: dict[str, Any] | None = None
) -> list[tuple[str, int, int]]:
    """(where, lost, duplicated) of one history, a row per fault window.

    A record belongs to the fault window its moment falls in ("kill-one 2.4-9.6s"), else to
    the aftermath of the last fault that ended before it ("after kill-one 2.4-9.6s"), else
    to `BEFORE` (no fault yet) or, in a history without faults, to `OUTSIDE`. Its moment:

    * lost — when its append was acknowledged: the stream-set checker's `acked_at_ms`
      (`stream_set` is its JSON; counted from the history's first op). Lost records it
      counted but kept no example of are "unattributed".
    * duplicated — when the extra copy was read. The checker's definition (read more often
      than written) is applied to each reader on its own, one read op or one subscription's
      deliveries, from the history: a record read once by each of two readers is no
      duplicate (the durability workload reads every record twice, that way).

    Every window has its row, zeros included; aftermaths and the rest only when not empty.
    """
    if not ops:
        return []
    origin = min(op.get("time", 0) for op in ops)
    windows = fault_windows(ops, origin)
    attempts: Counter[Any] = Counter()
    for op in ops:
        if op.get("f") == "append" and op.get("type") == "invoke":
            attempts[(op.get("value") or {}).get("payload_id")] += 1
    if not attempts and not stream_set:
        return []

    def label(start: float, stop: float, name: str) -> str:
        return f"{name} {start:.1f}-{stop:.1f}s"

    def where(t: float | None) -> str:
        if t is None:
            return "unattributed"
        during = [w for w in windows if w[0] <= t <= w[1]]
        if during:
            return label(*max(during))
        ended = [w for w in windows if w[1] < t]
        if ended:
            return "after " + label(*max(ended, key=lambda w: w[1]))
        return BEFORE if windows else OUTSIDE

    lost: Counter[str] = Counter()
    duplicated: Counter[str] = Counter()
    if stream_set:
        examples = (stream_set.get("anomalies") or {}).get("lost") or []
        for example in examples:
            at_ms = example.get("acked_at_ms") if isinstance(example, dict) else None
            lost[where(None if at_ms is None else at_ms / 1000)] += 1
        rest = int((stream_set.get("counts") or {}).get("lost", 0)) - len(examples)
        if rest > 0:
            lost["unattributed"] += rest
    readers: dict[Any, Counter[Any]] = {}
    for op in ops:
        if op.get("type") != "ok" or op.get("f") not in ("read", "fetch", "drain"):
            continue
        value = op.get("value") or {}
        reader = (
            ("subscription", value.get("subscription"))
            if op.get("f") == "fetch"
            else ("read", op.get("index"))
        )
        seen = readers.setdefault(reader, Counter())
        t = (op.get("time", 0) - origin) / _NS
        for record in value.get("records") or []:
            if isinstance(record, dict):
                pid = record.get("payload_id")
                seen[pid] += 1
                if attempts.get(pid) and seen[pid] > attempts[pid]:
                    duplicated[where(t)] += 1
    rows = []
    for window in windows:
        for key in (label(*window), "after " + label(*window)):
            if key.startswith("after ") and not (lost[key] or duplicated[key]):
                continue
            rows.append((key, lost.pop(key, 0), duplicated.pop(key, 0)))
    for key in (BEFORE, OUTSIDE, "unattributed"):
        if lost[key] or duplicated[key]:
            rows.append((key, lost[key], duplicated[key]))
    return rows


def loss_per_fault(
    rows: Iterable[tuple[str, int, int]], title: str = "lost and duplicated records per fault"
) -> str:
    """(label, lost, duplicated) per fault window: two bars each, the count written beside
    them (a zero is written too: no loss is the result to see)."""
    data = list(rows)
    if not data:
        return ""
    top_value = max(max(lost, dup) for _, lost, dup in data) or 1
    left, right, row_h, top = 330, WIDTH - 110, 20, 24  # room for "12345 duplicated"
    scale = (right - left) / top_value
    body = [
        f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>',
        f'<text x="{right}" y="12" class="tick" text-anchor="end">'
        f'<tspan fill="{LOST_COLOUR}">■</tspan> lost  '
        f'<tspan fill="{DUPLICATED_COLOUR}">■</tspan> duplicated</text>',
    ]
    for i, (label, lost, dup) in enumerate(data):
        y = top + i * row_h
        body.append(
            f'<text x="{left - 6}" y="{y + 13}" class="lane">{_esc(_clip(label, 60))}</text>'
        )
        for j, (n, colour, what) in enumerate(
            ((lost, LOST_COLOUR, "lost"), (dup, DUPLICATED_COLOUR, "duplicated"))
        ):
            by = y + 2 + j * 8
            if n:
                body.append(
                    f'<rect x="{left}" y="{by}" width="{max(1.0, n * scale):.1f}" height="7" '
                    f'fill="{colour}"><title>{_esc(label)}: {n} {what}</title></rect>'
                )
            body.append(
                f'<text x="{left + n * scale + 4:.1f}" y="{by + 7}" class="tick">{n} {what}'
                "</text>"
            )
    return _frame(WIDTH, top + row_h * len(data) + 6, body, title)


LAG_COLOURS = ("#4a78c2", "#2e9e5b", "#b5179e", "#e0a526", "#7b4fc4", "#c8403a", "#1b8a8a",
               "#6b4423")


def consumer_lag(
    ops: Sequence[dict[str, Any]], unseen: dict[str, Any], title: str = "consumer lag"
) -> str:
    """The queue checker's `unseen` figure: per shard, acknowledged appends no consumer or
    reader had seen yet, over time (seconds since the history's first op), one line per
    shard, faults shaded. "" when the figure is empty."""
    series: list[tuple[str, list[tuple[float, float]]]] = []
    for shard, points in (unseen or {}).items():
        clean = [(float(p[0]), float(p[1])) for p in points or [] if len(p) == 2]
        if clean:
            series.append((str(shard), clean))
    if not series:
        return ""
    series.sort(key=lambda item: _num(item[0]))
    origin = min((op.get("time", 0) for op in ops), default=0)
    end_s = max((op.get("time", 0) - origin) / _NS for op in ops) if ops else 0.0
    span = max(end_s, max(t for _, pts in series for t, _ in pts), 1.0)
    peak = max(max(c for _, c in pts) for _, pts in series) or 1.0
    left, right, top, plot_h = 60, WIDTH - 60, 40, 140
    scale = (right - left) / span
    bottom = top + plot_h
    legend = "  ".join(
        f'<tspan fill="{LAG_COLOURS[i % len(LAG_COLOURS)]}">—</tspan> shard {_esc(shard)} '
        f"(max {max(c for _, c in pts):.0f})"
        for i, (shard, pts) in enumerate(series)
    )
    body = [
        f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>',
        f'<text x="{right}" y="26" class="tick" text-anchor="end">{legend}</text>',
    ]
    body += _fault_shading(ops, origin, left, scale, top, plot_h)
    for i, (shard, pts) in enumerate(series):
        # A step line: the count holds until the next sample.
        coords = [f"{left:.1f},{bottom:.1f}"]
        y_prev = float(bottom)
        for t, c in pts:
            x = left + t * scale
            y = bottom - plot_h * c / peak
            coords += [f"{x:.1f},{y_prev:.1f}", f"{x:.1f},{y:.1f}"]
            y_prev = y
        body.append(
            f'<polyline points="{" ".join(coords)}" fill="none" '
            f'stroke="{LAG_COLOURS[i % len(LAG_COLOURS)]}" stroke-width="1.5">'
            f"<title>shard {_esc(shard)}: at most {max(c for _, c in pts):.0f} unseen, "
            f"{pts[-1][1]:.0f} at the end</title></polyline>"
        )
    body.append(f'<text x="{left - 4}" y="{top + 8}" class="lane">{peak:.0f} unseen</text>')
    body.append(f'<text x="{left - 4}" y="{bottom}" class="lane">0</text>')
    body += _axis(left, right, bottom + 14, span)
    return _frame(WIDTH, bottom + 44, body, title)
