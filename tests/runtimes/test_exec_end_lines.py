"""How the docker runtime tells an exec's lost output from an empty one: the command runs
under a shell that prints an end line with its status on stdout and on stderr once it ended
(harness.runtimes.docker.ended_argv); output without both, each with the exit status docker
reports, did not come back whole. Run here through a real shell, streams merged as docker
merges them; what the engine does with them is tests/harness/test_docker_cluster.py's."""

from __future__ import annotations

import subprocess

import pytest

from harness.runtimes.docker import EXEC_END, ended_argv, ended_output


def _run(argv: list[str]) -> tuple[int, bytes]:
    done = subprocess.run(ended_argv(argv, 10), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    return done.returncode, done.stdout


@pytest.mark.parametrize("argv,code,text", [
    (["true"], 0, ""),
    (["printf", "no newline"], 0, "no newline"),
    (["sh", "-c", "echo out; echo err >&2; exit 3"], 3, "out\nerr\n"),
    (["sh", "-c", "echo err >&2; printf out"], 0, "err\nout"),
])
def test_the_commands_own_output_and_status_come_back(argv: list[str], code: int,
                                                      text: str) -> None:
    status, output = _run(argv)
    assert status == code
    assert ended_output(status, output) == text


def test_a_command_past_its_timeout_ends_with_timeouts_status() -> None:
    done = subprocess.run(ended_argv(["sleep", "5"], 1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    assert done.returncode == 124 and ended_output(124, done.stdout) == ""


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda out: b"", id="nothing read"),
    pytest.param(lambda out: out[:out.index(EXEC_END.encode())], id="no end line"),
    pytest.param(lambda out: out[:out.rindex(EXEC_END.encode())], id="one stream's end only"),
    pytest.param(lambda out: out[:-1], id="an end line cut short"),
])
def test_output_without_both_end_lines_did_not_come_back_whole(mangle: object) -> None:
    status, output = _run(["sh", "-c", "echo out; echo err >&2"])
    assert ended_output(status, output) == "out\nerr\n"
    assert ended_output(status, mangle(output)) is None  # type: ignore[operator]


def test_end_lines_whose_status_is_not_the_exit_status_are_not_the_commands() -> None:
    status, output = _run(["sh", "-c", "exit 2"])
    assert ended_output(2, output) == ""
    assert ended_output(0, output) is None
