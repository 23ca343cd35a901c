"""Issue 20, a gate that decides: false alarms, power, inconclusive share and redraw cost of the current gate and of
the sequential gate with redraws (``--llm-gate-redraws``), by seeded simulation.

Run with ``.venv/bin/python bench/bench_gate.py`` (1000 trials per cell, a few seconds) or ``--trials 5000``.
Options: ``--trials N --seed S --alpha A --spending obf|pocock --schedule 1,1,2 --reopen 0.5 --cost-per-call USD``.

Cells: 100 and 200 cases, three case mixes (``noisy``: pass probabilities uniform in 0.2-1.0, as with sampling or
flaky judges; ``steady``: 80% of cases always pass or always fail, the rest noisy; ``hard``: uniform in 0-0.5).
Each cell draws the baseline and one candidate answer per case; *false alarm*: ``regression`` when nothing changed
(the candidate's probabilities equal the baseline's: the rate the gate keeps <= alpha); *power*: ``regression``
when the mean pass probability fell 10 points (noisy: every probability 10 points lower; steady: 10% of the cases
that always passed now always fail); *at the allowed drop*: ``regression`` when it fell exactly 5 points (not
bounded by design: the allowed drop is an effect size; with ``--margin`` it is tested against and kept <= alpha).
Redraws: answers drawn again per run (mean over all runs, and the share of runs that redrew at all) under no change
and under the 10-point drop; their cost at ``--cost-per-call`` (default $0.0002: a short gpt-4o-mini answer).
Goal (issue 20): false alarm <= 5% and power >= 80% at 200 noisy cases.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from pytest_llmeval.results.sequential import Design, lowered, mixes, simulate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--spending", default="obf", choices=("obf", "pocock"))
    ap.add_argument("--schedule", default="1,1,2", help="extra draws per case at each redraw look")
    ap.add_argument("--reopen", type=float, default=0.5)
    ap.add_argument("--margin", action="store_true", help="test against the allowed drop, not no change")
    ap.add_argument("--cost-per-call", type=float, default=0.0002)
    args = ap.parse_args()
    design = Design(alpha=args.alpha, spending=args.spending, reopen=args.reopen, margin=args.margin,
                    schedule=tuple(int(x) for x in args.schedule.split(",")))
    print(f"sequential design: {design.spending} spending, redraw looks of {list(design.schedule)} draws per case, "
          f"reopen at {design.reopen:g} x the allowed drop, nominal p per look "
          f"{[round(x, 4) for x in design.nominal()]}; {args.trials} trials per cell, seed {args.seed}")
    header = (f"{'mix':<7}{'cases':>6}  {'gate':<11}{'false alarm':>12}{'power':>8}{'inconcl.':>9}{'at 5 pts':>9}"
              f"{'redrew (null)':>15}{'answers (null)':>15}{'answers (drop)':>15}{'$ (drop)':>9}")
    print(header)
    print("-" * len(header))
    start = time.process_time()
    for mix in ("noisy", "steady", "hard"):
        for n in (100, 200):
            p = mixes(mix, n, np.random.default_rng(args.seed + n))
            q10, q5 = lowered(p, 10), lowered(p, 5)
            for name, d in (("current", None), ("sequential", design)):
                null = simulate(p, p, d, trials=args.trials, seed=args.seed + 1)
                drop = simulate(p, q10, d, trials=args.trials, seed=args.seed + 2)
                edge = simulate(p, q5, d, trials=args.trials, seed=args.seed + 3)
                cost = drop.mean_redraws * args.cost_per_call
                print(f"{mix:<7}{n:>6}  {name:<11}{null.false_alarm:>12.1%}{drop.power:>8.1%}{drop.inconclusive:>9.1%}"
                      f"{edge.false_alarm:>9.1%}{null.redrawn_share:>15.1%}{null.mean_redraws:>15.1f}"
                      f"{drop.mean_redraws:>15.1f}{cost:>9.4f}")
    print(f"(CPU {time.process_time() - start:.1f} s)")
    p = mixes("noisy", 200, np.random.default_rng(args.seed + 200))
    null = simulate(p, p, design, trials=args.trials, seed=args.seed + 1)
    drop = simulate(p, lowered(p, 10), design, trials=args.trials, seed=args.seed + 2)
    ok = null.false_alarm <= 0.05 and drop.power >= 0.80
    print(f"goal at 200 noisy cases: false alarm {null.false_alarm:.1%} (<= 5%), power {drop.power:.1%} (>= 80%): "
          f"{'met' if ok else 'NOT met'}; per run that redrew under the drop, {drop.redraws_when_drawn:.0f} answers "
          f"({drop.redraws_when_drawn / 200:.1f} per case)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
