"""The ``cites`` check: [n] markers and source names count as citations, invented markers fail, listed sources (or
the case's sources:) are scored by the share cited, and a model under built-in retrieval is graded against its
hits. Cases come from real case files through the loader."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.checks.citations import CHECKS, NO_REFERENCES
from pytest_llmeval.core.answer import Answer, Reference
from pytest_llmeval.core.checks import CheckOutcome, CheckRegistry, GradeContext
from pytest_llmeval.rag.index import Retrieved, references_block

REFS = [Reference("docs/install.md", "pip install it"), Reference("docs/api/window.py", "class Window"),
        Reference("docs/faq.md", "questions")]


def registry() -> CheckRegistry:
    reg = builtin_registry()
    for check in CHECKS:
        reg.register(check)
    return reg


def load(tmp_path: Path, body: str) -> list[CaseSpec]:
    (tmp_path / "docs" / "api").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    loaded = load_file(path, registry())
    assert not loaded.errors, [str(e) for e in loaded.errors]
    return loaded.cases


def one_case(tmp_path: Path, expect: str, extra: str = "") -> CaseSpec:
    return load(tmp_path, f"""\
        {extra}
        cases:
          - id: c
            question: How do I install it?
            expect: [{expect}]
        """)[0]


def grade(case: CaseSpec, answer: str, references: list[Reference] | None = None,
          retrieved: list[Retrieved] | None = None) -> CheckOutcome:
    spec = next(c for c in case.checks if c.name == "cites")
    assert spec.definition is not None
    ctx = GradeContext(answer, case, "m", references=REFS if references is None else references,
                       retrieved=retrieved or ())
    return spec.definition.evaluate(spec.params, ctx)


# ------------------------------------------------------------------------------------------- cites: true


@pytest.mark.parametrize("answer", [
    "Run pip install [1].",
    "See the docs [1, 3].",
    "Both pages say so [2-3].",
    "Installing is described in install.md.",
    "Open docs/api/window.py for the class.",
])
def test_an_answer_citing_a_reference_passes(tmp_path: Path, answer: str) -> None:
    outcome = grade(one_case(tmp_path, "cites: true"), answer)
    assert outcome.passed and outcome.score == 1.0, outcome.reason
    assert outcome.details["cited"] and outcome.details["invalid"] == []
    assert outcome.reason.startswith("cited ")


def test_markers_and_names_say_which_references_are_cited(tmp_path: Path) -> None:
    outcome = grade(one_case(tmp_path, "cites: true"), "Use pip [1,3]; the class is in window.py.")
    assert outcome.passed
    assert outcome.details["cited"] == ["docs/install.md", "docs/api/window.py", "docs/faq.md"]
    assert outcome.reason == "cited docs/install.md, docs/api/window.py, docs/faq.md"


def test_an_answer_citing_nothing_fails_and_says_so(tmp_path: Path) -> None:
    outcome = grade(one_case(tmp_path, "cites: true"), "Just run pip install.")
    assert not outcome.passed and outcome.score == 0.0
    assert outcome.reason == "the answer cites none of its 3 references (no [n] marker, no source named)"
    assert outcome.details == {"cited": [], "missing": [], "invalid": []}


@pytest.mark.parametrize(("answer", "invalid"), [
    ("Run pip install [1] [7].", ["[7]"]),
    ("Run pip install [0].", ["[0]"]),
    ("See [2-5] and [9].", ["[2-5]", "[9]"]),
])
def test_an_invented_citation_fails_naming_the_marker(tmp_path: Path, answer: str, invalid: list[str]) -> None:
    outcome = grade(one_case(tmp_path, "cites: true"), answer)
    assert not outcome.passed and outcome.score == 0.0
    assert outcome.details["invalid"] == invalid
    assert f"invented citation{'s' if len(invalid) > 1 else ''} {', '.join(invalid)}: there are 3 references" \
        in outcome.reason


def test_a_range_cites_the_references_it_covers_even_when_it_overshoots(tmp_path: Path) -> None:
    outcome = grade(one_case(tmp_path, "cites: true"), "See [2-5].")
    assert not outcome.passed and outcome.details["invalid"] == ["[2-5]"]
    assert outcome.details["cited"] == ["docs/api/window.py", "docs/faq.md"]


def test_brackets_in_code_and_longer_names_are_not_citations(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: true")
    answer = "Index the list with `items[1]`:\n```python\nx = rows[7]\n```\nthen read reinstall.md or install.md.bak."
    outcome = grade(case, answer)
    assert not outcome.passed
    assert outcome.details == {"cited": [], "missing": [], "invalid": []}


def test_a_file_name_is_matched_whatever_its_case_and_a_url_by_its_whole_address(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: true")
    refs = [Reference("https://example.com/guide/setup"), Reference("docs/Install.md")]
    assert grade(case, "As INSTALL.MD explains.", refs).details["cited"] == ["docs/Install.md"]
    assert grade(case, "See https://example.com/guide/setup.", refs).details["cited"] == \
        ["https://example.com/guide/setup"]
    assert not grade(case, "See the setup guide.", refs).passed


# ------------------------------------------------------------------------------------------- sources


def test_listed_sources_must_all_be_cited_by_default(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: [docs/install.md, docs/api/window.py]")
    both = grade(case, "Install with pip [1]; the class is in [2].")
    assert both.passed and both.score == 1.0
    assert both.reason == "cited 2 of 2 expected sources; cited: docs/install.md, docs/api/window.py"
    one = grade(case, "Install with pip [1]; see also [3].")
    assert not one.passed and one.score == 0.5
    assert one.details == {"cited": ["docs/install.md", "docs/faq.md"], "missing": ["docs/api/window.py"],
                           "invalid": []}
    assert one.reason == ("cited 1 of 2 expected sources; cited: docs/install.md; not cited: docs/api/window.py")


def test_a_listed_source_matches_by_suffix_either_way(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: [install.md, ./docs/api/../api/window.py]")
    assert grade(case, "See [1] and [2].").passed
    bare = [Reference("install.md"), Reference("window.py")]
    long_case = one_case(tmp_path, "cites: [docs/install.md]")
    assert grade(long_case, "See [1].", bare).passed
    # a suffix is whole path components: stall.md is not install.md
    assert not grade(one_case(tmp_path, "cites: [stall.md]"), "See [1].").passed


def test_min_lets_a_share_of_the_sources_pass(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: {sources: [docs/install.md, docs/api/window.py], min: 0.5}")
    outcome = grade(case, "Install with pip [1].")
    assert outcome.passed and outcome.score == 0.5
    assert outcome.reason.startswith("cited 1 of 2 expected sources (needs 50%)")
    assert not grade(case, "Install with pip.").passed


def test_a_source_the_target_never_returned_is_named_as_such(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: [docs/install.md, docs/missing.md]")
    outcome = grade(case, "See [1].")
    assert not outcome.passed and outcome.score == 0.5
    assert "not cited: docs/missing.md (not among the references)" in outcome.reason


def test_an_invented_citation_fails_even_when_the_sources_are_cited(tmp_path: Path) -> None:
    case = one_case(tmp_path, "cites: {sources: [docs/install.md], min: 0.5}")
    outcome = grade(case, "See [1] and [4].")
    assert not outcome.passed and outcome.score == 1.0
    assert outcome.reason.startswith("invented citation [4]: there are 3 references; cited 1 of 1")


def test_without_sources_the_case_sources_are_expected(tmp_path: Path) -> None:
    case = load(tmp_path, """\
        retrieve: {docs: docs}
        cases:
          - id: c
            question: How do I install it?
            sources: [docs/install.md, docs/faq.md]
            expect: [{cites: true}]
        """)[0]
    assert case.sources == ("docs/install.md", "docs/faq.md")
    outcome = grade(case, "Install with pip [1].")
    assert not outcome.passed and outcome.score == 0.5 and outcome.details["missing"] == ["docs/faq.md"]
    assert grade(case, "Install with pip [1]; see faq.md.").passed


@pytest.mark.parametrize("expect", ["cites: []", "cites: ['']", "cites: {min: 2}", "cites: {sources: [a], x: 1}"])
def test_bad_parameters_are_case_errors(tmp_path: Path, expect: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(f"cases:\n  - id: c\n    question: q\n    expect: [{{{expect}}}]\n")
    loaded = load_file(path, registry())
    assert loaded.errors and not loaded.cases


def test_the_check_applies_to_qna_cases_only(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text("kind: choice\ncases:\n  - id: c\n    question: q\n    choices: [a, b]\n    answer: A\n"
                    "    expect: [{cites: true}]\n")
    loaded = load_file(path, registry())
    assert any("applies to qna cases, not 'choice'" in str(e) for e in loaded.errors)


# ------------------------------------------------------------------------------------------- no references


def test_no_references_fails_with_a_clear_reason(tmp_path: Path) -> None:
    for expect in ("cites: true", "cites: [docs/install.md]"):
        outcome = grade(one_case(tmp_path, expect), "Install with pip [1].", references=[])
        assert not outcome.passed and outcome.score == 0.0 and outcome.reason == NO_REFERENCES


def test_an_applications_answer_references_are_what_is_cited(tmp_path: Path) -> None:
    answer = Answer("See [2].", references=["docs/install.md", {"source": "docs/faq.md", "text": "Q&A"}])
    outcome = grade(one_case(tmp_path, "cites: [faq.md]"), answer.text, answer.references)
    assert outcome.passed and outcome.details["cited"] == ["docs/faq.md"]


def test_built_in_retrieval_hits_stand_in_for_references(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    case = load(tmp_path, """\
        retrieve: {docs: kb/, k: 2}
        cases:
          - id: c
            question: How do I install it?
            sources: [kb/install.md]
            expect: [{cites: true}]
        """)[0]
    hits = [Retrieved(1, "install.md", 1, 4, 0.9, "pip install it"), Retrieved(2, "api/window.py", 1, 9, 0.5, "x")]
    # the prompt numbered the hits [1], [2] under the folder as written: the check reads them the same way
    assert references_block(hits, "kb").startswith("[1] kb/install.md:1-4")
    cited = grade(case, "Run pip install [1].", references=[], retrieved=hits)
    assert cited.passed and cited.details["cited"] == ["kb/install.md"]
    wrong = grade(case, "Run pip install [2] [3].", references=[], retrieved=hits)
    assert not wrong.passed and wrong.details["invalid"] == ["[3]"]
    assert "there are 2 references" in wrong.reason and wrong.details["missing"] == ["kb/install.md"]
    # the application's references, when there are any, win over the prompt's hits
    assert not grade(case, "Run pip install [1].", references=[Reference("other.md")], retrieved=hits).passed
