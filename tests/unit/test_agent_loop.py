"""The agent loop (targets/agent.py): real litellm function calling against the scripted server's real ``tool_calls``
payloads, and prompt-and-parse mode for models without function calling."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer, ToolReply

from pytest_llmeval.core.tools import ToolCall, Trajectory
from pytest_llmeval.targets.agent import litellm_complete, parse_call, prompt_tools, run_agent

MODEL = "openai/test-model"

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}}},
]


def execute(call: ToolCall) -> tuple[Any, str | None]:
    if call.name == "get_weather":
        return {"city": call.arguments["city"], "sky": "sunny", "celsius": 21}, None
    if call.name == "add":
        return call.arguments["a"] + call.arguments["b"], None
    return None, f"no implementation for {call.name}"


def agent(server: ScriptedLLMServer, question: str, **kw: Any) -> Trajectory:
    complete = litellm_complete(MODEL, api_base=server.url, params={"api_key": "sk-test"})
    return run_agent(complete, [{"role": "user", "content": question}], TOOLS, execute, **kw)


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m.get("role") == "tool"]


def test_one_call_then_answer(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather in paris", [ToolReply.call("get_weather", {"city": "Paris"}, content="Checking."),
                                             "It is sunny and 21 C in Paris."])
    trajectory = agent(llm_server, "What is the weather in Paris?")

    assert trajectory.ended == "answer"
    assert trajectory.final == "It is sunny and 21 C in Paris."
    assert trajectory.names() == ["get_weather"]
    step = trajectory.steps[0]
    assert step.call.arguments == {"city": "Paris"} and step.call.id
    assert step.result == {"city": "Paris", "sky": "sunny", "celsius": 21} and step.error is None
    assert step.text == "Checking."
    assert step.latency_s is not None and step.latency_s >= 0
    assert step.prompt_tokens and step.completion_tokens  # the first model call's usage, through litellm
    # litellm sent the tools to the server, and the tools only once per call
    first = llm_server.requests[0]
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "add"]
    assert len(llm_server.requests) == 2


def test_step_two_request_carries_the_tool_result_with_its_call_id(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather in paris", [ToolReply.call("get_weather", {"city": "Paris"}), "Sunny."])
    trajectory = agent(llm_server, "What is the weather in Paris?")

    second = llm_server.requests[1]
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "tool"]
    assistant = second["messages"][1]
    call_id = trajectory.steps[0].call.id
    assert [c["id"] for c in assistant["tool_calls"]] == [call_id]
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    (tool,) = tool_messages(second)
    assert tool["tool_call_id"] == call_id
    assert json.loads(tool["content"]) == {"city": "Paris", "sky": "sunny", "celsius": 21}


def test_two_sequential_steps(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather and add", [
        ToolReply.call("get_weather", {"city": "Oslo"}),
        ToolReply.call("add", {"a": 2, "b": 3}),
        "Oslo is sunny; 2 + 3 = 5.",
    ])
    trajectory = agent(llm_server, "Weather and add: Oslo, then 2 + 3")

    assert trajectory.names() == ["get_weather", "add"]
    assert [s.index for s in trajectory.steps] == [0, 1]
    assert trajectory.steps[1].result == 5
    assert trajectory.final == "Oslo is sunny; 2 + 3 = 5." and trajectory.ended == "answer"
    third = llm_server.requests[2]
    assert [m["role"] for m in third["messages"]] == ["user", "assistant", "tool", "assistant", "tool"]
    assert [m["tool_call_id"] for m in tool_messages(third)] == [s.call.id for s in trajectory.steps]
    assert trajectory.steps[1].prompt_tokens  # each turn's first step carries its model call's tokens


def test_parallel_calls_in_one_turn(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("two cities", [
        ToolReply.parallel([("get_weather", {"city": "Rome"}), ("get_weather", {"city": "Lima"})]),
        "Both sunny.",
    ])
    trajectory = agent(llm_server, "Weather in two cities: Rome and Lima", parallel_tool_calls=True)

    assert [s.call.arguments["city"] for s in trajectory.steps] == ["Rome", "Lima"]
    assert trajectory.steps[0].prompt_tokens is not None
    assert trajectory.steps[1].prompt_tokens is None  # one model call: its tokens counted once
    assert llm_server.requests[0].get("parallel_tool_calls") is True
    second = llm_server.requests[1]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in tool_messages(second)] == [s.call.id for s in trajectory.steps]
    assert len({s.call.id for s in trajectory.steps}) == 2
    assert trajectory.final == "Both sunny."


def test_unknown_tool_is_fed_back_as_an_error_and_the_model_recovers(llm_server: ScriptedLLMServer) -> None:
    # the call that follows the error is scripted on the tool message the loop sends back
    llm_server.tool_call("weather in paris", "get_weather", {"city": "Paris"}, after_tool="unknown tool")
    llm_server.sequence("weather in paris", [ToolReply.call("weather_lookup", {"city": "Paris"}), "Sunny in Paris."])
    trajectory = agent(llm_server, "What is the weather in Paris?")

    assert trajectory.names() == ["weather_lookup", "get_weather"]
    bad, good = trajectory.steps
    assert bad.error is not None and "unknown tool 'weather_lookup'" in bad.error and "get_weather" in bad.error
    assert bad.result is None and bad.latency_s is None  # not run
    assert good.error is None and good.result["sky"] == "sunny"
    assert trajectory.final == "Sunny in Paris." and trajectory.ended == "answer"
    (fed,) = tool_messages(llm_server.requests[1])
    assert fed["tool_call_id"] == bad.call.id and fed["content"].startswith("Error: unknown tool")
    assert "ERROR unknown tool" in trajectory.excerpt()


def test_arguments_failing_the_schema_are_an_error(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("add", [ToolReply.call("add", {"a": "two"}), "I could not add."])
    trajectory = agent(llm_server, "add two and three")

    (step,) = trajectory.steps
    assert step.error is not None and "do not match the schema of add" in step.error
    assert step.result is None
    assert tool_messages(llm_server.requests[1])[0]["content"].startswith("Error: arguments do not match")


def test_max_steps_reached(llm_server: ScriptedLLMServer) -> None:
    llm_server.tool_call("loop forever", "get_weather", {"city": "Paris"}, content="Let me check again.")
    trajectory = agent(llm_server, "Loop forever on the weather", max_steps=3)

    assert trajectory.ended == "max_steps"
    assert trajectory.names() == ["get_weather"] * 3
    assert trajectory.final == "Let me check again."
    assert len(llm_server.requests) == 3  # no model call after the last allowed step


def test_max_steps_cuts_a_parallel_turn(llm_server: ScriptedLLMServer) -> None:
    llm_server.tool_calls("many", [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}), ("add", {"a": 3, "b": 3})])
    trajectory = agent(llm_server, "many additions", max_steps=2)

    assert trajectory.ended == "max_steps" and len(trajectory.steps) == 2 and trajectory.final is None


def test_malformed_arguments(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather in paris", [ToolReply.call("get_weather", '{"city": "Par'), "Sorry."])
    trajectory = agent(llm_server, "What is the weather in Paris?")

    (step,) = trajectory.steps
    assert step.call.raw_arguments == '{"city": "Par'
    assert step.error is not None and step.error.startswith("arguments are not valid JSON: ")
    assert step.to_dict()["raw_arguments"] == '{"city": "Par'
    second = llm_server.requests[1]
    assert second["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Par'  # echoed as written
    assert tool_messages(second)[0]["content"].startswith("Error: arguments are not valid JSON")
    assert trajectory.final == "Sorry."


def test_a_tool_that_raises_is_an_error_step(llm_server: ScriptedLLMServer) -> None:
    def boom(call: ToolCall) -> tuple[Any, str | None]:
        raise RuntimeError("database down")

    llm_server.sequence("weather", [ToolReply.call("get_weather", {"city": "Paris"}), "Unavailable."])
    complete = litellm_complete(MODEL, api_base=llm_server.url, params={"api_key": "sk-test"})
    trajectory = run_agent(complete, [{"role": "user", "content": "weather?"}], TOOLS, boom)

    assert trajectory.steps[0].error == "RuntimeError: database down"
    assert trajectory.final == "Unavailable."


def test_forcing_tool_choice_is_sent_on_the_first_call_only(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather", [ToolReply.call("get_weather", {"city": "Paris"}), "Sunny."])
    choice = {"type": "function", "function": {"name": "get_weather"}}
    trajectory = agent(llm_server, "weather in Paris", tool_choice=choice)

    assert llm_server.requests[0]["tool_choice"] == choice
    assert "tool_choice" not in llm_server.requests[1]
    assert trajectory.ended == "answer"


def test_the_trajectory_round_trips_through_json(llm_server: ScriptedLLMServer) -> None:
    llm_server.sequence("weather", [ToolReply.call("get_weather", {"city": "Paris"}), "Sunny."])
    trajectory = agent(llm_server, "weather in Paris")

    again = Trajectory.from_dict(json.loads(json.dumps(trajectory.to_dict())))
    assert again.names() == trajectory.names() and again.final == "Sunny."
    assert again.steps[0].call.id == trajectory.steps[0].call.id


# -- prompt-and-parse mode ------------------------------------------------------------------------------------------


def prompt_agent(server: ScriptedLLMServer, question: str, **kw: Any) -> Trajectory:
    complete = litellm_complete(MODEL, api_base=server.url, params={"api_key": "sk-test"})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    return run_agent(complete, messages, TOOLS, execute, mode="prompt", **kw)


def test_prompt_mode_calls_a_tool_from_text_and_feeds_the_result_back(llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("tool result for add", "2 + 3 = 5.")
    llm_server.answer("add 2 and 3", 'I will use the calculator.\n{"tool": "add", "arguments": {"a": 2, "b": 3}}')
    trajectory = prompt_agent(llm_server, "Please add 2 and 3")

    assert trajectory.names() == ["add"] and trajectory.steps[0].result == 5
    assert trajectory.steps[0].text == "I will use the calculator."
    assert trajectory.final == "2 + 3 = 5." and trajectory.ended == "answer"
    first, second = llm_server.requests
    assert "tools" not in first  # no native function calling in this mode
    system = first["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.")
    assert "- add(a: number, b: number): Add two numbers." in system["content"]
    assert second["messages"][-1] == {"role": "user", "content": "Tool result for add: 5"}
    assert second["messages"][-2]["role"] == "assistant"


def test_prompt_mode_unknown_tool_and_max_steps(llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("search", '```json\n{"tool": "search", "arguments": {"q": "x"}}\n```')
    trajectory = prompt_agent(llm_server, "search forever", max_steps=2)

    assert trajectory.ended == "max_steps" and trajectory.names() == ["search", "search"]
    assert all(s.error and s.error.startswith("unknown tool 'search'") for s in trajectory.steps)
    assert llm_server.requests[1]["messages"][-1]["content"].startswith("Tool error for search: unknown tool")


def test_prompt_mode_plain_answer_has_no_steps(llm_server: ScriptedLLMServer) -> None:
    llm_server.answer("hello", "Hello! How can I help?")
    trajectory = prompt_agent(llm_server, "hello there")
    assert trajectory.steps == [] and trajectory.final == "Hello! How can I help?"


def test_prompt_mode_places_few_shot_examples_after_the_system_prompt(llm_server: ScriptedLLMServer) -> None:
    examples = [{"role": "user", "content": "What is 1 + 1?"},
                {"role": "assistant", "content": '{"tool": "add", "arguments": {"a": 1, "b": 1}}'},
                {"role": "user", "content": "Tool result for add: 2"},
                {"role": "assistant", "content": "2."}]
    llm_server.answer("capital", "Paris.")
    complete = litellm_complete(MODEL, api_base=llm_server.url, params={"api_key": "sk-test"})
    trajectory = run_agent(complete, [{"role": "user", "content": "The capital of France?"}], TOOLS, execute,
                           mode="prompt", examples=examples)

    sent = llm_server.requests[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[1:5] == examples and sent[-1]["content"] == "The capital of France?"
    assert trajectory.steps == [] and trajectory.final == "Paris."  # the examples' calls are not steps
    with pytest.raises(ValueError, match="examples are for mode='prompt'"):
        run_agent(complete, [{"role": "user", "content": "x"}], TOOLS, execute, examples=examples)


def test_prompt_tools_describes_every_tool_and_the_call_format() -> None:
    block = prompt_tools(TOOLS)
    assert "- get_weather(city: string): The weather in a city." in block
    assert '{"tool": "<tool name>", "arguments":' in block
    assert '{"tool": "get_weather", "arguments": {"city": "..."}}' in block
    assert parse_call(block.splitlines()[-2]) == ToolCall("get_weather", {"city": "..."})  # the example parses


@pytest.mark.parametrize(("text", "name", "arguments"), [
    ('{"tool": "add", "arguments": {"a": 1, "b": 2}}', "add", {"a": 1, "b": 2}),
    ('Sure!\n```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```\nDone.', "get_weather",
     {"city": "Oslo"}),
    ('```\n{"tool": "add", "args": {"a": 1, "b": 2}}\n```', "add", {"a": 1, "b": 2}),
    ('I need the weather: {"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}}',
     "get_weather", {"city": "Rome"}),
    ('{"function": "add", "parameters": {"a": 4, "b": 5}} and then I will answer', "add", {"a": 4, "b": 5}),
    ("{'tool': 'get_weather', 'arguments': {'city': 'Lima', 'metric': true}}", "get_weather",
     {"city": "Lima", "metric": True}),
    ('{"tool": "get_weather", "city": "Kyiv"}', "get_weather", {"city": "Kyiv"}),
    ('The set {1, 2} is small. <tool_call>{"tool": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', "add",
     {"a": 1, "b": 2}),
    ('{"result": {"tool": "add", "arguments": {"a": 1, "b": 1}}}', "add", {"a": 1, "b": 1}),
    ('{"tool": "add", "arguments": {"a": "{curly}", "b": 2}}', "add", {"a": "{curly}", "b": 2}),
])
def test_parse_call_finds_the_call(text: str, name: str, arguments: dict[str, Any]) -> None:
    call = parse_call(text)
    assert call is not None and (call.name, dict(call.arguments)) == (name, arguments)


@pytest.mark.parametrize("text", [
    "Paris is the capital of France.",
    '{"answer": 42}',
    "The JSON {broken is not a call",
    '{"tool": "", "arguments": {}}',
    "",
])
def test_parse_call_returns_none_for_a_plain_answer(text: str) -> None:
    assert parse_call(text) is None


def test_parse_call_keeps_unparseable_arguments_raw() -> None:
    call = parse_call('{"tool": "add", "arguments": "{a: 1"}')
    assert call is not None and call.name == "add" and call.raw_arguments == "{a: 1"


def test_bad_mode_and_max_steps_are_errors() -> None:
    with pytest.raises(ValueError, match="mode must be one of native, prompt"):
        run_agent(lambda *a: {}, [], TOOLS, execute, mode="chat")
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        run_agent(lambda *a: {}, [], TOOLS, execute, max_steps=0)
