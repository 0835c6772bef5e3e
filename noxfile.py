"""Entry points people type: `nox -s conformance` (the main job) and `nox -s tests`.

Every session installs the project with `build-constraints.txt` as PIP_CONSTRAINT, because
the official `hstreamdb` client only builds with setuptools<81.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
REPORTS = ROOT / "reports"
CONSTRAINTS = {"PIP_CONSTRAINT": str(ROOT / "build-constraints.txt")}

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def install(session: nox.Session, *extras: str) -> None:
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target, env=CONSTRAINTS)


# The five conformance suites: the protocol API, the official clients, HStream IO, membership
# convergence under faults and durability (no acknowledged record lost) under faults.
SUITES = ("suites/api", "suites/clients", "suites/io", "suites/membership", "suites/durability")


def pytest_args(
    session: nox.Session, name: str, *paths: str, parallel: bool = True
) -> list[str]:
    """Common pytest arguments: allure results and JUnit XML under reports/, and parallel
    workers (see parallel_args)."""
    return [
        "pytest",
        *paths,
        f"--alluredir={REPORTS / 'allure-results'}",
        f"--junitxml={REPORTS / f'junit-{name}.xml'}",
        *(parallel_args(session.posargs) if parallel else []),
        *session.posargs,
    ]


def parallel_args(posargs: list[str]) -> list[str]:
    """`-n auto` (pytest-xdist, workers sized by harness.parallel for clusters that mostly
    wait). `loadscope`: a module's tests that share its cluster stay on one worker, so the
    cluster starts once; tests with their own clusters spread (harness/scheduling.py). A
    run that names its own worker count (`-n 0` for serial) or disables xdist keeps its
    choice."""
    chosen = any(
        arg in ("-n", "--numprocesses", "--dist") or arg.startswith(("-n", "--numprocesses="))
        or arg == "no:xdist"
        for arg in posargs
    )
    return [] if chosen else ["-n", "auto", "--dist", "loadscope"]


def fresh_results() -> None:
    """One run, one page: results of earlier runs would otherwise be merged into it. Cleaned
    here, once, not by each worker (allure's --clean-alluredir runs in every xdist worker
    and could delete results a faster worker already wrote)."""
    import shutil

    shutil.rmtree(REPORTS / "allure-results", ignore_errors=True)


@nox.session
def tests(session: nox.Session) -> None:
    """What CI runs: the tests of the harness, the reference server and the checkers, and
    the five conformance suites against the healthy reference cluster (they must pass there,
    or strict-xfail with a named finding)."""
    install(session)
    session.run(*pytest_args(session, "tests", "tests", *SUITES, "-p", "no:cacheprovider"))


@nox.session
def conformance(session: nox.Session) -> None:
    """The main job: the five conformance suites against the embedded reference cluster (or
    the target and backend given after `--`), in parallel, then the report."""
    install(session)
    fresh_results()
    session.run(*pytest_args(session, "conformance", *SUITES), success_codes=[0, 1])
    session.run("hstream-conformance", "report", "--results", str(REPORTS))
    failed = junit_failures(REPORTS / "junit-conformance.xml")
    if failed is None:
        # pytest exited 0 or 1 (anything else stops the session above) yet wrote no JUnit
        # file: it did not run, as with --install-only.
        session.log("no conformance results: pytest did not run")
        return
    if failed:
        session.error(f"{failed} conformance check(s) failed: see {REPORTS / 'conformance.html'}")


def junit_failures(path: Path) -> int | None:
    """Failures + errors in a JUnit file (the report is built first, then the verdict); None
    when there is no such file."""
    import xml.etree.ElementTree as ElementTree

    if not path.exists():
        return None
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    return sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)


@nox.session
def chaos(session: nox.Session) -> None:
    """Long or repeated fault runs of the membership and durability suites (serial unless
    `-- -n N` is given); `-- --defect-matrix` runs the defect matrix."""
    install(session)
    if "--defect-matrix" in session.posargs:
        rest = [arg for arg in session.posargs if arg != "--defect-matrix"]
        session.run("hstream-conformance", "defect-matrix", *rest)
        return
    session.run(
        *pytest_args(session, "chaos", "suites/membership", "suites/durability", parallel=False)
    )


@nox.session
def docker(session: nox.Session) -> None:
    """Docker-backend tests and a representative subset of the suites in containers."""
    install(session)
    session.run(*pytest_args(session, "docker", "tests", "-m", "docker"))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (figures, not verdicts): bring-up, proxies, checkers, load rates."""
    install(session)
    for script in sorted((ROOT / "benchmarks").glob("*_bench.py")):
        session.log(f"benchmark {script.name}")
        session.run("python", str(script), *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Build reports/conformance.html from the results already under reports/."""
    install(session)
    session.run("hstream-conformance", "report", "--results", str(REPORTS), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    install(session, "lint")
    session.run("ruff", "check", "harness", "refserver", "suites", "tests", "benchmarks")
    session.run("mypy", "harness", "refserver")
