"""Benchmark: agent cases (issue 18) -- what the plugin's agent loop costs around the model calls it must make.

Run with ``.venv/bin/python bench/bench_agent.py`` (100 cases) or ``--quick`` (30 cases). Everything runs against the
scripted OpenAI-compatible server of the tests (``tests/helpers/llm_server.py``, in this process) answering each
request in ``--latency`` seconds (default 0.05), through real litellm. Each case is one agent run of two model calls:
the model asks for one tool call (real OpenAI ``tool_calls``), the tool runs, the model answers. Half the cases call
a Python function (``calculator``), half a schema-only tool answered by a canned result (``get_weather``).

Measured, each against a baseline measured in this same process:

1. ``bare loop``: the same 2N ``litellm.completion(..., tools=...)`` calls made serially in this process by a
   hand-written loop (parse the call, run the function or look up the canned result, send it back): the least a
   team's own loop costs. ``bare pytest`` runs that loop as one plain test per case in a pytest subprocess.
   ``llmeval cold -n 0`` is the whole pytest session over the case file (subprocess, empty cache). Besides the wall
   time, the *window* is the server's first request to its last response; ``per call`` is (window - 2N x latency)
   / 2N: what each model call costs beyond the server's latency, once the process is up. ``to 1st`` is the start
   of the configuration to the server's first request (interpreter, pytest, plugin, litellm's import, collection);
   ``after`` is the last response to the end (the last item, results, summary, the workers shutting down).
2. ``llmeval cached rerun``: the same session again on the same cache; the server must receive no request (the
   script exits 1 otherwise).
3. ``llmeval cold -n 2``: two xdist workers, a fresh cache, against ``llmeval cold -n 0``.
4. The tool runtime in this process, in microseconds: ``ToolRuntime.execute`` on a canned result and on the Python
   function (JSON Schema validation included), making a ToolRuntime (once per agent case), and one ``run_agent``
   step with the model stubbed in-process (two replies: a tool call, the answer), wired two ways: ``execute=
   runtime.execute`` with the loop's default check (``jsonschema.validate``, which checks the tool's schema against
   the metaschema on every call, then ``execute`` validates again), and ``check=runtime.validate,
   execute=runtime.run`` (validated once, with the runtime's prebuilt validator), when targets/agent.py has it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from helpers.llm_server import ScriptedLLMServer  # noqa: E402

TOOLS_PY = '''\
def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: digits and + - * / ( ), e.g. "17 * 23".
    """
    if not set(expression) <= set("0123456789+-*/(). "):
        raise ValueError(f"not arithmetic: {expression!r}")
    return eval(expression)  # only digits and operators reach it
'''

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

SUITE_HEAD = """\
suite: agent-bench
system: Use the tools.
tools:
  - python: benchtools:calculator
  - type: function
    function:
      name: get_weather
      description: The current weather in a city.
      parameters: {type: object, properties: {city: {type: string}}, required: [city]}
returns:
  get_weather: {city: Paris, sky: sunny, celsius: 21}
agent: {max_steps: 4}
cases:
"""

# The hand-written two-call loop of one case (what a team writes without the plugin): run in this process by
# bare_loop, and by one plain pytest test per case (BARE_TEST), the same source both times.
LOOP = '''\
import json
import litellm


def run_case(case, kw, calculator, canned):
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": case["prompt"]}]
    first = litellm.completion(messages=messages, **kw).choices[0].message
    call = first.tool_calls[0]
    args = json.loads(call.function.arguments)
    result = calculator(**args) if call.function.name == "calculator" else canned
    messages += [{"role": "assistant", "content": first.content, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}]
    return litellm.completion(messages=messages, **kw).choices[0].message.content
'''

BARE_TEST = '''\
import os
import pytest
from benchtools import calculator
from bench_agent_cases import CASES, TOOLS, CANNED
from bench_agent_loop import run_case


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_agent(case):
    kw = dict(model="openai/test-model", api_base=os.environ["BENCH_URL"], api_key="sk-bench", tools=TOOLS)
    assert case["expect"] in run_case(case, kw, calculator, CANNED)
'''

CALC_TOOL = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
CANNED = {"city": "Paris", "sky": "sunny", "celsius": 21}


def make_cases(n: int) -> list[dict[str, Any]]:
    """Case i: a calculator call (even i) or a weather call answered by the canned result (odd i)."""
    cases = []
    for i in range(n):
        tag = f"[q{i:05d}]"  # a fixed width: one case's tag is never inside another's prompt
        if i % 2 == 0:
            expression = f"{i} * 7"
            cases.append({"id": f"calc{i}", "tag": tag, "prompt": f"{tag} What is {expression}?", "tool": "calculator",
                          "arguments": {"expression": expression}, "expect": str(i * 7)})
        else:
            cases.append({"id": f"weather{i}", "tag": tag, "prompt": f"{tag} What is the weather in Paris?",
                          "tool": "get_weather", "arguments": {"city": "Paris"}, "expect": "sunny"})
    return cases


def script(server: ScriptedLLMServer, cases: list[dict[str, Any]]) -> None:
    """First request of a case: the tool call; once a tool message came back: the answer."""
    for case in cases:
        answer = f"The answer is {case['expect']}." if case["tool"] == "calculator" else "It is sunny in Paris."
        server.answer(case["tag"], answer, after_tool="")
        server.tool_call(case["tag"], case["tool"], case["arguments"])


def write_project(root: Path, cases: list[dict[str, Any]]) -> None:
    (root / "benchtools.py").write_text(TOOLS_PY)
    (root / "cases").mkdir()
    lines = [SUITE_HEAD]
    for case in cases:
        lines.append(f"  - id: {case['id']}\n    prompt: {json.dumps(case['prompt'])}\n    expect:\n"
                     f"      - tool_called: {{name: {case['tool']}}}\n      - contains: {json.dumps(case['expect'])}\n")
    (root / "cases" / "agent.yaml").write_text("".join(lines))
    (root / "bare").mkdir()
    (root / "bare" / "bench_agent_cases.py").write_text(
        f"CASES = {cases!r}\nTOOLS = {[CALC_TOOL, WEATHER]!r}\nCANNED = {CANNED!r}\n")
    (root / "bare" / "bench_agent_loop.py").write_text(LOOP)
    (root / "bare" / "test_bare.py").write_text(BARE_TEST)
    (root / "pytest.ini").write_text("[pytest]\n")


def bare_loop(url: str, cases: list[dict[str, Any]]) -> None:
    """The hand-written baseline: the 2N calls, serially, in this process."""
    namespace: dict[str, Any] = {}
    exec(TOOLS_PY, namespace)  # noqa: S102  # the same calculator the suite uses
    exec(LOOP, namespace)  # noqa: S102  # the same loop the bare pytest tests run
    kw: dict[str, Any] = {"model": "openai/test-model", "api_base": url, "api_key": "sk-bench",
                          "tools": [CALC_TOOL, WEATHER]}
    for case in cases:
        answer = namespace["run_case"](case, kw, namespace["calculator"], CANNED)
        if case["expect"] not in answer:
            raise SystemExit(f"baseline: unexpected answer {answer!r} for {case['id']}")


def run_session(root: Path, args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:  # every case passes: a failure here means the benchmark measured the wrong thing
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"pytest failed ({proc.returncode}): {args}")
    return wall


def window(server: ScriptedLLMServer, since: int, latency: float) -> float | None:
    """The server's first request to its last response, for the requests received after index ``since``."""
    times = server.request_times[since:]
    return times[-1] - times[0] + latency if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency per request, seconds")
    parser.add_argument("--quick", action="store_true", help="30 cases")
    opts = parser.parse_args()
    n = 30 if opts.quick else opts.cases
    cases = make_cases(n)
    latency = opts.latency
    # label, wall, requests, window, start to the first request, last response to the end
    rows: list[tuple[str, float, int, float | None, float | None, float | None]] = []
    with ScriptedLLMServer(default="no script for this prompt", latency=latency) as server, \
            tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, cases)
        script(server, cases)
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BENCH_URL": server.url,
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": f"{root}{os.pathsep}{root / 'bare'}"}
        for name in ("LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "LLMEVAL_API_BASE", "LLMEVAL_CACHE_DIR"):
            env.pop(name, None)

        def measure(label: str, fn: Any) -> None:
            since = len(server.requests)
            start, clock = time.perf_counter(), time.monotonic()
            fn()
            wall, end = time.perf_counter() - start, time.monotonic()
            times = server.request_times[since:]
            rows.append((label, wall, len(times), window(server, since, latency),
                         times[0] - clock if times else None, end - times[-1] - latency if times else None))

        import litellm

        litellm.completion(model="openai/test-model", api_base=server.url, api_key="sk-bench",  # warm: not timed
                           messages=[{"role": "user", "content": "warm up"}], tools=[CALC_TOOL, WEATHER])
        measure("bare loop (this process, serial)", lambda: bare_loop(server.url, cases))
        measure("bare pytest (subprocess, serial)", lambda: run_session(root, ["bare", "-p", "no:llmeval"], env))
        llm = ["cases", "--llm=openai/test-model", f"--llm-api-base={server.url}"]
        measure("llmeval cold, -n 0", lambda: run_session(root, [*llm, "--llm-cache-dir=cache-a"], env))
        measure("llmeval cached rerun, -n 0", lambda: run_session(root, [*llm, "--llm-cache-dir=cache-a"], env))
        results = json.loads((root / ".llmeval" / "results.json").read_text())
        cached = sum(1 for c in results["cases"] if c.get("cached"))
        with_steps = sum(1 for c in results["cases"] if (c.get("trajectory") or {}).get("steps"))
        measure("llmeval cold, -n 2", lambda: run_session(root, [*llm, "--llm-cache-dir=cache-b", "-n", "2"], env))

    print(f"\n{n} agent cases (2 model calls each: one tool call, then the answer), server latency "
          f"{latency * 1000:.0f} ms, {os.cpu_count()} CPUs; the floor of a serial run is 2N x latency = "
          f"{2 * n * latency:.1f} s\n")
    base = rows[0][1]
    print(f"{'configuration':36} {'wall s':>7} {'x bare loop':>11} {'requests':>9} {'to 1st s':>9} {'window s':>9} "
          f"{'after s':>8} {'per call ms':>12}")

    def cell(value: float | None, width: int, scale: float = 1.0) -> str:
        return " " * width if value is None else f"{value * scale:{width}.{1 if scale > 1 else 2}f}"

    for label, wall, requests, span, head, tail in rows:
        per_call = None if span is None or "-n 2" in label else (span - requests * latency) / requests
        print(f"{label:36} {wall:7.2f} {wall / base:11.2f} {requests:9d} {cell(head, 9)} {cell(span, 9)} "
              f"{cell(tail, 8)} {cell(per_call, 12, 1000)}")
    walls = {row[0]: row[1] for row in rows}
    requests_rerun = rows[3][2]
    print(f"\n(1) llmeval cold -n 0 vs the bare loop: x{walls['llmeval cold, -n 0'] / base:.2f}; vs bare pytest: "
          f"x{walls['llmeval cold, -n 0'] / walls['bare pytest (subprocess, serial)']:.2f}")
    print(f"(2) cached rerun vs cold: x{walls['llmeval cached rerun, -n 0'] / walls['llmeval cold, -n 0']:.2f}; "
          f"requests on the rerun: {requests_rerun} ({cached}/{n} cases cached, {with_steps}/{n} with a trajectory)")
    print(f"(3) -n 2 vs -n 0, cold: x{walls['llmeval cold, -n 2'] / walls['llmeval cold, -n 0']:.2f}")
    tool_runtime_cost()
    if requests_rerun != 0 or cached != n:
        print(f"\nFAIL: the cached rerun sent {requests_rerun} request(s) to the server and served {cached}/{n} "
              "cases from the cache (want 0 and all)")
        raise SystemExit(1)
    print("\nOK: the cached rerun sent 0 requests to the server")


def _per_call_us(fn: Any, calls: int) -> float:
    """Median over 5 rounds of ``calls`` calls, microseconds per call."""
    fn()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def tool_runtime_cost(calls: int = 2000) -> None:
    """(4) The tool runtime's own cost per call, in this process."""
    import inspect

    from pytest_llmeval.cases.tools import parse_returns
    from pytest_llmeval.core.tools import ToolCall
    from pytest_llmeval.targets.agent import run_agent
    from pytest_llmeval.targets.tools import ToolDef, ToolRuntime, to_openai, tool_from_function

    namespace: dict[str, Any] = {}
    exec(TOOLS_PY, namespace)  # noqa: S102
    calculator = namespace["calculator"]
    canned, problems = parse_returns({"get_weather": [{"when": {"city": "/^paris$/i"}, "result": CANNED},
                                                      {"default": {"sky": "unknown"}}]}, ("returns",))
    assert not problems, problems
    tools = [tool_from_function(calculator), ToolDef("get_weather", "The current weather in a city.",
                                                     WEATHER["function"]["parameters"])]  # type: ignore[index]
    runtime = ToolRuntime(tools, canned)
    offered = to_openai(tools)
    calc = ToolCall("calculator", {"expression": "17 * 23"}, "call_0")
    weather = ToolCall("get_weather", {"city": "Paris"}, "call_1")
    bad = ToolCall("calculator", {"expr": "17 * 23"}, "call_2")
    assert runtime.execute(calc) == (391, None) and runtime.execute(weather) == (CANNED, None)
    assert runtime.execute(bad)[1] is not None
    rows = [
        ("the Python function alone (no runtime)", lambda: calculator(expression="17 * 23")),
        ("ToolRuntime.validate (JSON Schema)", lambda: runtime.validate(calc)),
        ("ToolRuntime.execute, canned result", lambda: runtime.execute(weather)),
        ("ToolRuntime.execute, Python function", lambda: runtime.execute(calc)),
        ("ToolRuntime.execute, arguments fail the schema", lambda: runtime.execute(bad)),
        ("ToolRuntime(...) made (once per agent case)", lambda: ToolRuntime(tools, canned)),
    ]

    def agent_run(call: ToolCall, **wiring: Any) -> Any:
        """One run_agent with the model stubbed in-process: a tool call, then the answer (one step)."""
        asked = {"content": None, "usage": {"prompt_tokens": 9}, "tool_calls": [{
            "id": "call_0", "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))}}]}
        answer = {"content": "done", "tool_calls": []}

        def once() -> Any:
            replies = iter([asked, answer])
            return run_agent(lambda *_: next(replies), [{"role": "user", "content": "q"}], offered, **wiring)
        return once

    for label, call in (("canned", weather), ("Python", calc)):
        rows.append((f"run_agent, 1 step, {label}: execute=runtime.execute", agent_run(call, execute=runtime.execute)))
    if "check" in inspect.signature(run_agent).parameters and hasattr(runtime, "run"):
        for label, call in (("canned", weather), ("Python", calc)):  # how run/agent.py wires it: validated once
            rows.append((f"run_agent, 1 step, {label}: check=validate, execute=run",
                         agent_run(call, execute=runtime.run, check=runtime.validate)))
    print(f"\n(4) tool runtime, this process, median of 5 x {calls} calls\n")
    print(f"{'operation':56} {'us/call':>9}")
    for label, fn in rows:
        print(f"{label:56} {_per_call_us(fn, calls):9.1f}")


if __name__ == "__main__":
    main()
