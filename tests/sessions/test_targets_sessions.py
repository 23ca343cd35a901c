"""Application targets in whole sessions: a Python callable, a fixture, async, errors, caching under an identity,
per-target concurrency, references graded (sources, cites, the judge's context), --llm-target, xdist.

The application in these tests is a real module in the pytester project that calls the scripted OpenAI-compatible
server through litellm itself, as a team's bot would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import Project

JUDGE = "openai/judge-model"

BOT = '''\
import json, os, threading, time
import litellm
from pytest_llmeval import Answer, Reference

_LOCK = threading.Lock()
_STATE = {"now": 0, "max": 0}
LOG = os.path.join(os.path.dirname(__file__), "calls.log")


def answer(request):
    with _LOCK:
        _STATE["now"] += 1
        _STATE["max"] = max(_STATE["max"], _STATE["now"])
    try:
        with open(LOG, "a") as f:
            f.write(json.dumps({"case": request.case_id, "model": request.model, "max": _STATE["max"]}) + "\\n")
        if "explode" in request.prompt:
            raise RuntimeError("the index is empty")
        if "number" in request.prompt:
            return 42
        time.sleep(float(os.environ.get("BOT_SLEEP", "0")))
        reply = litellm.completion(model="openai/bot-model", api_base=os.environ["BOT_API_BASE"], api_key="sk-bot",
                                   messages=request.messages, num_retries=0)
        text = reply.choices[0].message.content
        return Answer(text, references=[Reference("docs/install.md", "Set ORBIT_OFFSCREEN=1 to render offscreen.", 0.9),
                                        {"source": "docs/sphere.md", "text": "Spheres have radii.", "score": 0.5}],
                      metadata={"route": "docs", "model": request.model})
    finally:
        with _LOCK:
            _STATE["now"] -= 1


async def aanswer(request):
    import asyncio
    await asyncio.sleep(0)
    return f"async answer for {request.case['question']}"
'''

SUITE = """\
suite: bot
target: {target}
cases:
  - id: offscreen
    question: How do I render offscreen?
    sources: [docs/install.md]
    expect:
      - contains: ORBIT_OFFSCREEN
      - cites: true
  - id: radius
    question: How do I change the radius?
    sources: [docs/api.md]
    expect:
      - contains: radii
"""


def _setup(project: Project, monkeypatch: pytest.MonkeyPatch, target: str = '{python: "bot:answer"}',
           suite: str = SUITE) -> None:
    project.write("bot.py", BOT)
    project.write("cases/bot.yaml", suite.replace("{target}", target))
    monkeypatch.setenv("BOT_API_BASE", project.server.url)
    project.server.answer("render offscreen", "Set ORBIT_OFFSCREEN=1 [1].", model="openai/bot-model")
    project.server.answer("radius", "Pass radii [2].", model="openai/bot-model")


def _calls(project: Project) -> list[dict[str, object]]:
    log = project.pytester.path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _cases(project: Project) -> dict[str, dict[str, object]]:
    return {c["case_id"]: c for c in project.results()["cases"]}


def test_a_python_target_answers_with_references_graded_and_recorded(project: Project,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    result = project.run()
    result.assert_outcomes(passed=2)
    cases = _cases(project)
    off = cases["offscreen"]
    assert off["target"] == "python:bot:answer"
    assert off["answer"] == "Set ORBIT_OFFSCREEN=1 [1]."
    assert [r["source"] for r in off["references"]] == ["docs/install.md", "docs/sphere.md"]
    assert off["references"][0]["n"] == 1 and "ORBIT_OFFSCREEN" in off["references"][0]["text"]
    assert off["metadata"] == {"route": "docs", "model": "openai/test-model"}
    assert off["retrieval"]["recall_at_k"] == 1.0 and off["retrieval"]["mrr"] == 1.0
    assert cases["radius"]["retrieval"]["recall_at_k"] == 0.0
    cites = next(c for c in off["checks"] if c["check"] == "cites")
    assert cites["passed"], cites
    # The application's own litellm call is the case's: one call, its tokens.
    assert off["app_usage"]["calls"] == 1 and off["app_usage"]["prompt_tokens"]
    # It received the --llm model and the case's messages.
    bot_requests = [r for r in project.server.requests if r["model"] == "bot-model"]
    assert len(bot_requests) == 2
    assert any("render offscreen" in m["content"] for r in bot_requests for m in r["messages"])
    assert not [r for r in project.server.requests if r["model"] == "test-model"], "the model itself is not asked"


def test_the_application_is_evaluated_once_per_llm_model(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    result = project.run(model="openai/a,openai/b")
    result.assert_outcomes(passed=4)
    assert sorted({c["model"] for c in _calls(project)}) == ["openai/a", "openai/b"]
    rows = {(s["suite"], s["model"]) for s in project.results()["suites"]}
    assert rows == {("bot", "openai/a"), ("bot", "openai/b")}
    result.stdout.re_match_lines([r"bot\s+openai/a\s+2\s+2", r"bot\s+openai/b\s+2\s+2"])
    # ... and the leaderboard ranks the application under each model.
    board = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "leaderboard",
                            str(project.pytester.path / ".llmeval/results.json")], capture_output=True, text=True)
    assert board.returncode == 0, board.stderr
    lines = board.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "model", "bot"]
    assert {line.split()[1] for line in lines[1:]} == {"openai/a", "openai/b"}


def test_application_errors_are_error_outcomes_with_its_traceback(project: Project,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    suite = """\
suite: bot
target: {target}
cases:
  - id: explode
    question: explode now
    expect: [{contains: x}]
  - id: number
    question: a number please
    expect: [{contains: x}]
  - id: fine
    question: How do I render offscreen?
    expect: [{contains: ORBIT}]
"""
    _setup(project, monkeypatch, suite=suite)
    result = project.run()
    result.assert_outcomes(passed=1, errors=2)
    out = result.stdout.str()
    assert "target python:bot:answer raised RuntimeError: the index is empty" in out
    assert 'bot.py", line' in out and 'raise RuntimeError("the index is empty")' in out
    assert "target python:bot:answer returned an int, not a str or a pytest_llmeval.Answer: 42" in out
    cases = _cases(project)
    assert cases["explode"]["outcome"] == "error" and cases["number"]["outcome"] == "error"
    assert "the index is empty" in str(cases["explode"]["message"])


def test_bad_targets_are_errors_at_the_target_line_and_other_suites_run(project: Project,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    project.write("cases/missing.yaml", "suite: m\n# a comment\ntarget: {python: \"nobot:answer\"}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    project.write("cases/nofixture.yaml", "suite: f\ntarget: {fixture: no_such_bot}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    project.write("cases/kind.yaml", "suite: k\ntarget: {pythn: \"bot:answer\"}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    project.write("cases/attr.yaml", "suite: a\ntarget: {python: \"bot:nothing\"}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    project.write("cases/hash.yaml", "suite: h\ntarget: {python: \"bot:answer\", hash: [bot.py, nope]}\n"
                  "cases:\n  - {id: a, question: q, expect: [{contains: x}]}\n")
    result = project.run()
    result.assert_outcomes(passed=2, errors=5)
    out = result.stdout.str()
    assert "cases/missing.yaml:3: target.python: cannot load 'nobot:answer': ModuleNotFoundError" in out
    assert "cases/nofixture.yaml:2: target.fixture: no fixture named 'no_such_bot'" in out
    assert "cases/kind.yaml:2: target.pythn: unknown target kind 'pythn'; did you mean 'python'?" in out
    assert "cases/attr.yaml:2: target.python: cannot load 'bot:nothing': AttributeError: bot has no attribute" in out
    assert "cases/hash.yaml:2: target.hash: 'nope' is neither a file or folder" in out


def test_a_fixture_target_is_built_with_the_users_fixtures(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch, target="{fixture: docs_bot}")
    project.write("conftest.py", '''\
import pytest
import bot

BUILT = []


@pytest.fixture(scope="session")
def settings():
    return {"prefix": "Hello: "}


@pytest.fixture(scope="session")
def docs_bot(settings):
    BUILT.append(1)
    def call(request):
        answer = bot.answer(request)
        answer.text = settings["prefix"] + answer.text
        answer.metadata["built"] = len(BUILT)
        return answer
    yield call
    BUILT.append("closed")
''')
    result = project.run()
    result.assert_outcomes(passed=2)
    cases = _cases(project)
    assert cases["offscreen"]["answer"].startswith("Hello: Set ORBIT")
    assert cases["radius"]["metadata"]["built"] == 1, "a session fixture builds the app once"
    assert cases["offscreen"]["target"] == "fixture:docs_bot"


def test_an_async_target_and_the_llm_target_option(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch, suite=SUITE.replace("target: {target}\n", ""))
    project.write("cases/plain.yaml", "suite: plain\ntarget: model\n"
                  "cases:\n  - {id: a, question: capital of France, expect: [{contains: Paris}]}\n")
    project.server.answer("capital of France", "Paris.", model="openai/test-model")
    result = project.run("--llm-target=python:bot:aanswer")
    result.assert_outcomes(passed=1, failed=2)
    cases = {(c["suite"], c["case_id"]): c for c in project.results()["cases"]}
    assert cases[("bot", "offscreen")]["answer"] == "async answer for How do I render offscreen?"
    assert cases[("bot", "offscreen")]["target"] == "python:bot:aanswer"
    assert cases[("plain", "a")]["target"] is None and cases[("plain", "a")]["answer"] == "Paris."


def test_answers_are_cached_only_under_a_declared_identity(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    project.run().assert_outcomes(passed=2)
    project.run().assert_outcomes(passed=2)
    assert len(_calls(project)) == 4, "no version, no hash: the application is asked on every run"

    (project.pytester.path / "calls.log").unlink()
    project.write("cases/bot.yaml", SUITE.replace("{target}", '{python: "bot:answer", hash: [bot.py]}'))
    project.run().assert_outcomes(passed=2)
    project.run().assert_outcomes(passed=2)
    assert len(_calls(project)) == 2, "hashed: the second run is served from the cache"
    assert all(c["cached"] for c in _cases(project).values())

    bot = project.pytester.path / "bot.py"
    bot.write_text(bot.read_text() + "\n# a change to the application\n")
    project.run().assert_outcomes(passed=2)
    assert len(_calls(project)) == 4, "the application changed: asked again"

    project.write("cases/bot.yaml", SUITE.replace("{target}", '{python: "bot:answer", version: "1"}'))
    project.run().assert_outcomes(passed=2)
    project.run().assert_outcomes(passed=2)
    assert len(_calls(project)) == 6, "a declared version is cached too"


def test_a_concurrency_limit_of_one_serializes_calls(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = "".join(f"  - {{id: c{i}, question: How do I render offscreen {i}?, expect: [{{contains: ORBIT}}]}}\n"
                    for i in range(8))
    monkeypatch.setenv("BOT_SLEEP", "0.05")
    _setup(project, monkeypatch, suite="suite: bot\ntarget: {target}\ncases:\n" + cases,
           target='{python: "bot:answer", concurrency: 1}')
    project.run("--llm-concurrency=8").assert_outcomes(passed=8)
    assert max(int(c["max"]) for c in _calls(project)) == 1  # type: ignore[call-overload]

    (project.pytester.path / "calls.log").unlink()
    project.write("cases/bot.yaml", "suite: bot\ntarget: {python: \"bot:answer\"}\ncases:\n" + cases)
    project.run("--llm-concurrency=8").assert_outcomes(passed=8)
    assert max(int(c["max"]) for c in _calls(project)) > 1, "without a limit calls overlap"  # type: ignore[call-overload]


def test_the_judge_grounds_on_the_applications_references(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = """\
suite: bot
target: {target}
cases:
  - id: offscreen
    question: How do I render offscreen?
    expect:
      - judge: {rubric: groundedness, min: 6}
"""
    _setup(project, monkeypatch, suite=suite)
    project.server.answer("render offscreen", '{"score": 9, "reason": "grounded"}', model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(passed=1)
    judge_prompt = next(json.dumps(r["messages"]) for r in project.server.requests if r["model"] == "judge-model")
    assert "Set ORBIT_OFFSCREEN=1 to render offscreen." in judge_prompt
    assert "docs/install.md" in judge_prompt


def test_targets_under_xdist(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=2)
    cases = _cases(project)
    assert {c["target"] for c in cases.values()} == {"python:bot:answer"}
    assert all(c["app_usage"]["calls"] == 1 for c in cases.values())
    assert [r["source"] for r in cases["offscreen"]["references"]] == ["docs/install.md", "docs/sphere.md"]


def test_the_summary_shows_the_applications_own_calls(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(project, monkeypatch)
    result = project.run()
    row = next(s for s in project.results()["suites"] if s["suite"] == "bot")
    assert row["app_calls"]["calls"] == 2
    assert row["app_calls"]["target"] == "python:bot:answer"
    result.stdout.fnmatch_lines(["*bot [[]openai/test-model[]]: target python:bot:answer made 2 model call(s)*"])


def test_robustness_variants_are_answered_by_the_application(project: Project,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    suite = """\
suite: bot
target: {target}
robustness: {perturb: [case], samples: 3, shrink: false}
cases:
  - id: offscreen
    question: How do I render offscreen?
    expect: [{contains: ORBIT_OFFSCREEN}]
"""
    _setup(project, monkeypatch, suite=suite)
    result = project.run()
    result.assert_outcomes(passed=2)
    robust = next(c for c in project.results()["cases"] if c["stage"] == "robust")
    assert robust["robustness"]["scored"] == 3 and robust["robustness"]["consistency"] == 1.0
    assert len(_calls(project)) == 4, "the original and its 3 variants, all asked of the application"
    assert not [r for r in project.server.requests if r["model"] == "test-model"], "never the bare model"
