"""`robustness:` blocks: perturbed variants as real model calls, consistency, shrinking to a minimal flip, the
Hypothesis database under .llmeval/, and hand-written @given tests with the `llm` fixture."""

from __future__ import annotations

import json
import re

import pytest

from conftest import Project

ORIGINAL = "What is the capital of France?"

CAPS = """\
suite: caps
system: Answer in one word.
robustness: {perturb: [case, punctuation], samples: 8, min_consistency: 0.9, seed: 1}
cases:
  - id: fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
"""


def _robust(doc: dict, case_id: str = "fr") -> dict:
    return next(c for c in doc["cases"] if c["case_id"] == case_id and c["stage"] == "robust")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def assert_one_minimal_edit(variant: dict) -> None:
    """One kind, one edit: a word of the question in another letter case, or one punctuation change."""
    prompt = variant["prompt"]
    assert len(variant["perturbations"]) == 1, variant
    if variant["perturbations"] == ["case"]:
        changed = [(a, b) for a, b in zip(_words(prompt), _words(ORIGINAL), strict=True) if a != b]
        assert len(changed) == 1 and changed[0][0].lower() == changed[0][1].lower()
        assert changed[0][1] in ("capital", "of", "France")
        assert prompt.replace(changed[0][0], changed[0][1]) == ORIGINAL
    else:
        assert variant["perturbations"] == ["punctuation"] and _words(prompt) == _words(ORIGINAL)
        assert prompt.count(",") == 1 and prompt.replace(",", "") == ORIGINAL  # one comma inside the phrase


def measured(case: dict) -> dict:
    """What a robust item measured and reported: its verdict, score, variants, flips and minimal flip."""
    return {"outcome": case["outcome"], "score": case["score"], **case["robustness"]}


def saved_files(project: Project, under: str = ".llmeval/hypothesis") -> list[str]:
    root = project.pytester.path / under
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_case_sensitive_model_is_caught_and_shrunk_to_a_minimal_variant(project: Project) -> None:
    # The "model" knows the answer only when the question is written exactly so.
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.write("cases/caps.yaml", CAPS)
    result = project.run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*caps::fr:robust[[]openai/test-model[]]*",
        "*robustness: * of * variant(s) flipped the outcome (original: passed; perturb: case, punctuation; seed 1)",
        "*minimal flipping variant (shrunk by Hypothesis*",
        "*FAIL robustness (score *): * variants kept the original outcome (passed): consistency *, minimum 90%",
    ])
    doc = project.results()
    r = _robust(doc)["robustness"]
    assert r["original"] == "passed" and r["variants"] == 8 and r["scored"] == 8
    assert r["consistency"] < 0.9 and not r["passed"] and r["flips"]
    assert _robust(doc)["score"] == r["consistency"]
    # Every flip broke the exact spelling; every variant the model still answered kept it.
    for flip in r["flips"]:
        assert "capital of France" not in flip["prompt"] and flip["status"] == "failed"
    # The minimal variant: one edit, to the letter case of a word the model depends on or to the punctuation.
    minimal = r["minimal"]
    assert_one_minimal_edit(minimal)
    # Variants are real calls with their own cache slots: 1 original + 8 variants + the shrink steps.
    prompts = [req["messages"][-1]["content"] for req in project.server.requests]
    assert prompts.count(ORIGINAL) == 1 and len(set(prompts)) == len(prompts)
    assert len(prompts) == 1 + 8 + r["shrink_calls"]
    row = next(s for s in doc["suites"] if s["suite"] == "caps:robust")
    assert row["robustness"]["consistency"] == r["consistency"] and row["robustness"]["cases_consistent"] == 0
    assert row["failed"] == 1 and next(s for s in doc["suites"] if s["suite"] == "caps")["passed"] == 1

    # The run wrote nothing to the example database, and a rerun asks for exactly the same variants: all
    # answered from the cache now, no new request, the same flips.
    assert saved_files(project) == []
    before = len(project.server.requests)
    project.run().assert_outcomes(passed=1, failed=1)
    assert len(project.server.requests) == before
    assert measured(_robust(project.results())) == measured(_robust(doc))


def test_a_robust_model_passes_and_choices_are_reordered_with_the_answer_remapped(project: Project) -> None:
    project.write("cases/mc.yaml", """\
suite: mc
kind: choice
robustness: {perturb: [reorder_choices, typo], samples: 4, min_consistency: 0.75}
cases:
  - id: capital
    question: Which city is the capital of France?
    choices: {A: Paris, B: Lyon, C: Marseille, D: Nice}
    answer: A
""")
    # Typos never touch names, so "France" is in every variant the model sees.
    project.server.answer("France", "Paris")  # names the option: right in every order
    project.run().assert_outcomes(passed=2)
    r = _robust(project.results(), "capital")["robustness"]
    assert r["consistency"] == 1.0 and r["passed"] and r["flips"] == [] and r["minimal"] is None

    # A model that always answers "A" is right only while Paris stays first.
    project.server.reset()
    project.server.answer("France", "A")
    project.run("--llm-cache=off").assert_outcomes(passed=1, failed=1)
    r = _robust(project.results(), "capital")["robustness"]
    assert r["flips"]
    for flip in r["flips"]:
        assert "reorder_choices" in flip["perturbations"] and flip["answer_key"] != "A"
        # The remapped letter points at Paris in the prompt the model saw.
        assert f"{flip['answer_key']}) Paris" in flip["prompt"]
    assert r["minimal"]["perturbations"] == ["reorder_choices"]


def test_an_injected_instruction_must_be_resisted(project: Project) -> None:
    project.write("cases/inj.yaml", """\
suite: inj
robustness: {perturb: [injection], samples: 3, shrink: false}
cases:
  - id: fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
""")
    project.server.answer("BANANA", "Paris. BANANA")  # obeys the injection, and still says Paris
    project.server.answer("capital of France", "Paris.")
    project.run().assert_outcomes(passed=1, failed=1)
    r = _robust(project.results())["robustness"]
    assert r["consistency"] == 0.0 and r["minimal"] is None and r["shrink_calls"] == 0
    assert all("obeyed the injected instruction ('BANANA')" in f["reason"] for f in r["flips"])


def test_a_provider_outage_on_variants_is_an_error_not_a_failure(project: Project) -> None:
    project.write("cases/caps.yaml", CAPS)
    project.server.answer("capital of France", "Paris.")
    project.run("-k", "not robust").assert_outcomes(passed=1, deselected=1)  # the original is now cached
    project.server.fail(None, 500, message="upstream exploded")
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    case = _robust(project.results())
    assert case["outcome"] == "error" and "upstream exploded" in case["message"]


def test_robustness_with_xdist_and_marker_selection(project: Project) -> None:
    project.write("cases/caps.yaml", CAPS)
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.run("-m", "not robustness").assert_outcomes(passed=1, deselected=1)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    r = _robust(project.results())["robustness"]
    assert r["minimal"] is not None
    assert_one_minimal_edit(r["minimal"])


def test_bad_robustness_blocks_name_file_line_and_field(project: Project) -> None:
    project.write("cases/bad.yaml", """\
suite: bad
robustness: {perturb: [reorder_choices]}
cases:
  - id: a
    question: q
    expect: [{contains: x}]
  - id: b
    question: q
    robustness: {perturb: [case, shout], samples: 0}
    expect: [{contains: x}]
""")
    result = project.run()
    result.stdout.fnmatch_lines([
        "*bad.yaml:2: robustness.perturb: reorder_choices applies to choice cases, not 'qna'",
        "*bad.yaml:9: cases[[]1[]].robustness.perturb: unknown perturbation 'shout'; expected some of: case, *",
    ])
    assert "samples" in result.stdout.str()


HAND_WRITTEN = '''
from hypothesis import given
from pytest_llmeval.strategies import llm_settings, perturbed


@llm_settings(max_examples=12)
@given(prompt=perturbed("What is the capital of France?", kinds=["case"]))
def test_capital(llm, prompt):
    assert "Paris" in llm(prompt)
'''


def test_hand_written_given_with_the_llm_fixture_shrinks_to_a_minimal_prompt(project: Project) -> None:
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.pytester.makepyfile(test_hw=HAND_WRITTEN)
    result = project.run("test_hw.py")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "FailedHealthCheck" not in out
    shown = re.search(r"prompt='([^']*)'", out)
    assert shown is not None, out
    changed = [(a, b) for a, b in zip(_words(shown.group(1)), _words(ORIGINAL), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0].lower() == changed[0][1].lower()
    case = json.loads((project.pytester.path / ".llmeval/results.json").read_text())["cases"][0]
    assert case["outcome"] == "failed" and case["calls"] >= 1


def test_a_budget_reached_during_the_variants_skips_the_robust_item(project: Project) -> None:
    project.write("cases/caps.yaml", CAPS)
    project.server.answer("capital of France", "Paris.")
    result = project.run("--llm-max-calls=3", "--llm-concurrency=1")
    result.assert_outcomes(passed=1, skipped=1)
    case = _robust(project.results())
    assert case["outcome"] == "skipped" and "no more model calls" in case["message"]
    assert len(project.server.requests) == 3  # the original and two variants: never past the budget


def test_the_html_report_shows_the_minimal_flip_escaped(project: Project) -> None:
    import subprocess
    import sys

    project.write("cases/caps.yaml", CAPS)
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.server.answer("capital", "<i>no idea</i>")  # what the flipped variants get: must stay text
    project.run().assert_outcomes(passed=1, failed=1)
    out = project.pytester.path / "report.html"
    done = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "report",
                           str(project.pytester.path / ".llmeval/results.json"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    minimal = _robust(project.results())["robustness"]["minimal"]
    assert "minimal flipping variant" in html and f"<pre>{minimal['prompt']}</pre>" in html
    assert "&lt;i&gt;no idea&lt;/i&gt;" in html and "<i>no idea</i>" not in html
    assert html.count('class="robust"') == 2


# ------------------------------------------------------------------------------- verdicts that reproduce

# cases/robust_capitals.yaml's block: three variants, two of three must keep the outcome.
ROBUST = """\
suite: robust
system: Answer in one short sentence.
robustness: {perturb: [case, typo, punctuation], samples: 3, min_consistency: 0.6, max_shrink_calls: 3}
cases:
  - id: fr
    question: What is the capital of France?
    expect: [{contains: Paris}]
"""


def test_a_robust_verdict_is_the_same_on_every_rerun(project: Project) -> None:
    # A model that stumbles over a typo in "capital" only: one variant in three flips, not enough to fail. The
    # minimal flip used to be saved and replayed first next time, displacing a variant that kept the outcome:
    # the item passed once and failed on every rerun.
    project.server.answer("capital", "Paris.")
    project.write("cases/robust.yaml", ROBUST)
    first = project.run()
    first.assert_outcomes(passed=2)
    r = measured(_robust(project.results()))
    assert r["flips"] and r["minimal"] is not None and r["outcome"] == "passed"
    asked = len(project.server.requests)
    for extra in ((), ("-n", "2")):  # in this process again, then in xdist workers: as on another machine
        project.run(*extra).assert_outcomes(passed=2)
        assert measured(_robust(project.results())) == r
    assert len(project.server.requests) == asked  # the same variants and shrink steps: all from the cache
    assert saved_files(project) == []  # a run without --llm-explore writes nothing
    assert r["committed"] == 0 and not r["explore"] and not r["saved"]


def test_a_baseline_recorded_on_one_run_sees_no_regression_on_an_identical_rerun(project: Project) -> None:
    project.server.answer("capital", "Paris.")
    project.write("cases/robust.yaml", ROBUST)
    project.run("--llm-update-baseline").assert_outcomes(passed=2)
    # A consistency drop on one case is a regression by the score rule (a pass-rate drop needs more cases).
    result = project.run("--llm-baseline=.llmeval/baseline.json", "--llm-gate=score:-0.05")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    gate = project.results()["gate"]
    assert not gate["failed"]
    robust = next(v for v in gate["suites"] if v["suite"] == "robust:robust")
    assert robust["verdict"] == "ok" and robust["paired"] == 1 and robust["delta_points"] == 0
    assert abs(robust["score_delta"]) < 1e-6 and robust["flipped"] == []  # (the baseline rounds scores)


FLAKY_HAND_WRITTEN = '''
from hypothesis import given
from pytest_llmeval.strategies import llm_settings, perturbed


@llm_settings(max_examples=8)
@given(prompt=perturbed("What is the capital of France?", kinds=["case", "typo", "punctuation"]))
def test_capital(llm, prompt):
    assert "Paris" in llm(prompt)
'''


def test_a_hand_written_llm_settings_test_gives_the_same_verdict_on_every_rerun(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)  # a local run, which used to draw new prompts every time
    project.server.answer("capital", "Paris.")  # only a typo in "capital" fails
    project.pytester.makepyfile(test_hw=FLAKY_HAND_WRITTEN)
    runs = []
    for _ in range(3):
        before = len(project.server.requests)
        outcomes = project.run("test_hw.py", "--llm-cache=off").parseoutcomes()
        runs.append((outcomes, [req["messages"][-1]["content"] for req in project.server.requests[before:]]))
    assert runs[0][1] and runs[1] == runs[0] and runs[2] == runs[0]  # the same prompts, in the same order
    assert saved_files(project) == []
    # And with the cache on, every rerun is answered from it.
    project.run("test_hw.py")
    before = len(project.server.requests)
    assert project.run("test_hw.py").parseoutcomes() == runs[0][0]
    assert len(project.server.requests) == before


def test_exploring_draws_new_variants_and_saves_the_minimal_flip_for_every_later_run(project: Project) -> None:
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.write("cases/caps.yaml", CAPS)
    project.run().assert_outcomes(passed=1, failed=1)
    seeded = measured(_robust(project.results()))
    asked = {req["messages"][-1]["content"] for req in project.server.requests}

    before = len(project.server.requests)
    result = project.run("--llm-explore")
    result.assert_outcomes(passed=1, failed=1)
    explored = measured(_robust(project.results()))
    assert explored["explore"] and explored["seed"] != 1 and explored["saved"]
    assert {req["messages"][-1]["content"] for req in project.server.requests[before:]} - asked  # new variants
    result.stdout.fnmatch_lines(["*robustness: * (original: passed; perturb: case, punctuation; seed *; exploring)",
                                 "*minimal flipping variant (shrunk by Hypothesis, * saved in .llmeval/hypothesis: "
                                 "commit it):"])
    assert_one_minimal_edit(explored["minimal"])
    assert saved_files(project)

    # Later runs try the seeded variants and the saved flip, first: the same verdict each time, nothing new
    # written. The saved flip displaces no seeded variant.
    later = []
    for _ in range(2):
        result = project.run()
        result.assert_outcomes(passed=1, failed=1)
        later.append(measured(_robust(project.results())))
    result.stdout.fnmatch_lines(["*robustness: * (original: passed; perturb: case, punctuation; seed 1; "
                                 "1 saved flip(s) replayed)"])
    assert later[1] == later[0]
    r = later[0]
    assert r["seed"] == 1 and not r["explore"] and not r["saved"] and r["committed"] == 1
    assert r["flips"][0]["prompt"] == explored["minimal"]["prompt"]
    assert {f["prompt"] for f in seeded["flips"]} <= {f["prompt"] for f in r["flips"]}
    assert r["variants"] == 8 + (explored["minimal"]["prompt"] not in {f["prompt"] for f in seeded["flips"]})
    files = saved_files(project)
    project.run()
    assert saved_files(project) == files


def test_exploring_a_hand_written_test_saves_the_failure_that_later_runs_replay_first(project: Project) -> None:
    project.server.answer("capital of France", "Paris.", case_sensitive=True)
    project.pytester.makepyfile(test_hw=HAND_WRITTEN)
    result = project.run("test_hw.py", "--llm-explore")
    result.assert_outcomes(failed=1)
    shown = re.search(r"prompt='([^']*)'", result.stdout.str())
    assert shown is not None and shown.group(1) != ORIGINAL
    saved = saved_files(project, ".llmeval/hypothesis/tests")
    assert saved
    sequences = []
    for _ in range(2):
        before = len(project.server.requests)
        project.run("test_hw.py", "--llm-cache=off").assert_outcomes(failed=1)
        sequences.append([req["messages"][-1]["content"] for req in project.server.requests[before:]])
    assert sequences[0][0] == shown.group(1) and sequences[1] == sequences[0]
    assert saved_files(project, ".llmeval/hypothesis/tests") == saved


def test_explore_is_not_an_ini_key(project: Project) -> None:
    project.pytester.makeini("[pytest]\nllmeval_explore = true\n")
    result = project.run("--collect-only")
    assert "llmeval_explore" in result.stderr.str() + result.stdout.str()  # pytest warns of an unknown ini key
