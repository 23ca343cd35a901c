"""The ``http`` target in whole sessions: a real service (tests/helpers/apps/echo_app.py, a subprocess) started by
the plugin once per session or xdist worker and stopped after it; references and retrieval in results.json; a
service that never becomes ready, a reply without the answer path and an HTTP 500 as ``error`` outcomes; headers
from the environment that reach the service but never the results or the terminal; caching only under a version.

The app writes a line per start to ``$ECHO_STARTS`` and one per request to ``$ECHO_REQUESTS``: the counts are the
application's own, not the plugin's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.apps import echo_app

from conftest import Project

APP = Path(echo_app.__file__)
SECRET = "sk-live-DO-NOT-LEAK-7f3a9c1e5b"


def suite(name: str, *, url: str = "http://127.0.0.1:{port}/ask", mode: str = "ok", extra: str = "",
          serve: str = "", common: str = "", cases: str = "") -> str:
    """A suite whose target is the echo app, served by the plugin (``mode``: see echo_app); ``extra`` adds lines to
    ``http:``, ``serve`` to ``serve:``, ``common`` to ``target:`` (version, hash...)."""
    return f"""\
suite: {name}
target:
{common}  http:
    url: "{url}"
    json: {{q: "{{question}}", case: "{{case_id}}", model: "{{model}}"}}
    answer: data.answer
    references: data.refs
{extra}    serve:
      command: "python {APP} {{port}} {mode}"
      ready: /health
{serve}cases:
{cases or DEFAULT_CASES}"""


DEFAULT_CASES = """\
  - id: alpha
    question: Where is alpha?
    sources: [docs/a.md]
    expect: [{contains: "echo: Where is alpha?"}]
  - id: beta
    question: Where is beta?
    sources: [docs/b.md]
    expect: [{contains: "echo: Where is beta?"}]
  - id: gamma
    question: Where is gamma?
    sources: [docs/c.md]
    expect: [{contains: "echo: Where is gamma?"}]
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _requests(project: Project) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(project.pytester.path / "requests.log")]


def _starts(project: Project, name: str = "starts.log") -> list[int]:
    return [int(line) for line in _lines(project.pytester.path / name)]


def _alive(pid: int) -> bool:
    """Whether a process (not a zombie) or any member of its process group is still there."""
    try:
        os.killpg(pid, 0)  # the service leads its own group: this reaches what it started too
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc, or the leader is gone but its group is not
    return state != "Z"


def _cases(project: Project) -> dict[str, dict[str, Any]]:
    return {c["case_id"]: c for c in project.results()["cases"]}


@pytest.fixture
def app_env(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The echo app's start and request logs in the project (the service inherits the environment)."""
    monkeypatch.setenv("ECHO_STARTS", str(project.pytester.path / "starts.log"))
    monkeypatch.setenv("ECHO_REQUESTS", str(project.pytester.path / "requests.log"))
    monkeypatch.delenv("ECHO_PREFIX", raising=False)
    return project


def test_a_served_service_answers_every_case_and_is_stopped_after(app_env: Project) -> None:
    project = app_env
    project.write("cases/echo.yaml", suite("echo"))
    result = project.run()
    result.assert_outcomes(passed=3)
    starts = _starts(project)
    assert len(starts) == 1, "one service for the whole session, not one per case"
    assert not _alive(starts[0]), "the service (and its process group) is gone after the session"
    requests = _requests(project)
    assert sorted(r["received"]["case"] for r in requests) == ["alpha", "beta", "gamma"]
    assert {r["received"]["model"] for r in requests} == {"openai/test-model"}, "the --llm model is in the request"
    assert not project.server.requests, "the model itself is not asked"

    cases = _cases(project)
    alpha = cases["alpha"]
    assert alpha["target"] == "http:http://127.0.0.1:{port}/ask"
    assert alpha["answer"] == "echo: Where is alpha?"
    assert [r["source"] for r in alpha["references"]] == ["docs/a.md", "docs/b.md"]
    assert alpha["references"][0]["text"] == "Alpha passage." and alpha["references"][0]["score"] == 0.9
    assert alpha["retrieval"]["recall_at_k"] == 1.0 and alpha["retrieval"]["mrr"] == 1.0
    assert cases["beta"]["retrieval"]["recall_at_k"] == 1.0 and cases["beta"]["retrieval"]["mrr"] == 0.5
    assert cases["gamma"]["retrieval"]["recall_at_k"] == 0.0 and cases["gamma"]["retrieval"]["mrr"] == 0.0
    logs = list((project.pytester.path / ".llmeval" / "serve").glob("*.log"))
    assert len(logs) == 1 and "echo_app ready" in logs[0].read_text()


def test_one_service_per_xdist_worker(app_env: Project) -> None:
    project = app_env
    cases = "".join(f"  - {{id: c{i}, question: q{i}, expect: [{{contains: 'echo: q{i}'}}]}}\n" for i in range(8))
    project.write("cases/echo.yaml", suite("echo", cases=cases))
    result = project.run("-n", "2")
    result.assert_outcomes(passed=8)
    starts = _starts(project)
    assert len(starts) == 2, f"one service per worker, got {len(starts)} starts"
    assert not [pid for pid in starts if _alive(pid)], "every worker stopped its service"
    assert sorted(r["received"]["case"] for r in _requests(project)) == [f"c{i}" for i in range(8)]
    assert {c["target"] for c in _cases(project).values()} == {"http:http://127.0.0.1:{port}/ask"}


def test_a_service_that_never_becomes_ready_errors_its_suite_and_the_others_run(app_env: Project) -> None:
    project = app_env
    project.write("cases/down.yaml", suite("down", mode="never-ready",
                                           serve="      timeout_s: 1\n      env: {ECHO_STARTS: down.log}\n"))
    project.write("cases/up.yaml", suite("up", cases="  - {id: fine, question: hi, expect: [{contains: 'echo: hi'}]}\n"))
    result = project.run()
    result.assert_outcomes(passed=1, errors=3)
    out = result.stdout.str()
    assert out.count("the service of http:http://127.0.0.1:{port}/ask did not become ready in 1 s") >= 3, out
    assert "GET http://127.0.0.1:" in out and "/health last gave HTTP 503" in out
    assert "in mode never-ready" in out, "the error shows the tail of the service's log"
    assert len(_starts(project, "down.log")) == 1, "the failing service is started once, not once per case"
    assert len(_starts(project)) == 1, "the other suite's service"
    assert not [pid for pid in _starts(project) + _starts(project, "down.log") if _alive(pid)]
    cases = _cases(project)
    assert {cases[c]["outcome"] for c in ("alpha", "beta", "gamma")} == {"error"}
    assert "did not become ready" in str(cases["alpha"]["message"])
    assert cases["fine"]["outcome"] == "passed"


def test_a_service_that_exits_at_start_shows_its_log(app_env: Project) -> None:
    project = app_env
    cases = "  - {id: one, question: hi, expect: [{contains: hi}]}\n  - {id: two, question: ho, expect: [{contains: ho}]}\n"
    project.write("cases/crash.yaml", suite("crash", mode="exit", cases=cases))
    result = project.run()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*the service of http:http://127.0.0.1:{port}/ask did not become ready*"
                                 "(it exited with status 3*",
                                 "*fatal: missing setting ECHO_DATABASE_URL*"])
    assert len(_starts(project)) == 1


def test_a_reply_without_the_answer_path_is_an_error_naming_it(app_env: Project) -> None:
    project = app_env
    project.write("cases/echo.yaml", suite("echo", cases="  - {id: only, question: hi, expect: [{contains: hi}]}\n")
                  .replace("answer: data.answer", "answer: data.reply"))
    result = project.run()
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "http:http://127.0.0.1:{port}/ask: the reply has no 'data.reply' (its 'data' has keys: answer, refs, " \
           "ctx, usage, none; set answer: to its path)" in out, out
    assert _cases(project)["only"]["outcome"] == "error"


def test_an_http_500_is_an_error_not_a_failure(app_env: Project) -> None:
    project = app_env
    project.write("cases/broken.yaml", suite("broken", url="http://127.0.0.1:{port}/error",
                                             cases="  - {id: only, question: hi, expect: [{contains: hi}]}\n"))
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*http:http://127.0.0.1:{port}/error: HTTP 500 Internal Server Error from POST "
                                 "http://127.0.0.1:*/error: boom: the database is down*"])
    case = _cases(project)["only"]
    assert case["outcome"] == "error" and "HTTP 500" in str(case["message"])
    assert [r["path"] for r in _requests(project)] == ["/error"]


def test_headers_from_the_environment_reach_the_service_but_never_the_results(
        app_env: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project = app_env
    monkeypatch.setenv("ECHO_TOKEN", SECRET)
    monkeypatch.setenv("ECHO_TRACE", SECRET + "-trace")
    headers = '    headers: {Authorization: "Bearer ${ECHO_TOKEN}", X-Trace: "${ECHO_TRACE}"}\n'
    failing = DEFAULT_CASES + "  - {id: wrong, question: hi, expect: [{contains: nowhere}]}\n"
    project.write("cases/echo.yaml", suite("echo", extra=headers, cases=failing))  # a failure's report is printed
    result = project.run("-rA", "-v")
    result.assert_outcomes(passed=3, failed=1)
    requests = _requests(project)
    assert len(requests) == 4
    assert {r["auth"] for r in requests} == {f"Bearer {SECRET}"} and {r["trace"] for r in requests} == {SECRET + "-trace"}

    assert SECRET not in result.stdout.str() + result.stderr.str()
    leaks = [str(p.relative_to(project.pytester.path)) for p in (project.pytester.path / ".llmeval").rglob("*")
             if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the header's value is written to {leaks}"


def test_a_header_whose_variable_is_not_set_is_an_error_naming_it(app_env: Project,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    project = app_env
    monkeypatch.delenv("ECHO_TOKEN", raising=False)
    project.write("cases/echo.yaml", suite("echo", extra='    headers: {Authorization: "Bearer ${ECHO_TOKEN}"}\n',
                                           cases="  - {id: only, question: hi, expect: [{contains: hi}]}\n"))
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*header 'Authorization' needs the environment variable ECHO_TOKEN, which is not set*"])
    assert not _requests(project), "no request without the header"


def test_answers_are_cached_only_under_a_version(app_env: Project) -> None:
    project = app_env
    project.write("cases/echo.yaml", suite("echo"))
    project.run().assert_outcomes(passed=3)
    project.run().assert_outcomes(passed=3)
    assert len(_requests(project)) == 6, "no version: the service is asked on every run"

    (project.pytester.path / "requests.log").unlink()
    project.write("cases/echo.yaml", suite("echo", common='  version: "1"\n'))
    project.run().assert_outcomes(passed=3)
    project.run().assert_outcomes(passed=3)
    assert len(_requests(project)) == 3, "under a version the second run is served from the cache"
    cases = _cases(project)
    assert all(c["cached"] for c in cases.values())
    assert [r["source"] for r in cases["alpha"]["references"]] == ["docs/a.md", "docs/b.md"]
    assert cases["beta"]["retrieval"]["mrr"] == 0.5

    project.write("cases/echo.yaml", suite("echo", common='  version: "2"\n'))
    project.run().assert_outcomes(passed=3)
    assert len(_requests(project)) == 6, "a new version asks again"


def test_a_reply_that_echoes_the_header_is_shown_without_its_value(app_env: Project,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A debug error page (Django's, Starlette's) lists the request's headers: the message and the details that
    carry the reply's body must not carry the secret with it -- whatever the variable's name (ECHO_AUTH does not
    look like a secret's name: the value is hidden because it went into a header)."""
    project = app_env
    monkeypatch.setenv("ECHO_AUTH", SECRET)
    headers = '    headers: {Authorization: "Bearer ${ECHO_AUTH}"}\n'
    project.write("cases/echo.yaml", suite("echo", extra=headers,
                                           cases="  - {id: only, question: hi, expect: [{contains: hi}]}\n")
                  .replace("answer: data.answer", "answer: data.reply"))  # the error shows the reply, with "auth"
    result = project.run("-rA")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "the reply has no 'data.reply'" in out and '"auth": "Bearer ***"' in out, out
    assert SECRET not in out + result.stderr.str()
    assert SECRET not in (project.pytester.path / ".llmeval" / "results.json").read_text()
