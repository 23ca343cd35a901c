"""--llm-semantic-verify=judge: the semantic cache's candidates confirmed by a judge model, with real litellm against
the scripted server (the judge answers yes or no), the real embedding model and real diskcache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer

from pytest_llmeval.cache.verify import messages_for, parse, same_text
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.providers.runner import ModelRunner

MODEL = "openai/test-model"
JUDGE = "openai/judge"
ASKED = "You check a response cache"  # the verifier's prompt


def runner(tmp_path: Path, server: ScriptedLLMServer, **settings: Any) -> ModelRunner:
    settings = {"cache_mode": "semantic", "semantic_verify": "judge", "judge_model": JUDGE, "api_base": server.url,
                "retries": 0, "cache_dir": tmp_path / "cache", "results_path": tmp_path / "results.json", **settings}
    config = Settings(**settings)
    return ModelRunner(config)


def ask(r: ModelRunner, text: str) -> Any:
    return r.complete(MODEL, [{"role": "user", "content": text}], {"temperature": 0})


def calls(server: ScriptedLLMServer, model: str) -> int:
    return sum(1 for q in server.requests if q["model"] == model)


def test_reading_the_verdict_and_the_pair() -> None:
    assert parse("Yes.") is True and parse(" no, they differ") is False and parse("**YES**") is True
    assert parse("Maybe") is None and parse("") is None and parse("The answer is yes") is None
    assert same_text("What is  the capital of France?", "what is the capital of france") is True
    assert same_text("What is the capital of France?", "What's the capital of France?") is False
    # One verdict serves both directions: the pair is sorted before it is shown (and cached).
    assert messages_for("b question", "a question") == messages_for("a question", "b question")


def test_a_yes_serves_the_hit_and_a_rerun_takes_the_verdict_from_the_cache(
        tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("Berlin Wall", "1989.", model="test-model")
    llm_server.answer(ASKED, "yes", model="judge")
    r = runner(tmp_path, llm_server)
    assert ask(r, "What year did the Berlin Wall fall?").semantic is None
    # The guard refuses this paraphrase ("word replaced: come vs fall"): without the judge it is a miss.
    served = ask(r, "In which year did the Berlin Wall come down?")
    assert served.text == "1989." and served.cached
    assert served.semantic is not None and served.semantic["request"] == "What year did the Berlin Wall fall?"
    assert served.semantic["verified"] == {"judge": "yes", "verdict": "asked"}
    assert calls(llm_server, "test-model") == 1 and calls(llm_server, "judge") == 1
    judged = next(q for q in llm_server.requests if q["model"] == "judge")["messages"][-1]["content"]
    assert "What year did the Berlin Wall fall?" in judged and "In which year did the Berlin Wall come down?" in judged
    stats = r.semantic.stats.state()
    assert stats["verified"] == 1 and stats["served"] == 1 and stats["refused"] == 0
    assert stats["judge_calls"] == 1 and stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    r.close()
    # Another process, another run: the verdict is in the exact cache, so the judge is not called again.
    again = runner(tmp_path, llm_server)
    assert again.semantic is not None and again.semantic._verdicts == {}
    served = ask(again, "In which year did the Berlin Wall come down?")
    assert served.semantic is not None and served.semantic["verified"]["verdict"] == "cached"
    assert calls(llm_server, "judge") == 1 and calls(llm_server, "test-model") == 1
    assert again.semantic.stats.state()["judge_cached"] == 1 and again.semantic.stats.state()["judge_calls"] == 0
    again.close()


def test_without_the_verifier_the_guard_decides(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("Berlin Wall", "1989.", model="test-model")
    r = runner(tmp_path, llm_server, semantic_verify="off")
    ask(r, "What year did the Berlin Wall fall?")
    assert ask(r, "In which year did the Berlin Wall come down?").semantic is None
    assert calls(llm_server, "test-model") == 2 and calls(llm_server, "judge") == 0
    assert r.semantic_verify_state() == {}
    r.close()


def test_a_no_refuses_the_hit(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("Everest", "Yes.", model="test-model")
    llm_server.answer(ASKED, "No.", model="judge")
    r = runner(tmp_path, llm_server)
    ask(r, "Is Mount Everest taller than K2?")
    answer = ask(r, "Is Everest higher than K2?")  # a paraphrase, but the judge says no: asked for real
    assert answer.semantic is None and not answer.cached
    assert calls(llm_server, "test-model") == 2 and calls(llm_server, "judge") == 1
    stats = r.semantic.stats.state()
    assert stats["verified"] == 1 and stats["refused"] == 1 and stats["served"] == 0
    r.close()


def test_hard_findings_and_identical_texts_never_reach_the_judge(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("compiled", "No.", model="test-model")
    llm_server.answer(ASKED, "yes", model="judge")  # a judge that says yes to everything
    r = runner(tmp_path, llm_server)
    ask(r, "Is Python a compiled language?")
    assert ask(r, "Is Python not a compiled language?").semantic is None  # negation: refused unasked
    assert calls(llm_server, "judge") == 0
    same = ask(r, "is python a compiled language")  # only case and punctuation differ: served unasked
    assert same.semantic is not None and same.semantic["verified"] == {"judge": "identical text"}
    assert calls(llm_server, "judge") == 0 and calls(llm_server, "test-model") == 2
    stats = r.semantic.stats.state()
    assert stats["hard_refusals"] == 1 and stats["served_identical"] == 1 and stats["verified"] == 0
    r.close()


@pytest.mark.parametrize("outage", ["http 500", "unreadable"])
def test_a_judge_outage_is_a_miss_never_an_error(tmp_path: Path, llm_server: ScriptedLLMServer, outage: str) -> None:
    llm_server.answer("Berlin Wall", "1989.", model="test-model")
    if outage == "http 500":
        llm_server.fail(ASKED, 500, model="judge")
    else:
        llm_server.answer(ASKED, "It depends on the context.", model="judge")
    r = runner(tmp_path, llm_server)
    ask(r, "What year did the Berlin Wall fall?")
    answer = ask(r, "In which year did the Berlin Wall come down?")
    assert answer.text == "1989." and answer.semantic is None and not answer.cached  # asked for real
    assert calls(llm_server, "judge") == 1 and calls(llm_server, "test-model") == 2
    assert r.semantic._verdicts == {}  # no verdict is remembered
    stats = r.semantic.stats.state()
    assert stats["judge_errors"] == 1 and stats["served"] == 0 and stats["refused"] == 1
    r.close()


def test_the_counts_of_every_process_meet_in_the_run_directory(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("Berlin Wall", "1989.", model="test-model")
    llm_server.answer(ASKED, "yes", model="judge")
    run_dir = tmp_path / "run" / "r1"
    first, second = runner(tmp_path, llm_server), runner(tmp_path, llm_server)
    for r in (first, second):
        r.use_run_dir(run_dir)
    ask(first, "What year did the Berlin Wall fall?")
    ask(second, "In which year did the Berlin Wall come down?")
    ask(second, "In what year did the Berlin Wall come down?")
    state = first.semantic_verify_state()
    assert state["lookups"] == 3 and state["served"] == 2 and state["judge_calls"] == 2
    first.close()
    second.close()
