"""The page in a real browser: headless Chromium renders it offline, with matrix and plots."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report.html import render
from harness.report.model import build, load_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
)


def chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def page(tmp_path: Path, result, chaos_results: Path) -> Path:
    """An api run with a history, and a membership and a durability test with theirs."""
    import json

    d = chaos_results
    t0 = 10**12
    ops = [
        {
            "index": i,
            "process": "probe",
            "type": "ok",
            "f": "view",
            "time": t0 + i * 5 * 10**8,
            "value": {
                "observer": o,
                "view": {"1": "alive", "2": "alive" if i < 6 else "dead", "3": "alive"},
            },
        }
        for i in range(12)
        for o in (1, 3)
    ]
    ops.insert(
        6,
        {
            "index": 99,
            "process": "nemesis",
            "type": "ok",
            "f": "kill",
            "time": t0 + 25 * 10**8,
            "value": {"down": [2]},
        },
    )
    (d / "h-attachment.jsonl").write_text("\n".join(json.dumps(op) for op in ops))
    result(
        d,
        "test_kill_detected",
        "passed",
        check="api.cluster.describe",
        attachments=[{"name": "history", "source": "h-attachment.jsonl", "type": "text/plain"}],
    )
    result(d, "test_tail", "failed", check="api.append.tail", message="tail 3, want 4")
    result(
        d,
        "test_key",
        "skipped",
        check="api.lookup.key",
        client="python",
        message="XFAIL known python deviation: stale lookups",
    )
    report = build(*load_results([d]), [d])
    out = tmp_path / "conformance.html"
    out.write_text(render(report, out))
    return out


def test_page_renders_offline_with_matrix_and_plots(page: Path, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="matrix"' in html and "api.append.tail" in html, "matrix missing"
    assert "<svg" in html and "views: test_kill_detected" in html, "membership plot missing"
    for kind in (
        "detection and agreement against the bound",
        "lost and duplicated records per fault",
        "views: test_failure_detected_within_bound[n3-kill-one]",
        "appends: test_no_acknowledged_record_lost[kill-one]",
    ):
        assert f'aria-label="{kind}"' in html, f"plot {kind!r} not rendered"
    assert 'class="badge fail"' in html and 'class="badge deviation"' in html

    shot = tmp_path / "report.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1300,1400", page.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: the page looks empty"
    keep = Path("reports") / "report-screenshot.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)
