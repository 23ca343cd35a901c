"""Broken case files: a precise error (file, line, field, what was expected) while the rest still runs."""

from __future__ import annotations

import re

import pytest
from helpers.bad_cases import GOOD

from conftest import Project


def esc(pattern: str) -> str:
    """fnmatch treats [..] as a character class; case-file field paths are full of them."""
    return re.sub(r"[\[\]]", lambda m: f"[{m.group()}]", pattern)


BAD_FILES = {
    "yaml-syntax": (
        "suite: broken\ncases:\n  - id: a\n    question: [unclosed\n",
        ["*cases/bad.yaml:5: YAML syntax error: *"],
    ),
    "unknown-kind": (
        "suite: s\nkind: essay\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:2: kind: Input should be 'qna', 'choice', 'code', 'labels' or 'calibration' (got 'essay')"],
    ),
    "missing-field": (
        "kind: choice\ncases:\n  - id: a\n    question: q\n    choices: {A: x, B: y}\n",
        ["*cases/bad.yaml:3: cases[0].answer: required field is missing"],
    ),
    "mistyped-field": (
        "cases:\n  - id: a\n    question: q\n    tags: smoke\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:4: cases[0].tags: Input should be a valid list (got 'smoke')"],
    ),
    "unknown-suite-field": (
        "suite: s\nsystm: typo\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:2: systm: unknown field; did you mean 'system'?"],
    ),
    "duplicate-ids": (
        "cases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n"
        "  - id: a\n    question: r\n    expect: [{contains: y}]\n",
        ["*cases/bad.yaml:5: cases[1].id: duplicate id 'a' (first defined at line 2)"],
    ),
    "unknown-check": (
        "cases:\n  - id: a\n    question: q\n    expect:\n      - contains: x\n      - containz: y\n",
        ["*cases/bad.yaml:6: cases[0].expect[1].containz: unknown check 'containz'; expected one of: *contains*"],
    ),
    "bad-check-params": (
        "cases:\n  - id: a\n    question: q\n    expect:\n      - regex: {pattern: '(unclosed'}\n",
        ["*cases/bad.yaml:5: cases[0].expect[0].regex.pattern: invalid regular expression*"],
    ),
    "template-field-no-case-has": (
        "prompt: 'Q: {qestion}'\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:1: prompt: template field 'qestion' is not a field of any case*"],
    ),
    "choice-answer-not-a-choice": (
        "kind: choice\ncases:\n  - id: a\n    question: q\n    choices: {A: x, B: y}\n    answer: D\n",
        ["*cases/bad.yaml:3: cases[0]: answer 'D' is not one of the choices ['A', 'B']"],
    ),
    "not-a-mapping": (
        "- just\n- a list\n",
        ["*cases/bad.yaml:1: expected a mapping with suite settings and 'cases'"],
    ),
    "check-for-other-kind": (
        "cases:\n  - id: a\n    question: q\n    expect: [{choice: B}]\n",
        ["*cases/bad.yaml:4: cases[0].expect[0].choice: check 'choice' applies to choice cases, not 'qna'"],
    ),
    "no-checks": (
        "cases:\n  - id: a\n    question: q\n",
        ["*cases/bad.yaml:2: cases[0].expect: no checks: add expect*"],
    ),
    # A misspelled field, kept before as a free field that nothing read: an error when it is close to a field the
    # case or suite has, to a sampling parameter, or to a field the prompt template uses.
    "misspelled-case-field": (
        "cases:\n  - id: a\n    question: q\n    tempurature: 3\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:4: cases[0].tempurature: unknown field; did you mean params.temperature? (sampling "
         "parameters go under params)"],
    ),
    "misspelled-schema-field": (
        "cases:\n  - id: a\n    question: q\n    refrence: r\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:4: cases[0].refrence: unknown field; did you mean 'reference'?*"],
    ),
    "misspelled-template-field": (
        "prompt: '{topic}: {question}'\ncases:\n  - id: a\n    question: q\n    topic: t\n    topics: u\n"
        "    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:6: cases[0].topics: unknown field; did you mean 'topic'? (the prompt template uses it)"],
    ),
    "sampling-parameter-outside-params": (
        "cases:\n  - id: a\n    question: q\n    temperature: 0\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:4: cases[0].temperature: a sampling parameter: write it under params "
         "(params: {temperature: ...})"],
    ),
    "misspelled-suite-field-near-a-parameter": (
        "suite: s\nmax_token: 30\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:2: max_token: unknown field; did you mean params.max_tokens? (sampling parameters go "
         "under params)"],
    ),
    "misspelled-nested-field": (
        "suite: s\nrobustness: {perturb: [typo], sample: 3}\ncases:\n  - id: a\n    question: q\n"
        "    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:2: robustness.sample: unknown field; did you mean 'samples'?"],
    ),
    "misspelled-check-parameter": (
        "cases:\n  - id: a\n    question: q\n    expect:\n      - contains: {valeu: x}\n",
        ["*cases/bad.yaml:5: cases[0].expect[0].contains.valeu: unknown field; did you mean 'value'?"],
    ),
    # Sampling parameters of the wrong type fail here, not as one provider error per case at run time.
    "params-wrong-type": (
        "params: {temperature: hot}\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:1: params.temperature: Input should be a valid number (got 'hot')"],
    ),
    "params-out-of-range": (
        "params:\n  top_p: 1.5\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:2: params.top_p: Input should be less than or equal to 1 (got 1.5)"],
    ),
    "case-params-wrong-type": (
        "cases:\n  - id: a\n    question: q\n    params:\n      max_tokens: '64'\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:5: cases[0].params.max_tokens: Input should be a valid integer (got '64')"],
    ),
    "params-stop-not-text": (
        "params: {stop: {at: end}}\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:1: params.stop: Input should be a valid string; or Input should be a valid list"],
    ),
    "params-logit-bias-number-keys": (
        "params: {logit_bias: {50256: -100}}\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ['*cases/bad.yaml:1: params.logit_bias: token ids must be quoted, e.g. {"50256": -100}'],
    ),
    "params-the-plugin-sets": (
        "params: {timeout: 5}\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:1: params.timeout: set by the plugin, not by a case file (use --llm-timeout)"],
    ),
    # YAML 1.2: the keys of a mapping are unique; PyYAML would keep the last one silently.
    "duplicate-suite-key": (
        "suite: first\nkind: qna\nsuite: second\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n",
        ["*cases/bad.yaml:3: suite: duplicate key (first on line 1)*"],
    ),
    "duplicate-case-key": (
        "cases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n    question: r\n",
        ["*cases/bad.yaml:5: cases[0].question: duplicate key (first on line 3)*"],
    ),
    "duplicate-key-beside-a-merge": (
        "params: &p {temperature: 0}\ncases:\n  - id: a\n    question: q\n    expect: [{contains: x}]\n"
        "    params:\n      <<: *p\n      seed: 1\n      seed: 2\n",
        ["*cases/bad.yaml:9: cases[0].params.seed: duplicate key (first on line 8)*"],
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_reported_precisely_and_the_rest_runs(project: Project, name: str) -> None:
    text, lines = BAD_FILES[name]
    project.write("cases/bad.yaml", text)
    project.write("cases/good.yaml", GOOD)
    project.server.answer("hello", "hello there")
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([esc(x) for x in lines])
    # the short summary line starts with the problem itself, not a traceback
    result.stdout.fnmatch_lines(["ERROR cases/bad.yaml::* - " + lines[0].lstrip("*").split(":")[0] + ":*"])
    out = result.stdout.str()
    assert "Traceback" not in out and "site-packages" not in out and "pydantic" not in out
    doc = project.results()
    assert doc["suites"][0]["suite"] == "good" and doc["suites"][0]["passed"] == 1
    assert doc["invalid"] and doc["invalid"][0]["file"] == "cases/bad.yaml"


def test_one_bad_case_does_not_sink_its_file(project: Project) -> None:
    project.write("cases/mixed.yaml", """\
suite: mixed
cases:
  - id: fine
    question: Say hello.
    expect: [{contains: hello}]
  - id: broken
    question: Say hi.
    expect: [{containz: hi}]
  - id: also-fine
    question: Say hello again.
    expect: [{contains: hello}]
""")
    project.server.answer("hello", "hello")
    result = project.run("-v")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([esc(x) for x in [
        "cases/mixed.yaml::broken ERROR*",
        "*cases/mixed.yaml:8: cases[1].expect[0].containz: unknown check 'containz'*",
    ]])
    assert len(project.server.requests) == 2


def test_a_duplicate_key_in_a_case_sinks_only_that_case(project: Project) -> None:
    project.write("cases/mixed.yaml", """\
suite: mixed
cases:
  - id: fine
    question: Say hello.
    expect: [{contains: hello}]
  - id: twice
    question: Say hi.
    expect: [{contains: hi}]
    expect: [{contains: hello}]
""")
    project.server.answer("hello", "hello")
    result = project.run("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([esc("*cases/mixed.yaml:9: cases[1].expect: duplicate key (first on line 8)*")])
    assert len(project.server.requests) == 1


def test_merge_keys_and_their_overrides_are_not_duplicates(project: Project) -> None:
    # The merge-key type: a key written beside ``<<`` overrides the merged one, and ``<<`` may merge several
    # mappings that share keys (the first wins). Neither is a duplicate.
    project.write("cases/merged.yaml", """\
suite: merged
params: &base {temperature: 0, max_tokens: 16}
cases:
  - id: override
    question: Say hello.
    params:
      <<: [*base, {temperature: 1, seed: 3}]
      temperature: 0.5
    expect: [{contains: hello}]
""")
    project.server.answer("hello", "hello")
    result = project.run()
    result.assert_outcomes(passed=1)
    assert project.server.requests[0]["temperature"] == 0.5 and project.server.requests[0]["seed"] == 3


def test_free_fields_that_resemble_nothing_are_kept_quietly(project: Project) -> None:
    # Free fields are the case's own data (templates, llmeval split --by, checks): only near-misses of a known
    # field are reported. ``source`` is near ``sources``, which only means something with retrieval.
    project.write("cases/free.yaml", """\
suite: free
prompt: "{questions}"
cases:
  - id: fine
    questions: Say hello.
    difficulty: hard
    source: an old exam
    expect: [{contains: hello}]
""")
    project.write("cases/data.yaml", """\
suite: data
dataset: {path: rows.jsonl}
expect: [{contains: hello}]
""")
    # Columns of a dataset come from the data, not from a person's typing: never reported.
    project.write("cases/rows.jsonl", '{"id": "r1", "question": "Say hello", "refrence": "x", "temprature": 1}\n')
    project.server.answer("hello", "hello")
    result = project.run()
    result.assert_outcomes(passed=2)
    assert "unknown field" not in result.stdout.str()


def test_params_are_checked_before_any_call_and_sent_as_written(project: Project) -> None:
    project.write("cases/params.yaml", """\
suite: params
params: {temperature: 0, max_tokens: 16, top_k: 40, vendor_flag: {deep: true}}
cases:
  - id: fine
    question: Say hello.
    params: {stop: ["\\n\\n"], seed: 7, logit_bias: {"50256": -100}}
    expect: [{contains: hello}]
  - id: hot
    question: Say hi.
    params: {temperature: hot}
    expect: [{contains: hi}]
  - id: many
    question: Say hi again.
    params: {n: 0, presence_penalty: [1]}
    expect: [{contains: hi}]
""")
    project.server.answer("hello", "hello")
    result = project.run("-v")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([esc(x) for x in [
        "*cases/params.yaml:10: cases[1].params.temperature: Input should be a valid number (got 'hot')",
        "*cases/params.yaml:14: cases[2].params.n: Input should be greater than or equal to 1 (got 0)",
        "*cases/params.yaml:14: cases[2].params.presence_penalty: Input should be a valid number",
    ]])
    # Only the valid case called the model; known parameters go out as written (0 stays 0, not 0.0: the cache
    # key is made of them) and parameters the plugin does not know pass through to the provider.
    assert len(project.server.requests) == 1
    sent = project.server.requests[0]
    assert sent["temperature"] == 0 and sent["max_tokens"] == 16 and sent["seed"] == 7
    assert sent["stop"] == ["\n\n"] and sent["top_k"] == 40


def test_bad_jsonl_dataset_rows_name_the_data_file_and_line(project: Project) -> None:
    project.write("cases/siqa.yaml", """\
suite: siqa
kind: choice
dataset:
  path: data/rows.jsonl
  fields: {choices: {A: a, B: b}, answer: label}
  values: {answer: {"1": A, "2": B}}
""")
    project.write("cases/data/rows.jsonl", "\n".join([
        '{"id": "r1", "question": "q1", "a": "x", "b": "y", "label": "1"}',
        '{"id": "r2", "question": "q2", "a": "x", "b": "y", "label": "1"',
        '{"id": "r3", "question": "q3", "a": "x", "label": "2"}',
        '{"id": "r4", "a": "x", "b": "y", "label": "2"}',
        '{"id": "r5", "question": "q5", "a": "x", "b": "y", "label": "2"}',
    ]) + "\n")
    project.server.answer("q1", "A")
    project.server.answer("q5", "B")
    result = project.run("-v")
    # one error item per broken case; rows without a readable id share one
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "*cases/data/rows.jsonl:2: invalid JSON: *",
        "*cases/data/rows.jsonl:3: dataset field 'b' (for*) is missing in this row*",
        "*cases/data/rows.jsonl:4: question: required field is missing",
    ])
    # The dataset file is collected through its suite, not as a suite of its own.
    assert "rows.jsonl::" not in result.stdout.str()


def test_bad_bare_jsonl_lines(project: Project) -> None:
    project.write("cases/quick.jsonl", "\n".join([
        '{"id": "one", "question": "Say hello", "expect": [{"contains": "hello"}]}',
        'not json',
        '{"id": "two", "kind": "poem", "question": "q"}',
    ]) + "\n")
    project.server.answer("hello", "hello")
    result = project.run()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*cases/quick.jsonl:2: invalid JSON: *",
        "*cases/quick.jsonl:3: kind: unknown kind 'poem'; expected one of: qna, choice, code, labels, calibration",
    ])


def test_a_repeated_key_in_a_bare_jsonl_case(project: Project) -> None:
    project.write("cases/quick.jsonl", "\n".join([
        '{"id": "one", "question": "Say hello", "expect": [{"contains": "hello"}]}',
        '{"id": "two", "question": "Say hi", "expect": [{"contains": "hello"}], "question": "Say hello"}',
    ]) + "\n")
    project.server.answer("hello", "hello")
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*cases/quick.jsonl:2: duplicate key 'question': a key may appear once in an *"])


def test_labels_case_with_a_label_outside_its_list_is_invalid(project: Project) -> None:
    project.write("cases/labels.yaml", """\
kind: labels
labels: [DRY, SRP]
cases:
  - id: smells
    input: "int f(){return 1;}"
    answer: [NAME]
  - id: ok
    input: "int g(){return 2;}"
    answer: []
""")
    project.server.answer("int g", "[]")
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*cases/labels.yaml:4: cases[[]0]: answer labels [[]'NAME'] are not in labels [[]'DRY', 'SRP']"])


def test_code_case_with_bad_language_is_invalid(project: Project) -> None:
    project.write("cases/code.yaml", "kind: code\ncases:\n  - id: x\n    language: rust\n    prompt: p\n")
    result = project.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([esc("*cases/code.yaml:4: cases[0].language: Input should be 'python' or 'c'*")])
