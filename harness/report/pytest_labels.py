"""pytest plugin: allure labels, evidence attachments, and the catalogue guard.

Every test gets labels the report groups by — conformance id and area, target, backend,
client, fault, defects — and a test that names a conformance id missing from the catalogue
is a collection error. Histories registered by a test (`evidence.history(path)` or a
`("history", path)` user property) and checker results are attached to its allure result,
so the report can put the evidence one click away. Without `--alluredir` the labels cost
nothing: allure's dynamic API is a no-op when its listener is not active.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import allure
import pytest

from harness.catalogue import CATALOGUE
from harness.report.model import RUN_FILE_SUFFIX

CLIENT_PARAMS = ("client", "client_name", "writer_name", "reader_name")
FAULT_PARAMS = ("fault", "toxic", "defect")
_STARTED = pytest.StashKey[float]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unknown = sorted(
        {
            f"{item.nodeid}: {mark.args[0]!r}"
            for item in items
            for mark in item.iter_markers("conformance")
            if not mark.args or mark.args[0] not in CATALOGUE
        }
    )
    if unknown:
        raise pytest.UsageError(
            "conformance ids missing from harness/catalogue.py (add them there):\n  "
            + "\n  ".join(unknown)
        )


def target_label(spec: Any) -> str:
    """The target as report columns name it: a reference server's profile is part of it,
    so runs of both profiles stand side by side instead of merging."""
    profile = getattr(spec, "profile", "protocol")
    return spec.target if profile == "protocol" else f"{spec.target} ({profile})"


def _suite_area(item: pytest.Item) -> str:
    parts = Path(str(item.path)).parts
    if "suites" in parts:
        index = parts.index("suites")
        if index + 1 < len(parts) - 1:
            return parts[index + 1]
    if "tests" in parts:
        index = parts.index("tests")
        if index + 1 < len(parts) - 1:
            return f"tests/{parts[index + 1]}"
    return "other"


def _spec(config: pytest.Config) -> Any:
    from harness.plugin import spec_of

    return spec_of(config)


def labels_for(item: pytest.Item) -> dict[str, str]:
    labels: dict[str, str] = {"suite_area": _suite_area(item)}
    mark = item.get_closest_marker("conformance")
    if mark and mark.args:
        check = CATALOGUE[mark.args[0]]
        labels.update(conformance_id=check.id, area=check.area, section=check.section)
    spec = _spec(item.config)
    if spec is not None:
        labels.update(
            target=target_label(spec), backend=spec.backend, seed=str(spec.seed),
            session=_run_session(item.config) or spec.session,
        )
        if spec.defects:
            labels["defects"] = ",".join(spec.defects)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec else {}
    clients = [str(params[p]) for p in CLIENT_PARAMS if p in params]
    if clients:
        labels["client"] = " → ".join(dict.fromkeys(clients))
    faults = [f"{p}={params[p]}" for p in FAULT_PARAMS if p in params]
    if faults:
        labels["fault"] = ", ".join(faults)
    return labels


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, value in labels_for(item).items():
        allure.dynamic.label(name, value)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when == "teardown":
        # At teardown, not after the call: a history fixture registers its file as it closes
        # it (suites/clients), and one that samples in the background (membership) has
        # written its last ops only then. The allure result is still open here.
        attached = set()
        for name, value in item.user_properties:
            path = Path(str(value))
            if name == "history" and path not in attached and path.exists():
                attached.add(path)
                attach_file(path, "history")
    if call.when == "call":
        if report.failed:
            for title, text in report.sections:
                if title.startswith("cluster logs"):
                    allure.attach(text, name=title, attachment_type=allure.attachment_type.TEXT)
    return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """A vacuous run (harness.checkers.reach) is its own outcome in the terminal too."""
    if report.skipped and isinstance(report.longrepr, tuple):
        from harness.report.model import is_vacuous

        if is_vacuous(str(report.longrepr[2])):
            return "vacuous", "V", "VACUOUS"
    return None


def _workers(config: pytest.Config) -> int | None:
    """xdist workers of the run (None: not parallel)."""
    workers = getattr(config.option, "numprocesses", None)
    return workers if isinstance(workers, int) and workers > 0 else None


def attach_file(path: Path, name: str) -> None:
    kind = allure.attachment_type.JSON if path.suffix == ".json" else allure.attachment_type.TEXT
    if path.suffix == ".jsonl":
        allure.attach.file(str(path), name=name, extension="jsonl")
    else:
        allure.attach.file(str(path), name=name, attachment_type=kind)


class Evidence:
    """What a test hands to the report: histories, checker results, figures."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item

    def history(self, path: Path) -> None:
        self.item.user_properties.append(("history", str(path)))

    def result(self, name: str, result: Any) -> None:
        data = result.to_json() if hasattr(result, "to_json") else result
        allure.attach(
            json.dumps(data, default=str),
            name=f"checker:{name}",
            attachment_type=allure.attachment_type.JSON,
        )

    def figures(self, name: str, data: dict[str, Any]) -> None:
        allure.attach(
            json.dumps(data, default=str),
            name=f"figures:{name}",
            attachment_type=allure.attachment_type.JSON,
        )


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Iterator[Evidence]:
    yield Evidence(request.node)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STARTED] = time.time()


def _run_session(config: pytest.Config) -> str | None:
    from harness.plugin import run_session

    return run_session(config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the run's header facts beside the allure results, for the report (once per run:
    by the xdist controller, not by each worker)."""
    alluredir = getattr(session.config.option, "allure_report_dir", None)
    if not alluredir or hasattr(session.config, "workerinput"):
        return
    spec = _spec(session.config)
    started = session.config.stash.get(_STARTED, time.time())
    run = {
        "started": started,
        "duration_s": round(time.time() - started, 1),
        "args": list(session.config.invocation_params.args),
        "target": target_label(spec) if spec is not None else None,
        "backend": getattr(spec, "backend", None),
        "nodes": getattr(spec, "nodes", None),
        "seed": getattr(spec, "seed", None),
        "defects": list(getattr(spec, "defects", ()) or ()),
        "toxiproxy": (
            "off"
            if spec is not None and not spec.toxiproxy
            else (spec.toxiproxy_url if spec is not None and spec.toxiproxy_url else "embedded")
        ),
        "session": getattr(spec, "session", None),
        "workers": _workers(session.config),
        "exit_status": int(session.exitstatus),
    }
    out = Path(alluredir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{run['session'] or int(started)}{RUN_FILE_SUFFIX}"
    (out / name).write_text(json.dumps(run, indent=2))
