"""A hand-written robustness test: Hypothesis draws variants of the prompt (letter case, typos, punctuation) and
shrinks a failing one to a minimal change. Run it with `pytest cases/test_robust_prompts.py --llm=<model>`.

`llm_settings` draws the same prompts on every run (seed 0) and replays the failures committed under
.llmeval/hypothesis/tests without writing new ones, so a rerun gives the same verdict, answered from the cache.
Add `--llm-explore` to draw new prompts and save a failing one there, to commit.

Marked slow, so the first run (`pytest -k "not slow" cases/`) leaves it out: its model calls are made one after
another from the test body (no prefetch, no batching), and when a prompt fails Hypothesis shrinks it with a dozen
more calls -- on SmolLM2 about 20 calls, a third of the first run's generated tokens. robust_capitals.yaml shows
the same robustness check in the first run."""

import pytest
from hypothesis import given

from pytest_llmeval.strategies import llm_settings, perturbed

pytestmark = pytest.mark.slow


@llm_settings(max_examples=4)  # each example is a model call
@given(prompt=perturbed("What is the capital of France?", kinds=["case", "typo", "punctuation"]))
def test_capital_of_france_is_robust(llm, prompt):
    assert "paris" in llm(prompt, system="Answer in one short sentence.", max_tokens=24).lower()
