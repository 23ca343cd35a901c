"""Benchmark: application targets (issue 17) -- what the plugin costs and gains around a team's own application.

Run with ``.venv/bin/python bench/bench_targets.py`` (100 cases) or ``--quick`` (40 cases). Everything runs against
the scripted OpenAI-compatible server of the tests (``tests/helpers/llm_server.py``, in this process) answering in
``--latency`` seconds (default 0.05). The application is a small bot module written into a temporary project: it
calls that server through litellm (one call per case) and returns an Answer with two references.

Configurations, each one pytest subprocess over the same cases, in one process so the ratios compare like with like:

* ``bare``: what a team writes without the plugin: one parametrized test per case calling the bot and asserting on
  its text (serial: the baseline of every ratio);
* ``python c=1``: ``target: {python: bot:answer}``, ``--llm-concurrency=1``: the plugin's overhead per case;
* ``python c=8``: the same with 8 calls in flight (the prefetch pool);
* ``python cached``: ``version: "1"`` declared, the second run (every answer from the cache);
* ``http c=8``: the same bot served over HTTP by the plugin (``serve:``), 8 in flight;
* ``fixture c=8``: a session fixture returns the bot (fixture targets are called in setup: not prefetched).

Printed: wall seconds, the ratio to ``bare``, and the app calls the summary attributed (should equal the cases).
Then the per-call cost of attributing the app's own litellm calls (targets/usage.py ``track()``) in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.llm_server import ScriptedLLMServer  # noqa: E402

BOT = '''\
import os
import litellm
from pytest_llmeval import Answer, Reference


def answer(request):
    reply = litellm.completion(model="openai/bot-model", api_base=os.environ["BOT_API_BASE"], api_key="sk-bench",
                               messages=request.messages, num_retries=0)
    return Answer(reply.choices[0].message.content,
                  references=[Reference("docs/a.md", "A", 0.9), Reference("docs/b.md", "B", 0.5)])
'''

SERVER = '''\
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import bot
from pytest_llmeval import TargetRequest


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = bot.answer(TargetRequest(prompt=body["q"], messages=[{"role": "user", "content": body["q"]}]))
        data = json.dumps({"answer": answer.text, "refs": [r.to_dict() for r in answer.references]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)


class Server(ThreadingHTTPServer):
    request_queue_size = 64


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

HAND_WRITTEN = '''\
import pytest
import bot
from pytest_llmeval import TargetRequest

QUESTIONS = [f"question {i}" for i in range({n})]


@pytest.mark.parametrize("q", QUESTIONS)
def test_bot(q):
    answer = bot.answer(TargetRequest(prompt=q, messages=[{"role": "user", "content": q}]))
    assert "answer" in answer.text
'''


def _suite(n: int, target: str) -> str:
    cases = "".join(f"  - {{id: c{i}, question: question {i}, expect: [{{contains: answer}}]}}\n" for i in range(n))
    return f"suite: bench\ntarget: {target}\ncases:\n{cases}"


def _run(project: Path, args: list[str], env: dict[str, str]) -> tuple[float, dict[str, object] | None]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:  # every case passes: a failure here means the benchmark measured the wrong thing
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"pytest failed ({proc.returncode}): {args}")
    results = project / ".llmeval" / "results.json"
    return wall, json.loads(results.read_text()) if results.exists() else None


def _app_calls(results: dict[str, object] | None) -> int | None:
    if not results:
        return None
    rows = results.get("suites") or []
    return sum(int((r.get("app_calls") or {}).get("calls", 0)) for r in rows)  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    n = 40 if opts.quick else opts.cases
    with ScriptedLLMServer(default="an answer [1]") as server, tempfile.TemporaryDirectory() as tmp:
        server.latency = opts.latency
        project = Path(tmp)
        (project / "bot.py").write_text(BOT)
        (project / "server.py").write_text(SERVER)
        env = {**os.environ, "BOT_API_BASE": server.url, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "PYTHONPATH": str(project)}
        common = ["--llm=openai/test-model", f"--llm-api-base={server.url}", "--llm-cache=on"]
        rows: list[tuple[str, float, int | None]] = []

        (project / "test_bare.py").write_text(HAND_WRITTEN.replace("{n}", str(n)))
        wall, _ = _run(project, ["test_bare.py"], env)
        rows.append(("bare (hand-written, serial)", wall, None))
        (project / "test_bare.py").unlink()

        cases = project / "cases"
        cases.mkdir()
        configs = [
            ("python c=1", '{python: "bot:answer"}', ["--llm-concurrency=1"]),
            ("python c=8", '{python: "bot:answer"}', ["--llm-concurrency=8"]),
            ("http c=8 (served by the plugin)", '{http: {url: "http://127.0.0.1:{port}/ask", json: {q: "{question}"}, '
             'answer: answer, references: refs, serve: {command: "python server.py {port}", ready: /}}}',
             ["--llm-concurrency=8"]),
            ("fixture c=8 (not prefetched)", "{fixture: bot_fixture}", ["--llm-concurrency=8"]),
        ]
        (project / "conftest.py").write_text(
            "import pytest\nimport bot\n\n\n@pytest.fixture(scope='session')\ndef bot_fixture():\n    return bot.answer\n")
        for label, target, extra in configs:
            (cases / "bench.yaml").write_text(_suite(n, target))
            wall, results = _run(project, [*common, *extra, "cases"], env)
            rows.append((label, wall, _app_calls(results)))
        (cases / "bench.yaml").write_text(_suite(n, '{python: "bot:answer", version: "1"}'))
        _run(project, [*common, "--llm-concurrency=8", "cases"], env)
        wall, results = _run(project, [*common, "--llm-concurrency=8", "cases"], env)
        rows.append(("python cached (version: 1, 2nd run)", wall, _app_calls(results)))

        base = rows[0][1]
        print(f"\n{n} cases, server latency {opts.latency:g} s, one litellm call per case inside the app\n")
        print(f"{'configuration':40} {'wall s':>8} {'x bare':>7} {'app calls':>10}")
        for label, wall, calls in rows:
            print(f"{label:40} {wall:8.2f} {wall / base:7.2f} {'' if calls is None else calls:>10}")
        _tracking_cost(server.url)


def _tracking_cost(url: str, calls: int = 60) -> None:
    """CPU per app call with and without the usage tracker around it, in this process."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from pytest_llmeval.targets import usage

    def call() -> None:
        litellm.completion(model="openai/bot-model", api_base=url, api_key="sk-bench", num_retries=0,
                           messages=[{"role": "user", "content": "hi"}])

    for _ in range(5):
        call()
    start = time.process_time()
    for _ in range(calls):
        call()
    plain = (time.process_time() - start) / calls
    start = time.process_time()
    for _ in range(calls):
        with usage.track():
            call()
    tracked = (time.process_time() - start) / calls
    print(f"\nCPU per app litellm call: {plain * 1e3:.2f} ms plain, {tracked * 1e3:.2f} ms inside track() "
          f"(x{tracked / plain:.2f})")


if __name__ == "__main__":
    main()
