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


BERLIN = SUITE.replace("What is the capital of France?", "What year did the Berlin Wall fall?").replace(
    "expect: [{contains: Paris}]", "expect: [{contains: '1989'}]")
VERIFY = ("--llm-cache=semantic", "--llm-semantic-verify=judge", "--llm-judge=openai/judge")


def test_the_judge_verifies_a_semantic_hit(project: Project) -> None:
    project.write("cases/faq.yaml", BERLIN)
    project.server.answer("Berlin Wall", "In 1989.", model="test-model")
    project.server.answer("You check a response cache", "yes", model="judge")
    project.run(*VERIFY).assert_outcomes(passed=1)
    # A paraphrase the guard alone refuses ("word replaced: come vs fall"); the judge says it is the same request,
    # on an xdist worker (its verdict and counts reach the controller's results).
    project.write("cases/faq.yaml", BERLIN.replace("What year did the Berlin Wall fall?",
                                                   "In which year did the Berlin Wall come down?"))
    project.run(*VERIFY, "-n", "2").assert_outcomes(passed=1)
    models = [r["model"] for r in project.server.requests]
    assert models == ["test-model", "judge"]  # served from the cache after one verdict
    doc = project.results()
    assert doc["cases"][0]["cache"] == "semantic"
    assert doc["cases"][0]["semantic_hit"]["verified"] == {"judge": "yes", "verdict": "asked"}
    verify = doc["run"]["semantic_verify"]
    assert verify["verified"] == 1 and verify["served"] == 1 and verify["judge_calls"] == 1
    assert verify["prompt_tokens"] > 0
    # The rerun takes the answer from the exact cache: no lookup, no verdict, no call.
    project.run(*VERIFY).assert_outcomes(passed=1)
    assert len(project.server.requests) == 2


def test_a_judge_outage_gives_misses_not_errors(project: Project) -> None:
    project.write("cases/faq.yaml", BERLIN)
    project.server.answer("Berlin Wall", "In 1989.", model="test-model")
    project.server.fail("You check a response cache", 503, model="judge")
    project.run(*VERIFY).assert_outcomes(passed=1)
    project.write("cases/faq.yaml", BERLIN.replace("What year did the Berlin Wall fall?",
                                                   "In which year did the Berlin Wall come down?"))
    project.run(*VERIFY).assert_outcomes(passed=1)  # the judge failed: the model answered, nothing errored
    assert [r["model"] for r in project.server.requests] == ["test-model", "judge", "test-model"]
    doc = project.results()
    assert doc["cases"][0]["cache"] is None
    assert doc["run"]["semantic_verify"]["judge_errors"] == 1 and doc["run"]["semantic_verify"]["served"] == 0


def test_bad_verify_mode_names_its_source(project: Project) -> None:
    project.write("cases/faq.yaml", SUITE)
    project.write("pytest.ini", "[pytest]\nllmeval_semantic_verify = always\n")
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*Invalid semantic verify 'always' from ini key llmeval_semantic_verify: expected one of off, judge.*"])
