"""Code cases: the code extracted from an answer, and the pass@k estimator."""

from __future__ import annotations

import pytest

from pytest_llmeval.checks.extract import extract_code
from pytest_llmeval.results.aggregate import pass_at_k


@pytest.mark.parametrize(
    ("answer", "language", "expected"),
    [
        ("```python\nprint(1)\n```", "python", "print(1)\n"),
        ("```\nprint(1)\n```", "python", "print(1)\n"),
        ("```bash\npython x.py\n```\n```python\nx = 1\n```\n```python\nprint(x)\n```", "python", "x = 1\n\nprint(x)\n"),
        ("```python\nprint('py')\n```\n```c\nint main(){return 0;}\n```", "c", "int main(){return 0;}\n"),
        ("```c\nint main(){\n```", "c", "int main(){\n"),  # unterminated fence at max_tokens
        ("Sure! Here it is:\ndef f(x):\n    return x * 2\n", "python", "def f(x):\n    return x * 2\n"),
        ("#include <stdio.h>\nint main(void) { return 0; }", "c", "#include <stdio.h>\nint main(void) { return 0; }\n"),
        ("The capital of France is Paris.", "python", None),
        ("Paris", "python", None),
        ("```bash\nls -la\n```", "python", None),
        ("I cannot write C today.", "c", None),
    ],
)
def test_extract_code(answer: str, language: str, expected: str | None) -> None:
    assert extract_code(answer, language) == expected


def test_pass_at_k_estimator() -> None:
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # exact: 1 - C(7, 5) / C(10, 5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(4, 1, 4) == 1.0
