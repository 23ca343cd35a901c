"""Throughput and resilience: in-process concurrency, retries, budgets, the journal and --llm-resume, routing,
streaming. Faults are injected by the scripted server (latency, 429 with Retry-After, 500, resets, hangs);
concurrency is read off the server (requests in flight), never off a clock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Project
from pytest_llmeval.results.journal import finished, read_run


def suite(n: int, name: str = "many") -> str:
    lines = [f"suite: {name}", "params: {temperature: 0, max_tokens: 8}", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i:02d}", f"    question: 'Question {i:02d}: say ok.'", "    expect: [{contains: ok}]"]
    return "\n".join(lines) + "\n"


def questions(project: Project) -> list[str]:
    return [r["messages"][-1]["content"] for r in project.server.requests]


# ------------------------------------------------------------------------------------------ concurrency


def test_concurrency_keeps_n_requests_in_flight_and_results_in_order(project: Project) -> None:
    project.write("cases/many.yaml", suite(12))
    project.server.default = "ok"
    project.server.latency = 0.3
    result = project.run("--llm-concurrency=4", "-v")
    result.assert_outcomes(passed=12)
    assert project.server.max_in_flight == 4  # the pool's size: never more, and it did fill up
    result.stdout.fnmatch_lines([f"cases/many.yaml::c{i:02d}?openai/test-model? PASSED*" for i in range(12)])
    assert [c["case_id"] for c in project.results()["cases"]] == [f"c{i:02d}" for i in range(12)]


def test_concurrency_one_is_one_call_at_a_time(project: Project) -> None:
    project.write("cases/many.yaml", suite(5))
    project.server.default = "ok"
    project.server.latency = 0.1
    project.run("--llm-concurrency=1").assert_outcomes(passed=5)
    assert project.server.max_in_flight == 1


def test_deselected_items_cause_no_requests(project: Project) -> None:
    project.write("cases/many.yaml", suite(20))
    project.server.default = "ok"
    project.run("--llm-concurrency=8", "-k", "c03 or c07 or c15").assert_outcomes(passed=3, deselected=17)
    assert sorted(questions(project)) == ["Question 03: say ok.", "Question 07: say ok.", "Question 15: say ok."]


def test_exitfirst_stops_issuing_calls(project: Project) -> None:
    project.write("cases/many.yaml", suite(40))
    project.server.answer("Question 00", "no")  # the first case fails
    project.server.default = "ok"
    project.server.latency = 0.2
    result = project.run("--llm-concurrency=2", "-x")
    result.assert_outcomes(failed=1)
    # Ahead of the first item: at most the window (2 x concurrency) was ever queued; nothing after the stop.
    assert len(project.server.requests) <= 5


def test_prefetch_composes_with_xdist(project: Project) -> None:
    project.write("cases/many.yaml", suite(24))
    project.server.default = "ok"
    project.server.latency = 0.4
    result = project.run("--llm-concurrency=4", "-n", "2")
    result.assert_outcomes(passed=24)
    assert project.server.max_in_flight > 2  # more in flight than workers: each worker prefetches its queue
    assert len(project.server.requests) == 24


def test_identical_requests_in_flight_are_issued_once(project: Project) -> None:
    project.write("cases/twice.yaml", """\
suite: twice
params: {temperature: 0}
cases:
  - {id: a, question: "Same question?", expect: [{contains: ok}]}
  - {id: b, question: "Same question?", expect: [{contains: o}]}
""")
    project.server.default = "ok"
    project.server.latency = 0.3
    project.run("--llm-concurrency=4", "--llm-cache=off").assert_outcomes(passed=2)
    assert len(project.server.requests) == 1


# ------------------------------------------------------------------------------------------ retries


def test_429_is_retried_after_the_servers_retry_after(project: Project) -> None:
    project.write("cases/many.yaml", suite(1))
    project.server.default = "ok"
    project.server.fail("Question 00", 429, times=1, retry_after=1.2)
    project.run("--llm-retries=2").assert_outcomes(passed=1)
    times = project.server.request_times
    assert len(times) == 2 and times[1] - times[0] >= 1.2  # waited as asked, not the 0.5 s backoff
    case = project.results()["cases"][0]
    assert case["retries"] == 1 and project.results()["suites"][0]["retries"] == 1


@pytest.mark.parametrize("fault", ["500", "503", "reset"])
def test_server_errors_and_resets_are_retried(project: Project, fault: str) -> None:
    project.write("cases/many.yaml", suite(1))
    project.server.default = "ok"
    if fault == "reset":
        project.server.reset_connection("Question 00", times=2)
    else:
        project.server.fail("Question 00", int(fault), times=2)
    project.run("--llm-retries=2").assert_outcomes(passed=1)
    assert len(project.server.requests) == 3


def test_what_still_fails_is_an_error_with_the_providers_message(project: Project) -> None:
    project.write("cases/many.yaml", suite(3))
    project.server.default = "ok"
    project.server.fail("Question 01", 503, message="upstream overloaded")
    result = project.run("--llm-retries=1")
    result.assert_outcomes(passed=2, errors=1)
    case = next(c for c in project.results()["cases"] if c["case_id"] == "c01")
    assert case["outcome"] == "error" and "upstream overloaded" in case["message"]
    assert "(after 2 attempts)" in case["message"]
    row = project.results()["suites"][0]
    assert row["pass_rate"] == 1.0 and row["error"] == 1  # excluded from the pass rate, counted apart
    result.stdout.fnmatch_lines(["ERROR: 1 of 3 case(s) (33%) errored (provider or infrastructure failures*"])


def test_client_errors_are_not_retried(project: Project) -> None:
    project.write("cases/many.yaml", suite(1))
    project.server.fail(None, 401)
    project.run("--llm-retries=3").assert_outcomes(errors=1)
    assert len(project.server.requests) == 1


def test_a_hung_request_times_out_and_is_retried(project: Project) -> None:
    project.write("cases/many.yaml", suite(1))
    project.server.answer("Question 00", "ok", delay=5)
    result = project.run("--llm-retries=1", "--llm-timeout=0.4")
    result.assert_outcomes(errors=1)
    assert len(project.server.requests) == 2
    assert project.results()["cases"][0]["message"].startswith("timed out after 0.4 s")


def test_rate_limit_ini_is_honoured_in_a_run(project: Project) -> None:
    project.write("cases/many.yaml", suite(4))
    project.write("pytest.ini", "[pytest]\nllmeval_rate_limits =\n    openai/test-model = 60 rpm\n")
    project.server.default = "ok"
    project.run("--llm-concurrency=4").assert_outcomes(passed=4)
    times = project.server.request_times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 60/min: one a second, even with 4 threads (unlimited, the 4 would arrive together). The first request reaches
    # the server late by litellm's first-call set-up (0.3-0.4 s on a busy machine), so its gap is not measured.
    assert len(gaps) == 3 and all(g >= 0.8 for g in gaps[1:]) and times[-1] - times[0] >= 2.4
    bad = project.write("pytest.ini", "[pytest]\nllmeval_rate_limits = openai/test-model = lots\n")
    assert bad.exists()
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Invalid llmeval_rate_limits line*lots*"])


# ------------------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("extra", [("--llm-concurrency=1",), ("--llm-concurrency=8",), ("-n", "2")])
def test_max_calls_stops_new_calls_exactly(project: Project, extra: tuple[str, ...]) -> None:
    project.write("cases/many.yaml", suite(8))
    project.server.default = "ok"
    result = project.run("--llm-max-calls=3", "-rs", *extra)
    result.assert_outcomes(passed=3, skipped=5)
    assert len(project.server.requests) == 3
    result.stdout.fnmatch_lines(["budget: 3 model call(s) of 3, $0.0000 spent, 5 case(s) skipped by the budget",
                                 "*--llm-max-calls 3 reached: no more model calls in this run*"])
    # Cached answers cost nothing: the next run serves the 3 from the cache and makes 3 new calls.
    project.run("--llm-max-calls=3", *extra).assert_outcomes(passed=6, skipped=2)


def test_max_cost_stops_once_spent(project: Project) -> None:
    project.write("cases/many.yaml", suite(4))
    project.server.default = "ok ok ok"
    # A model litellm has a price for, served by the local server: each answer costs a few micro-dollars.
    result = project.run("--llm-max-cost=0.000001", "--llm-concurrency=1", model="openai/gpt-4o-mini")
    result.assert_outcomes(passed=1, skipped=3)
    doc = project.results()
    assert doc["run"]["budget"]["spend_usd"] > 0.000001 and doc["run"]["budget"]["calls"] == 1
    assert len(project.server.requests) == 1


# ------------------------------------------------------------------------------------------ journal, resume


def journal_run(root: Path) -> str:
    return json.loads((root / ".llmeval/journal/latest").read_text())["run_id"]


def test_every_finished_case_is_journaled(project: Project) -> None:
    project.write("cases/many.yaml", suite(5))
    project.server.answer("Question 02", "no")
    project.server.default = "ok"
    project.run().assert_outcomes(passed=4, failed=1)
    root = project.pytester.path
    results = read_run(root / ".llmeval/journal", journal_run(root))
    assert sorted((r["case_id"], r["outcome"]) for r in results) == [
        ("c00", "passed"), ("c01", "passed"), ("c02", "failed"), ("c03", "passed"), ("c04", "passed")]


def _spawn(project: Project, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *project.args(*args)],
                            cwd=project.pytester.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_for_lines(folder: Path, n: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in folder.glob("*/*.jsonl")) if folder.is_dir() else 0
        if lines >= n:
            return lines
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("the journal did not grow")


@pytest.mark.parametrize("workers", [(), ("-n", "2")])
def test_a_killed_run_loses_no_finished_case_and_resume_completes_it(project: Project,
                                                                     workers: tuple[str, ...]) -> None:
    project.write("cases/many.yaml", suite(30))
    project.server.default = "ok"
    project.server.latency = 0.15
    proc = _spawn(project, "--llm-concurrency=1", "--llm-cache=off", *workers)
    _wait_for_lines(project.pytester.path / ".llmeval/journal", 6, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, controller and workers, mid-suite
    proc.wait()
    journal = project.pytester.path / ".llmeval/journal"
    first = journal_run(project.pytester.path)
    done = finished(journal, [first])
    assert 6 <= len(done) < 30 and not (project.pytester.path / ".llmeval/results.json").exists()
    asked_before = len(project.server.requests)
    result = project.run("--llm-resume", "--llm-cache=off", *workers)
    # (xdist does not report the workers' deselections, so the count is only checked without it)
    result.assert_outcomes(passed=30 - len(done), deselected=0 if workers else len(done))
    # Only the missing cases were asked again.
    assert len(project.server.requests) - asked_before == 30 - len(done)
    doc = project.results()
    assert sorted(c["case_id"] for c in doc["cases"]) == [f"c{i:02d}" for i in range(30)]
    assert doc["suites"][0]["passed"] == 30 and doc["run"]["resumed_from"] == [first]
    assert doc["run"]["resumed_cases"] == len(done)


KILL_WORKER = """
import os, pathlib
def pytest_runtest_setup(item):
    flag = pathlib.Path(os.environ["KILL_FLAG"])
    if "c05" in item.nodeid and not flag.exists():
        flag.write_text("killed once")
        os._exit(9)  # the worker dies mid-suite, as on an OOM kill
"""


def test_a_killed_worker_loses_nothing_and_resume_reruns_its_case(project: Project,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("cases/many.yaml", suite(12))
    project.write("conftest.py", KILL_WORKER)
    monkeypatch.setenv("KILL_FLAG", str(project.pytester.path / "killed"))
    project.server.default = "ok"
    result = project.run("-n", "2", "--llm-concurrency=1")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 11 and outcomes.get("failed") == 1  # xdist reports the crashed item
    result.stdout.fnmatch_lines(["*worker*crashed while running*c05*"])
    done = finished(project.pytester.path / ".llmeval/journal", [journal_run(project.pytester.path)])
    assert len(done) == 11 and not any("c05" in n for n in done)
    again = project.run("-n", "2", "--llm-resume")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["resumed run *: 11 case(s) finished there are in these results"])
    assert sorted(c["case_id"] for c in project.results()["cases"]) == [f"c{i:02d}" for i in range(12)]


def test_a_truncated_journal_line_is_skipped_with_a_warning(project: Project) -> None:
    project.write("cases/many.yaml", suite(4))
    project.server.default = "ok"
    project.run("--llm-cache=off").assert_outcomes(passed=4)
    root = project.pytester.path
    [path] = (root / ".llmeval/journal" / journal_run(root)).glob("*.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    result = project.run("--llm-resume", "--llm-cache=off", "-W", "always")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*skipped 1 unreadable line(s) (a run killed mid-write?)*"])
    assert len(project.results()["cases"]) == 4


def test_resume_without_a_journal_runs_everything(project: Project) -> None:
    project.write("cases/many.yaml", suite(3))
    project.server.default = "ok"
    project.run("--llm-resume").assert_outcomes(passed=3)


# ------------------------------------------------------------------------------------------ routing, streaming


def test_router_balances_one_model_name_over_deployments(project: Project) -> None:
    project.write("cases/many.yaml", suite(16))
    url = project.server.url
    project.write("router.yaml", f"""\
routing_strategy: simple-shuffle
model_list:
  - model_name: balanced
    litellm_params: {{model: openai/dep-a, api_base: "{url}", api_key: os.environ/OPENAI_API_KEY, rpm: 1000}}
  - model_name: balanced
    litellm_params: {{model: openai/dep-b, api_base: "{url}", api_key: os.environ/OPENAI_API_KEY, rpm: 1000}}
""")
    project.server.default = "ok"
    result = project.pytester.runpytest("--llm=balanced", "--llm-router=router.yaml", "--llm-retries=0")
    result.assert_outcomes(passed=16)
    used = {r["model"] for r in project.server.requests}
    assert used == {"dep-a", "dep-b"}
    counts = [sum(1 for r in project.server.requests if r["model"] == m) for m in ("dep-a", "dep-b")]
    assert min(counts) >= 2


def test_streaming_records_time_to_first_token(project: Project) -> None:
    project.write("cases/many.yaml", suite(2))
    project.server.default = "ok, streamed in several pieces"
    project.server.latency = 0.2
    project.run("--llm-stream", "--llm-cache=off").assert_outcomes(passed=2)
    assert all(r.get("stream") for r in project.server.requests)
    doc = project.results()
    for case in doc["cases"]:
        assert 0.2 <= case["ttft_s"] <= case["latency_s"]
        assert case["answer"] == "ok, streamed in several pieces" and case["completion_tokens"] > 0
    assert doc["suites"][0]["ttft_p50_s"] >= 0.2


def test_a_fully_cached_run_never_imports_litellm(project: Project) -> None:
    project.write("cases/many.yaml", suite(5))
    project.write("conftest.py", "import sys\n\ndef pytest_sessionfinish():\n"
                                 "    open('litellm-loaded.txt', 'w').write(str('litellm' in sys.modules))\n")
    project.server.default = "ok"
    project.run(subprocess=True).assert_outcomes(passed=5)
    loaded = project.pytester.path / "litellm-loaded.txt"
    assert loaded.read_text() == "True"
    project.run(subprocess=True).assert_outcomes(passed=5)
    assert loaded.read_text() == "False"  # all five answers from the cache: the ~3 s import is skipped
    # One case not in the cache: the model is checked (and litellm imported) at that call, which works.
    project.write("cases/many.yaml", suite(6))
    project.run(subprocess=True).assert_outcomes(passed=6)
    assert loaded.read_text() == "True" and len(project.server.requests) == 6
