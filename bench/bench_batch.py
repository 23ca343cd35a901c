"""Benchmark: what ``--llm-batch`` costs around the provider's own batch time (issue 20).

Run with ``.venv/bin/python bench/bench_batch.py`` (300 cases, 3 repeats) or ``--quick`` (100 cases, 3 repeats).
Everything runs against the scripted batch server of the tests (``tests/helpers/batch_server.py``, in this process):
plain chat completions answered at once, batches finished on their second retrieve; ``--llm-batch-poll=0.05``, so
the time a real provider takes (minutes to hours) is left out and what remains is the plugin's own work.

Measured back to back, each a fresh project and cache, as pytest subprocesses (median of the repeats):

1. ``plain cold``: the N cases graded by plain calls (the baseline).
2. ``batch cold``: the same with ``--llm-batch``: the recording passes (one that finds the N requests, one that finds
   nothing new), the upload, the polling, the cache filled from the output file, then grading from the cache.
   ``overhead`` is (batch cold - plain cold); ``per case`` divides it by N.
3. ``cached rerun``: a plain run on the cache the batch run filled; the server must receive no chat call (the script
   exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helpers.batch_server import BatchServer  # noqa: E402


def suite(n: int) -> str:
    lines = ["suite: bench", "kind: qna", "params: {temperature: 0, max_tokens: 16}", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i}", f"    question: What is {i} plus one?", "    expect:", f"      - contains: '{i + 1}'"]
    return "\n".join(lines) + "\n"


def run(folder: Path, server: BatchServer, *extra: str) -> float:
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench-0123456789", "PYTHONPATH": str(ROOT / "src"), "CI": "true"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--llm=openai/test-model",
            f"--llm-api-base={server.url}", "--llm-retries=0", *extra]
    start = time.perf_counter()
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"pytest {' '.join(extra)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 cases")
    args = parser.parse_args()
    n = 100 if args.quick else args.cases
    plain, batch, rerun = [], [], []
    with BatchServer() as server:
        for i in range(n):
            server.answer(f"What is {i} plus one?", f"{i + 1}.")
        for _ in range(args.repeat):
            for mode in ("plain", "batch"):
                with tempfile.TemporaryDirectory(prefix="llmeval-bench-batch-") as tmp:
                    folder = Path(tmp)
                    (folder / "cases").mkdir()
                    (folder / "cases" / "bench.yaml").write_text(suite(n))
                    if mode == "plain":
                        plain.append(run(folder, server))
                        continue
                    batch.append(run(folder, server, "--llm-batch", "--llm-batch-poll=0.05"))
                    before = server.chat_calls
                    rerun.append(run(folder, server))
                    if server.chat_calls != before:
                        sys.exit(f"the cached rerun made {server.chat_calls - before} chat call(s)")
    p, b, r = (statistics.median(x) for x in (plain, batch, rerun))
    print(f"{n} cases, median of {args.repeat}, wall seconds")
    print(f"  plain cold     {p:7.2f}")
    print(f"  batch cold     {b:7.2f}   ratio {b / p:.2f}x   overhead {b - p:+.2f} s   "
          f"per case {1000 * (b - p) / n:+.1f} ms")
    print(f"  cached rerun   {r:7.2f}   ratio {r / p:.2f}x   (no chat call)")


if __name__ == "__main__":
    main()
