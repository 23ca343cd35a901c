"""Benchmark: whole pytest runs of N one-line cases against a local OpenAI-compatible server.

Run with ``python bench/bench_runs.py [--cases 200] [--latency 0.05]``. Every configuration runs in a
subprocess, timed wall-clock, and is printed with its ratio to the baseline measured in the same process:
bare pytest with one plain test function per case calling ``litellm.completion`` itself (what a team
without this plugin writes). Peak RSS is the controller process's (xdist workers not included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.llm_server import ScriptedLLMServer  # noqa: E402

RSS_WRAPPER = (
    "import resource, sys, pytest\n"
    "rc = pytest.main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(int(rc))\n"
)


def write_project(root: Path, n: int) -> None:
    (root / "cases").mkdir()
    lines = ["suite: bench", "params: {temperature: 0, max_tokens: 16}", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i}", f"    question: 'Question number {i}: say ok.'", "    expect: [{contains: ok}]"]
    (root / "cases" / "bench.yaml").write_text("\n".join(lines) + "\n")
    (root / "bare").mkdir()
    (root / "bare" / "test_bare.py").write_text(
        "import os, pytest, litellm\n"
        "@pytest.mark.parametrize('i', range(N_CASES))\n"
        "def test_case(i):\n"
        "    r = litellm.completion(model='openai/bench', api_base=os.environ['BENCH_URL'], api_key='sk-bench',\n"
        "        messages=[{'role': 'user', 'content': f'Question number {i}: say ok.'}], temperature=0,\n"
        "        max_tokens=16)\n"
        "    assert 'ok' in r.choices[0].message.content\n".replace("N_CASES", str(n))
    )
    (root / "pytest.ini").write_text("[pytest]\n")


def run(root: Path, args: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *args], cwd=root, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    rss = next((int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")), 0)
    if proc.returncode not in (0, 1):
        sys.exit(f"run {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, rss, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    opts = parser.parse_args()
    with ScriptedLLMServer(default="ok", latency=opts.latency) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, opts.cases)
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BENCH_URL": server.url,
               "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        llm = ["cases", "--llm=openai/bench", f"--llm-api-base={server.url}", "-q", "-p", "no:randomly"]
        configs = [
            ("baseline: bare pytest + litellm, -n 0", ["bare", "-q", "-p", "no:llmeval"]),
            ("llmeval cold, -n 0", [*llm, "--llm-cache-dir=cache-a"]),
            ("llmeval cached rerun, -n 0", [*llm, "--llm-cache-dir=cache-a"]),
            ("llmeval cache off, -n 0", [*llm, "--llm-cache=off"]),
            ("llmeval cold, -n 2", [*llm, "--llm-cache-dir=cache-b", "-n", "2"]),
            ("llmeval cached rerun, -n 2", [*llm, "--llm-cache-dir=cache-b", "-n", "2"]),
        ]
        print(f"{opts.cases} cases, server latency {opts.latency * 1000:.0f} ms, {os.cpu_count()} CPUs")
        print(f"{'configuration':42} {'wall s':>8} {'x base':>7} {'cases/s':>8} {'peak RSS MB':>12}")
        base = None
        for name, args in configs:
            wall, rss, _ = run(root, args, env)
            base = base or wall
            print(f"{name:42} {wall:8.2f} {wall / base:7.2f} {opts.cases / wall:8.1f} {rss / 1024:12.0f}")


if __name__ == "__main__":
    main()
