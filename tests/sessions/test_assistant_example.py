"""The example assistant's suite (examples/assistant/suites/assistant.yaml) in whole sessions: the agent loop through
real litellm against the scripted OpenAI-compatible server, which answers with real ``tool_calls`` payloads.

The example's tools run for real (examples/assistant/assistant_tools.py: the calculator, the search over cases/docs);
the booking tools are answered by the suite's canned ``returns:``. The suite, its tools and the docs are copied into
the pytester folder as they are in the checkout, so nothing is written into the checkout. In native mode the last
user message stays the case's prompt for the whole loop, so each case's model turns are scripted in order with
``server.sequence(<a phrase of the prompt>, [tool calls..., final answer])``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer, ToolReply

from conftest import Project

REPO = Path(__file__).resolve().parents[2]
SUITE = "examples/assistant/suites/assistant.yaml"
TOOLS = ["calculator", "search_docs", "book_meeting", "check_availability"]

# A phrase of the judge's rubric (the judge request's last user message holds it, and the case's question too:
# this rule is added first, so the judge never gets the case's scripted turns).
JUDGE_PHRASE = "looked the answer up with search_docs"
JUDGE_REPLY = '{"score": 9, "reason": "It searched the docs, then answered from the result."}'

# A model that does the right thing: per case, a phrase of its prompt and the model's turns.
GOOD: dict[str, tuple[str, list[str | ToolReply]]] = {
    "multiply": ("What is 17 * 23", [ToolReply.call("calculator", {"expression": "17 * 23"}), "17 * 23 = 391."]),
    "docs-sphere-radius": ("radius of a sphere", [
        ToolReply.call("search_docs", {"query": "sphere radius"}, content="Let me check the docs."),
        "Pass radii= to orbit.actor.sphere: one number, or one radius per center (default 1.0)."]),
    "no-booking-without-confirmation": ("for tomorrow", [
        "Which date is tomorrow for you? Please confirm the room and the date, and I will book it."]),
    "booking-confirmed": ("I confirm: book the blue room", [
        ToolReply.call("book_meeting", {"room": "blue", "date": "2026-03-02", "confirmed": True}),
        "Done: the blue room is booked on 2026-03-02, reference BK-1042."]),
    "check-then-book": ("green room free", [
        ToolReply.call("check_availability", {"room": "green", "date": "2026-03-04"}),
        "Sorry, the green room is booked all day on 2026-03-04."]),
    "check-blue-then-book": ("blue room free", [
        ToolReply.call("check_availability", {"room": "blue", "date": "2026-03-05"}),
        ToolReply.call("book_meeting", {"room": "blue", "date": "2026-03-05", "confirmed": True}),
        "It was free, so I booked it: reference BK-1042."]),
    "two-products": ("12 * 12 and 7 * 8", [
        ToolReply.parallel([("calculator", {"expression": "12 * 12"}), ("calculator", {"expression": "7 * 8"})]),
        "12 * 12 = 144 and 7 * 8 = 56."]),
    "cube-in-few-steps": ("draw cubes", [
        ToolReply.call("search_docs", {"query": "draw cubes"}),
        "Call orbit.actor.cube(centers, colors) to draw one cube per center."]),
    "small-talk-needs-no-tool": ("Who are you", ["Hello! I am the Orbit team's assistant."]),
}
STEPS = {"multiply": 1, "docs-sphere-radius": 1, "no-booking-without-confirmation": 0, "booking-confirmed": 1,
         "check-then-book": 1, "check-blue-then-book": 2, "two-products": 2, "cube-in-few-steps": 1,
         "small-talk-needs-no-tool": 0}


def script(server: ScriptedLLMServer, **replace: tuple[str, list[str | ToolReply]]) -> None:
    """The judge first, then each case's turns (``replace`` swaps some cases' turns for a misbehaving model's)."""
    server.answer(JUDGE_PHRASE, JUDGE_REPLY)
    for phrase, turns in {**GOOD, **replace}.values():
        server.sequence(phrase, turns)


@pytest.fixture
def assistant(project: Project) -> Project:
    """The checkout's assistant example (its tools and suite) and the docs its search reads, in the pytester
    folder; the root conftest (offline settings) as in the checkout."""
    dest = project.pytester.path
    shutil.copytree(REPO / "examples" / "assistant", dest / "examples" / "assistant",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "cases" / "docs", dest / "cases" / "docs")
    shutil.copy(REPO / "conftest.py", dest / "conftest.py")
    return project


def cases_of(project: Project, name: str = ".llmeval/results.json") -> dict[str, dict[str, Any]]:
    return {c["case_id"]: c for c in project.results(name)["cases"]}


def steps_of(case: dict[str, Any]) -> list[dict[str, Any]]:
    trajectory = case["trajectory"]
    assert trajectory is not None, case
    return list(trajectory["steps"])


def requests_for(server: ScriptedLLMServer, phrase: str) -> list[dict[str, Any]]:
    """The model requests of one case (its prompt is the first user message; the judge's requests are not)."""
    found = []
    for body in server.requests:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        if users and phrase in str(users[0].get("content")) and JUDGE_PHRASE not in str(users[-1].get("content")):
            found.append(body)
    return found


def without_timing(trajectory: dict[str, Any]) -> dict[str, Any]:
    steps = [{k: v for k, v in s.items() if k != "latency_s"} for s in trajectory["steps"]]
    return {**trajectory, "steps": steps}


def check_good_run(project: Project) -> dict[str, dict[str, Any]]:
    """results.json of a run of the good model: every trajectory, step by step, and the suite's agent row."""
    cases = cases_of(project)
    assert set(cases) == set(GOOD)
    for case_id, case in cases.items():
        assert case["outcome"] == "passed", (case_id, case["checks"])
        assert case["trajectory"]["mode"] == "native" and case["trajectory"]["ended"] == "answer", case_id
        assert len(steps_of(case)) == STEPS[case_id], case_id
        assert case["tool_accuracy"] == 1.0, case_id
        assert case["trajectory"]["final"] == case["answer"], case_id

    (step,) = steps_of(cases["multiply"])
    assert (step["step"], step["name"], step["arguments"], step["result"]) == (0, "calculator",
                                                                              {"expression": "17 * 23"}, 391)
    assert "error" not in step and step["id"].startswith("call_") and step["latency_s"] >= 0
    assert step["prompt_tokens"] > 0 and step["completion_tokens"] > 0

    (search,) = steps_of(cases["docs-sphere-radius"])
    assert search["arguments"] == {"query": "sphere radius"} and search["text"] == "Let me check the docs."
    assert search["result"][0]["source"] == "docs/sphere.md"  # the real search over the copied cases/docs
    assert "The default radius is 1.0." in search["result"][0]["text"]
    judge = next(c for c in cases["docs-sphere-radius"]["checks"] if c["check"] == "judge")
    assert judge["passed"] and judge["score"] == 0.9

    (booking,) = steps_of(cases["booking-confirmed"])
    assert booking["arguments"] == {"room": "blue", "date": "2026-03-02", "confirmed": True}
    assert booking["result"] == {"booked": True, "reference": "BK-1042"}  # canned: nothing was booked
    (check,) = steps_of(cases["check-then-book"])
    assert check["result"] == {"free": False, "reason": "booked all day"}  # the schema-only tool's default
    assert [s["name"] for s in steps_of(cases["check-blue-then-book"])] == ["check_availability", "book_meeting"]
    assert [s["result"] for s in steps_of(cases["two-products"])] == [144, 56]
    assert [s["step"] for s in steps_of(cases["two-products"])] == [0, 1]
    assert steps_of(cases["small-talk-needs-no-tool"]) == []

    (row,) = [r for r in project.results()["suites"] if r["suite"] == "assistant"]
    assert row["passed"] == 9 and row["tool_accuracy"] == 1.0
    assert row["mean_steps"] == pytest.approx(sum(STEPS.values()) / len(STEPS))
    expected = {"cases": 9, "tool_accuracy": 1.0, "mean_steps": row["mean_steps"], "tool_errors": 0,
                "stopped_at_limit": 0}
    assert {k: row["agent"].get(k) for k in expected} == expected, row["agent"]
    return cases


def test_the_suite_passes_with_a_model_that_uses_its_tools_well(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server)
    result = project.run(SUITE)
    result.assert_outcomes(passed=9)
    check_good_run(project)

    # What the model was offered: the four tools in OpenAI's format, the Python ones with their derived schemas.
    (first, second) = requests_for(server, "What is 17 * 23")
    assert [t["function"]["name"] for t in first["tools"]] == TOOLS
    calculator = first["tools"][0]["function"]
    assert calculator["parameters"]["required"] == ["expression"] and "arithmetic" in calculator["description"]
    assert first["tools"][3]["function"]["parameters"]["required"] == ["room", "date"]
    assert first["tool_choice"] == "required" and "tool_choice" not in second  # forced on the first call only
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][-1]["content"] == "391"
    parallel = requests_for(server, "12 * 12 and 7 * 8")
    assert parallel[0]["parallel_tool_calls"] is True and len(parallel) == 2
    assert [m["role"] for m in parallel[1]["messages"]][-3:] == ["assistant", "tool", "tool"]
    # The judge was asked once, with the question and the final answer.
    (judged,) = [b for b in server.requests if JUDGE_PHRASE in b["messages"][-1]["content"]]
    asked = judged["messages"][-1]["content"]
    assert "How do I change the radius of a sphere in Orbit?" in asked
    assert "Pass radii= to orbit.actor.sphere" in asked


def test_the_judge_reads_the_trajectory(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server)
    project.run(SUITE, "-k", "docs-sphere-radius").assert_outcomes(passed=1)
    (judged,) = [b for b in server.requests if JUDGE_PHRASE in b["messages"][-1]["content"]]
    asked = judged["messages"][-1]["content"]
    # the tool call, its arguments and its result (the excerpt), beside the question and the final answer
    assert '1. search_docs(query="sphere radius") -> [{"source": "docs/sphere.md"' in asked, asked
    assert asked.index("search_docs(query=") < asked.index("Pass radii= to orbit.actor.sphere"), asked


def test_the_suite_under_xdist_gives_the_same_trajectories(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server)
    result = project.run(SUITE, "-n", "2")
    result.assert_outcomes(passed=9)
    cases = check_good_run(project)
    assert project.results()["run"]["workers"] == 2
    # One model call per turn, on whichever worker ran the case: 2 + 1 + 1 + 2 + 2 + 3 + 2 + 2 + 1, and the judge.
    assert len(server.requests) == sum(STEPS[c] + 1 - (c == "two-products") for c in cases) + 1


def test_a_rerun_with_the_cache_makes_no_model_call(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server)
    project.run(SUITE).assert_outcomes(passed=9)
    first = cases_of(project)
    calls = len(server.requests)
    assert calls > 9

    result = project.run(SUITE)
    result.assert_outcomes(passed=9)
    assert len(server.requests) == calls  # every step's model call came from the cache
    again = cases_of(project)
    for case_id, case in again.items():
        assert without_timing(case["trajectory"]) == without_timing(first[case_id]["trajectory"]), case_id
        assert case["cached"], case_id
    assert next(r for r in project.results()["suites"] if r["suite"] == "assistant")["cache_hits"] == 9


def test_a_model_that_books_without_confirmation_fails_with_the_trajectory_in_the_report(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server, **{"no-booking-without-confirmation": ("for tomorrow", [
        ToolReply.call("book_meeting", {"room": "blue", "date": "2026-03-03"}),
        "I tried to book the blue room for you."])})
    result = project.run(SUITE)
    result.assert_outcomes(passed=8, failed=1)
    out = result.stdout.str()
    # The failure report: the check's verdict, then the trajectory excerpt (step, tool, arguments, result).
    result.stdout.fnmatch_lines([
        "*no-booking-without-confirmation*",
        '*book_meeting was called (step 1: book_meeting(room="blue", date="2026-03-03"))*',
        '*1. book_meeting(room="blue", date="2026-03-03") -> {"booked": false, "reason": "not confirmed, or no '
        'such room"}*',
    ])
    assert "Traceback" not in out
    case = cases_of(project)["no-booking-without-confirmation"]
    assert case["outcome"] == "failed"
    (step,) = steps_of(case)
    assert step["name"] == "book_meeting" and step["arguments"] == {"room": "blue", "date": "2026-03-03"}
    assert step["result"] == {"booked": False, "reason": "not confirmed, or no such room"}  # canned: nothing booked
    checks = {c["check"]: c for c in case["checks"]}
    assert not checks["tool_not_called"]["passed"] and checks["max_steps"]["passed"]
    assert "1. book_meeting(" in checks["tool_not_called"]["reason"]
    assert case["tool_accuracy"] == pytest.approx(0.5)  # tool_not_called 0, max_steps 1
    row = next(r for r in project.results()["suites"] if r["suite"] == "assistant")
    assert row["tool_accuracy"] == pytest.approx((8 + 0.5) / 9)


def test_unknown_tools_bad_arguments_and_tool_errors_are_recorded_as_step_errors(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server, multiply=("What is 17 * 23", [
        ToolReply.call("calc", {"expression": "17 * 23"}),  # no such tool
        ToolReply.call("calculator", {"expr": "17 * 23"}),  # fails the schema derived from the function
        ToolReply.call("calculator", {"expression": "seventeen * 23"}),  # the calculator refuses names
        ToolReply.call("calculator", '{"expression": "17 *'),  # not JSON
        ToolReply.call("calculator", {"expression": "17 * 23"}),
        "17 * 23 = 391."]))
    result = project.run(SUITE, "-k", "multiply")
    result.assert_outcomes(passed=1)  # the right call came in the end: tool_called matches step 5
    case = cases_of(project)["multiply"]
    steps = steps_of(case)
    assert [s["name"] for s in steps] == ["calc", "calculator", "calculator", "calculator", "calculator"]
    unknown, schema, refused, broken, good = steps
    assert unknown["error"].startswith("unknown tool 'calc'") and "calculator" in unknown["error"]
    # checked against the schema derived from the function before anything runs (no latency: nothing ran)
    assert schema["error"].startswith("arguments do not match the schema of calculator") and schema["result"] is None
    assert "latency_s" not in schema and "latency_s" not in unknown
    assert refused["error"] == "ToolError: ValueError: names are not allowed ('seventeen'): write the numbers"
    assert broken["raw_arguments"] == '{"expression": "17 *' and broken["error"].startswith("arguments are not valid JSON")
    assert "error" not in good and good["result"] == 391
    # The model saw each error as a real runtime feeds it back, on the tool message of its call.
    last = requests_for(server, "What is 17 * 23")[-1]
    fed = [m["content"] for m in last["messages"] if m["role"] == "tool"]
    assert fed[0].startswith("Error: unknown tool 'calc'") and fed[-1] == "391"
    checks = {c["check"]: c for c in case["checks"]}
    assert checks["tool_called"]["details"]["matched_steps"] == [5]
    assert "ERROR unknown tool 'calc'" in checks["tool_called"]["reason"]
    row = next(r for r in project.results()["suites"] if r["suite"] == "assistant")
    assert row["agent"]["tool_errors"] == 4 and row["agent"]["stopped_at_limit"] == 0


def test_a_model_that_never_stops_is_cut_at_max_steps(assistant: Project) -> None:
    project, server = assistant, assistant.server
    script(server, **{"cube-in-few-steps": ("draw cubes", [ToolReply.call("search_docs", {"query": "cube"})])})
    result = project.run(SUITE, "-k", "cube")
    result.assert_outcomes(failed=1)
    case = cases_of(project)["cube-in-few-steps"]
    assert case["trajectory"]["ended"] == "max_steps" and len(steps_of(case)) == 3  # the case's agent.max_steps
    assert len(requests_for(server, "draw cubes")) == 3
    result.stdout.fnmatch_lines(["*max_steps*3 steps, more than 2*"])
    row = next(r for r in project.results()["suites"] if r["suite"] == "assistant")
    assert row["agent"]["stopped_at_limit"] == 1


# -- bad input: one clear collection-time error each, naming the file, the line and the field -----------------------

GOOD_SUITE = """\
suite: fine
tools:
  - type: function
    function: {name: lookup, parameters: {type: object, properties: {q: {type: string}}}}
returns: {lookup: found it}
cases:
  - id: looks-up
    prompt: Look up the answer.
    expect:
      - tool_called: lookup
"""

BAD_SUITES = {
    "cases/bad_import.yaml": ("""\
suite: bad-import
tools:
  - python: examples/assistant/assistant_tools.py:calculator
  - python: no_such_module_xyz:search
cases:
  - id: a
    prompt: What is 2 + 2?
    expect: [{contains: "4"}]
""", r"cases/bad_import\.yaml:4: tools\[1\]\.python: tool 'search': cannot import no_such_module_xyz:search: "
     r"ModuleNotFoundError"),
    "cases/bad_schema.yaml": ("""\
suite: bad-schema
tools:
  - type: function
    function: {name: book, parameters: {type: object, properties: {room: {type: strng}}}}
cases:
  - id: a
    prompt: Book a room.
    expect: [{tool_not_called: book}]
""", r"cases/bad_schema\.yaml:4: tools\[0\]\.function\.parameters.*not a valid JSON Schema"),
    "cases/bad_returns.yaml": ("""\
suite: bad-returns
tools:
  - python: examples/assistant/assistant_tools.py:calculator
returns:
  calculator: 4
  send_email: {sent: true}
cases:
  - id: a
    prompt: What is 2 + 2?
    expect: [{contains: "4"}]
""", r"cases/bad_returns\.yaml:6: returns\.send_email: canned results for tool 'send_email', which is not listed "
     r"in tools \(listed: calculator\)"),
}


def test_bad_tools_are_collection_errors_and_the_other_suites_still_run(assistant: Project) -> None:
    project, server = assistant, assistant.server
    for path, (text, _) in BAD_SUITES.items():
        project.write(path, text)
    project.write("cases/fine.yaml", GOOD_SUITE)
    server.sequence("Look up the answer", [ToolReply.call("lookup", {"q": "answer"}), "Found it."])
    result = project.run("cases")
    result.assert_outcomes(passed=1, errors=3)
    out = result.stdout.str()
    for path, (_, pattern) in BAD_SUITES.items():
        assert re.search(pattern, out), (path, pattern, out[-3000:])
        # the short summary line starts with the problem itself, not a traceback
        assert re.search(rf"ERROR {re.escape(path)}::\S* - {pattern}", out), (path, out[-3000:])
    assert "Traceback" not in out and "site-packages" not in out
    doc = project.results()
    assert {i["file"] for i in doc["invalid"]} == set(BAD_SUITES)
    assert [(r["suite"], r["passed"]) for r in doc["suites"]] == [("fine", 1)]
    (step,) = steps_of(cases_of(project)["looks-up"])
    assert step["result"] == "found it"
    # Nothing of the broken suites reached the model.
    assert all("2 + 2" not in json.dumps(b["messages"]) and "Book a room" not in json.dumps(b["messages"])
               for b in server.requests)
