"""A vacuous run end to end: a test whose kill lands, on purpose, on a node that owns nothing
the workload used ends as "vacuous" in pytest's terminal, in its allure result, and on the
page -- never as pass, never as fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from harness.report.html import render
from harness.report.model import build, is_vacuous, load_results

# The test run in a fresh pytest: a history where node 3, owner of nothing, is killed while
# an append to a shard of node 2 is in flight; it states it must reach a shard owner.
VACUOUS_TEST = textwrap.dedent('''
    from harness.checkers import reach
    from harness.history import Op

    def test_kill_of_a_node_owning_nothing():
        hit = {"nodes": [3], "store": False, "roles": {"3": []},
               "owners": {"shard-owner:s/1": 2}, "seeds": [], "shards": {}}
        ops = [
            Op(0, "p", "invoke", "append", {"stream": "s", "key": "k", "payload_id": "a"}, 1),
            Op(1, "nemesis", "invoke", "kill-one", {"action": "start", "hit": hit}, 2),
            Op(2, "nemesis", "ok", "kill-one", {"action": "start", "down": [3]}, 3),
            Op(3, "p", "ok", "append", {"stream": "s", "key": "k", "payload_id": "a",
                                        "shard": 1}, 4),
        ]
        reach.require_reached(ops, ("shard-owner", "in-flight-append"))

    def test_a_plain_pass():
        pass
''')


def test_a_kill_on_a_node_owning_nothing_is_vacuous_on_the_terminal_and_the_page(tmp_path):
    (tmp_path / "test_vacuous_run.py").write_text(VACUOUS_TEST)
    results = tmp_path / "allure"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-v", f"--alluredir={results}", str(tmp_path / "test_vacuous_run.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out  # vacuous is not a failure
    assert "1 passed, 1 vacuous" in out, out
    assert "test_kill_of_a_node_owning_nothing VACUOUS" in out, out

    report = build(*load_results([results]), [results])
    outcomes = {r.name: r.outcome for r in report.results}
    assert outcomes == {"test_kill_of_a_node_owning_nothing": "vacuous", "test_a_plain_pass":
                        "pass"}
    assert report.counts() == {"pass": 1, "vacuous": 1}
    [vacuous] = [c for row in report.rows for c in row.cells.values() if c.outcome == "vacuous"]
    assert "no fault reached all of shard-owner, in-flight-append" in vacuous.detail
    assert "node 3: no role" in vacuous.detail
    text = render(report, tmp_path / "page.html")
    assert '<span class="vacuous">1 vacuous</span>' in text  # the summary's own pill
    assert 'class="badge vacuous"' in text


def test_a_vacuous_attempt_never_merges_into_pass(tmp_path, result):
    d = tmp_path / "r"
    result(d, "test_x", "passed", check="api.append.record-ids", stop=1000)
    result(d, "test_x", "skipped", check="api.append.record-ids", stop=2000,
           message="Skipped: vacuous: the faults did not reach what this test is about: x")
    result(d, "test_y", "skipped", check="api.append.tail",
           message="Skipped: Erlang driver not built")
    report = build(*load_results([d]), [d])
    outcomes = {row.check_id: cell.outcome for row in report.rows for cell in row.cells.values()}
    assert outcomes == {"api.append.record-ids": "vacuous", "api.append.tail": "skipped"}
    assert is_vacuous("vacuous: x") and is_vacuous("Skipped: vacuous: x")
    assert not is_vacuous("Skipped: a reason mentioning vacuous: later")
