"""The report's plots on hand-made data: each draws real data and is "" for none, and a page
built from chaos results (a membership and a durability history) carries all of them."""

from __future__ import annotations

import re

from harness.report import plots
from harness.report.html import render
from harness.report.model import build, load_results

T0 = 10**12  # the hand-made histories' origin (conftest.py)


def test_fault_windows_run_from_start_to_stop(membership_ops):
    assert plots.fault_windows(membership_ops, T0) == [(2.0, 5.0, "kill-one")]
    assert plots.fault_windows([], T0) == []


def test_membership_timeline(membership_ops):
    svg = plots.membership_timeline(membership_ops, "views: kill")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'aria-label="views: kill"' in svg
    # A lane per (observer, member); one box per run of equal states, not per sample.
    for lane in ("1→1", "1→2", "1→3", "3→1", "3→2", "3→3"):
        assert f">{lane}<" in svg
    boxes = re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})"/>', svg)
    assert len(boxes) == 4 * 1 + 2 * 4, boxes  # 4 lanes alive throughout, 2 change 3 times
    assert plots.STATE_COLOURS["dead"] in boxes and plots.STATE_COLOURS["suspect"] in boxes
    assert svg.count('class="fault"') == 1 and "kill-one 2.0-5.0s" in svg
    assert plots.membership_timeline([]) == ""
    no_views = [op for op in membership_ops if op["f"] != "view"]
    assert plots.membership_timeline(no_views) == ""


def test_membership_timeline_leaves_a_silent_observer_blank(membership_ops):
    """Observer 1 gave no view from 2.5 s to 5 s (killed): its lanes break there."""
    silent = [
        op for op in membership_ops
        if not (op["f"] == "view" and op["value"]["observer"] == "1"
                and T0 + 2.5 * 10**9 <= op["time"] < T0 + 5 * 10**9)
    ]
    svg = plots.membership_timeline(silent)
    [label_y] = re.findall(r'y="(\d+)" class="lane">1→1<', svg)
    box_y = int(label_y) - 7  # a lane's boxes sit 7 px above its label's baseline
    lane_1_1 = re.findall(rf'<rect x="([\d.]+)" y="{box_y}" width="([\d.]+)"', svg)
    assert len(lane_1_1) == 2, lane_1_1  # alive until 2.5 s, blank, alive again from 5 s
    (x0, w0), (x1, _) = [(float(x), float(w)) for x, w in lane_1_1]
    assert x0 + w0 < x1


def test_throughput_latency(durability_ops):
    svg = plots.throughput_latency(durability_ops, "appends: kill")
    assert svg.startswith("<svg") and 'aria-label="appends: kill"' in svg
    # Median and slowest latency, each broken where nothing completed (3.0-3.8 s: the
    # appends the fault held back complete from 3.9 s).
    assert svg.count("<polyline") == 2 * 2
    assert svg.count('class="fault"') == 1
    ticks = re.findall(r'class="(?:tick|lane)"[^>]*>([^<]*)<', svg)
    # Log latency axis up to the slowest (900 ms); 0.2 s buckets, 2 acks in each, and up to
    # 5 when the appends the fault held back complete beside the new ones: 25/s at the peak.
    assert ["1 ms", "10 ms", "100 ms", "1 s", "25/s"] == ticks[2:7]
    assert svg.count(": 2 indeterminate</title>") == 1  # both in one bucket
    assert plots.throughput_latency([]) == ""
    views_only = [{"process": "probe", "type": "ok", "f": "view", "time": T0}]
    assert plots.throughput_latency(views_only) == ""


def test_detection_vs_bound(membership_checker):
    figures = membership_checker["figures"]
    svg = plots.detection_vs_bound([("kill-one n3", figures)])
    assert svg.startswith("<svg")
    for metric in ("first suspicion", "confirmed dead", "full agreement"):
        assert metric in svg
    assert svg.count('class="bound"') == 3 and "bound 3.7 s" in svg
    assert "OVER THE BOUND" not in svg and svg.count("<circle") == 1 + 1 + 3
    slow = {**figures, "bound_s": 1.0}
    assert "OVER THE BOUND" in plots.detection_vs_bound([("slow", slow)])
    assert plots.detection_vs_bound([]) == ""
    bootstrap_without_values = {"bound_s": 3.7, "episodes": [], "epochs": []}
    assert plots.detection_vs_bound([("bootstrap", bootstrap_without_values)]) == ""


def test_records_per_fault(durability_ops, stream_set_checker):
    rows = plots.records_per_fault(durability_ops, stream_set_checker)
    # Lost: p-42 acked in the fault, p-10 before it. Duplicated: p-40 delivered a second
    # time by the subscription at 11 s, after the fault. The final read and the
    # subscription reading every record once each is no duplicate.
    assert rows == [
        ("kill-one 3.0-6.0s", 1, 0),
        ("after kill-one 3.0-6.0s", 0, 1),
        (plots.BEFORE, 1, 0),
    ]
    assert plots.records_per_fault(durability_ops) == [
        ("kill-one 3.0-6.0s", 0, 0),
        ("after kill-one 3.0-6.0s", 0, 1),
    ]
    capped = {**stream_set_checker, "counts": {"lost": 5}}
    assert ("unattributed", 3, 0) in plots.records_per_fault(durability_ops, capped)
    healthy = [op for op in durability_ops if op["process"] != "nemesis"]
    assert plots.records_per_fault(healthy) == [(plots.OUTSIDE, 0, 1)]
    assert plots.records_per_fault([]) == []
    views_only = [{"process": "probe", "type": "ok", "f": "view", "time": T0}]
    assert plots.records_per_fault(views_only) == []


def test_loss_per_fault():
    svg = plots.loss_per_fault([("kill-one · during 3.0-6.0s", 0, 2), ("outside", 1, 0)])
    assert svg.startswith("<svg") and "kill-one · during 3.0-6.0s" in svg
    assert "0 lost" in svg and "2 duplicated" in svg and "1 lost" in svg
    assert svg.count("<rect") == 2, "a bar for each non-zero count, none for a zero"
    assert plots.loss_per_fault([]) == ""


def test_page_of_chaos_results_has_every_plot(chaos_results, tmp_path):
    report = build(*load_results([chaos_results]), [chaos_results])
    page = render(report, tmp_path / "conformance.html")
    section = page[page.index('<section id="plots">') : page.index('<section id="details">')]
    labels = re.findall(r'<svg [^>]*aria-label="([^"]*)"', section)
    assert labels == [
        "detection and agreement against the bound",
        "lost and duplicated records per fault",
        "appends: test_no_acknowledged_record_lost[kill-one]",  # failed: first
        "views: test_failure_detected_within_bound[n3-kill-one]",
    ]
    assert "failure_detected_within_bound[n3-kill-one] · first suspicion" in section
    assert "kill-one · during 3.0-6.0s" in section and "1 lost" in section
    assert "kill-one · after 3.0-6.0s" in section and "1 duplicated" in section
    assert section.count('class="fault"') == 2, "the fault shaded on both histories"
    # Each result's evidence links to its plots.
    anchors = re.findall(r'<div class="plot-group" id="(plot-[^"]+)"', section)
    assert len(anchors) == 2 and all(f'href="#{a}"' in page for a in anchors)


def test_page_without_histories_has_no_plots(tmp_path, result):
    d = tmp_path / "r"
    result(d, "test_ok", "passed", check="api.append.record-ids")
    page = render(build(*load_results([d]), [d]), tmp_path / "page.html")
    assert 'id="plots"' not in page and "<svg" not in page
