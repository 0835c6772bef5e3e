"""Run the suites each seeded refserver defect should fail, once per defect and once healthy.

Every defect must be caught (some selected test fails, with the anomaly in its message) and
the healthy run must pass. The table is printed and written as defect-matrix.json beside
the allure results, where the HTML report shows it.

With `runs=N` (`--runs N`) every selection runs N times: a defect's row says in how many
runs it was caught and its median runs-to-catch (harness.matrix.runs); it counts as caught
if some run caught it, while a control must miss it in all N runs and the healthy run must
be clean in all N. The N runs are one pytest invocation with `--repeat N` (harness.repeat):
run i is repeat i of every selected test, so pytest starts once per selection and, with
`-n W` among the pytest arguments, the repeats spread over W workers, each with clusters of
its own. `separate=True` (`--separate-runs`) starts pytest N times instead, every run on
fresh clusters, for a defect whose damage could outlive a test in its module's cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import HarnessError
from harness.matrix.runs import caught_text, median_runs_to_catch
from harness.repeat import base_nodeid, repeat_of
from harness.targets import settings_for
from harness.targets.settings import TargetSettings
from harness.topology import build_spec

# defect -> (pytest paths, -k expression): the checks whose property the defect breaks.
TARGETS: dict[str, tuple[tuple[str, ...], str]] = {
    "ack-before-durable": (("suites/durability/test_durability.py",), "kill-store"),
    "never-confirm": (
        ("suites/membership/test_membership.py",),
        "test_failure_detected_within_bound and kill-one and n3",
    ),
    "no-refute": (
        ("suites/membership/test_membership.py",),
        "test_failure_detected_within_bound and pause-one and n3",
    ),
    "no-new-members": (
        ("suites/membership/test_membership.py",),
        "test_new_node_joins_within_bound and n3",
    ),
    "stale-owner": (
        ("suites/clients/test_client_behaviour.py",),
        "test_append_continues_after_owner_fails and raw and kill",
    ),
    "redeliver-acked": (("suites/api/test_subscriptions.py",), "test_acked_not_redelivered"),
    "no-redelivery": (
        ("suites/api/test_subscriptions.py",),
        "test_unacked_redelivered_after_timeout",
    ),
    "reorder-reads": (
        ("suites/api/test_readers.py",),
        "test_reader_from_earliest or test_read_stream_all_shards",
    ),
    "lost-checkpoint": (
        ("suites/durability/test_subscription_restart.py",),
        "test_consumer_resumes_from_checkpoint_after_restart",
    ),
    "renumber-resent": (
        ("suites/durability/test_queue.py",),
        "test_queue_through_a_kill_of_the_subscription_owner",
    ),
    "skip-held-back": (
        ("suites/durability/test_queue.py",),
        "test_queue_through_slow_consumers",
    ),
    "ack-on-sequence": (
        ("suites/durability/test_queue.py",),
        "test_queue_through_a_store_kill",
    ),
    # A kill of the node running the source's task, and the stream judged against the
    # committed checkpoint before the read resumes elsewhere: killing only the connector
    # lets the task append what it held back, and Faker's resumed read re-emits the rest.
    "io-checkpoint-before-append": (
        ("suites/io/test_pipeline.py",),
        "test_pipeline_server_running_the_tasks_killed",
    ),
    "checkpoint-on-send": (
        ("suites/durability/test_role_faults.py",),
        "test_unacked_redelivered_after_the_subscription_owner_is_killed",
    ),
    "wall-clock-deadlines": (
        ("suites/durability/test_clock.py",),
        "test_no_redelivery_before_ack_deadline_across_clock_bump",
    ),
    "fsync-lie": (
        ("suites/durability/test_disk.py",),
        "test_acked_appends_survive_a_crash_that_loses_unsynced_writes",
    ),
    "starved-probes": (
        ("suites/membership/test_pressure.py",),
        "test_no_false_death_under_pressure and stress-cpu",
    ),
    "leave-tombstone": (
        ("suites/membership/test_changes.py",),
        "test_rolling_restart_converges",
    ),
}


# defect -> (pytest paths, -k expression): the same property checked under the faults we had
# before the fault that exposes this defect. With the defect on these must still pass: the
# defect is missed by the old faults, which is the proof that its new fault adds power. A
# control that fails says the new fault was not needed to catch it.
CONTROLS: dict[str, tuple[tuple[str, ...], str]] = {
    # A kill of a node that is not the subscription's owner: no takeover happens.
    "checkpoint-on-send": (
        ("suites/durability/test_role_faults.py",),
        "test_unacked_redelivered_after_another_node_is_killed",
    ),
    "wall-clock-deadlines": (
        ("suites/durability/test_clock.py",),
        "test_no_redelivery_before_ack_deadline_across_owner_pause",
    ),
    # A kill -9 of the store keeps the page cache: what it wrote without fsync survives.
    "fsync-lie": (
        ("suites/durability/test_disk.py",),
        "test_acked_appends_survive_a_store_kill",
    ),
    # A killed or paused peer really is gone: timing it out and confirming it is right.
    "starved-probes": (
        ("suites/membership/test_pressure.py",),
        "test_no_false_death_when_a_peer_fails",
    ),
    # A kill -9 sends no leave: a node killed and restarted comes back as before.
    "leave-tombstone": (
        ("suites/membership/test_changes.py",),
        "test_every_node_killed_and_restarted_in_turn_converges",
    ),
}


# defect -> why its broken property cannot be seen on a target that runs with these
# settings (None: it can). Such a row is "n/a" with the reason, never "MISSED".
UNOBSERVABLE: dict[str, Callable[[TargetSettings], str | None]] = {
    # Suspect and dead look the same where member lists hold alive members only (real
    # HStreamDB, hstream-gossip Utils.hs:296-309): a suspect that is never confirmed is
    # already gone from every view a client can read.
    "never-confirm": lambda s: (
        "suspect and dead look the same to clients (alive-only member lists)"
        if s.member_lists == "alive-only" else None),
    # The defect lives in the suspicion path; a prober that confirms after one probe
    # interval itself (HStreamDB v0.20, hstream-gossip Probe.hs:111-137) never takes it.
    "starved-probes": lambda s: (
        "the target's prober confirms after a probe interval, without the suspicion path "
        "the defect breaks" if s.gossip.confirmation == "one-probe-interval" else None),
    # The defect lives in the check of maxUnackedRecords before each batch a read returned;
    # a server that checks it once per read and sends the whole read (HStreamDB v0.20,
    # Core/Subscription.hs:562,628-635,669) never holds back part of a read.
    "skip-held-back": lambda s: (
        "the target checks maxUnackedRecords once per read and sends all of it, so no read "
        "is held back in part" if s.deviates("unacked_checked_per_read") else None),
    # No leave is ever announced where SIGTERM just ends the server (HStreamDB v0.20).
    "leave-tombstone": lambda s: (
        "the target announces no leave (SIGTERM just ends it)"
        if s.deviates("silent_leave") else None),
}


def settings_of_run(extra: list[str]) -> TargetSettings | None:
    """What the matrix's runs' target reports, from the pytest arguments that choose it."""
    wanted: dict[str, str] = {}
    for i, arg in enumerate(extra):
        for option in ("--target", "--profile", "--topology"):
            if arg == option and i + 1 < len(extra):
                wanted[option[2:]] = extra[i + 1]
            elif arg.startswith(option + "="):
                wanted[option[2:]] = arg.split("=", 1)[1]
    try:
        spec = build_spec(wanted.pop("topology", None), **wanted)
        return settings_for(spec)
    except HarnessError:
        return None  # the runs themselves report the problem


@dataclass
class Outcome:
    defect: str  # "healthy" for the run without one
    selected: int = 0
    failed: list[str] = field(default_factory=list)
    anomaly: str = ""
    seconds: float = 0.0
    exit_code: int = 0
    not_applicable: str = ""  # why the defect's property cannot be seen on this target
    control: Outcome | None = None  # the defect under the old faults (CONTROLS), if it has one
    runs: list[Outcome] = field(default_factory=list)  # each run, when run N > 1 times

    @property
    def run_caught(self) -> list[bool]:
        """Whether each run, in order, failed some selected test (one entry for one run)."""
        return [bool(r.failed) for r in self.runs] if self.runs else [self.caught]

    @property
    def caught(self) -> bool:
        return bool(self.failed)

    def to_json(self) -> dict[str, object]:
        return {
            "defect": self.defect,
            "caught": self.caught,
            "selected": self.selected,
            "failed_suites": sorted({name.split("::")[0] for name in self.failed}),
            "failed_tests": self.failed,
            "anomaly": self.anomaly,
            "seconds": round(self.seconds, 1),
            "not_applicable": self.not_applicable,
            **({"control": {"selected": self.control.selected,
                            "failed_tests": self.control.failed,
                            "missed": self.control.passed,
                            "runs": len(self.control.run_caught),
                            "missed_runs": self.control.run_caught.count(False)}}
               if self.control is not None else {}),
            **({} if self.not_applicable else {
                "runs": len(self.run_caught),
                "caught_runs": self.run_caught.count(True),
                "run_caught": self.run_caught,
                "median_runs_to_catch": median_runs_to_catch(self.run_caught),
            }),
        }

    @property
    def passed(self) -> bool:
        return not self.failed and self.exit_code == 0 and self.selected > 0


@dataclass
class _Cases:
    """What one run's test cases in a JUnit file did."""

    selected: int = 0
    failed: list[str] = field(default_factory=list)
    anomaly: str = ""  # the first failure's message, its first line
    seconds: float = 0.0


def _junit_runs(path: Path) -> dict[int, _Cases]:
    """The JUnit file's test cases by run: repeat index -> cases, names without the repeat's
    id piece; a file without repeats is run 1."""
    if not path.exists():
        return {}
    runs: dict[int, _Cases] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        index = (repeat_of(name) or (1, 1))[0]
        cases = runs.setdefault(index, _Cases())
        cases.selected += 1
        cases.seconds += float(case.get("time") or 0)
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            cases.failed.append(base_nodeid(name))
            if not cases.anomaly:
                cases.anomaly = (problem.get("message") or "").splitlines()[0][:300]
    return runs


def _junit(path: Path) -> tuple[int, list[str], str]:
    cases = _junit_runs(path).get(1, _Cases())
    return cases.selected, cases.failed, cases.anomaly


def _file_stem(name: str, label: str) -> str:
    """The name of a run's log and JUnit files under the matrix's folder."""
    return f"{name}.{label.replace(' ', '-')}" if label else name


def run_one(
    defect: str | None,
    paths: tuple[str, ...],
    expression: str,
    out: Path,
    extra: list[str],
    label: str = "",
) -> Outcome:
    name = defect or "healthy"
    files = _file_stem(name, label)
    junit = out / f"{files}.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        *paths,
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        f"--junitxml={junit}",
        *extra,
    ]
    if expression:
        argv += ["-k", expression]
    if defect:
        argv += ["--defect", defect]
    selection = " ".join(paths) + (f" -k {expression!r}" if expression else "")
    print(f"== {name}{f' ({label})' if label else ''}: pytest {selection}", flush=True)
    started = time.monotonic()
    finished = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (out / f"{files}.log").write_text(finished.stdout)
    selected, failed, anomaly = _junit(junit)
    return Outcome(name, selected, failed, anomaly, time.monotonic() - started, finished.returncode)


def merge_runs(runs: list[Outcome]) -> Outcome:
    """One row from N runs of the same selection: failed tests of every run (so it is caught
    if any run caught, and passed only if every run passed), the fewest selected, the first
    failing exit code and anomaly, the total time; the runs are kept in `runs`."""
    if len(runs) == 1:
        return runs[0]
    failed = list(dict.fromkeys(name for r in runs for name in r.failed))
    return Outcome(
        runs[0].defect,
        selected=min(r.selected for r in runs),
        failed=failed,
        anomaly=next((r.anomaly for r in runs if r.anomaly), ""),
        seconds=sum(r.seconds for r in runs),
        exit_code=next((r.exit_code for r in runs if r.exit_code), 0),
        runs=list(runs),
    )


def run_times(
    times: int,
    defect: str | None,
    paths: tuple[str, ...],
    expression: str,
    out: Path,
    extra: list[str],
    label: str = "",
    separate: bool = False,
) -> Outcome:
    """The selection run `times` times, merged: one pytest with `--repeat times` whose
    repeats are split back into runs, or with `separate` `run_one` `times` times (each run's
    files named by its number)."""
    if times == 1:
        return run_one(defect, paths, expression, out, extra, label)
    if separate:
        return merge_runs([
            run_one(defect, paths, expression, out, extra,
                    f"{label} run {i} of {times}" if label else f"run {i} of {times}")
            for i in range(1, times + 1)
        ])
    whole_label = f"{label} {times} runs" if label else f"{times} runs"
    whole = run_one(defect, paths, expression, out, [*extra, "--repeat", str(times)],
                    whole_label)
    by_run = _junit_runs(out / f"{_file_stem(whole.defect, whole_label)}.xml")
    runs = []
    for i in range(1, times + 1):
        cases = by_run.get(i, _Cases())
        # A run's exit code: pytest's own when that run failed a test or when pytest itself
        # broke (neither 0 nor 1: a usage, collection or internal error), else clean.
        broke = whole.exit_code not in (0, 1)
        code = whole.exit_code if cases.failed or broke or not cases.selected else 0
        runs.append(Outcome(whole.defect, cases.selected, cases.failed, cases.anomaly,
                            cases.seconds, code))
    merged = merge_runs(runs)
    merged.seconds = whole.seconds  # the wall time of the one invocation
    return merged


def run_matrix(
    out: Path, extra: list[str], only: list[str] | None = None, runs: int = 1,
    separate: bool = False,
) -> list[Outcome]:
    """Each chosen defect's checks (and its control's) and then the healthy run, each selection
    `runs` times (see run_times for `separate`)."""
    if runs < 1:
        raise HarnessError(f"the defect matrix needs 1 or more runs per selection, not {runs}")
    out.mkdir(parents=True, exist_ok=True)
    chosen = only or list(TARGETS)
    settings = settings_of_run(extra)
    outcomes: list[Outcome] = []
    for defect in chosen:
        reason = UNOBSERVABLE[defect](settings) if settings and defect in UNOBSERVABLE else None
        if reason:
            print(f"== {defect}: not run on {settings.label if settings else '?'}: {reason}",
                  flush=True)
            outcomes.append(Outcome(defect, not_applicable=reason))
        else:
            outcome = run_times(runs, defect, *TARGETS[defect], out, extra,
                                separate=separate)
            if defect in CONTROLS:
                control = run_times(runs, defect, *CONTROLS[defect], out, extra,
                                    label="old faults", separate=separate)
                outcome.control = control
            outcomes.append(outcome)
    # The healthy run selects the union of what the defects and their controls selected.
    selections = [TARGETS[d] for d in chosen] + [CONTROLS[d] for d in chosen if d in CONTROLS]
    every_path = tuple(sorted({p for paths, _ in selections for p in paths}))
    expression = " or ".join(f"({k})" for _, k in selections if k)
    if any(not k for _, k in selections):
        expression = ""
    outcomes.append(run_times(runs, None, every_path, expression, out, extra,
                              separate=separate))
    return outcomes


def control_verdict(o: Outcome) -> str:
    """What the faults we had did to this defect: "missed" is what a new fault's defect
    must show (its fault adds power); "caught too" says the old faults already catch it."""
    if o.control is None:
        return "-"
    if o.control.passed:
        return "missed"
    if not o.control.failed:
        return "no run"
    runs = o.control.run_caught
    return "caught too" if len(runs) == 1 else f"caught too ({caught_text(runs)})"


def table(outcomes: list[Outcome]) -> str:
    rows = [("defect", "verdict", "old faults", "caught in", "median runs to catch", "tests",
             "failed", "anomaly found")]
    for o in outcomes:
        if o.defect == "healthy":
            verdict = "clean" if not o.failed and o.exit_code == 0 else "FAILED"
        elif o.not_applicable:
            verdict = "n/a"
        else:
            verdict = "caught" if o.caught else "MISSED"
        if o.defect == "healthy" or o.not_applicable:
            caught_in = median = "-"
        else:
            caught_in, median = caught_text(o.run_caught), str(median_runs_to_catch(o.run_caught))
        rows.append((o.defect, verdict, control_verdict(o), caught_in, median, str(o.selected),
                     str(len(o.failed)), (o.not_applicable or o.anomaly)[:90]))
    last = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(last)]
    return "\n".join(
        "  ".join(r[i].ljust(widths[i]) for i in range(last)) + "  " + r[last] for r in rows
    )


def healthy_and_all_caught(outcomes: list[Outcome]) -> bool:
    """Every defect caught (or n/a), every control missed by the old faults, the healthy run
    clean."""
    healthy = [o for o in outcomes if o.defect == "healthy"]
    return (
        all(o.caught or o.not_applicable for o in outcomes if o.defect != "healthy")
        and all(o.control is None or o.control.passed for o in outcomes)
        and all(o.passed for o in healthy)
    )


def write_json(outcomes: list[Outcome], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "defect-matrix.json"
    path.write_text(json.dumps({"rows": [o.to_json() for o in outcomes]}, indent=1))
    return path
