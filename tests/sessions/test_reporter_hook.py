"""The reporter hook as docs/extending.md documents it: a conftest reporter writes a file when the results are
final and a line in the summary, with and without xdist; a conftest reporter under a built-in's name replaces it;
the built-in reporters are registered through the hook like any other."""

from __future__ import annotations

import csv

import pytest
from helpers.docs import documented_conftest

from conftest import Project

SUITE = """\
suite: geo
cases:
  - id: fr
    question: What is the capital of France?
    expect:
      - contains: Paris
  - id: de
    question: What is the capital of Germany?
    expect:
      - contains: Berlin
"""



@pytest.mark.parametrize("workers", [None, "2"], ids=["serial", "xdist"])
def test_a_conftest_reporter_writes_its_file_and_summary_line(project: Project, workers: str | None) -> None:
    project.pytester.makeconftest(documented_conftest("tests/sessions/test_reporter_hook.py"))
    project.write("cases/geo.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.server.answer("Germany", "Munich.")
    result = project.run(*(["-n", workers] if workers else []))
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # After the built-in reporters (registered first), once: by the controller, never by a worker.
    assert out.count("csv: 2 case(s) in results.csv") == 1
    assert out.index("llmeval summary") < out.index("results: ") < out.index("csv: 2 case(s)")
    with open(project.pytester.path / ".llmeval/results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["suite", "case", "model", "outcome", "score"]
    assert sorted((r[1], r[3]) for r in rows[1:]) == [("de", "failed"), ("fr", "passed")]


def test_a_reporter_under_a_builtin_name_replaces_it(project: Project) -> None:
    """A conftest's `terminal` reporter takes the built-in one's place: no summary table, its own line instead;
    results.json (the `json` reporter) is still written."""
    project.pytester.makeconftest('''
from pytest_llmeval.report.base import Reporter


class OneLine(Reporter):
    name = "terminal"

    def terminal_summary(self, report, terminalreporter):
        rows = report.doc["suites"]
        terminalreporter.write_line("one line: " + ", ".join(f"{r['suite']} {r['pass_rate']:.0%}" for r in rows))


def pytest_llmeval_register_reporters(register):
    register(OneLine())
''')
    project.write("cases/geo.yaml", SUITE)
    project.server.answer("France", "Paris.")
    project.server.answer("Germany", "Berlin.")
    result = project.run()
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "llmeval summary" not in out
    result.stdout.fnmatch_lines(["one line: geo 100%", "results: *results.json"])
    assert project.results()["suites"][0]["passed"] == 2


def test_the_builtin_reporters_register_through_the_hook() -> None:
    from pytest_llmeval.report import builtin
    from pytest_llmeval.report.base import ReporterRegistry

    registry = ReporterRegistry()
    builtin.pytest_llmeval_register_reporters(register=registry.register)
    assert registry.names() == ["terminal", "github", "json", "html"]
    assert registry.names() == builtin.builtin_reporters().names()
