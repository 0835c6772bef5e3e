"""Every fault a suite injects goes through the nemesis and is in the test's history.

Three checks, none of which re-runs a slow suite:

* the suites' source holds no direct fault call (a cluster's kill/pause/restart/partition/
  heal..., a Toxiproxy proxy's toxics or enable/disable, os.kill), found by walking the
  syntax tree, with file:line for each;
* every suite test that uses a nemesis is marked `nemesis`, so the audit in
  suites/conftest.py also fails it when it injected nothing;
* that audit's comparison (harness.nemesis.audit) on hand-made histories, and the audit
  hook itself in a small pytest run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_cluster import FakeCluster

from harness.history import History, Op
from harness.nemesis import FAULTS, Nemesis
from harness.nemesis.audit import Ledger, unrecorded

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "suites"

# Calls that inject or undo a fault when made on a cluster handle (or anything but a nemesis).
CLUSTER_FAULTS = {"kill", "pause", "resume", "restart", "partition", "heal", "kill_store",
                  "restart_store"}
# Calls that only Toxiproxy proxies and handles have.
PROXY_FAULTS = {"add_toxic", "destroy_toxic", "remove_toxic", "update_toxic", "set_enabled",
                "handle", "connect_toxiproxy"}
SIGNALS = {("os", "kill"), ("os", "killpg"), ("signal", "pthread_kill")}


def _name(node: ast.expr) -> str:
    """The last name of an expression: `observed.nemesis` -> nemesis, `cluster` -> cluster."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def direct_fault_calls(source: str, filename: str) -> list[str]:
    """file:line: code for each call in `source` that injects a fault without the nemesis."""
    found = []
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        hit = False
        if isinstance(func, ast.Attribute):
            receiver = _name(func.value)
            if func.attr in CLUSTER_FAULTS:
                hit = "nemesis" not in receiver.lower()
            elif func.attr == "join":  # str.join and Thread.join are no faults
                hit = "cluster" in receiver
            elif func.attr in PROXY_FAULTS:
                hit = True
            elif func.attr in ("enable", "disable") and not node.args and not node.keywords:
                hit = True
            elif func.attr == "send_signal":
                hit = True
            hit = hit or (receiver, func.attr) in SIGNALS
        elif isinstance(func, ast.Name):
            if func.id in PROXY_FAULTS:
                hit = True
            elif func.id == "getattr" and node.args and "cluster" in _name(node.args[0]):
                hit = True  # getattr(cluster, fault)(n)
        if hit:
            found.append(f"{filename}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def suite_files() -> list[Path]:
    return sorted(SUITES.rglob("*.py"))


def test_no_suite_calls_a_fault_directly():
    found = [
        line
        for path in suite_files()
        for line in direct_fault_calls(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, (
        "faults injected without the nemesis (their history would not hold them); use "
        "harness.nemesis.Nemesis(cluster, history).invoke(FAULTS[...].on(node)) instead:\n  "
        + "\n  ".join(found)
    )


@pytest.mark.parametrize(
    "code",
    [
        "cluster.kill(owner)",
        "cluster.join(4)",
        "getattr(cluster, fault)(owner)",
        "observed.cluster.restart(node.id)",
        "cluster.partition(isolate(owner, ids))",
        "cluster.heal()",
        "cluster.kill_store()",
        "cluster.proxy(1, 'client').handle().disable()",
        "proxy.add_toxic(name='t', type='latency', attributes={})",
        "proxy.destroy_toxic('t')",
        "proxy.enable()",
        "os.kill(pid, signal.SIGKILL)",
        "connect_toxiproxy(url).set_enabled('p', False)",
    ],
)
def test_the_scan_finds_each_kind_of_direct_fault_call(code):
    assert direct_fault_calls(f"x = 1\n{code}\n", "suite.py") != [], code
    assert direct_fault_calls(f"x = 1\n{code}\n", "suite.py")[0].startswith("suite.py:2: ")


def test_the_scan_lets_the_nemesis_and_other_calls_be():
    code = textwrap.dedent(
        """
        nemesis.heal()
        observed.nemesis.invoke(instance, "start")
        nemesis.join(4)
        "; ".join(parts)
        drainer.join(timeout=5)
        p.call("PauseConnector", request)
        driver.enable_tracing(True)
        """
    )
    assert direct_fault_calls(code, "suite.py") == []


def _is_nemesis_mark(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "nemesis" and (
        _name(node.value) == "mark"
    )


def unmarked_fault_tests(source: str, filename: str) -> list[str]:
    """Tests whose code names a nemesis but that carry no `nemesis` mark (nor their module)."""
    tree = ast.parse(source, filename)
    module_marked = any(
        isinstance(node, ast.Assign)
        and any(_name(t) == "pytestmark" for t in node.targets)
        and any(_is_nemesis_mark(n) for n in ast.walk(node.value))
        for node in tree.body
    )
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
            continue
        uses = "nemesis" in (ast.get_source_segment(source, node) or "").lower()
        marked = module_marked or any(
            _is_nemesis_mark(n) for d in node.decorator_list for n in ast.walk(d)
        )
        if uses and not marked:
            found.append(f"{filename}:{node.lineno}: {node.name}")
    return found


def test_every_suite_test_using_the_nemesis_is_marked_a_fault_test():
    found = [
        line
        for path in suite_files()
        for line in unmarked_fault_tests(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not found, (
        "fault tests without @pytest.mark.nemesis (the audit would not notice if they "
        "injected nothing):\n  " + "\n  ".join(found)
    )
    marked = [
        path for path in suite_files() if "pytest.mark.nemesis" in path.read_text()
    ]
    assert len(marked) >= 7, f"fewer suites with fault tests than expected: {marked}"


# -- the audit's comparison, on hand-made histories ---------------------------------------------


def nemesis_ops(*events: tuple[str, str, str | None]) -> list[Op]:
    """(type, f, action) triples as nemesis ops, in order."""
    return [
        Op(index=i, process="nemesis", type=kind, f=f,
           value=None if action is None else {"action": action}, time=i)
        for i, (kind, f, action) in enumerate(events)
    ]


def test_a_history_holding_every_fault_asked_for_passes():
    ops = nemesis_ops(
        ("invoke", "kill-one", "start"), ("ok", "kill-one", "start"),
        ("invoke", "restart-one", "start"), ("ok", "restart-one", "start"),  # kill phase
        ("invoke", "restart-one", "start"), ("ok", "restart-one", "start"),  # start phase
        ("invoke", "kill-one", "stop"), ("fail", "kill-one", "stop"),  # refused is recorded
        ("invoke", "heal", "heal"), ("info", "heal", "heal"),
    )
    asked = [("kill-one", "start"), ("restart-one", "start"), ("kill-one", "stop"),
             ("heal", "heal")]
    assert unrecorded(asked, ops) == []


def test_a_fault_missing_from_the_history_is_named():
    ops = nemesis_ops(("invoke", "kill-one", "start"), ("ok", "kill-one", "start"))
    asked = [("kill-one", "start"), ("client-down-all", "start"), ("kill-one", "start")]
    assert unrecorded(asked, ops) == [
        "client-down-all start: asked 1 time(s), the history has 0 invocation(s)",
        "kill-one start: asked 2 time(s), the history has 1 invocation(s)",
    ]


def test_a_fault_invoked_but_never_completed_is_named():
    ops = nemesis_ops(("invoke", "pause-one", "start"))
    assert unrecorded([("pause-one", "start")], ops) == [
        "pause-one start: invoked (op 0) but never completed"
    ]


def test_only_nemesis_ops_count():
    client = Op(index=0, process=1, type="invoke", f="kill-one", value={"action": "start"})
    assert unrecorded([("kill-one", "start")], [client]) == [
        "kill-one start: asked 1 time(s), the history has 0 invocation(s)"
    ]


def test_the_ledger_finds_faults_kept_nowhere_or_only_in_memory(tmp_path):
    cluster = FakeCluster()
    on_file = Nemesis(cluster, History(tmp_path / "h.jsonl"))
    before = Nemesis(cluster, None)  # made before the ledger opens, asked while it is open
    with Ledger() as ledger:
        on_file.invoke(FAULTS["kill-one"].on(1))
        before.invoke(FAULTS["kill-one"].on(2))
        Nemesis(cluster, History()).invoke(FAULTS["pause-one"].on(3))
    assert ledger.problems() == [
        "a nemesis without a history was asked for kill-one start",
        "a nemesis recorded pause-one start in a history kept only in memory",
    ]
    on_file.invoke(FAULTS["kill-one"].on(1), "stop")  # after the ledger closed: not in it
    assert len(ledger.nemeses) == 3
    with Ledger() as empty:
        pass
    assert empty.problems() == []
    assert empty.problems(fault_test=True) == [
        "this fault test asked the nemesis for no fault; inject faults through a "
        "harness.nemesis.Nemesis given the test's history"
    ]


def test_the_suites_audit_fails_a_test_whose_faults_miss_its_history(tmp_path):
    """The hook of suites/conftest.py in a small pytest run of its own."""
    (tmp_path / "conftest.py").write_text(
        "from suites.conftest import pytest_configure, pytest_runtest_call  # noqa: F401\n"
    )
    (tmp_path / "test_audited.py").write_text(textwrap.dedent(
        f"""
        import sys
        import pytest
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fake_cluster import FakeCluster
        from harness.history import History
        from harness.nemesis import FAULTS, Nemesis

        @pytest.mark.nemesis
        def test_recorded(tmp_path):
            Nemesis(FakeCluster(), History(tmp_path / "h.jsonl")).invoke(FAULTS["kill-one"].on(1))

        def test_unrecorded():
            Nemesis(FakeCluster()).invoke(FAULTS["kill-one"].on(1))

        @pytest.mark.nemesis
        def test_marked_but_injects_nothing():
            pass
        """
    ))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-rf", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    out = run.stdout + run.stderr
    assert "2 failed, 1 passed" in out, out
    assert "nemesis audit: a nemesis without a history was asked for kill-one start" in out, out
    assert "nemesis audit: this fault test asked the nemesis for no fault" in out, out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    # Under CI pytest adds " - <message>" to each summary line; the test name precedes it.
    assert [line.split(" - ", 1)[0].rsplit("::", 1)[-1] for line in failed] == [
        "test_unrecorded", "test_marked_but_injects_nothing"
    ], out
