"""LLM judges through the scripted server: well-formed, malformed-then-fixed, malformed twice (unscored),
out-of-range scores, caching, self-judging, provider failures; judge calibration suites."""

from __future__ import annotations

import json

import pytest

from conftest import Project

JUDGE = "openai/judge-model"

QNA = """\
suite: support
kind: qna
system: Answer in one short sentence.
params: {temperature: 0}
cases:
  - id: capital
    question: What is the capital of France?
    reference: Paris is the capital of France.
    expect:
      - judge: {rubric: correctness, min: 7}
  - id: river
    question: Which river flows through Paris?
    reference: The Seine.
    expect:
      - contains: Seine
      - judge: {rubric: completeness, min: 6}
"""


def script_answers(project: Project) -> None:
    project.server.answer("capital of France", "Paris.", model="openai/test-model")
    project.server.answer("river flows", "The Seine flows through Paris.", model="openai/test-model")


# ------------------------------------------------------------------------------------------- sessions


def test_well_formed_judge_scores_pass_and_fail(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("capital of France", '{"score": 9, "reason": "Matches the reference."}', model=JUDGE)
    project.server.answer("river flows", '{"score": 4, "reason": "Omits that it is a river."}', model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*case river (support.yaml:*) failed on openai/test-model",
        "*ok   contains (score 1.00)*",
        "*FAIL judge (score 0.40): completeness 4/10 < min 6: Omits that it is a river.",
    ])
    assert "self-judging" not in result.stdout.str()
    doc = project.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    judge = cases["capital"]["checks"][0]
    assert judge["passed"] and judge["score"] == 0.9
    assert judge["details"]["score"] == 9 and judge["details"]["rubric"] == "correctness"
    assert judge["details"]["judge"] == JUDGE and judge["details"]["attempts"] == 1
    assert cases["capital"]["judge"]["model"] == JUDGE and cases["capital"]["judge"]["calls"] == 1
    assert cases["river"]["score"] == pytest.approx((1.0 + 0.4) / 2)
    # The judge saw the question, the model's answer and the reference, at temperature 0.
    request = next(r for r in project.server.requests if r["model"] == "judge-model" and "France" in str(r))
    user = request["messages"][-1]["content"]
    assert "What is the capital of France?" in user and "Answer to grade:\nParis." in user
    assert "Reference answer:\nParis is the capital of France." in user and request["temperature"] == 0


def test_malformed_then_fixed_is_scored_on_the_retry(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("could not be used", '{"score": 8, "reason": "Fine on second thought."}', model=JUDGE)
    project.server.answer("Answer to grade", "This answer is quite good overall.", model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(passed=2)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    details = cases["capital"]["checks"][0]["details"]
    assert details["attempts"] == 2 and details["score"] == 8
    retry = [r for r in project.server.requests if "could not be used" in r["messages"][-1]["content"]]
    assert len(retry) == 2  # one per case; the retry quotes the bad reply and names the problem
    assert retry[0]["messages"][-2] == {"role": "assistant", "content": "This answer is quite good overall."}
    assert "no score found" in retry[0]["messages"][-1]["content"]


def test_malformed_twice_is_unscored_never_pass_fail_or_zero(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("Answer to grade", "Looks fine to me!", model=JUDGE)
    project.server.answer("could not be used", "Sorry, I can only say it looks fine.", model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("unscored") == 2 and "passed" not in outcomes and "failed" not in outcomes
    assert result.ret == 0  # unscored is not a failure of the model ...
    result.stdout.fnmatch_lines([
        "*support [[]openai/test-model]: 2 judge check(s) unscored (unparseable judge output); 2 case(s) left unscored",
    ])
    doc = project.results()
    row = doc["suites"][0]
    assert row["unscored"] == 2 and row["passed"] == 0 and row["failed"] == 0
    assert row["pass_rate"] is None and row["mean_score"] is None  # ... nor averaged as 0 or NaN
    cases = {c["case_id"]: c for c in doc["cases"]}
    check = cases["capital"]["checks"][0]
    assert check["unscored"] is True and check["score"] is None and check["passed"] is False
    assert "no usable score in 2 tries" in check["reason"] and check["details"]["replies"] == [
        "Looks fine to me!", "Sorry, I can only say it looks fine."]
    assert cases["capital"]["outcome"] == "unscored" and cases["capital"]["score"] is None


def test_a_failed_check_beside_an_unscored_judge_fails_the_case(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    project.server.answer("river flows", "It is the Thames.", model="openai/test-model")
    project.server.answer("Answer to grade", "no idea", model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}", "-k", "river")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*FAIL contains*", "*??   judge (unscored): completeness: judge * gave no usable*"])


def test_out_of_range_scores(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    # capital: 12 then 9 -> scored on the retry; river: 15 twice -> unscored.
    project.server.answer("capital of France", '{"score": 12, "reason": "superb"}', model=JUDGE)
    project.server.answer("could not be used (score 12", '{"score": 9, "reason": "right"}', model=JUDGE)
    project.server.answer("river", '{"score": 15, "reason": "superb"}', model=JUDGE)
    project.server.answer("could not be used (score 15", '{"score": 15, "reason": "superb"}', model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 1 and outcomes["unscored"] == 1
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["capital"]["checks"][0]["details"]["score"] == 9
    river_judge = cases["river"]["checks"][1]
    assert river_judge["unscored"] and "score 15 is outside 0-10" in river_judge["reason"]


def test_judge_calls_are_cached_and_keyed_on_the_rubric(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("Answer to grade", '{"score": 9, "reason": "ok"}', model=JUDGE)
    project.run(f"--llm-judge={JUDGE}").assert_outcomes(passed=2)
    first = len(project.server.requests)
    project.run(f"--llm-judge={JUDGE}").assert_outcomes(passed=2)
    assert len(project.server.requests) == first  # answers and verdicts all from the cache
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["capital"]["judge"]["cached"] is True
    # A different rubric is a different judge request.
    project.write("cases/support.yaml", QNA.replace("rubric: correctness", "rubric: groundedness"))
    project.run(f"--llm-judge={JUDGE}").assert_outcomes(passed=2)
    new = project.server.requests[first:]
    assert len(new) == 1 and "Groundedness" in new[0]["messages"][-1]["content"]


def test_without_a_judge_model_the_model_judges_itself_with_a_warning(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    project.server.answer("Answer to grade", '{"score": 8, "reason": "ok"}', model="openai/test-model")
    script_answers(project)
    result = project.run()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["WARNING support [[]openai/test-model]: judged by the model under test itself*"])
    row = project.results()["suites"][0]
    assert row["judge"] == {"models": ["openai/test-model"], "self_judging": True, "calls": 2}


def test_a_judge_provider_failure_is_an_error_not_a_failure(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.fail("Answer to grade", 503, model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*model call failed for case capital*", "*503*"])
    doc = project.results()
    assert {c["outcome"] for c in doc["cases"]} == {"error"}
    assert doc["suites"][0]["failed"] == 0 and doc["suites"][0]["error"] == 2


def test_judge_model_without_a_key_is_a_usage_error(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    result = project.run("--llm-judge=anthropic/claude-3-5-sonnet-latest")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm=anthropic/claude-3-5-sonnet-latest: ANTHROPIC_API_KEY is not set*"])


def test_unscored_counts_hold_under_xdist(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("capital of France", '{"score": 9, "reason": "ok"}', model=JUDGE)
    project.server.answer("Answer to grade", "fine", model=JUDGE)
    result = project.run(f"--llm-judge={JUDGE}", "-n", "2")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 1 and outcomes["unscored"] == 1
    row = project.results()["suites"][0]
    assert (row["passed"], row["unscored"], row["unscored_checks"]) == (1, 1, 1)


# ------------------------------------------------------------------------------------------- calibration

CALIBRATION = """\
suite: judge-check
kind: calibration
expect:
  - judge: {rubric: correctness, min: 7, tolerance: 1}
cases:
  - {id: right, question: "Capital of France?", answer: Paris., reference: Paris, score: 9}
  - {id: wrong, question: "Capital of Japan?", answer: Kyoto., reference: Tokyo, score: 1}
  - {id: partial, question: "Two primary colours?", answer: Red., reference: Red and blue, score: 5}
  - {id: verdict, question: "Largest ocean?", answer: The Pacific., verdict: pass}
  - {id: garbled, question: "Capital of Peru?", answer: Lima., verdict: yes}
"""


def test_calibration_reports_agreement_and_kappa(project: Project) -> None:
    project.write("cases/cal.yaml", CALIBRATION)
    s = project.server
    s.answer("Capital of France", '{"score": 10, "reason": "correct"}', model=JUDGE)   # |10-9| <= 1: agree
    s.answer("Capital of Japan", '{"score": 6, "reason": "close"}', model=JUDGE)       # |6-1| > 1: disagree
    s.answer("primary colours", '{"score": 5, "reason": "half"}', model=JUDGE)        # agree
    s.answer("Largest ocean", '{"score": 8, "reason": "right"}', model=JUDGE)         # pass == pass: agree
    s.answer("Peru", "hmm", model=JUDGE)                                               # unscored
    result = project.run(f"--llm-judge={JUDGE}")
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes["unscored"]) == (3, 1, 1)
    assert not any(r["model"] == "test-model" for r in s.requests)  # the model under test is not asked
    result.stdout.fnmatch_lines([
        "*case wrong (cal.yaml:*) failed on openai/judge-model (judge)",
        "*calibration: the judge said 6/10 (fail), the human label is score 1 (tolerance 1)",
        "judge-check [[]openai/judge-model]: judge calibration on 4 example(s): agreement 75.0%*kappa 1.00*",
    ])
    row = project.results()["suites"][0]
    cal = row["calibration"]
    assert cal["examples"] == 4 and cal["agreement"] == 0.75 and cal["unscored"] == 1
    assert cal["mean_abs_error"] == pytest.approx((1 + 5 + 0) / 3, abs=1e-6)
    # Verdicts (score >= 7): human pass/fail/fail/pass, judge pass/fail/fail/pass -> kappa 1.
    assert cal["verdict_accuracy"] == 1.0 and cal["kappa"] == 1.0
    lo, hi = cal["agreement_ci"]
    assert lo < 0.75 < hi


def test_calibration_case_needs_a_label_and_a_judge(project: Project) -> None:
    project.write("cases/cal.yaml", """\
kind: calibration
cases:
  - {id: a, question: "Q?", answer: A.}
""")
    project.write("cases/cal2.yaml", """\
kind: calibration
cases:
  - {id: b, question: "Q?", answer: A., score: 5}
""")
    result = project.run(f"--llm-judge={JUDGE}")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*cases/cal.yaml:3: cases[[]0]: a calibration case needs the human label: score (0-10) or verdict*",
        "*cases/cal2.yaml:3: cases[[]0].expect: a calibration case needs the judge it calibrates*",
    ])


def test_unknown_rubric_word_is_a_case_file_error(project: Project) -> None:
    project.write("cases/support.yaml", QNA.replace("rubric: correctness", "rubric: corectness"))
    result = project.run(f"--llm-judge={JUDGE}", "-k", "capital")
    result.stdout.fnmatch_lines(["*support.yaml:10: cases[[]0].expect[[]0].judge.rubric: unknown rubric 'corectness'*"])


def test_results_json_of_a_judge_run_is_plain_json(project: Project) -> None:
    project.write("cases/support.yaml", QNA)
    script_answers(project)
    project.server.answer("Answer to grade", '{"score": 9, "reason": "ok"}', model=JUDGE)
    project.run(f"--llm-judge={JUDGE}")
    text = (project.pytester.path / ".llmeval/results.json").read_text()
    assert json.loads(text)["schema_version"] == 2 and "NaN" not in text


def test_llm_judge_fixture_in_a_hand_written_test(project: Project) -> None:
    project.server.answer("Answer to grade", '{"score": 3, "reason": "Names the wrong city."}', model=JUDGE)
    project.pytester.makepyfile(test_hand="""
        def test_judged(llm_judge):
            verdict = llm_judge("Lyon.", "correctness", question="Capital of France?", reference="Paris")
            assert not verdict.passed and verdict.details["score"] == 3
            assert "wrong city" in verdict.reason
    """)
    project.run(f"--llm-judge={JUDGE}").assert_outcomes(passed=1)
    request = next(r for r in project.server.requests if r["model"] == "judge-model")
    assert "Reference answer:\nParis" in request["messages"][-1]["content"]
