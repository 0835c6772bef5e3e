"""Inline SVG plots, so the report is one file that opens offline with no plotting library.

Each function takes plain data (history ops as dicts, checker figures) and returns an SVG
string, or "" when there is nothing to draw.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

STATE_COLOURS = {"alive": "#2e9e5b", "suspect": "#e0a526", "dead": "#c8403a"}
FAULT_FILL = "#1d243033"
FAULT_EDGE = "#1d2430"
WIDTH = 760
_NS = 1e9


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _frame(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" class="plot" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>" + "".join(body) + "</svg>"
    )


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


def _axis(x0: int, x1: int, y: int, span_s: float) -> list[str]:
    parts = [f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#999"/>']
    step = max(1, round(span_s / 8))
    t = 0
    while t <= span_s:
        x = x0 + (x1 - x0) * t / span_s
        parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>')
        parts.append(f'<text x="{x:.1f}" y="{y + 15}" class="tick">{t}s</text>')
        t += step
    return parts


def membership_timeline(ops: Sequence[dict[str, Any]], title: str = "membership views") -> str:
    """One lane per (observer, member): the state the observer reported, faults shaded."""
    views = [op for op in ops if op.get("f") == "view" and op.get("type") == "ok"]
    if not views:
        return ""
    origin = min(op.get("time", 0) for op in ops)
    end = max(op.get("time", 0) for op in ops)
    span = max((end - origin) / _NS, 1.0)
    lanes: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for op in views:
        value = op.get("value") or {}
        observer = str(value.get("observer"))
        t = (op.get("time", 0) - origin) / _NS
        for member, state in (value.get("view") or {}).items():
            lanes.setdefault((observer, str(member)), []).append((t, _state(state)))
    keys = sorted(lanes, key=lambda k: (_num(k[0]), _num(k[1])))
    lane_h, left, right, top = 10, 90, WIDTH - 10, 30
    height = top + lane_h * len(keys) + 30
    scale = (right - left) / span
    body = [f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>']
    for i, key in enumerate(keys):
        y = top + i * lane_h
        body.append(f'<text x="{left - 4}" y="{y + 8}" class="lane">{key[0]}→{key[1]}</text>')
        samples = lanes[key]
        for j, (t, state) in enumerate(samples):
            t_next = samples[j + 1][0] if j + 1 < len(samples) else span
            body.append(
                f'<rect x="{left + t * scale:.1f}" y="{y + 1}" '
                f'width="{max(0.5, (t_next - t) * scale):.1f}" height="{lane_h - 2}" '
                f'fill="{STATE_COLOURS[state]}"/>'
            )
    for start, stop, name in fault_windows(ops, origin):
        # Drawn over the lanes, translucent with an edge, so the fault period reads at once.
        x = left + start * scale
        body.append(
            f'<rect x="{x:.1f}" y="{top - 4}" width="{max(1.0, (stop - start) * scale):.1f}" '
            f'height="{lane_h * len(keys) + 4}" fill="{FAULT_FILL}" stroke="{FAULT_EDGE}" '
            f'stroke-dasharray="4,2"><title>{_esc(name)} {start:.1f}-{stop:.1f}s</title></rect>'
        )
        body.append(f'<text x="{x + 2:.1f}" y="{top - 6}" class="tick">{_esc(name)}</text>')
    body += _axis(left, right, top + lane_h * len(keys) + 2, span)
    return _frame(WIDTH, height, body, title)


def _state(state: Any) -> str:
    text = str(state).lower()
    if text in ("alive", "running", "1"):
        return "alive"
    if text in ("dead", "confirm", "confirmed", "3"):
        return "dead"
    return "suspect"


def _num(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)


def throughput_latency(ops: Sequence[dict[str, Any]], title: str = "appends") -> str:
    """Acknowledged appends per second (bars) and their latency (dots), faults shaded."""
    invokes: dict[tuple[Any, Any], int] = {}
    points: list[tuple[float, float, str]] = []
    origin = min((op.get("time", 0) for op in ops), default=0)
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
    if not points:
        return ""
    span = max(max(p[0] for p in points), 1.0)
    buckets: dict[int, int] = {}
    for t, _, kind in points:
        if kind == "ok":
            buckets[int(t)] = buckets.get(int(t), 0) + 1
    peak = max(buckets.values(), default=1)
    worst = max(p[1] for p in points) or 1.0
    left, right, top, plot_h = 60, WIDTH - 60, 18, 140
    scale = (right - left) / span
    body = [f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>']
    for start, stop, name in fault_windows(ops, origin):
        body.append(
            f'<rect x="{left + start * scale:.1f}" y="{top}" '
            f'width="{max(1.0, (stop - start) * scale):.1f}" height="{plot_h}" '
            f'fill="{FAULT_FILL}"><title>{_esc(name)}</title></rect>'
        )
    for second, count in sorted(buckets.items()):
        h = plot_h * count / peak
        body.append(
            f'<rect x="{left + second * scale:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(1.0, scale - 1):.1f}" height="{h:.1f}" fill="#4a78c2aa">'
            f"<title>{second}s: {count} acked</title></rect>"
        )
    colours = {"ok": "#1b3d6e", "fail": "#c8403a", "info": "#e0a526"}
    for t, latency, kind in points[:20000]:
        y = top + plot_h - plot_h * latency / worst
        body.append(
            f'<circle cx="{left + t * scale:.1f}" cy="{y:.1f}" r="1.5" '
            f'fill="{colours.get(kind, "#777")}"/>'
        )
    body.append(f'<text x="4" y="{top + 10}" class="tick">{peak}/s</text>')
    body.append(f'<text x="{right + 4}" y="{top + 10}" class="tick">{worst:.0f} ms</text>')
    body += _axis(left, right, top + plot_h + 2, span)
    return _frame(WIDTH, top + plot_h + 30, body, title)


def bars(values: Iterable[tuple[str, float, float | None]], title: str, unit: str = "s") -> str:
    """Horizontal bars (label, measured, bound): the measured value against its bound."""
    rows = list(values)
    if not rows:
        return ""
    top_value = max(max(v, b or 0) for _, v, b in rows) or 1.0
    left, right, bar_h = 230, WIDTH - 70, 16
    height = 22 + bar_h * len(rows) + 8
    body = [f'<text x="4" y="12" class="plot-title">{_esc(title)}</text>']
    for i, (label, value, bound) in enumerate(rows):
        y = 20 + i * bar_h
        width = (right - left) * value / top_value
        over = bound is not None and value > bound
        body.append(f'<text x="{left - 4}" y="{y + 11}" class="lane">{_esc(label)}</text>')
        body.append(
            f'<rect x="{left}" y="{y + 2}" width="{max(1.0, width):.1f}" height="{bar_h - 4}" '
            f'fill="{"#c8403a" if over else "#4a78c2"}"/>'
        )
        body.append(
            f'<text x="{left + width + 4:.1f}" y="{y + 11}" class="tick">{value:g}{unit}</text>'
        )
        if bound is not None:
            x = left + (right - left) * bound / top_value
            body.append(
                f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + bar_h}" '
                f'stroke="#222" stroke-dasharray="3,2"><title>bound {bound:g}{unit}'
                "</title></line>"
            )
    return _frame(WIDTH, height, body, title)
