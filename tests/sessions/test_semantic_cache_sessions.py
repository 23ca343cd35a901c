"""The semantic cache in whole sessions (--llm-cache=semantic), with the real embedding model and real diskcache:
paraphrases served, partitions respected, judges and repeats never served, xdist."""

from __future__ import annotations

import pytest

from conftest import Project

SUITE = """\
suite: faq
params: {temperature: 0}
cases:
  - id: capital
    question: What is the capital of France?
    expect: [{contains: Paris}]
"""


def test_session_serves_a_paraphrase_from_the_semantic_cache(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.run("--llm-cache=semantic").assert_outcomes(passed=1)
    assert len(project.server.requests) == 1
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Could you tell me what the capital city of France is?"))
    result = project.run("--llm-cache=semantic")
    result.assert_outcomes(passed=1)
    assert len(project.server.requests) == 1  # served without calling the model
    result.stdout.fnmatch_lines(["faq [[]openai/test-model]: 1 answer(s) served by the semantic cache"])
    case = project.results()["cases"][0]
    assert case["cache"] == "semantic" and case["cached"] is True
    assert case["semantic_hit"]["request"] == "What is the capital of France?"
    assert case["semantic_hit"]["similarity"] >= 0.8
    # A question that means something else is asked for real.
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "What is not the capital of France?"))
    project.run("--llm-cache=semantic")
    assert len(project.server.requests) == 2
    # The exact cache alone never serves paraphrases.
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Tell me the capital city of France."))
    project.run()
    assert len(project.server.requests) == 3


def test_semantic_cache_respects_the_system_prompt_and_params(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.run("--llm-cache=semantic").assert_outcomes(passed=1)
    project.write("cases/faq.yaml", SUITE.replace("params: {temperature: 0}", "params: {temperature: 0.5}")
                  .replace("What is the capital of France?", "What's the capital city of France?"))
    project.run("--llm-cache=semantic")
    assert len(project.server.requests) == 2  # other params: another partition


def test_semantic_cache_never_serves_judges_or_repeats(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE.replace("expect: [{contains: Paris}]",
                                                  "expect: [{judge: {rubric: correctness, min: 5}}]"))
    project.server.answer("Answer to grade", '{"score": 9, "reason": "ok"}', model="openai/judge")
    project.server.answer("France", ["Paris.", "It is Paris."])
    project.run("--llm-cache=semantic", "--llm-judge=openai/judge", "--llm-repeat=2").assert_outcomes(passed=1)
    judge_calls = [r for r in project.server.requests if r["model"] == "judge"]
    assert len(judge_calls) == 2  # one per draw: the second answer is similar but judged for real
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?", "What's France's capital?")
                  .replace("expect: [{contains: Paris}]", "expect: [{judge: {rubric: correctness, min: 5}}]"))
    project.run("--llm-cache=semantic", "--llm-judge=openai/judge", "--llm-repeat=2")
    assert len([r for r in project.server.requests if r["model"] == "test-model"]) == 4  # repeats: real draws


def test_semantic_cache_under_xdist(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE + """\
  - id: ocean
    question: What is the largest ocean?
    expect: [{contains: Pacific}]
  - id: peak
    question: What is the highest mountain?
    expect: [{contains: Everest}]
""")
    project.server.answer("France", "Paris.")
    project.server.answer("ocean", "The Pacific.")
    project.server.answer("mountain", "Everest.")
    project.run("--llm-cache=semantic", "-n", "2").assert_outcomes(passed=3)
    project.write("cases/faq.yaml", SUITE.replace("What is the capital of France?",
                                                   "Could you tell me the capital city of France?"))
    project.run("--llm-cache=semantic", "-n", "2").assert_outcomes(passed=1)
    assert len(project.server.requests) == 3


def test_bad_threshold_names_its_source(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    result = project.run("--llm-semantic-threshold=1.5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Invalid semantic threshold '1.5' from command line --llm-semantic-threshold*"])
