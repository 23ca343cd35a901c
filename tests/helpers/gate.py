"""Results documents for the gate tests (tests/unit/test_gate.py, tests/sessions/test_gate_sessions.py)."""

from __future__ import annotations


def doc_from(outcomes: list[bool], suite: str = "s", model: str = "m") -> dict:
    cases = [{"suite": suite, "model": model, "case_id": f"c{i}", "outcome": "passed" if ok else "failed",
              "score": 1.0 if ok else 0.0, "file": "cases/s.yaml", "line": i + 1} for i, ok in enumerate(outcomes)]
    rate = sum(outcomes) / len(outcomes)
    return {"cases": cases, "suites": [{"suite": suite, "model": model, "pass_rate": rate, "mean_score": rate}]}
