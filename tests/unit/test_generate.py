"""``llmeval generate``: scripted generations through the local OpenAI-compatible server, the real loader, the real
sandbox and the real (packaged) embedding model (the run on the offline model is in tests/realmodel)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.generate import GEO, write
from helpers.llm_server import ScriptedLLMServer

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.flywheel.generate import main, parse_candidates, read_review


def generate(tmp_path: Path, server: ScriptedLLMServer, spec: Path, *extra: str) -> int:
    return main(["generate", str(spec), "--api-base", server.url, "--cache-dir", str(tmp_path / "cache"), *extra])


def fenced(lang: str, value: Any) -> str:
    body = json.dumps(value, indent=1) if lang == "json" else yaml.safe_dump(value, sort_keys=False)
    return f"Here are the cases:\n```{lang}\n{body}```\nHope this helps."


def test_parse_candidates_takes_what_models_write() -> None:
    one = {"question": "Q?", "expect": [{"contains": "A"}]}
    assert parse_candidates(json.dumps([one])) == [one]
    assert parse_candidates(fenced("json", [one, one])) == [one, one]
    assert parse_candidates(fenced("yaml", [one])) == [one]
    assert parse_candidates(json.dumps({"cases": [one]})) == [one]
    assert parse_candidates("Sure! " + json.dumps(one) + "\nand\n" + json.dumps(one)) == [one, one]
    assert parse_candidates("- question: Q?\n  expect: [{contains: A}]\n") == [one]
    assert parse_candidates(json.dumps(one)) == [one]
    assert parse_candidates("I cannot help with that.") == []


def test_generate_qna_counts_every_filter_and_writes_the_review_file(
        tmp_path: Path, llm_server: ScriptedLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write(tmp_path / "cases/geography.yaml", GEO)
    spec = write(tmp_path / "cases/generate/geography.gen.yaml", """\
        suite: ../geography.yaml
        describe: Capitals of European countries, one question each, answer checked with contains.
        count: 10
        model: openai/test-model
        temperature: 0.9
        runs: 2
        filters:
          dedupe: 0.9
          leak: true
          judge: {model: openai/judge-model, rubric: correctness}
        """)
    run0 = [
        {"id": "x1", "question": "What is the capital of Germany?", "expect": [{"contains": "Berlin"}],
         "reference": "Berlin."},
        {"question": "What is the capital of Spain?", "expect": [{"contains": "Madrid"}], "reference": "Madrid."},
        {"question": "What is the capital city of Spain?", "expect": [{"contains": "Madrid"}],
         "reference": "Madrid."},                                                       # near duplicate
        {"question": "what is the capital of France", "expect": [{"contains": "Paris"}],
         "reference": "Paris."},                                                        # the suite has it
        {"question": "Capital of Portugal?", "expect": [{"containz": "Lisbon"}]},       # unknown check
        {"expect": [{"contains": "Rome"}], "reference": "Rome."},                       # no question
        {"question": "Is Vienna the capital of Austria?", "expect": [{"contains": "Vienna"}],
         "reference": "Yes, Vienna."},                                                  # leaks its answer
    ]
    run1 = [
        {"question": "What is the capital of Poland?", "expect": [{"contains": "Warsaw"}],
         "reference": "Krakow."},                                                       # the judge says no
        {"question": "What is the capital of Germany?", "expect": [{"contains": "Berlin"}],
         "reference": "Berlin."},                                                       # run 0 had it
        {"question": "Name the capital of Norway.", "expect": {"contains": "Oslo"},     # expect as a mapping
         "reference": "Oslo.", "split": "test"},
        "What is the capital of Italy?",                                                # not a mapping
        {"question": "Capital of Greece?", "expect": [{"containz": "Athens"}]},          # unknown check
    ]
    llm_server.answer("Answer to grade:\nKrakow", '{"score": 2, "reason": "Warsaw is the capital."}',
                      model="openai/judge-model")
    llm_server.answer("Answer to grade", '{"score": 9, "reason": "Correct."}', model="openai/judge-model")
    llm_server.answer("new test cases", [fenced("json", run0), fenced("yaml", run1)])

    assert generate(tmp_path, llm_server, spec) == 0
    out = capsys.readouterr().out
    review_path = tmp_path / "cases/geography.review.yaml"
    assert f"wrote {review_path}" in out
    for row in ("generated", "schema", "dedupe", "judge", "kept"):
        assert f"  {row} " in out, out

    # The generation request: two runs (two cache slots, seeded), the kind's fields, the suite's cases as seeds.
    gen = [r for r in llm_server.requests if r["model"] == "test-model"]
    assert len(gen) == 2 and [r["seed"] for r in gen] == [0, 1] and gen[0]["temperature"] == 0.9
    prompt = gen[0]["messages"][-1]["content"]
    assert "Write 10 new test cases" in prompt and "Capitals of European countries" in prompt
    assert "What is the capital of Japan?" in prompt and "Answer in one short sentence." in prompt

    review = read_review(review_path)
    text = review_path.read_text()
    assert text.startswith("# written by llmeval generate; review with: llmeval review geography.review.yaml\n")
    assert review["suite"] == "geography.yaml" and review["kind"] == "qna"
    assert review["spec"] == "generate/geography.gen.yaml" and len(review["spec_hash"]) == 16
    assert review["summary"] == {
        "replies": 2, "unparsed_replies": 0, "generated": 12, "invalid": 4,
        "invalid_reasons": {"expect[].containz: unknown check 'containz'": 2,
                            "required field 'question' is missing (or give a 'prompt')": 1,
                            "not a mapping of case fields": 1},
        "duplicates": 3, "no_compile": 0, "failed_run": 0, "failed_checks": 0, "changed_output": 0,
        "judge_rejected": 1, "surplus": 0, "kept": 4, "leaks_flagged": 1}
    s = review["summary"]
    assert s["generated"] == s["invalid"] + s["duplicates"] + s["judge_rejected"] + s["kept"]

    questions = [c["case"]["question"] for c in review["candidates"]]
    assert questions == ["What is the capital of Germany?", "What is the capital of Spain?",
                         "Is Vienna the capital of Austria?", "Name the capital of Norway."]
    first = review["candidates"][0]
    assert first["status"] == "pending"
    assert first["case"] == {"question": "What is the capital of Germany?", "expect": [{"contains": "Berlin"}],
                             "reference": "Berlin."}  # no id: review assigns it
    prov = first["provenance"]
    assert prov["source"] == "generate" and prov["generator"] == "openai/test-model"
    assert prov["temperature"] == 0.9 and prov["run"] == 0 and len(prov["prompt_hash"]) == 12
    assert prov["filters"] == ["schema", "dedupe", "judge"]
    assert prov["transformation"] is None and prov["source_case"] is None
    assert prov["judge"] == {"model": "openai/judge-model", "rubric": "correctness", "score": 9.0,
                             "reason": "Correct."}
    assert "flags" not in first
    vienna = review["candidates"][2]
    assert vienna["flags"] == ["leak"] and "'Vienna'" in vienna["notes"][0]
    norway = review["candidates"][3]
    assert norway["case"]["expect"] == [{"contains": "Oslo"}] and "split" not in norway["case"]
    assert norway["provenance"]["run"] == 1
    assert prov["prompt_hash"] == norway["provenance"]["prompt_hash"]  # one prompt, two runs

    # The suite file is untouched, and a reviewed candidate loads as an ordinary case of it.
    assert suite.read_text() == GEO
    accepted = tmp_path / "cases/accepted.yaml"
    accepted.write_text(yaml.safe_dump({**yaml.safe_load(GEO), "cases": [
        {"id": f"gen-{i}", **c["case"]} for i, c in enumerate(review["candidates"])]}))
    loaded = load_file(accepted, builtin_registry())
    assert not loaded.errors and len(loaded.cases) == 4

    # A rerun is served from the response cache: no new request.
    before = len(llm_server.requests)
    assert generate(tmp_path, llm_server, spec) == 0
    assert len(llm_server.requests) == before
    assert read_review(review_path)["candidates"] == review["candidates"]


def test_generate_code_runs_reference_solutions_in_the_sandbox(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    spec = write(tmp_path / "specs/code.gen.yaml", """\
        suite: ../cases/snippets.yaml     # does not exist yet
        kind: code
        describe: Small programs that print numbers.
        model: openai/test-model
        runs: 1
        count: 3
        filters: {dedupe: 0.9}
        """)
    reply = [
        {"language": "python", "prompt": "Write a Python program that prints the sum of 1 to 10.",
         "expect": [{"stdout": {"equals": "55"}}], "solution": "print(sum(range(1, 11)))"},
        {"language": "python", "prompt": "Write a Python program that prints the numbers 1 to 5, one per line.",
         "expect": [{"stdout": {"contains": "5"}}], "solution": "for i in range(1, 6)\n    print(i)\n"},
        {"language": "python", "prompt": "Write a Python program that prints the reciprocal of zero.",
         "expect": [{"runs": True}], "solution": "print(1 / 0)"},
        {"language": "python", "prompt": "Write a Python program that prints Hello, World!",
         "expect": [{"stdout": {"equals": "Hello, World!"}}], "solution": "print('Hello')"},
        {"language": "python", "prompt": "Write a Python program that prints the first three primes.",
         "expect": [{"stdout": {"equals": "2 3 5"}}]},
        {"language": "c", "prompt": "Write a C program that prints the first five odd numbers on one line.",
         "expect": [{"compiles": True}, {"stdout": {"contains": "7 9"}}],
         "solution": "```c\n#include <stdio.h>\nint main(void) {\n    for (int i = 1; i < 10; i += 2)"
                     " printf(i < 9 ? \"%d \" : \"%d\\n\", i);\n    return 0;\n}\n```"},
        {"language": "python", "prompt": "Write a Python program that prints 42.",
         "expect": [{"stdout": {"equals": "42"}}], "solution": "print(6 * 7)"},
        {"language": "python", "prompt": "Write a Python program that prints the square of 12.",
         "expect": [{"stdout": {"equals": "144"}}], "solution": "print(12 ** 2)"},
    ]
    llm_server.answer("new test cases", json.dumps(reply))
    assert generate(tmp_path, llm_server, spec) == 0
    review = read_review(tmp_path / "cases/snippets.review.yaml")
    assert review["suite"] == "snippets.yaml" and review["kind"] == "code"
    assert review["summary"] == {
        "replies": 1, "unparsed_replies": 0, "generated": 8, "invalid": 1,
        "invalid_reasons": {"solution: required field is missing (filters.compile)": 1},
        "duplicates": 0, "no_compile": 1, "failed_run": 1, "failed_checks": 1, "changed_output": 0,
        "judge_rejected": 0, "surplus": 1, "kept": 3, "leaks_flagged": 1}
    sum10, odd, answer42 = review["candidates"]
    assert sum10["provenance"]["output"] == "55\n"
    assert sum10["provenance"]["filters"] == ["schema", "dedupe", "compile"]
    assert sum10["case"]["solution"] == "print(sum(range(1, 11)))"
    assert odd["provenance"]["output"] == "1 3 5 7 9\n"  # compiled with gcc inside the sandbox
    assert answer42["flags"] == ["leak"] and "'42'" in answer42["notes"][0]


CLEAN_C = """\
suite: clean-c
kind: labels
labels: [DRY, MC, NO_COMPILE]
cases:
  - id: sum-two
    input: |
      #include <stdio.h>
      static int sum(const int *a, int n) { int s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }
      int main(void) {
          int a[] = {1, 2, 3}, b[] = {4, 5};
          printf("%d\\n", sum(a, 3) + sum(b, 2));
          return 0;
      }
    answer: []
  - id: snippet
    input: "int twice(int x) { return 2 * x; }"
    answer: []
"""

DRY = """\
Here it is:
```c
#include <stdio.h>
int main(void) {
    int a[] = {1, 2, 3}, b[] = {4, 5};
    int s = 0;
    for (int i = 0; i < 3; i++) s += a[i];
    for (int i = 0; i < 2; i++) s += b[i];
    printf("%d\\n", s{extra});
    return 0;
}
```"""


def test_transform_keeps_rewrites_that_still_print_the_same(tmp_path: Path, llm_server: ScriptedLLMServer) -> None:
    write(tmp_path / "cases/clean_c.yaml", CLEAN_C)
    spec = write(tmp_path / "cases/generate/violate_dry.gen.yaml", """\
        suite: ../clean_c.yaml
        model: openai/test-model
        runs: 5
        count: 5
        transform:
          name: violate-dry
          prompt: Rewrite this clean C code so it violates DRY, keep its behaviour identical. Return only the code.
          label: DRY
        """)
    source = yaml.safe_load(CLEAN_C)["cases"][0]["input"]
    llm_server.answer("violates DRY", [
        DRY.replace("{extra}", " + 1"),                              # prints 16: another program
        DRY.replace("{extra}", "").replace("return 0;", "return 0"),  # does not compile
        DRY.replace("{extra}", ""),                                  # prints 15, repeated loops: kept
        f"```c\n{source}```",                                        # the source unchanged
        "I would rather not.",                                       # no code at all
    ])
    assert generate(tmp_path, llm_server, spec, "-v") == 0
    review = read_review(tmp_path / "cases/clean_c.review.yaml")
    assert review["summary"] == {
        "replies": 5, "unparsed_replies": 1, "generated": 4, "invalid": 0, "invalid_reasons": {},
        "duplicates": 1, "no_compile": 1, "failed_run": 0, "failed_checks": 0, "changed_output": 1,
        "judge_rejected": 0, "surplus": 0, "kept": 1, "leaks_flagged": 0, "sources": 1, "sources_skipped": 1}
    [kept] = review["candidates"]
    assert kept["case"]["answer"] == ["DRY"]
    assert "for (int i = 0; i < 2; i++) s += b[i];" in kept["case"]["input"]
    prov = kept["provenance"]
    assert prov["source"] == "transform" and prov["transformation"] == "violate-dry"
    assert prov["source_case"] == "sum-two" and prov["run"] == 2 and prov["output"] == "15\n"
    assert prov["filters"] == ["schema", "dedupe", "compile", "same_output"]
    # Only the runnable source was sent, five times; the snippet without main was skipped.
    sent = [r["messages"][-1]["content"] for r in llm_server.requests]
    assert len(sent) == 5 and all("sum(a, 3)" in m for m in sent)
    # Multi-line code is written as a literal block a person can read and edit.
    assert "    input: |\n" in (tmp_path / "cases/clean_c.review.yaml").read_text()


def test_transform_from_another_suite_labels_the_rewritten_code(tmp_path: Path,
                                                                 llm_server: ScriptedLLMServer) -> None:
    """Seed 004's chain: clean programs (a code suite with reference solutions) become labelled cases of a labels
    suite."""
    write(tmp_path / "cases/clean.yaml", """\
        suite: clean
        kind: code
        cases:
          - id: squares
            language: python
            prompt: Print the squares of 1 to 3.
            solution: "for i in range(1, 4):\\n    print(i * i)\\n"
            expect: [{stdout: {equals: "1\\n4\\n9"}}]
        """)
    write(tmp_path / "cases/labels.yaml", "suite: labels\nkind: labels\nlabels: [DRY, MC]\ncases:\n"
                                          "  - {id: magic, input: 'sleep(86400);', answer: [MC]}\n")
    spec = write(tmp_path / "cases/generate/dry.gen.yaml", """\
        suite: ../labels.yaml
        model: openai/test-model
        runs: 1
        transform: {name: violate-dry, prompt: Repeat yourself., source: ../clean.yaml, field: solution,
                    target_field: input, label: DRY}
        """)
    llm_server.answer("Repeat yourself", "```python\nprint(1 * 1)\nprint(2 * 2)\nprint(3 * 3)\n```")
    assert generate(tmp_path, llm_server, spec) == 0
    [kept] = read_review(tmp_path / "cases/labels.review.yaml")["candidates"]
    assert kept["case"] == {"input": "print(1 * 1)\nprint(2 * 2)\nprint(3 * 3)\n", "answer": ["DRY"]}
    assert kept["provenance"]["source_case"] == "squares" and kept["provenance"]["source_suite"] == "clean.yaml"
    assert kept["provenance"]["output"] == "1\n4\n9\n"


def test_spec_errors_name_file_line_and_field(tmp_path: Path, llm_server: ScriptedLLMServer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "geo.yaml", GEO)
    spec = write(tmp_path / "bad.gen.yaml", """\
        suite: geo.yaml
        describe: Capitals.
        count: many
        filters: {dedup: 0.8}
        """)
    assert generate(tmp_path, llm_server, spec) == 2
    err = capsys.readouterr().err
    assert f"{spec}:3: count: Input should be a valid integer" in err
    assert f"{spec}:4: filters.dedup: unknown field" in err
    write(spec, "suite: geo.yaml\nkind: choice\ndescribe: Capitals.\n")
    assert generate(tmp_path, llm_server, spec) == 2
    assert "the spec says 'choice' but" in capsys.readouterr().err
    assert not llm_server.requests


def test_dry_run_prints_the_request_and_calls_nothing(tmp_path: Path, llm_server: ScriptedLLMServer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "geo.yaml", GEO)
    spec = write(tmp_path / "geo.gen.yaml", "suite: geo.yaml\ndescribe: Capitals.\ncount: 4\nruns: 2\n"
                                            "model: openai/test-model\n")
    assert generate(tmp_path, llm_server, spec, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "2 call(s) to openai/test-model" in out and "Write 4 new test cases" in out
    assert not llm_server.requests and not (tmp_path / "geo.review.yaml").exists()
