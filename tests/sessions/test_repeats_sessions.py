"""Repeats and flakiness (--llm-repeat, pass_if), intervals on every pass rate, reference metrics and labels
suites, in whole sessions against the scripted server."""

from __future__ import annotations

import pytest

from conftest import SIQA, Project, script_geo

FLAKY = """\
suite: flaky
params: {temperature: 0.7}
cases:
  - id: steady
    question: What is the capital of France?
    expect: [{contains: Paris}]
  - id: wobbly
    question: What is the capital of Japan?
    expect: [{contains: Tokyo}]
  - id: wrong
    question: What is the largest ocean?
    expect: [{contains: Pacific}]
"""


def script_flaky(project: Project) -> None:
    s = project.server
    s.answer("France", "Paris.")
    s.answer("Japan", ["Tokyo.", "Kyoto.", "Tokyo.", "Tokyo."])  # 3 of 4 draws pass
    s.answer("ocean", "The Atlantic.")


def test_repeats_are_real_samples_and_flaky_cases_are_listed(project: Project) -> None:
    project.write("cases/flaky.yaml", FLAKY)
    script_flaky(project)
    result = project.run("--llm-repeat=4", "--llm-concurrency=1")  # replies cycle in arrival order
    result.assert_outcomes(passed=1, failed=2)  # default pass_if: all
    assert len(project.server.requests) == 12  # 3 cases x 4 independent draws, none a cache hit
    result.stdout.fnmatch_lines([
        "*draws: 3 of 4 passed (pass_if: all); draw 1's checks:",
        "flaky [[]openai/test-model]: x4 repeats: pass fraction 58.3%, pass^4 33.3%, pass@4 66.7%",
        "flaky [[]openai/test-model]: flaky (1): wobbly",
    ])
    doc = project.results()
    row = doc["suites"][0]
    assert row["flaky"] == ["wobbly"] and row["repeats"]["n"] == 4
    cases = {c["case_id"]: c for c in doc["cases"]}
    wobbly = cases["wobbly"]
    assert wobbly["repeats"] == {"n": 4, "scored": 4, "passed": 3, "pass_if": "all", "pass_fraction": 0.75,
                                 "pass_all": False, "pass_any": True}
    assert wobbly["flaky"] is True and wobbly["score"] == 0.75
    assert wobbly["pass_at_k"]["1"] == 0.75 and wobbly["pass_at_k"]["4"] == 1.0
    assert [s["status"] for s in wobbly["samples"]] == ["passed", "failed", "passed", "passed"]
    assert cases["steady"]["flaky"] is False and cases["wrong"]["flaky"] is False
    # A second run reuses every draw from its own cache slot.
    project.run("--llm-repeat=4")
    assert len(project.server.requests) == 12


@pytest.mark.parametrize(("policy", "expected"), [("majority", (2, 1)), ("any", (2, 1)), ("all", (1, 2))])
def test_pass_if_policies(project: Project, policy: str, expected: tuple[int, int]) -> None:
    project.write("cases/flaky.yaml", FLAKY.replace("params:", f"pass_if: {policy}\nparams:"))
    script_flaky(project)
    result = project.run("--llm-repeat=4")
    passed, failed = expected
    result.assert_outcomes(passed=passed, failed=failed)


def test_majority_needs_more_than_half(project: Project) -> None:
    project.write("cases/flaky.yaml", FLAKY.replace("params:", "pass_if: majority\nparams:"))
    project.server.answer("Japan", ["Tokyo.", "Kyoto."])  # 2 of 4: not a majority
    result = project.run("--llm-repeat=4", "-k", "wobbly")
    result.assert_outcomes(failed=1, deselected=2)


def test_a_case_may_override_its_suites_policy(project: Project) -> None:
    project.write("cases/flaky.yaml", FLAKY.replace("    expect: [{contains: Tokyo}]",
                                                   "    expect: [{contains: Tokyo}]\n    pass_if: any"))
    script_flaky(project)
    project.run("--llm-repeat=4").assert_outcomes(passed=2, failed=1)


def test_repeat_under_xdist_gives_the_same_results(project: Project) -> None:
    project.write("cases/flaky.yaml", FLAKY)
    script_flaky(project)
    result = project.run("--llm-repeat=4", "-n", "2")
    result.assert_outcomes(passed=1, failed=2)
    assert project.results()["suites"][0]["flaky"] == ["wobbly"]


def test_bad_repeat_value_names_its_source(project: Project) -> None:
    project.write("cases/flaky.yaml", FLAKY)
    result = project.run("--llm-repeat=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Invalid repeat '0' from command line --llm-repeat: expected a whole number >= 1, "
                                 "'auto' or 'auto:MAX'*"])


def test_every_pass_rate_has_an_interval_and_choice_suites_report_accuracy(project: Project) -> None:
    project.write("cases/siqa.yaml", SIQA)
    script_geo(project.server)
    result = project.run()
    result.stdout.fnmatch_lines([
        "social*50.0% [[]9%-91%]*",
        "social [[]openai/test-model]: accuracy 50.0% (95% CI 9.5%-90.5%, n=2)",
    ])
    row = project.results()["suites"][0]
    assert row["accuracy"] == 0.5 and row["accuracy_ci"] == row["pass_rate_ci"] == pytest.approx([0.0945, 0.9055],
                                                                                                  abs=1e-4)


METRICS = """\
suite: answers
cases:
  - id: exact
    question: Which planet is known as the red planet?
    reference: Mars is known as the red planet.
    expect: [{rouge_l: 0.6}]
  - id: paraphrase
    question: What is the boiling point of water at sea level?
    reference: Water boils at 100 degrees Celsius at sea level.
    expect: [{similarity: 0.7}, {bleu: 0.5}]
  - id: plain
    question: Who wrote Hamlet?
    reference: William Shakespeare wrote Hamlet.
    expect: [{contains: Shakespeare}]
"""


def test_reference_metrics_as_checks_and_always_recorded(project: Project) -> None:
    project.write("cases/answers.yaml", METRICS)
    s = project.server
    s.answer("red planet", "Mars is known as the red planet.")
    s.answer("boiling point", "At sea level, water boils at one hundred degrees Celsius.")
    s.answer("Hamlet", "Hamlet was written by Shakespeare.")
    result = project.run()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ok   similarity*", "*FAIL bleu (score 0.*): BLEU 0.* < min 0.50"])
    doc = project.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["exact"]["metrics"]["rouge_l"] == 1.0 and cases["exact"]["metrics"]["bleu"] == pytest.approx(1.0)
    assert cases["paraphrase"]["metrics"]["similarity"] > 0.7
    # No metric check on "plain", yet its BLEU and ROUGE-L against the reference are recorded.
    assert set(cases["plain"]["metrics"]) == {"bleu", "rouge_l"} and 0 < cases["plain"]["metrics"]["rouge_l"] < 1
    assert set(doc["suites"][0]["metrics"]) == {"bleu", "rouge_l", "similarity"}
    result.stdout.fnmatch_lines(["answers [[]openai/test-model]: reference metrics bleu 0.*, rouge_l 0.*"])


def test_a_metric_check_without_a_reference_is_a_case_file_error(project: Project) -> None:
    project.write("cases/answers.yaml", """\
cases:
  - id: nope
    question: Who wrote Hamlet?
    expect: [{bleu: 0.3}]
""")
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cases/answers.yaml:2: cases[[]0]: check 'bleu' needs a 'reference' field on the "
                                 "case (or reference: in the check)"])


LABELS = """\
suite: clean-code
kind: labels
labels: [DRY, SRP, MC, NAME, NO_COMPILE]
cases:
  - id: repeated-loop
    input: "for (i = 0; i < n; i++) s += a[i];\\nfor (i = 0; i < n; i++) s += a[i];"
    answer: [DRY]
  - id: god-function
    input: "void do_all(void) { parse(); render(); save(); }"
    answer: [SRP, NAME]
  - id: magic
    input: "if (x > 86400) wait(3600);"
    answer: [MC]
    expect: [{jaccard: 0.9}]
"""


def test_labels_suite_jaccard_per_case_and_per_label(project: Project) -> None:
    project.write("cases/labels.yaml", LABELS)
    s = project.server
    s.answer("s += a[i]", '["DRY"]')
    s.answer("do_all", "Labels: SRP, FOO")
    s.answer("86400", "- MC: magic constants\n- NAME: unclear names")
    result = project.run()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL jaccard (score 0.50): *",
        "clean-code [[]openai/test-model]: labels (per-label Jaccard, precision, recall):",
    ])
    doc = project.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["god-function"]["labels"]["predicted"] == ["SRP"]
    assert cases["god-function"]["labels"]["unknown"] == ["FOO"] and cases["god-function"]["score"] == 0.5
    assert cases["magic"]["labels"]["predicted"] == ["MC", "NAME"]
    report = doc["suites"][0]["labels"]
    assert report["cases"] == 3
    # NAME: expected once (god-function, missed), predicted once (magic, wrong) -> tp 0, fp 1, fn 1.
    assert report["labels"]["NAME"]["tp"] == 0 and report["labels"]["NAME"]["jaccard"] == 0.0
    assert report["labels"]["DRY"]["jaccard"] == 1.0 and report["labels"]["MC"]["recall"] == 1.0
    # micro over labels: tp 3 (DRY, SRP, MC), fp 1 (NAME), fn 1 (NAME) -> Jaccard 3 / 5.
    assert report["micro"]["jaccard"] == pytest.approx(0.6)
    assert report["samples_jaccard"] == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-6)


# ---------------------------------------------------------------------------------------------- --llm-repeat auto

AUTO = """\
suite: auto
pass_if: {policy}
params: {{temperature: 0.7}}
cases:
  - id: steady
    question: What is the capital of France?
    expect: [{{contains: Paris}}]
  - id: wobbly
    question: What is the capital of Japan?
    expect: [{{contains: Tokyo}}]
  - id: wrong
    question: What is the largest ocean?
    expect: [{{contains: Pacific}}]
"""


def script_auto(project: Project) -> None:
    s = project.server
    s.reset()
    s.answer("France", "Paris.")
    s.answer("Japan", ["Tokyo.", "Kyoto."])  # alternates: pass, fail, pass, fail, pass
    s.answer("ocean", "The Atlantic.")


@pytest.mark.parametrize(("policy", "draws", "outcomes", "workers"), [
    # majority of 5: 3 agreeing draws settle a steady case; the alternating one needs all 5 (3 pass of 5); under
    # xdist, each worker settles its own cases
    ("majority", {"steady": 3, "wobbly": 5, "wrong": 3}, {"steady": "passed", "wobbly": "passed", "wrong": "failed"},
     ["-n", "2"]),
    # all: a passing case needs its 5 draws; the first failure settles the others
    ("all", {"steady": 5, "wobbly": 2, "wrong": 1}, {"steady": "passed", "wobbly": "failed", "wrong": "failed"}, []),
    # any: the first pass settles it; a case that never passes spends all 5
    ("any", {"steady": 1, "wobbly": 1, "wrong": 5}, {"steady": "passed", "wobbly": "passed", "wrong": "failed"}, []),
], ids=["majority-n2", "all-n0", "any-n0"])
def test_repeat_auto_draws_until_the_outcome_is_settled(project: Project, workers: list[str], policy: str,
                                                        draws: dict[str, int], outcomes: dict[str, str]) -> None:
    project.write("cases/auto.yaml", AUTO.format(policy=policy))
    script_auto(project)
    project.run("--llm-repeat=auto:5", "--llm-cache=off", *workers)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    spent = {cid: (c["repeats"] or {"n": 1})["n"] for cid, c in cases.items()}
    assert spent == draws and {cid: c["outcome"] for cid, c in cases.items()} == outcomes
    assert {cid: c["calls"] for cid, c in cases.items()} == draws
    assert len(project.server.requests) == sum(draws.values())
    # The same outcomes as five draws of every case, for fewer calls.
    script_auto(project)
    project.run("--llm-repeat=5", "--llm-cache=off", *workers)
    assert {c["case_id"]: c["outcome"] for c in project.results()["cases"]} == outcomes
    assert len(project.server.requests) == 15


def test_repeat_auto_uses_the_cache_and_rejects_bad_values(project: Project) -> None:
    project.write("cases/auto.yaml", AUTO.format(policy="majority"))
    script_auto(project)
    project.run("--llm-repeat=auto")  # auto: at most 5
    first = len(project.server.requests)
    assert first == 11
    project.run("--llm-repeat=auto")  # every draw from its own cache slot
    assert len(project.server.requests) == first
    bad = project.run("--llm-repeat=auto:0")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*Invalid repeat 'auto:0' from *: expected a whole number >= 1, 'auto' or 'auto:MAX'*"])
