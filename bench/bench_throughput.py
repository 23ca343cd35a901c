"""Benchmark P1: throughput of whole pytest runs with in-flight model calls (``--llm-concurrency``).

Run with ``.venv/bin/python bench/bench_throughput.py`` (1000 cases, 0.2 s server latency, C = 4, 32, 64, with
plain pytest and ``-n 8``), or ``--quick`` (200 cases, 0.05 s, C = 32, ``-n 0`` and ``-n 2``, under ~90 s).
Options: ``--cases N --latency L --concurrency 4,32,64 --workers 0,8 --bare/--no-bare --promptfoo PATH --timeout S
--ceiling``.  ``--ceiling`` also sends the same N calls from a plain ``ThreadPoolExecutor(C)`` without pytest, once
through the plugin's ``ModelRunner.complete`` (litellm) and once through ``http.client``: what one process can do
with litellm's per-call CPU, and what the server allows.

N one-line cases run against the local scripted OpenAI-compatible server (``tests/helpers/llm_server.py``), which runs
in this process and timestamps every request (time.time() when it is received, and after its response is
written).  Each configuration is one pytest subprocess, ``--llm-cache=off``.  Per configuration:

* ``wall s``: whole-run wall time, pytest and litellm start-up included.
* ``limit s``: the physical limit N·L/C (C calls of L seconds in flight at every moment).
* ``wall/limit``: wall time over that limit (start-up makes it > 1; ideal 1).
* ``window s``: server-side request window, first request received to last response sent.
* ``window eff``: (N·L/C) / window, how well the run keeps C requests in flight (ideal 1.00).  With ``-n W`` every
  worker keeps its own C in flight (up to W·C in all), so this can exceed 1.
* ``max infl``: the most requests the server saw in flight at once.
* ``srv ms``: 99th percentile of the server's own time per request beyond L (JSON, GIL), in ms (ideal ~0).
* ``vs -n 0``: wall time over the ``-n 0`` run at the same C (ideal < 1).
* ``x bare``: wall time over the baseline measured here: bare pytest, one plain test per case calling
  ``litellm.completion`` (what a team without the plugin writes), ``-n 0``.  That is serial (N·L, 200 s at the
  defaults), so it runs only when N·L <= 60 s or with ``--bare``; otherwise the column is over N·L.

If ``pytest --help`` does not list ``--llm-concurrency`` yet, a note is printed and only the configurations that
do not need it run (C = 1: one call at a time per process).  Before the runs, the server is checked not to be the
bottleneck (thread per connection, listen backlog above the most connections a run can open, and a load probe
with C client threads in this process).

Optional comparison with promptfoo (``promptfoo eval -j 32``, same cases, same server, cache, telemetry,
update check and sharing off, config in a temp dir).  Install it once with::

    mkdir -p /tmp/promptfoo && cd /tmp/promptfoo && npm init -y && npm install promptfoo

The script looks for ``--promptfoo PATH``, then ``promptfoo`` on PATH, then /tmp/promptfoo/node_modules/.bin,
then ``npx --no-install promptfoo``; if none works the comparison is skipped with a note.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import llm_server  # noqa: E402
from helpers.llm_server import ScriptedLLMServer  # noqa: E402

BACKLOG = 2048  # listen backlog of the bench server: above the W·C connections a run can open at once
AUTO_BARE_LIMIT_S = 60.0  # the serial baseline runs by default only when N·L is at most this


class _DeepBacklogHTTPServer(llm_server._HTTPServer):
    request_queue_size = BACKLOG


class TimedServer(ScriptedLLMServer):
    """ScriptedLLMServer that timestamps each chat request and tracks the requests in flight."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._tlock = threading.Lock()
        self.spans: list[tuple[float, float]] = []
        self.inflight = 0
        self.peak = 0

    def start(self) -> TimedServer:  # as ScriptedLLMServer.start, with a deeper listen backlog
        if self._httpd is None:
            httpd = _DeepBacklogHTTPServer(self)
            thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            self._httpd, self._thread = httpd, thread
            thread.start()
        return self

    def _handle_chat(self, handler: Any, body: dict[str, Any]) -> None:
        received = time.time()
        with self._tlock:
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
        try:
            super()._handle_chat(handler, body)
        finally:
            sent = time.time()
            with self._tlock:
                self.inflight -= 1
                self.spans.append((received, sent))

    def clear(self) -> None:
        self.reset()
        with self._tlock:
            self.spans, self.peak = [], self.inflight

    def overhead_ms(self, latency: float) -> float:
        """99th percentile of the server's own time per request beyond the scripted latency, in ms."""
        with self._tlock:
            extra = sorted(s - r - latency for r, s in self.spans)
        return 1000 * extra[int(0.99 * (len(extra) - 1))] if extra else float("nan")

    def window(self) -> float:
        with self._tlock:
            return max(s for _, s in self.spans) - min(r for r, _ in self.spans) if self.spans else float("nan")


def check_server(server: TimedServer, most_conns: int, probe_c: int, latency: float) -> None:
    """Print why the server is not (or is) the bottleneck, with a load probe of probe_c client threads."""
    httpd = server._httpd
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    cap = int(somaxconn.read_text()) if somaxconn.exists() else BACKLOG
    backlog = min(httpd.request_queue_size, cap)
    stock = llm_server._HTTPServer.request_queue_size
    print(f"server: {type(httpd).__name__} (a ThreadingHTTPServer), thread per connection: "
          f"{isinstance(httpd, ThreadingMixIn)}\n  listen backlog {backlog} (tests/helpers/llm_server.py: {stock}, "
          f"somaxconn {cap}), most connections a run can open: {most_conns}")
    if stock < most_conns:
        print(f"  note: the stock backlog {stock} < {most_conns}; a burst of connects could overflow it (SYN retry "
              f"stalls of ~1 s), so this bench raises it to {BACKLOG}")
    if backlog < most_conns:
        print(f"  WARNING: backlog {backlog} < {most_conns}: the server may be the bottleneck")
    rounds = 3
    payload = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "probe: say ok."}]})

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(rounds):
            conn.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()

    server.clear()
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(probe_c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    eff = rounds * latency / server.window()
    extra = server.overhead_ms(latency)
    # The probe's client threads share this process's GIL with the server's, which inflates the tail a little.
    verdict = "ok" if extra <= 200 * latency else "WARNING: the server may be the bottleneck"
    print(f"  load probe ({probe_c} client threads in this process, {rounds} requests each): max in flight "
          f"{server.peak}, server time per request beyond L: p99 {extra:.1f} ms (goal <= {200 * latency:.0f} ms = "
          f"L/5): {verdict}; window eff {eff:.2f}, wall {wall:.2f} s (client threads included)")
    server.clear()


def write_project(root: Path, n: int) -> None:
    (root / "cases").mkdir()
    lines = ["suite: bench", "params: {temperature: 0, max_tokens: 16}", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i}", f"    question: 'Question number {i}: say ok.'", "    expect: [{contains: ok}]"]
    (root / "cases" / "bench.yaml").write_text("\n".join(lines) + "\n")
    (root / "bare").mkdir()
    (root / "bare" / "test_bare.py").write_text(
        "import os, pytest, litellm\n"
        f"@pytest.mark.parametrize('i', range({n}))\n"
        "def test_case(i):\n"
        "    r = litellm.completion(model='openai/bench', api_base=os.environ['BENCH_URL'], api_key='sk-bench',\n"
        "        messages=[{'role': 'user', 'content': f'Question number {i}: say ok.'}], temperature=0,\n"
        "        max_tokens=16)\n"
        "    assert 'ok' in r.choices[0].message.content\n"
    )
    (root / "pytest.ini").write_text("[pytest]\n")


TIMEOUT = 900.0  # seconds per subprocess (--timeout); a hung run is reported, not waited for forever

# --ceiling: the cases' calls from a plain thread pool (argv: runner|raw, server url, N, C), no pytest.
CEILING = """
import http.client, json, sys, threading, urllib.parse
from concurrent.futures import ThreadPoolExecutor
client, url, n, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
messages = [[{"role": "user", "content": f"Question number {i}: say ok."}] for i in range(n)]
if client == "runner":
    from pytest_llmeval.providers.runner import ModelRunner
    from pytest_llmeval.config.settings import Settings
    runner = ModelRunner(Settings(cache_mode="off", api_base=url, retries=0))
    runner.check_model("openai/bench")  # imports litellm before the clock (as collection does)
    call = lambda m: runner.complete("openai/bench", m, {"temperature": 0, "max_tokens": 16}).text
else:
    parts, local = urllib.parse.urlsplit(url), threading.local()
    def call(m):
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        local.conn.request("POST", parts.path + "/chat/completions", headers={"Content-Type": "application/json"},
                           body=json.dumps({"model": "bench", "messages": m, "temperature": 0, "max_tokens": 16}))
        return json.loads(local.conn.getresponse().read())["choices"][0]["message"]["content"]
with ThreadPoolExecutor(c) as pool:
    assert all("ok" in text for text in pool.map(call, messages))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        proc = subprocess.CompletedProcess(cmd, -9, out, f"timed out after {TIMEOUT:.0f} s (hung?)")
    return time.perf_counter() - start, proc


def check_outcome(name: str, n: int, proc: subprocess.CompletedProcess[str], server: TimedServer) -> None:
    passed = re.search(r"(\d+) passed", proc.stdout)
    if (int(passed.group(1)) if passed else 0) != n or len(server.spans) != n:
        tail = "\n    ".join((proc.stdout[-1500:] + proc.stderr[-800:]).splitlines())
        print(f"  WARNING {name}: {passed.group(0) if passed else 'none passed'}, server saw {len(server.spans)} "
              f"requests, expected {n} (exit {proc.returncode}):\n    {tail}")


def find_promptfoo(explicit: str | None) -> list[str] | None:
    candidates = [[explicit]] if explicit else []
    found = shutil.which("promptfoo")
    candidates += [[found]] if found else []
    candidates += [["/tmp/promptfoo/node_modules/.bin/promptfoo"], ["npx", "--no-install", "promptfoo"]]
    for cmd in candidates:
        try:
            if subprocess.run([*cmd, "--version"], capture_output=True, timeout=60).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def run_promptfoo(cmd: list[str], root: Path, server: TimedServer, n: int, jobs: int) -> tuple[float, int]:
    pf = root / "promptfoo"
    pf.mkdir()
    config = {
        "prompts": ["{{question}}"],
        "providers": [{"id": "openai:chat:bench", "config": {"apiBaseUrl": server.url, "apiKey": "sk-bench",
                                                             "temperature": 0, "max_tokens": 16}}],
        "tests": [{"vars": {"question": f"Question number {i}: say ok."},
                   "assert": [{"type": "contains", "value": "ok"}]} for i in range(n)],
    }
    (pf / "promptfooconfig.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "PROMPTFOO_CONFIG_DIR": str(pf / "home"),
           "PROMPTFOO_CACHE_ENABLED": "false", "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
           "PROMPTFOO_DISABLE_SHARING": "1", "PROMPTFOO_DISABLE_REMOTE_GENERATION": "1",
           "PROMPTFOO_DISABLE_RUNTIME_WARNINGS": "1", "PROMPTFOO_DISABLE_ERROR_LOG": "1",
           "PROMPTFOO_DISABLE_DEBUG_LOG": "1"}  # the two log flags: its file logger crashes at exit otherwise
    server.clear()
    wall, proc = timed([*cmd, "eval", "-c", "promptfooconfig.yaml", "-j", str(jobs), "--no-cache", "--no-write",
                        "--no-share", "--no-table", "--no-progress-bar", "-o", "out.json"], pf, env)
    try:
        passed = int(json.loads((pf / "out.json").read_text())["results"]["stats"]["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        passed = 0
    if passed != n or len(server.spans) != n:
        print(f"  WARNING promptfoo: {passed} passed, server saw {len(server.spans)} requests, expected {n} "
              f"(exit {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")
    return wall, passed


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    global TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 cases, 0.05 s, C=32, -n 0 and -n 2")
    parser.add_argument("--cases", type=int, help="number of cases N (default 1000; quick 200)")
    parser.add_argument("--latency", type=float, help="server latency L per request, s (default 0.2; quick 0.05)")
    parser.add_argument("--concurrency", help="comma-separated C values (default 4,32,64; quick 32)")
    parser.add_argument("--workers", help="comma-separated xdist worker counts, 0 = no -n (default 0,8; quick 0,2)")
    parser.add_argument("--bare", action=argparse.BooleanOptionalAction, default=None,
                        help=f"run the serial bare-pytest baseline (default: only when N·L <= {AUTO_BARE_LIMIT_S:.0f} s)")
    parser.add_argument("--promptfoo", metavar="PATH", help="promptfoo executable (default: search, see above)")
    parser.add_argument("--no-promptfoo", action="store_true", help="skip the promptfoo comparison")
    parser.add_argument("--promptfoo-jobs", type=int, default=32, help="promptfoo eval -j (default 32)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per subprocess (default 900)")
    parser.add_argument("--ceiling", action="store_true",
                        help="also time the same calls from a plain thread pool without pytest (what one process "
                             "can do through litellm), and through http.client")
    opts = parser.parse_args()
    TIMEOUT = opts.timeout
    n = opts.cases or (200 if opts.quick else 1000)
    latency = opts.latency if opts.latency is not None else (0.05 if opts.quick else 0.2)
    cs = ints(opts.concurrency or ("32" if opts.quick else "4,32,64"))
    workers = ints(opts.workers or ("0,2" if opts.quick else "0,8"))
    run_bare = opts.bare if opts.bare is not None else n * latency <= AUTO_BARE_LIMIT_S

    py = sys.executable
    help_out = subprocess.run([py, "-m", "pytest", "--help"], cwd=tempfile.gettempdir(), capture_output=True,
                              text=True).stdout
    has_opt = "--llm-concurrency" in help_out
    print(f"{n} cases, server latency {latency * 1000:.0f} ms, serial limit N·L = {n * latency:.1f} s, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if not has_opt:
        print("NOTE: `pytest --help` does not list --llm-concurrency yet: running only the configurations that do "
              "not need it (C = 1, one call at a time per process).")
        cs = [1]
    most_conns = max(cs) * max(max(workers), 1)
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}

    with TimedServer(default="ok", latency=latency) as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, n)
        env["BENCH_URL"] = server.url
        check_server(server, most_conns, min(most_conns, 256), latency)
        print()

        if run_bare:
            server.clear()
            base, proc = timed([py, "-m", "pytest", "bare", "-q", "-p", "no:llmeval", "-p", "no:cacheprovider"],
                               root, env)
            check_outcome("bare", n, proc, server)
            base_label = "x bare"
            print(f"baseline: bare pytest + litellm, -n 0: {base:.2f} s wall (N·L = {n * latency:.1f} s), "
                  f"window {server.window():.2f} s, max in flight {server.peak}")
        else:
            base, base_label = n * latency, "x N·L"
            print(f"baseline: bare pytest + litellm, -n 0: not run (serial, N·L = {base:.1f} s; pass --bare to run it); "
                  "the last column is wall / N·L")

        head = (f"{'configuration':26} {'wall s':>8} {'limit s':>8} {'wall/limit':>10} {'window s':>9} "
                f"{'window eff':>10} {'max infl':>8} {'srv ms':>6} {'vs -n 0':>8} {base_label:>7}")
        print(head)
        print("-" * len(head))
        walls: dict[tuple[int, int], float] = {}
        llm = [py, "-m", "pytest", "cases/", "--llm=openai/bench", f"--llm-api-base={server.url}", "--llm-cache=off",
               "-p", "no:cacheprovider", "-q"]
        for c in cs:
            for w in workers:
                name = f"llmeval C={c}" + (f", -n {w}" if w else ", -n 0")
                cmd = [*llm, *(["-n", str(w)] if w else []), *(["--llm-concurrency", str(c)] if has_opt else [])]
                server.clear()
                wall, proc = timed(cmd, root, env)
                walls[(c, w)] = wall
                limit = n * latency / c
                window = server.window()
                vs0 = f"{wall / walls[(c, 0)]:8.2f}" if w and (c, 0) in walls else f"{'-':>8}"
                print(f"{name:26} {wall:8.2f} {limit:8.2f} {wall / limit:10.2f} {window:9.2f} {limit / window:10.2f} "
                      f"{server.peak:8d} {server.overhead_ms(latency):6.1f} {vs0} {wall / base:7.2f}")
                check_outcome(name, n, proc, server)
        print(f"{'ideal':26} {'':8} {'':8} {'1.00':>10} {'':9} {'1.00':>10} {'C':>8} {'~0':>6} {'< 1':>8}")

        if any(workers):
            # What xdist itself costs here: the same number of trivial tests (no plugin, no model) with each -n.
            (root / "trivial").mkdir(exist_ok=True)
            (root / "trivial" / "test_trivial.py").write_text(
                f"import pytest\n@pytest.mark.parametrize('i', range({n}))\ndef test_case(i):\n    assert i >= 0\n")
            floor = []
            for w in sorted(set(workers)):
                wall, proc = timed([py, "-m", "pytest", "trivial/", "-p", "no:llmeval", "-p", "no:cacheprovider", "-q",
                                    *(["-n", str(w)] if w else [])], root, env)
                floor.append(f"-n {w}: {wall:.2f} s" + ("" if proc.returncode == 0 else f" (exit {proc.returncode})"))
            print(f"xdist's own floor, {n} trivial tests without the plugin: " + ", ".join(floor))

        if opts.ceiling:
            print("\nceiling: the same N calls, through the plugin's ModelRunner.complete (litellm, cache off) from a "
                  "plain\nThreadPoolExecutor(C) in one process, no pytest; and through http.client (no litellm)")
            for c in cs:
                for label, client in (("ModelRunner + litellm", "runner"), ("http.client", "raw")):
                    server.clear()
                    _, proc = timed([py, "-c", CEILING, client, server.url, str(n), str(c)], root, env)
                    if proc.returncode != 0 or len(server.spans) != n:
                        print(f"  WARNING ceiling {label} C={c}: exit {proc.returncode}, {len(server.spans)} requests: "
                              f"{proc.stderr[-800:]}")
                        continue
                    limit = n * latency / c
                    print(f"  {label:22} C={c:<3} window {server.window():6.2f} s, window eff "
                          f"{limit / server.window():.2f}, max in flight {server.peak}")

        if opts.no_promptfoo:
            return
        cmd = find_promptfoo(opts.promptfoo)
        if cmd is None:
            print("\npromptfoo: not available (see the install command in this script's docstring); comparison skipped")
            return
        jobs = opts.promptfoo_jobs
        wall, passed = run_promptfoo(cmd, root, server, n, jobs)
        limit = n * latency / jobs
        print(f"\npromptfoo ({' '.join(cmd)}) eval -j {jobs}: {wall:.2f} s wall, {passed}/{n} passed, "
              f"window {server.window():.2f} s, window eff {limit / server.window():.2f} (ideal 1.00), "
              f"max in flight {server.peak}")
        for (c, w), ours in walls.items():
            if c == jobs:
                print(f"  llmeval C={c}, -n {w} wall / promptfoo wall: {ours / wall:.2f} (ideal <= 1.00)")
        print(f"  half of promptfoo's wall is {wall / 2:.2f} s; the physical limit N·L/C at C={jobs} is "
              f"{n * latency / jobs:.2f} s" + (" (below it: not reachable with the same calls in flight)"
                                               if wall / 2 < n * latency / jobs else ""))
        if not any(c == jobs for c, _ in walls):
            print(f"  no llmeval run at C={jobs} to compare (C values run: {cs})")


if __name__ == "__main__":
    main()
