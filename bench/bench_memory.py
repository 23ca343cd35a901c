"""Benchmark of issue 20 (part 1c): memory per case, against bare pytest's memory per item.

Run with ``.venv/bin/python bench/bench_memory.py`` (sizes 5000 and 20000, ``-n 0`` and ``-n 2``), ``--quick``
(1000 and 4000, ``-n 0`` only; ``--quick --workers 2``: the same with ``-n 2``) or ``--sizes 5000,20000,100000``
(``--big`` adds 100 000).  Options: ``--sizes A,B[,C]``, ``--workers 0,2``, ``--only bare,cached,uncached``,
``--timeout S``, ``--results`` (after each llmeval run: results.json's size, the seconds its sessionfinish and
terminal summary took, ``llmeval report`` on it).

Every run is a whole pytest session in a subprocess, in a temp dir of its own (as in bench_overhead.py):

* bare: ``-p no:llmeval``, N trivial parametrized tests (``def test_x(i): assert i >= 0``);
* cached: N one-line cases with ``--llm-cache=on``, served entirely from an exact cache filled by a first run;
* uncached: the same cases with ``--llm-cache=off``, every call answered by the scripted server of
  ``tests/helpers/llm_server.py`` at zero latency over real HTTP.

Each process of a run (the one process of ``-n 0``; the controller and every worker of ``-n 2``) reports its own
peak resident set (``VmHWM`` of ``/proc/self/status``, read in ``pytest_unconfigure`` by a small plugin loaded with
``-p``: nothing comes after it but interpreter shutdown), and the parent also reads the whole run's ``ru_maxrss``
from ``os.wait4`` (the largest process of the tree).  Printed per run and process: peak RSS at each size, the
slope between the two smallest sizes in KB per item, and the ratio of the slope to bare pytest's (same ``-n``,
same process role).  Goal (issue 20): at most 2x bare pytest's per-item memory, cached and uncached, with and
without ``-n``.

Before issue 20 (the issue's figures, whole cached runs, one process): 5000 cases 146 MB, 20 000 cases 409 MB,
17.5 KB per case; bare pytest 70.6 MB -> 152 MB, 5.4 KB per item (ratio 3.2x). Measured with this script on the
shared 2-core machine (2026-12-05, KiB per item at 5000 -> 20 000, ratio to bare with the same -n and role), before
-> after results were streamed to disk: cached -n 0 20.7 -> 10.2 (3.77x -> 1.86x); uncached -n 0 18.9 -> 9.7
(3.44x -> 1.77x); -n 2 controller cached 24.4 -> 10.0 (3.52x -> 1.43x), uncached 25.2 -> 10.3 (3.64x -> 1.49x);
-n 2 worker cached 11.3 -> 8.5 (2.77x -> 2.04x), uncached 10.9 -> 8.1 (2.66x -> 1.94x). Then, with the YAML nodes
released case by case, check parameters shared and a worker's sent reports slimmed (docs/benchmarks.md): cached -n 0
9.1 (1.65x), uncached -n 0 8.6 (1.56x); -n 2 controller cached 9.9 (1.43x), uncached 10.4 (1.51x); -n 2 worker
cached 6.6 (1.60x), uncached 6.2 (1.49x).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_overhead import write_cases  # noqa: E402
from helpers.llm_server import ScriptedLLMServer  # noqa: E402

PY = sys.executable
TIMEOUT = 1800.0

PROBE = '''\
"""Loaded with -p: writes this process's peak RSS (VmHWM, kB) at the very end of its pytest session, and the
seconds its pytest_sessionfinish (aggregation, results.json) and pytest_terminal_summary (the summary) took."""
import json
import os
import time

import pytest

SPENT = {"finish_s": 0.0, "summary_s": 0.0}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        SPENT["finish_s"] += time.perf_counter() - start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        SPENT["summary_s"] += time.perf_counter() - start


def pytest_unconfigure(config):
    out = os.environ.get("RSS_PROBE_DIR")
    if not out:
        return
    role = str(getattr(config, "workerinput", {}).get("workerid", "main"))
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    with open(os.path.join(out, f"{role}.{os.getpid()}"), "w") as fh:
        json.dump({"hwm": hwm, **SPENT}, fh)
'''

BEFORE = {"bare": (70.6, 152.0, 5.4), "cached": (146.0, 409.0, 17.5)}  # MB at 5k, MB at 20k, KB per item


SPENT: dict[str, float] = {}  # the last run's main process: seconds in pytest_sessionfinish and the terminal summary


def run(args: list[str], cwd: Path, env: dict[str, str], probe_dir: Path) -> tuple[dict[str, int], int, str]:
    """Run one session; its processes' peak RSS in kB by role (main, gw0...), the tree's ru_maxrss, its output."""
    for old in probe_dir.iterdir():
        old.unlink()
    env = {**env, "RSS_PROBE_DIR": str(probe_dir)}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([PY, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                print(f"  WARNING: timed out after {TIMEOUT:.0f} s: {' '.join(args[:8])}")
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    peaks = {}
    SPENT.clear()
    for path in probe_dir.iterdir():
        found = json.loads(path.read_text())
        peaks[path.name.split(".")[0]] = int(found["hwm"])
        if path.name.startswith("main."):
            SPENT.update(finish_s=found["finish_s"], summary_s=found["summary_s"])
    return peaks, usage.ru_maxrss, text


def results_usable(project: Path, env: dict[str, str], probe_dir: Path) -> str:
    """results.json's size, and what ``llmeval report`` (the HTML report) takes to read it: seconds, peak RSS."""
    results = project / ".llmeval" / "results.json"
    if not results.is_file():
        return "no results.json"
    report = project / "report.html"
    spent = dict(SPENT)  # this run's: the report's run below replaces them
    start = time.perf_counter()
    _, tree, text = run(["-c", "import sys; from pytest_llmeval.cli import main; sys.exit(main())", "report",
                         str(results), "-o", str(report)], project, env, probe_dir)
    wall = time.perf_counter() - start
    made = f"{report.stat().st_size / 2**20:.1f} MiB" if report.is_file() else "NOT written: " + text[-300:]
    return (f"results.json {results.stat().st_size / 2**20:.1f} MiB (sessionfinish {spent.get('finish_s', 0):.2f} s, "
            f"terminal summary {spent.get('summary_s', 0):.2f} s); llmeval report: {wall:.1f} s, "
            f"{tree / 1024:.0f} MiB peak, report.html {made}")


def expect_passed(name: str, text: str, n: int) -> None:
    found = re.search(r"(\d+) passed", text)
    if (int(found.group(1)) if found else 0) != n:
        tail = "\n    ".join(text[-1500:].splitlines())
        print(f"  WARNING {name}: {found.group(0) if found else 'none passed'} of {n}:\n    {tail}")


def main() -> None:
    global TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 1000,4000 and -n 0 only")
    parser.add_argument("--sizes", help="comma-separated case counts (default 5000,20000)")
    parser.add_argument("--big", action="store_true", help="add a 100 000-case size")
    parser.add_argument("--workers", help="comma-separated -n values (default 0,2; quick 0)")
    parser.add_argument("--only", default="bare,cached,uncached", help="which kinds of run (default: all three)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per run (default 1800)")
    parser.add_argument("--results", action="store_true",
                        help="after each llmeval run: results.json's size, the seconds its writing and the summary took, "
                             "and `llmeval report` on it (seconds, peak RSS)")
    opts = parser.parse_args()
    TIMEOUT = opts.timeout
    sizes = [int(s) for s in (opts.sizes or ("1000,4000" if opts.quick else "5000,20000")).split(",")]
    if opts.big:
        sizes.append(100_000)
    workers = [int(w) for w in (opts.workers or ("0" if opts.quick else "0,2")).split(",")]
    kinds = [k for k in ("bare", "cached", "uncached") if k in opts.only.split(",")]

    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; sizes {sizes}, -n {workers}")
    print("before issue 20 (the issue's figures, whole cached runs, one process): bare 70.6 MB -> 152 MB = 5.4 KB per "
          "item; cached 146 MB -> 409 MB = 17.5 KB per case (3.2x bare)")
    # peak[(kind, workers, role)][size] = kB
    peak: dict[tuple[str, int, str], dict[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp, ScriptedLLMServer(default="ok", latency=0.0) as server:
        root = Path(tmp)
        (root / "probe").mkdir()
        (root / "probe" / "rss_probe.py").write_text(PROBE)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "probe"), env.get("PYTHONPATH")) if p)
        probe_dir = root / "peaks"
        probe_dir.mkdir()
        for n in sizes:
            project = root / f"p{n}"
            project.mkdir()
            (project / "pytest.ini").write_text("[pytest]\n")
            write_cases(project / "cases", n)
            (project / "bare").mkdir()
            (project / "bare" / "test_trivial.py").write_text(
                f"import pytest\n@pytest.mark.parametrize('i', range({n}))\ndef test_x(i):\n    assert i >= 0\n")
            common = ["-p", "rss_probe", "-p", "no:cacheprovider", "-q"]
            llm = ["-m", "pytest", "cases/", "--llm=openai/bench", f"--llm-api-base={server.url}", *common]
            cache = f"--llm-cache-dir={project / 'cache'}"
            if "cached" in kinds:  # fill the exact cache once (not measured)
                _, _, text = run([*llm, "--llm-cache=on", cache, "-n", "2"], project, env, probe_dir)
                expect_passed(f"cache fill ({n})", text, n)
            for w in workers:
                xdist = ["-n", str(w)]
                for kind in kinds:
                    if kind == "bare":
                        args = ["-m", "pytest", "bare", "-p", "no:llmeval", *common, *xdist]
                    elif kind == "cached":
                        server.reset()
                        args = [*llm, "--llm-cache=on", cache, *xdist]
                    else:
                        args = [*llm, "--llm-cache=off", *xdist]
                    start = time.perf_counter()
                    peaks, tree, text = run(args, project, env, probe_dir)
                    wall = time.perf_counter() - start
                    expect_passed(f"{kind} -n {w} ({n})", text, n)
                    if kind == "cached" and server.requests:
                        print(f"  WARNING: the cached run sent {len(server.requests)} requests (expected 0)")
                    server.reset()
                    roles = {"main": peaks.get("main", tree)}
                    if w:
                        workers_kb = [v for k, v in peaks.items() if k.startswith("gw")]
                        roles["worker"] = max(workers_kb) if workers_kb else 0
                    for role, kb in roles.items():
                        peak.setdefault((kind, w, role), {})[n] = kb
                    shown = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in sorted(peaks.items()))
                    print(f"  {kind:8} -n {w} {n:>7} cases: {shown} (tree ru_maxrss {tree / 1024:.1f} MiB, "
                          f"{wall:.1f} s)", flush=True)
                    if kind != "bare" and opts.results:
                        print(f"    {results_usable(project, env, probe_dir)}", flush=True)
    print("\npeak RSS per process (MiB) and the slope between the first two sizes (KiB per item); "
          "ratio = slope / bare's slope")
    head = "".join(f"{n:>10}" for n in sizes)
    print(f"  {'run':34}{head}{'KiB/item':>10}{'ratio':>8}   goal <= 2x")
    a, b = sizes[0], sizes[1] if len(sizes) > 1 else sizes[0]
    for (kind, w, role), by_size in peak.items():
        slope = (by_size[b] - by_size[a]) / (b - a) if b != a else float("nan")  # KiB per item
        bare = peak.get(("bare", w, role))
        base = (bare[b] - bare[a]) / (b - a) if bare and b != a else None
        ratio = f"{slope / base:.2f}x" if base else ""
        verdict = ("met" if slope / base <= 2 else "NOT met") if base and kind != "bare" else ""
        label = f"{kind} -n {w} {role}"
        cells = "".join(f"{by_size[n] / 1024:>10.1f}" for n in sizes)
        print(f"  {label:34}{cells}{slope:>10.2f}{ratio:>8}   {verdict}")


if __name__ == "__main__":
    main()
