"""The statistics behind repeats and calibration: Wilson intervals and Cohen's kappa."""

from __future__ import annotations

import pytest

from pytest_llmeval.results.aggregate import cohen_kappa, wilson


def test_wilson_and_kappa() -> None:
    from scipy.stats import binomtest

    assert wilson(0, 0) is None
    for k, n in [(0, 1), (1, 1), (0, 5), (3, 7), (8, 10), (50, 100), (999, 1000), (1, 3000)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx([ci.low, ci.high], abs=2e-6)  # the closed form is scipy's
    lo, hi = wilson(8, 10)  # type: ignore[misc]
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson(0, 5)  # type: ignore[misc]
    assert lo == 0.0 and 0.4 < hi < 0.5  # never a degenerate [0, 0] for zero successes
    assert cohen_kappa([("pass", "pass"), ("fail", "fail")]) == 1.0
    assert cohen_kappa([("pass", "fail"), ("fail", "pass")]) == -1.0
    # 3 of 4 agree; chance agreement 0.5 -> kappa 0.5.
    assert cohen_kappa([("pass", "pass"), ("pass", "pass"), ("fail", "fail"), ("fail", "pass")]) == pytest.approx(0.5)
    assert cohen_kappa([("pass", "pass")]) is None  # one class only: undefined, not 1 or 0
