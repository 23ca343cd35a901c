"""Agent cases (``tools:``) in whole sessions: real litellm function calling against the scripted server's real
``tool_calls`` payloads, the tools run (Python functions, canned results), trajectories graded, reported and cached
per step; the offline provider's prompt-and-parse mode; application targets whose answers carry tool calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.llm_server import ToolReply

from conftest import Project

TOOLS_PY = '''\
CALLS = []


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: digits and + - * / ( ), e.g. "17 * 23".
    """
    CALLS.append(expression)
    allowed = set("0123456789+-*/(). ")
    if not set(expression) <= allowed:
        raise ValueError(f"not arithmetic: {expression!r}")
    return eval(expression)  # the test's own tool: only digits and operators reach it
'''

SUITE = """\
suite: assistant
system: Use the tools.
tools:
  - python: mytools:calculator
  - type: function
    function:
      name: book_meeting
      description: Book a meeting room.
      parameters:
        type: object
        properties: {room: {type: string}, confirmed: {type: boolean}}
        required: [room]
returns:
  book_meeting:
    - when: {room: /^blue/i}
      result: {booked: true, room: blue}
    - default: {booked: false}
agent: {max_steps: 4}
cases:
  - id: multiply
    prompt: What is 17 * 23?
    expect:
      - tool_called: {name: calculator, arguments: {expression: "17 * 23"}}
      - contains: "391"
  - id: no-booking
    prompt: Book the blue room for me.
    expect:
      - tool_not_called: book_meeting
"""


def script_assistant(project: Project, *, books: bool) -> None:
    server = project.server
    server.answer("17 * 23", "17 * 23 is 391.", after_tool="391")
    server.tool_call("17 * 23", "calculator", {"expression": "17 * 23"})
    server.answer("Book the blue room", "Booked.", after_tool="booked")
    if books:
        server.tool_call("Book the blue room", "book_meeting", {"room": "blue"})
    else:
        server.answer("Book the blue room", "Shall I book it? Please confirm.")


def write_assistant(project: Project) -> None:
    project.write("mytools.py", TOOLS_PY)
    project.write("cases/assistant.yaml", SUITE)


@pytest.mark.parametrize("workers", [None, "2"])
def test_agent_cases_run_tools_and_grade_the_trajectory(project: Project, workers: str | None) -> None:
    write_assistant(project)
    script_assistant(project, books=True)
    result = project.run(*(["-n", workers] if workers else []))
    result.assert_outcomes(passed=1, failed=1)
    doc = project.results()
    cases = {c["case_id"]: c for c in doc["cases"]}
    multiply = cases["multiply"]
    assert multiply["outcome"] == "passed" and multiply["answer"] == "17 * 23 is 391."
    steps = multiply["trajectory"]["steps"]
    assert multiply["trajectory"]["mode"] == "native" and multiply["trajectory"]["ended"] == "answer"
    assert [(s["name"], s["arguments"], s["result"]) for s in steps] == [("calculator", {"expression": "17 * 23"},
                                                                          391)]
    assert multiply["tool_accuracy"] == 1.0
    assert multiply["prompt_tokens"] and multiply["calls"] == 1
    booking = cases["no-booking"]
    assert booking["outcome"] == "failed" and booking["tool_accuracy"] == 0.0
    assert booking["trajectory"]["steps"][0]["result"] == {"booked": True, "room": "blue"}  # the canned result
    # the failure report shows what the agent did, step by step
    out = result.stdout.str()
    assert "tool calls (native, 1 step(s), ended: answer):" in out
    assert '1. book_meeting(room="blue") -> {"booked": true, "room": "blue"}' in out
    # the model was offered the tools in OpenAI's format, and got the tool's result back
    first = next(r for r in project.server.requests if "17 * 23" in json.dumps(r["messages"]))
    assert {t["function"]["name"] for t in first["tools"]} == {"calculator", "book_meeting"}
    calc = next(t for t in first["tools"] if t["function"]["name"] == "calculator")["function"]
    assert calc["parameters"]["properties"]["expression"]["type"] == "string"
    assert "digits and" in calc["parameters"]["properties"]["expression"]["description"]
    fed = [m for r in project.server.requests for m in r["messages"] if m.get("role") == "tool"]
    assert any(m["content"] == "391" for m in fed)


def test_rerun_replays_every_step_from_the_cache(project: Project) -> None:
    write_assistant(project)
    script_assistant(project, books=False)
    project.run().assert_outcomes(passed=2)
    sent = len(project.server.requests)
    assert sent == 3  # multiply: the call, then the answer; no-booking: one answer
    again = project.run()
    again.assert_outcomes(passed=2)
    assert len(project.server.requests) == sent  # no model call: each step came from the cache
    doc = project.results()
    assert all(c["cached"] for c in doc["cases"])
    assert doc["cases"][0]["trajectory"]["steps"][0]["result"] == 391  # the tool ran again, the model did not


def test_bad_calls_are_fed_back_as_errors(project: Project) -> None:
    write_assistant(project)
    server = project.server
    server.answer("17 * 23", "Sorry, I could not compute it.", after_tool="do not match the schema")
    server.sequence("17 * 23", [ToolReply.call("calculate", {"expression": "17 * 23"}),
                                ToolReply.call("calculator", {"expr": "17 * 23"})])
    server.answer("Book the blue room", "Please confirm.")
    project.run().assert_outcomes(passed=1, failed=1)
    steps = project.results()["cases"][0]["trajectory"]["steps"]
    assert [s["name"] for s in steps] == ["calculate", "calculator"]
    assert "unknown tool 'calculate'" in steps[0]["error"] and "calculator" in steps[0]["error"]
    assert "arguments do not match the schema of calculator" in steps[1]["error"]
    fed = [m["content"] for r in server.requests for m in r["messages"] if m.get("role") == "tool"]
    assert any(c.startswith("Error: unknown tool") for c in fed)


def test_max_steps_stops_a_loop(project: Project) -> None:
    write_assistant(project)
    project.server.tool_call("17 * 23", "calculator", {"expression": "17 * 23"})  # forever
    project.server.answer("Book the blue room", "Please confirm.")
    project.write("cases/assistant.yaml", SUITE.replace("  - id: multiply\n", "  - id: multiply\n"
                                                        "    agent: {max_steps: 2}\n"))
    project.run().assert_outcomes(passed=1, failed=1)
    multiply = project.results()["cases"][0]
    assert multiply["trajectory"]["ended"] == "max_steps" and len(multiply["trajectory"]["steps"]) == 2


def test_provider_error_mid_loop_is_an_error_outcome(project: Project) -> None:
    write_assistant(project)
    server = project.server
    server.fail("17 * 23", status=400, message="bad request")
    server.answer("Book the blue room", "Please confirm.")
    project.run().assert_outcomes(passed=1, errors=1)


BAD_TOOLS = {  # the suite's head, where the error is (line: field), what it says
    "unimportable": ("tools:\n  - python: nowhere_module:fn\n", "2: tools[0].python",
                     "tool 'fn': cannot import nowhere_module:fn"),
    "schema": ("tools:\n  - name: t\n    parameters: {type: object, properties: {a: {type: 12}}}\n",
               "3: tools[0].parameters.properties.a.type", "not a valid JSON Schema: 12 is not valid"),
    "unlisted": ("tools:\n  - name: t\nreturns:\n  other: 1\n", "4: returns.other",
                 "canned results for tool 'other', which is not listed in tools (listed: t)"),
}


@pytest.mark.parametrize("bad", sorted(BAD_TOOLS))
def test_bad_tools_are_errors_at_their_line_and_other_suites_run(project: Project, bad: str) -> None:
    head, where, message = BAD_TOOLS[bad]
    project.write("cases/broken.yaml", head + "cases:\n  - id: a\n    prompt: hi\n    expect: [{contains: x}]\n")
    project.write("cases/fine.yaml", "cases:\n  - id: ok\n    prompt: capital of France?\n"
                                     "    expect: [{contains: Paris}]\n")
    project.server.answer("capital of France", "Paris.")
    result = project.run()
    result.assert_outcomes(passed=1, errors=1)
    assert f"cases/broken.yaml:{where}: {message}" in result.stdout.str()


def test_offline_provider_runs_in_prompt_mode(project: Project) -> None:
    """A provider without function calling (a conftest's, as ``local/`` is) gets the tools in the prompt and a
    JSON call parsed from its answer."""
    project.write("conftest.py", '''
from pytest_llmeval import Provider

def answer(request):
    last = request.messages[-1]["content"]
    if last.startswith("Tool result for calculator:"):
        return "It is " + last.split(":", 1)[1].strip() + "."
    assert "You can use these tools" in request.messages[0]["content"]
    return '{"tool": "calculator", "arguments": {"expression": "2 + 2"}}'

def pytest_llmeval_register_providers(register):
    register(Provider(prefix="toy/", complete=answer, offline=True, tools=False))
''')
    project.write("mytools.py", TOOLS_PY)
    project.write("cases/toy.yaml", "tools:\n  - python: mytools:calculator\ncases:\n  - id: add\n"
                                    "    prompt: What is 2 + 2?\n    expect:\n      - tool_called: calculator\n"
                                    "      - contains: '4'\n")
    project.run(model="toy/model").assert_outcomes(passed=1)
    case = project.results()["cases"][0]
    assert case["trajectory"]["mode"] == "prompt" and case["answer"] == "It is 4."
    assert case["trajectory"]["steps"][0]["result"] == 4


APP = '''\
from pytest_llmeval import Answer

def answer(request):
    if "delete" in request.prompt:
        return Answer("Deleted.", tool_calls=[{"name": "delete_account", "arguments": {"user": "bob"},
                                               "result": {"ok": True}}])
    return Answer("The weather is sunny.", tool_calls=[{"function": {"name": "weather",
                                                                   "arguments": '{"city": "Paris"}'}}])
'''


def test_application_answers_carry_their_tool_calls(project: Project) -> None:
    project.write("app.py", APP)
    project.write("cases/app.yaml", """\
target: {python: app:answer}
cases:
  - id: weather
    prompt: weather in Paris?
    expect: [{tool_called: {name: weather, arguments: {city: Paris}}}]
  - id: delete
    prompt: please delete my account
    expect: [{tool_not_called: delete_account}]
""")
    result = project.run()
    result.assert_outcomes(passed=1, failed=1)
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["weather"]["trajectory"]["mode"] == "app"
    assert cases["weather"]["trajectory"]["steps"][0]["arguments"] == {"city": "Paris"}
    assert "delete_account" in result.stdout.str() and "tool calls (app, 1 step(s)" in result.stdout.str()


def test_a_trajectory_check_needs_tools_or_an_app(project: Project) -> None:
    project.write("cases/a.yaml", "cases:\n  - id: a\n    prompt: hi\n    expect: [{tool_called: search}]\n")
    result = project.run()
    result.assert_outcomes(errors=1)
    assert "a.yaml:4: cases[0].expect[0].tool_called: the tool_called check grades an agent's tool calls" \
        in result.stdout.str()


def results_of(doc: dict[str, Any], case_id: str) -> dict[str, Any]:
    return next(c for c in doc["cases"] if c["case_id"] == case_id)


def test_run_python_runs_the_models_program_in_the_sandbox(project: Project, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The built-in run_python tool: the program the model wrote runs in the real bwrap sandbox, without the
    run's secrets nor the project's files."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    project.write("secret.txt", "top secret")
    project.write("cases/code.yaml", """\
tools:
  - builtin: run_python
limits: {timeout_s: 3}
cases:
  - id: power
    prompt: What is 2 to the 10th?
    expect:
      - tool_called: run_python
      - contains: "1024"
  - id: slow
    prompt: Run a slow program.
    expect:
      - tool_called: run_python
""")
    program = ("import os, pathlib\nprint(2 ** 10)\nprint(os.environ.get('OPENAI_API_KEY'))\n"
               f"print(pathlib.Path({str(project.pytester.path / 'secret.txt')!r}).exists())\n")
    project.server.answer("2 to the 10th", "It is 1024.", after_tool="1024")
    project.server.tool_call("2 to the 10th", "run_python", {"code": program})
    project.server.answer("slow program", "It timed out.", after_tool="timed out")
    project.server.tool_call("slow program", "run_python", {"code": "import time\nprint('started')\ntime.sleep(60)\n"})
    project.run().assert_outcomes(passed=2)
    case = results_of(project.results(), "power")
    slow = results_of(project.results(), "slow")["trajectory"]["steps"][0]["result"]
    assert "timed out" in slow["error"] and slow["stdout"] == "started\n"  # unbuffered: printed before the kill
    result = case["trajectory"]["steps"][0]["result"]
    assert result["exit_code"] == 0 and result["stdout"].split() == ["1024", "None", "False"]
    offered = next(r for r in project.server.requests if "2 to the 10th" in json.dumps(r))["tools"][0]["function"]
    assert offered["name"] == "run_python" and offered["parameters"]["required"] == ["code"]
    assert "sk-secret-value-123" not in json.dumps(project.results())


def test_a_judge_reads_the_trajectory(project: Project) -> None:
    write_assistant(project)
    project.write("cases/assistant.yaml", SUITE.replace(
        "      - contains: \"391\"\n", "      - contains: \"391\"\n      - judge: {rubric: tool_use, min: 7}\n"))
    project.server.answer("Tool calls the assistant made", '{"score": 9, "reason": "one right call"}')
    script_assistant(project, books=False)
    project.run().assert_outcomes(passed=2)
    judged = [r for r in project.server.requests if "Tool calls the assistant made" in json.dumps(r["messages"])]
    assert len(judged) == 1
    prompt = judged[0]["messages"][-1]["content"]
    assert 'Tool use: did the assistant call the tools' in prompt
    assert '1. calculator(expression="17 * 23") -> 391' in prompt and "Answer to grade:\n17 * 23 is 391." in prompt
    multiply = project.results()["cases"][0]
    assert next(c for c in multiply["checks"] if c["check"] == "judge")["score"] == 0.9


def test_repeats_run_one_agent_loop_per_draw(project: Project) -> None:
    write_assistant(project)
    script_assistant(project, books=False)
    project.run("--llm-repeat=2").assert_outcomes(passed=2)
    multiply = results_of(project.results(), "multiply")
    assert [len(s["trajectory"]["steps"]) for s in multiply["samples"]] == [1, 1]
    assert multiply["tool_accuracy"] == 1.0 and multiply["calls"] == 2
    # each draw has its own cache slot: 2 draws x 2 steps for multiply, 2 x 1 for no-booking
    assert len(project.server.requests) == 6


def test_tools_with_an_application_target_are_an_error(project: Project) -> None:
    project.write("app.py", APP)
    project.write("cases/app.yaml", "target: {python: app:answer}\ntools: [{name: search}]\ncases:\n  - id: a\n"
                                    "    prompt: hi\n    expect: [{tool_called: search}]\n")
    result = project.run()
    result.assert_outcomes(errors=1)
    assert "app.yaml:2: tools: tools are offered to the --llm model; an application target runs its own agent" \
        in result.stdout.str()


def test_a_fully_cached_agent_run_never_imports_litellm(project: Project) -> None:
    write_assistant(project)
    script_assistant(project, books=False)
    project.write("conftest.py", "import sys\n\ndef pytest_sessionfinish():\n"
                                 "    open('litellm-loaded.txt', 'w').write(str('litellm' in sys.modules))\n")
    project.run(subprocess=True).assert_outcomes(passed=2)
    loaded = project.pytester.path / "litellm-loaded.txt"
    assert loaded.read_text() == "True"
    project.run(subprocess=True).assert_outcomes(passed=2)
    assert loaded.read_text() == "False"  # every first step found in the cache at collection: no key check
    # A changed tool (its schema is in every step's key): the first step misses, the model is checked and called.
    project.write("mytools.py", TOOLS_PY.replace('"17 * 23"', '"2 * 3"'))
    sent = len(project.server.requests)
    project.run(subprocess=True).assert_outcomes(passed=2)
    assert loaded.read_text() == "True" and len(project.server.requests) == sent + 3


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_agent_runs_are_prefetched_concurrently(project: Project, concurrency: str) -> None:
    """Each draw's agent run is one unit of the prefetch pool: runs of upcoming cases overlap (their steps stay in
    order), unless --llm-concurrency=1."""
    write_assistant(project)
    cases = "".join(f"  - id: m{i}\n    prompt: What is 17 * 23 (#{i})?\n    expect:\n"
                    "      - tool_called: calculator\n      - contains: '391'\n" for i in range(4))
    project.write("cases/assistant.yaml", SUITE.split("cases:\n")[0] + "cases:\n" + cases)
    script_assistant(project, books=False)
    project.server.latency = 0.2
    project.run(f"--llm-concurrency={concurrency}").assert_outcomes(passed=4)
    assert len(project.server.requests) == 8
    assert (project.server.max_in_flight > 1) == (concurrency == "8")
    doc = project.results()
    assert [c["case_id"] for c in doc["cases"]] == ["m0", "m1", "m2", "m3"]
    assert all(len(c["trajectory"]["steps"]) == 1 for c in doc["cases"])
