"""The sequential gate's statistics (results/sequential.py): boundaries, the decision per look, why only redraws of
every paired case are valid, and the goal by seeded simulation (false alarms <= 5%, power >= 80% for a 10-point
drop at 200 noisy cases). The simulations are vectorised: 2000 trials in well under a second."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from pytest_llmeval.results.gate import baseline_document, load_baseline
from pytest_llmeval.results.sequential import (
    Design,
    boundaries,
    decide,
    lowered,
    mixes,
    redraws_to_confirm,
    simulate,
    spent,
)

TRIALS = 2000
MARGIN = 2.5 * math.sqrt(0.05 * 0.95 / TRIALS)  # ~1.2 points: a binomial margin on a rate near 5%


@pytest.mark.parametrize("kind", ["obf", "pocock"])
def test_boundaries_spend_exactly_alpha_over_the_looks(kind: str) -> None:
    info = tuple(1 / (1 + 1 / m) for m in (1, 2, 3, 5))  # one baseline draw; 1, 2, 3, 5 candidate draws
    bounds = boundaries(0.05, info, kind)
    assert bounds[0] == pytest.approx(float(norm.ppf(1 - spent(info[0] / info[-1], 0.05, kind))))
    # Monte Carlo of the looks' joint law under no change: Z_k = S_k / sqrt(I_k), independent increments.
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(400_000, len(info))) * np.sqrt(np.diff((0.0, *info)))
    z = np.cumsum(steps, axis=1) / np.sqrt(info)
    crossed = (z >= np.array(bounds)).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=0.0015)
    first = (z[:, 0] >= bounds[0]).mean()
    assert first == pytest.approx(spent(info[0] / info[-1], 0.05, kind), abs=0.001)


def test_a_single_look_is_the_plain_one_sided_test() -> None:
    assert boundaries(0.05, (1.0,), "obf") == pytest.approx((1.6449,), abs=1e-3)
    assert Design(schedule=()).nominal() == pytest.approx([0.05], abs=1e-6)


def test_decisions_look_by_look() -> None:
    design = Design()
    base = [1.0] * 37 + [0.0] * 3
    draws = [[0]] * 8 + [[1]] * 29 + [[1]] * 3  # 8 worse, 3 better: a 12.5-point drop, p = 0.11
    first = decide(design, base, draws, 1)
    assert first.decision == "continue" and first.drop == pytest.approx(12.5) and first.p_value == pytest.approx(
        0.1133, abs=1e-3) and first.nominal == pytest.approx(0.0114, abs=1e-3)
    again = [d + [d[0] if i < 8 else 0] for i, d in enumerate(draws[:37])] + [[1, 0]] * 3
    second = decide(design, base, again, 2)
    assert second.decision == "regression" and second.draws == 2 and second.p_value < second.nominal
    assert decide(design, base, [[1]] * 37 + [[0]] * 3, 1).decision == "ok"  # nothing changed
    # The last look says inconclusive, not continue.
    flat = [[1, 1, 1, 1, 0]] * 37 + [[0] * 5] * 3
    assert decide(design, base, flat, 4).decision in ("inconclusive", "regression")


def test_pooling_redraws_of_the_discordant_cases_only_is_biased() -> None:
    """Why every paired case is redrawn: pooling k extra draws of the discordant cases with their first draw biases
    a case's difference by p(1-p)(2p-1)k/(k+1) under no change (towards false alarms when p < 1/2)."""
    rng = np.random.default_rng(3)
    p, k, trials = 0.25, 4, 400_000
    base = rng.random(trials) < p
    first = rng.random(trials) < p
    extra = rng.binomial(k, p, trials)
    discordant = base != first
    pooled = np.where(discordant, (first + extra) / (k + 1), first)
    bias = float((pooled - base).mean())
    assert bias == pytest.approx(p * (1 - p) * (2 * p - 1) * k / (k + 1), abs=0.002) and bias < -0.07
    # Every case redrawn alike: no bias.
    every = (first + extra) / (k + 1)
    assert float((every - base).mean()) == pytest.approx(0.0, abs=0.002)


@pytest.mark.parametrize("mix", ["noisy", "steady", "hard"])
@pytest.mark.parametrize("n", [50, 200])
def test_false_alarms_without_change_stay_at_alpha(mix: str, n: int) -> None:
    p = mixes(mix, n, np.random.default_rng(n))
    assert simulate(p, p, Design(), trials=TRIALS, seed=1).false_alarm <= 0.05 + MARGIN


def test_goal_power_at_200_noisy_cases() -> None:
    p = mixes("noisy", 200, np.random.default_rng(7))
    q = lowered(p, 10)
    assert p.mean() - q.mean() == pytest.approx(0.10)
    current = simulate(p, q, None, trials=TRIALS, seed=2)
    sequential = simulate(p, q, Design(), trials=TRIALS, seed=2)
    assert current.power < 0.75  # the measurement: ~70%, 18% inconclusive
    assert sequential.power >= 0.80 + MARGIN and sequential.inconclusive < 0.05
    assert sequential.mean_redraws > 0 and sequential.redrawn_share < 0.5
    null = simulate(p, p, Design(), trials=TRIALS, seed=3)
    assert null.false_alarm <= 0.05 + MARGIN and null.redrawn_share < 0.35  # what no change costs


def test_the_allowed_drop_is_an_effect_size_unless_margin_is_asked() -> None:
    """False alarm by the other definition: a true drop of exactly the allowed 5 points. The default gate tests
    against no change and flags it often (by design); margin=True tests against the allowed drop and keeps alpha."""
    p = mixes("noisy", 200, np.random.default_rng(11))
    q = lowered(p, 5)
    assert simulate(p, q, Design(), trials=TRIALS, seed=4).false_alarm > 0.2
    assert simulate(p, q, Design(margin=True), trials=TRIALS, seed=4).false_alarm <= 0.05 + MARGIN


def test_the_steady_mix_keeps_its_power_and_rarely_redraws() -> None:
    p = mixes("steady", 200, np.random.default_rng(5))
    drop = simulate(p, lowered(p, 10), Design(), trials=TRIALS, seed=6)
    assert drop.power >= 0.95
    assert simulate(p, p, Design(), trials=TRIALS, seed=7).redrawn_share < 0.15


def test_redraws_to_confirm_an_observed_drop() -> None:
    design = Design()
    # 200 cases, 26 worse and 14 better at the run: a drop of 6 points, z = 1.9 (under the run's share of alpha);
    # if it held, one redraw of every case (look 2) would confirm it.
    assert redraws_to_confirm(design, 200, 6.0, (26 + 14) / 200) == (2, 200)
    assert redraws_to_confirm(design, 200, 9.0, (26 + 14) / 200) == (1, 0)  # already confirmed
    assert redraws_to_confirm(design, 200, 4.0, 0.2) is None  # within the allowed drop
    assert redraws_to_confirm(design, 20, 6.0, 0.6) is None  # beyond what the design's looks can confirm


def test_baseline_keeps_the_pass_fraction_of_repeated_cases(tmp_path: Path) -> None:
    doc = {"cases": [
        {"suite": "s", "model": "m", "case_id": "a", "outcome": "failed", "score": 0.5,
         "repeats": {"n": 4, "scored": 4, "passed": 3, "pass_fraction": 0.75}},
        {"suite": "s", "model": "m", "case_id": "b", "outcome": "passed", "score": 1.0}]}
    slim = baseline_document(doc)
    assert slim["cases"][0]["pass_fraction"] == 0.75 and slim["cases"][0]["draws"] == 4
    assert "pass_fraction" not in slim["cases"][1]  # a case drawn once: unchanged
    path = tmp_path / "b.json"
    path.write_text(json.dumps(slim))
    loaded = load_baseline(path)
    assert loaded[("s", "m", "a")]["pass_fraction"] == 0.75 and "pass_fraction" not in loaded[("s", "m", "b")]


@pytest.mark.parametrize("policy", ["all", "any", "majority"])
@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 6])
def test_auto_repeat_stops_with_the_outcome_of_all_its_draws(policy: str, limit: int) -> None:
    """Every sequence of MAX pass/fail draws: drawing first_draws, then one at a time until settled, gives the
    outcome of all MAX draws (run.grading.decide), never with more draws."""
    from itertools import product

    from pytest_llmeval.results.sequential import first_draws, settled
    from pytest_llmeval.run.grading import decide as outcome

    for seq in product(("passed", "failed"), repeat=limit):
        n = first_draws(limit, policy)
        while n < limit and not settled(seq[:n].count("passed"), seq[:n].count("failed"), policy, limit):
            n += 1
        assert outcome([{"status": s} for s in seq[:n]], policy) == outcome([{"status": s} for s in seq], policy)


def test_repeat_values() -> None:
    from pytest_llmeval.results.sequential import AutoRepeat, parse_repeat

    assert parse_repeat("3") == 3 and not isinstance(parse_repeat("3"), AutoRepeat)
    assert parse_repeat("auto") == 5 and isinstance(parse_repeat("auto"), AutoRepeat)
    assert parse_repeat(" AUTO:7 ") == 7 and isinstance(parse_repeat("auto:7"), AutoRepeat)
    for bad in ("0", "auto:0", "auto:x", "many", "-1"):
        with pytest.raises(ValueError, match="'auto' or 'auto:MAX'"):
            parse_repeat(bad)


def test_the_redraw_process_leaves_out_xdist_and_the_run_s_own_files() -> None:
    from pytest_llmeval.run.redraw import _kept

    args = ["cases/", "-n", "2", "-n2", "-nauto", "--dist=load", "--numprocesses", "4", "--llm=openai/m",
            "--junitxml", "out.xml", "--basetemp=/tmp/x", "--llm-results=r.json", "--llm-repeat", "3", "--llm-resume",
            "-k", "geo", "--llm-baseline=b.json", "-q"]
    assert _kept(args) == ["cases/", "--llm=openai/m", "-k", "geo", "--llm-baseline=b.json", "-q"]
