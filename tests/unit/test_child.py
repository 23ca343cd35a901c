"""run/child.py: the one way a run starts a child pytest (the --llm-batch recording pass, the gate's redraws): which
arguments and environment it keeps, and a real child run with the run's xdist and files left out."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pytest_llmeval.run.child import NO_MAXFAIL, child_command, child_env, kept_args, run_child

RUN = ["cases/", "-n", "2", "-n2", "-nauto", "--dist=loadscope", "--dist", "load", "--numprocesses", "4",
       "--maxprocesses=3", "--tx", "popen", "--max-worker-restart", "1", "--llm=openai/m", "--junitxml", "out.xml",
       "--junit-xml=o.xml", "--basetemp=/tmp/x", "--basetemp", "/tmp/y", "--llm-results", "r.json",
       "--llm-results=r2.json", "--llm-resume", "-f", "--looponfail", "-k", "geo", "-m", "not slow",
       "--llm-baseline=b.json", "--llm-repeat", "3", "-p", "no:cacheprovider", "-x", "-q"]
KEPT = ["cases/", "--llm=openai/m", "-k", "geo", "-m", "not slow", "--llm-baseline=b.json", "-p", "no:cacheprovider",
        "-x", "-q"]


def test_the_run_s_xdist_options_and_files_are_left_out() -> None:
    assert kept_args(RUN) == [*KEPT[:7], "--llm-repeat", "3", *KEPT[7:]]
    # A child that sets its own repeat (the redraws) leaves that out too, in both spellings.
    assert kept_args(RUN, drop=("--llm-repeat",)) == KEPT
    assert kept_args(["--llm-repeat=2", "-k", "x"], drop=("--llm-repeat",)) == ["-k", "x"]
    # Nothing that merely starts like a dropped option is dropped.
    assert kept_args(["--no-header", "--llm-results-dir=x", "-nothing-else"]) == ["--no-header",
                                                                                  "--llm-results-dir=x",
                                                                                  "-nothing-else"]


def test_the_redraws_use_the_same_filter() -> None:
    from pytest_llmeval.run.redraw import _kept

    assert _kept(RUN) == KEPT


def test_the_environment_of_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 2 --dist=load --llm-results 'my results.json' -k 'geo or ocean' -rA")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "/tmp/summary.md")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-kept-for-the-child-0123")
    env = child_env({"LLMEVAL_X": "1"})
    assert shlex.split(env["PYTEST_ADDOPTS"]) == ["-k", "geo or ocean", "-rA"]
    assert not {"GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"} & set(env)
    assert env["LLMEVAL_X"] == "1" and env["OPENAI_API_KEY"] == "sk-kept-for-the-child-0123"
    monkeypatch.setenv("PYTEST_ADDOPTS", "--llm-repeat=4 -q")
    assert child_env(drop=("--llm-repeat",))["PYTEST_ADDOPTS"] == "-q"


def test_a_child_runs_alone_with_its_own_files(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_one="def test_one():\n    assert True\n")
    # The run's own options, from the command line, PYTEST_ADDOPTS and the ini file: -n 2 everywhere.
    pytester.makeini("[pytest]\naddopts = -n 2 --junitxml=run.xml\n")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-n 2 --dist=load")
    config = pytester.parseconfigure("-n", "2", "--basetemp", str(pytester.path / "run-tmp"))
    folder = pytester.path / "child"
    folder.mkdir()
    command = child_command(config, folder, ["-q"])
    assert command[-1] == "-q" and "-n0" in command and NO_MAXFAIL in command
    assert f"--junitxml={folder / 'junit.xml'}" in command  # the ini file's junit XML: moved to the child's folder
    assert f"--basetemp={folder / 'basetemp'}" in command and str(pytester.path / "run-tmp") not in command
    child = run_child(config, folder, ["-q", "-rA"])
    assert child.returncode == 0, child.tail()
    out = child.tail()
    assert "1 passed" in out and "workers" not in out  # xdist's -n 2 of all three sources is off
    assert (folder / "junit.xml").exists() and not (Path(pytester.path) / "run.xml").exists()
