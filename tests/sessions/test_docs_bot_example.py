"""The repository's own docs bot suites (examples/docs_bot) in whole sessions, against the scripted server.

The bot is the real example application (router, lancedb retrieval over cases/docs, one litellm call), its model
``openai/test-model`` answered by the scripted OpenAI-compatible server through ``DOCS_BOT_API_BASE``. The suites
and the bot are copied into the pytester folder as they are in the checkout (so nothing is written into the
checkout): cases/docs_bot_app.yaml (the Python target), cases/docs_bot_chat.yaml (scripted conversations),
examples/docs_bot/suites/docs_bot_http.yaml (the same bot as an HTTP service the plugin starts) and
docs_bot_fixture.yaml (the bot built by a fixture). The references graded are the bot's own retrieval, not
scripted: the same under every target kind and under ``-n 2``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Project

REPO = Path(__file__).resolve().parents[2]
APP = "cases/docs_bot_app.yaml"
CHAT = "cases/docs_bot_chat.yaml"
HTTP = "examples/docs_bot/suites/docs_bot_http.yaml"
FIXTURE = "examples/docs_bot/suites/docs_bot_fixture.yaml"

# The bot's model, per question (the bot's prompt ends with "Question: <the user's message>").
REPLIES = {
    "Question: How do I change the radius": "Pass radii= to orbit.actor.sphere [1].",
    "Question: How can Orbit render": "Set ORBIT_OFFSCREEN=1 before importing orbit [1].",
    "Question: How do I set the background": "Call Scene.background((0, 0, 0)) [1].",
    "Question: How do I draw a cube": "Call orbit.actor.cube(centers, colors) [1].",
    "Question: And what is the default?": "The default radius is 1.0 [1].",
}
# What the bot retrieves (top 3 of cases/docs, all-MiniLM-L6-v2): the expected sources first.
FIRST_SOURCE = {"sphere-radius": "docs/sphere.md", "offscreen": "docs/install.md",
                "background": "docs/api/window.py", "cube": "docs/cube.md"}


@pytest.fixture
def bot_project(project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Project:
    """The checkout's bot, its docs and suites in the pytester folder; the bot's model is the scripted server."""
    dest = project.pytester.path
    shutil.copytree(REPO / "examples" / "docs_bot", dest / "examples" / "docs_bot",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "cases" / "docs", dest / "cases" / "docs")
    for name in (APP, CHAT):
        shutil.copy(REPO / name, dest / name)
    shutil.copy(REPO / "conftest.py", dest / "conftest.py")  # the root conftest (offline settings), as in the checkout
    monkeypatch.setenv("DOCS_BOT_API_BASE", project.server.url)
    monkeypatch.setenv("DOCS_BOT_INDEX", str(tmp_path / "docs-bot-index"))
    # In-process runs import examples.docs_bot from the pytester folder: not a copy another test already imported.
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)
    for when, reply in REPLIES.items():
        project.server.answer(when, reply, model="openai/test-model")
    return project


def _cases(project: Project) -> dict[str, dict[str, Any]]:
    return {c["case_id"]: c for c in project.results()["cases"]}


def _sources(case: dict[str, Any]) -> list[str]:
    return [r["source"] for r in case.get("references") or []]


def _check_app_results(project: Project) -> dict[str, dict[str, Any]]:
    """The app suite's cases in results.json: the bot's own references, recall@3 and MRR, its routes and calls."""
    cases = {c["case_id"]: c for c in project.results()["cases"] if c["suite"] == "docs-bot-app"}
    assert set(cases) == {"sphere-radius", "offscreen", "background", "greeting", "off-topic"}
    for case_id in ("sphere-radius", "offscreen", "background"):
        case = cases[case_id]
        assert case["target"] == "python:examples.docs_bot.bot:answer"
        assert _sources(case)[0] == FIRST_SOURCE[case_id], case
        assert len(case["references"]) == 3 and case["references"][0]["n"] == 1
        assert case["retrieval"]["recall_at_k"] == 1.0 and case["retrieval"]["mrr"] == 1.0, case["retrieval"]
        assert case["metadata"]["route"] == "docs" and case["app_usage"]["calls"] == 1
    assert set(_sources(cases["offscreen"])) >= {"docs/install.md", "docs/api/window.py"}
    assert cases["sphere-radius"]["answer"] == REPLIES["Question: How do I change the radius"]
    # The router: a fixed reply, no retrieval, no model call.
    for case_id in ("greeting", "off-topic"):
        case = cases[case_id]
        assert case["references"] in (None, []) and case["retrieval"] is None
        assert case["metadata"]["route"] == "smalltalk" and case["app_usage"]["calls"] == 0
    return cases


def test_the_app_suite_passes_with_the_bots_references_and_recall(bot_project: Project) -> None:
    project = bot_project
    result = project.run(APP)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "*docs-bot-app*openai/test-model*5*5*0*",
        "*docs-bot-app*retrieval over 3 case(s) with expected sources: recall@3 100.0%, MRR 1.000*",
        "*docs-bot-app*target python:examples.docs_bot.bot:answer made 3 model call(s) of its own for 5 case(s)*",
    ])
    _check_app_results(project)
    suite = project.results()["suites"][0]
    assert suite["app_calls"]["calls"] == 3 and suite["retrieval"]["recall_at_k"] == 1.0
    # The bot asked its model (the --llm one, through DOCS_BOT_API_BASE) with the numbered references.
    asked = [r for r in project.server.requests if r["model"] == "test-model"]
    assert len(asked) == 3
    assert all("[1] docs/" in r["messages"][-1]["content"] for r in asked)


def test_the_http_suite_starts_the_server_and_gets_the_same_references(bot_project: Project,
                                                                       tmp_path: Path) -> None:
    project = bot_project
    project.run(APP).assert_outcomes(passed=5)
    python_cases = _cases(project)
    shutil.copytree(REPO / "examples" / "docs_bot" / "suites", project.pytester.path / "examples/docs_bot/suites",
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    result = project.run(HTTP, "--llm-results=http/results.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*docs-bot-http*made 2 model call(s) of its own for 3 case(s)*"])
    http_cases = {c["case_id"]: c for c in project.results("http/results.json")["cases"]}
    assert {c["target"] for c in http_cases.values()} == {"http:http://127.0.0.1:{port}/ask"}
    for case_id in ("sphere-radius", "offscreen"):
        http_refs = [(r["source"], r["text"]) for r in http_cases[case_id]["references"]]
        assert http_refs == [(r["source"], r["text"]) for r in python_cases[case_id]["references"]], case_id
        assert http_cases[case_id]["retrieval"] == {**python_cases[case_id]["retrieval"],
                                                    "target": http_cases[case_id]["retrieval"]["target"]}
        assert http_cases[case_id]["app_usage"]["calls"] == 1
        assert http_cases[case_id]["app_usage"]["prompt_tokens"] == python_cases[case_id]["app_usage"]["prompt_tokens"]
    assert http_cases["offscreen"]["answer"] == python_cases["offscreen"]["answer"]
    assert http_cases["greeting"]["references"] in (None, []) and "Orbit docs bot" in http_cases["greeting"]["answer"]
    # The service was the bot's server.py, started by the plugin with its log, and is gone.
    logs = list((project.pytester.path / "http" / "serve").glob("*.log"))
    assert len(logs) == 1 and "POST /ask" in logs[0].read_text()


def test_the_fixture_suite_builds_the_bot_in_a_fixture(bot_project: Project) -> None:
    project = bot_project
    shutil.copytree(REPO / "examples" / "docs_bot" / "suites", project.pytester.path / "examples/docs_bot/suites",
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    result = project.run(FIXTURE)
    result.assert_outcomes(passed=2)
    cases = _cases(project)
    assert {c["target"] for c in cases.values()} == {"fixture:docs_bot"}
    for case_id in ("sphere-radius", "cube"):
        assert _sources(cases[case_id])[0] == FIRST_SOURCE[case_id]
        assert cases[case_id]["retrieval"]["recall_at_k"] == 1.0


def test_the_chat_suite_follows_up_with_the_previous_question(bot_project: Project) -> None:
    project = bot_project
    result = project.run(CHAT)
    result.assert_outcomes(passed=2)
    cases = _cases(project)
    follow = cases["sphere-follow-up"]
    turns = follow["transcript"]["turns"]
    assert [t["user"] for t in turns] == ["How do I change the radius of a sphere in Orbit?",
                                          "And what is the default?"]
    assert [t["answer"] for t in turns] == [REPLIES["Question: How do I change the radius"],
                                            REPLIES["Question: And what is the default?"]]
    # The short follow-up was searched with the question before it: the sphere page again, graded by sources:.
    assert [t["references"][0]["source"] for t in turns] == ["docs/sphere.md", "docs/sphere.md"]
    assert follow["retrieval"]["recall_at_k"] == 1.0
    assert [c["check"] for c in follow["checks"]] == ["turn 1: contains", "turn 2: not_contains"]
    # The follow-up reached the bot's model with the first turn in its history.
    second = next(r for r in project.server.requests if "And what is the default?" in r["messages"][-1]["content"])
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    small = cases["small-talk-then-docs"]["transcript"]["turns"]
    assert [t["usage"]["calls"] for t in small] == [0, 1, 0]
    assert [bool(t["references"]) for t in small] == [False, True, False]


def test_the_app_and_chat_suites_under_xdist(bot_project: Project) -> None:
    project = bot_project
    result = project.run(APP, CHAT, "-n", "2")
    result.assert_outcomes(passed=7)
    _check_app_results(project)
    follow = _cases(project)["sphere-follow-up"]
    assert [t["references"][0]["source"] for t in follow["transcript"]["turns"]] == ["docs/sphere.md"] * 2
    suites = {s["suite"]: s for s in project.results()["suites"]}
    assert suites["docs-bot-app"]["app_calls"]["calls"] == 3
    assert suites["docs-bot-chat"]["app_calls"]["calls"] == 3
