"""Tools (issue 18, part 1) and the tool runtime: case-file syntax and its errors, schemas derived from Python
functions, canned results, execution and its error paths. Real pydantic and jsonschema; real imports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pytest_llmeval.cases.tools import (
    CannedRule,
    ToolSpec,
    match_canned,
    merge_returns,
    merge_tools,
    parse_returns,
    parse_tools,
)
from pytest_llmeval.core.tools import ToolCall
from pytest_llmeval.targets.tools import (
    ToolDef,
    ToolLoadError,
    ToolRuntime,
    jsonable,
    load_tools,
    parse_docstring,
    to_openai,
    tool_from_function,
)
from tests.helpers import tools_example as ex

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
BOOK_SCHEMA = {"type": "object", "properties": {"room": {"type": "string"}, "hour": {"type": "integer"}},
               "required": ["room"]}


# --------------------------------------------------------------------------------------------- schemas


def test_schema_of_typed_function_required_and_types() -> None:
    tool = tool_from_function(ex.search_docs)
    schema = tool.parameters
    Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    assert schema["required"] == ["query"]  # the others have defaults
    props = schema["properties"]
    assert props["query"]["type"] == "string"
    assert props["limit"] == {"type": "integer", "default": 3, "description": "How many titles at most."}
    assert props["exact"]["type"] == "boolean" and props["exact"]["default"] is False
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert {"type": "null"} in props["tags"]["anyOf"]
    assert schema["additionalProperties"] is False
    assert "title" not in schema and all("title" not in p for p in props.values())


def test_schema_literal_float_and_bool() -> None:
    book = tool_from_function(ex.book_meeting).parameters
    assert book["properties"]["kind"]["enum"] == ["call", "visit"]
    assert book["properties"]["confirm"] == {"type": "boolean", "default": False}
    assert book["required"] == ["room"]
    divide = tool_from_function(ex.divide).parameters
    assert divide["properties"]["a"]["type"] == "number" and divide["required"] == ["a"]


def test_descriptions_from_google_docstring() -> None:
    tool = tool_from_function(ex.add)
    assert tool.name == "add" and tool.description == "Add two integers."
    assert tool.parameters["properties"]["a"]["description"] == "The first number."
    assert tool.parameters["properties"]["b"]["description"] == "The second number, which may be negative."
    assert tool.parameters["required"] == ["a", "b"]


def test_descriptions_from_rest_docstring_and_overrides() -> None:
    tool = tool_from_function(ex.divide, name="div", description="Division.")
    assert tool.name == "div" and tool.description == "Division."
    props = tool.parameters["properties"]
    assert props["a"]["description"] == "the dividend"
    assert props["b"]["description"] == "the divisor, not zero"


def test_summary_is_first_paragraph() -> None:
    summary, params = parse_docstring(ex.search_docs.__doc__)
    assert summary == "Search the product documentation for a query."
    assert params == {"query": "What to look for.", "limit": "How many titles at most.",
                      "tags": "Only documents with one of these tags."}
    assert parse_docstring(None) == ("", {})


def test_unannotated_kwargs_model_and_positional_only() -> None:
    opaque = tool_from_function(ex.opaque)
    assert opaque.parameters["required"] == ["label"] and opaque.description == ""
    everything = tool_from_function(ex.takes_everything).parameters
    assert list(everything["properties"]) == ["topic"] and everything.get("additionalProperties") is not False
    point = tool_from_function(ex.norm).parameters
    Draft202012Validator.check_schema(point)
    assert "$defs" in point and point["$defs"]["Point"]["required"] == ["x", "y"]
    half = tool_from_function(ex.half_typed).parameters["properties"]
    assert half["count"]["type"] == "integer" and "type" not in half["amount"]  # unresolvable: any value
    with pytest.raises(TypeError, match="positional-only"):
        tool_from_function(ex.positional)


def test_to_openai_shape() -> None:
    tools = [tool_from_function(ex.add), ToolDef("lookup", "", BOOK_SCHEMA)]
    out = to_openai(tools)
    assert out[0] == {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                                       "parameters": tools[0].parameters}}
    assert out[1] == {"type": "function", "function": {"name": "lookup", "parameters": BOOK_SCHEMA}}


# --------------------------------------------------------------------------------------------- case-file syntax


def test_parse_tools_all_three_forms() -> None:
    tools, problems = parse_tools([
        {"python": "tools_example:search_docs", "name": "search", "description": "Search."},
        {"python": "tools_example:add"},
        {"type": "function", "function": {"name": "book", "description": "Book.", "parameters": BOOK_SCHEMA}},
        {"name": "ping"},
    ], ("tools",))
    assert problems == []
    assert tools == [ToolSpec("search", "tools_example:search_docs", "Search."),
                     ToolSpec("add", "tools_example:add"),
                     ToolSpec("book", None, "Book.", BOOK_SCHEMA),
                     ToolSpec("ping", None, None, {"type": "object", "properties": {}})]


def test_parse_tools_errors_with_locations() -> None:
    _, problems = parse_tools([
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object",
                                                                      "properties": {"x": {"type": "strng"}}}}},
        {"name": "b", "parameters": {"type": "object", "required": "x"}},
        {"name": "c", "parameters": {"type": "array"}},
        {"python": "no_colon"},
        {"name": "has space"},
        {"name": "d", "paramters": {}},
        "search",
        {"name": "e"},
        {"python": "mod:e"},
    ], ("tools",))
    found = dict(problems)
    assert found[("tools", 0, "function", "parameters", "properties", "x", "type")].startswith(
        "not a valid JSON Schema: 'strng' is not valid")
    assert found[("tools", 1, "parameters", "required")].startswith("not a valid JSON Schema")
    assert "object schema" in found[("tools", 2, "parameters", "type")]
    assert "module:function" in found[("tools", 3, "python")]
    assert "tool name" in found[("tools", 4, "name")]
    assert found[("tools", 5, "paramters")] == "unknown field; did you mean 'parameters'?"
    assert "expected {python" in found[("tools", 6)]
    assert found[("tools", 8)] == "duplicate tool name 'e' (also tool 8); give one of them another name"
    assert len(problems) == 8


def test_parse_returns_forms_and_errors() -> None:
    canned, problems = parse_returns({
        "calc": 42,
        "search": ["a", "b"],  # a list result, not entries
        "book": [{"when": {"room": "/^blue/i", "hour": 9}, "result": {"ok": 1}}, {"default": {"ok": 0}}],
    }, ("returns",), ["calc", "search", "book"])
    assert problems == []
    assert canned["calc"] == [CannedRule(42)]
    assert canned["search"] == [CannedRule(["a", "b"])]
    first = canned["book"][0]
    assert isinstance(first.when["room"], re.Pattern) and first.when["hour"] == 9

    one, problems = parse_returns({"calc": {"when": {"x": 1}, "result": 2}}, ("returns",), ["calc"])
    assert problems == [] and one["calc"] == [CannedRule(2, {"x": 1})]

    _, problems = parse_returns({
        "calc": 1,
        "nope": 2,
        "book": [{"when": {"room": "/[/"}, "result": 1}, {"when": {}, "resul": 2}, {"result": 1, "default": 2}],
    }, ("returns",), ["calc", "book"])
    found = dict(problems)
    assert found[("returns", "nope")] == "canned results for tool 'nope', which is not listed in tools " \
                                         "(listed: calc, book)"
    assert found[("returns", "book", 0, "when", "room")].startswith("bad regular expression '['")
    assert found[("returns", "book", 1, "resul")].startswith("unknown field")
    assert "or {default: ...}" in found[("returns", "book", 2)]
    assert parse_returns([1], ("returns",))[1][0][0] == ("returns",)


def test_canned_first_match_wins_regex_and_default() -> None:
    canned, _ = parse_returns({"book": [
        {"when": {"room": "/^blue/i", "hour": 9}, "result": "blue at nine"},
        {"when": {"room": "/^blue/i"}, "result": "blue"},
        {"when": {"hour": "/^1\\d$/"}, "result": "afternoon"},  # a number matched against its JSON text
        {"when": {"confirm": True}, "result": "confirmed"},
        {"default": "default"},
    ]}, ("returns",))
    assert match_canned(canned, "book", {"room": "Blue-2", "hour": 9}) == (True, "blue at nine")
    assert match_canned(canned, "book", {"room": "blue", "hour": 10}) == (True, "blue")
    assert match_canned(canned, "book", {"room": "red", "hour": 14}) == (True, "afternoon")
    assert match_canned(canned, "book", {"room": "red", "confirm": 1}) == (True, "default")  # 1 is not True
    assert match_canned(canned, "book", {"room": "red", "confirm": True}) == (True, "confirmed")
    assert match_canned(canned, "book", {}) == (True, "default")
    assert match_canned(canned, "other", {}) == (False, None)
    no_default, _ = parse_returns({"book": [{"when": {"room": "red"}, "result": 1}]}, ("returns",))
    assert match_canned(no_default, "book", {"room": "blue"}) == (False, None)


def test_merge_suite_and_case() -> None:
    suite = [ToolSpec("a", "m:a"), ToolSpec("b", "m:b")]
    case = [ToolSpec("b", None, "case b", {"type": "object"}), ToolSpec("c", "m:c")]
    assert [t.name for t in merge_tools(suite, case)] == ["a", "b", "c"]
    assert merge_tools(suite, case)[1].description == "case b"
    assert merge_returns({"a": [CannedRule(1)], "b": [CannedRule(2)]}, {"b": [CannedRule(3)]}) == \
        {"a": [CannedRule(1)], "b": [CannedRule(3)]}


# --------------------------------------------------------------------------------------------- loading


def test_load_tools_imports_with_paths() -> None:
    specs, _ = parse_tools([{"python": "tools_example:search_docs", "name": "search"},
                            {"name": "book", "parameters": BOOK_SCHEMA}], ("tools",))
    tools = load_tools(specs, [HELPERS])
    assert [t.name for t in tools] == ["search", "book"]
    assert tools[0].function is not None and tools[0].parameters["required"] == ["query"]
    assert tools[1].function is None and tools[1].parameters == BOOK_SCHEMA


def test_load_tools_names_each_tool_that_cannot_be_imported() -> None:
    specs = [ToolSpec("gone", "no_such_module_xyz:f"), ToolSpec("missing", "tools_example:nothing_here"),
             ToolSpec("ok", "tools_example:add"), ToolSpec("pos", "tools_example:positional")]
    with pytest.raises(ToolLoadError) as info:
        load_tools(specs, [HELPERS])
    names = [name for name, _ in info.value.problems]
    assert names == ["gone", "missing", "pos"]
    text = str(info.value)
    assert "tool 'gone': cannot import no_such_module_xyz:f: ModuleNotFoundError" in text
    assert "tool 'missing': cannot import tools_example:nothing_here: AttributeError" in text
    assert "tool 'pos': cannot describe" in text and "positional-only" in text


# --------------------------------------------------------------------------------------------- runtime


def _runtime() -> ToolRuntime:
    specs, problems = parse_tools([{"python": "tools_example:add"}, {"python": "tools_example:book_meeting"},
                                   {"python": "tools_example:norm"}, {"python": "tools_example:opaque"},
                                   {"python": "tools_example:shout"}, {"name": "lookup", "parameters": BOOK_SCHEMA}],
                                  ("tools",))
    assert problems == []
    canned, problems = parse_returns({"book_meeting": [{"when": {"room": "/^canned/"}, "result": {"booked": "c"}}],
                                      "lookup": [{"when": {"room": "blue"}, "result": "free"}]},
                                     ("returns",), [s.name for s in specs])
    assert problems == []
    return ToolRuntime(load_tools(specs, [HELPERS]), canned)


def test_execute_function_and_canned() -> None:
    rt = _runtime()
    assert rt.execute(ToolCall("add", {"a": 2, "b": -5})) == (-3, None)
    assert rt.execute(ToolCall("book_meeting", {"room": "canned-1"})) == ({"booked": "c"}, None)  # no exception
    assert rt.execute(ToolCall("book_meeting", {"room": "r", "kind": "visit", "confirm": True})) == \
        ({"booked": True, "room": "r", "kind": "visit"}, None)
    assert rt.execute(ToolCall("norm", {"point": {"x": -2, "y": 3}})) == (5, None)  # JSON object -> Point
    assert rt.execute(ToolCall("shout", {"text": "hi"})) == ("HI", None)  # async
    assert rt.execute(ToolCall("lookup", {"room": "blue"})) == ("free", None)
    result, error = rt.execute(ToolCall("opaque", {"label": [1]}))
    assert error is None and isinstance(result, str) and result.startswith("<object object")


def test_execute_error_paths() -> None:
    rt = _runtime()
    assert rt.execute(ToolCall("delete_account", {})) == (
        None, "unknown tool 'delete_account'; available tools: add, book_meeting, norm, opaque, shout, lookup")
    assert rt.execute(ToolCall("add", {"a": 1})) == (
        None, "arguments do not match the schema of add: 'b' is a required property")
    assert rt.execute(ToolCall("add", {"a": "1", "b": 2})) == (
        None, "arguments do not match the schema of add: '1' is not of type 'integer' (at a)")
    assert rt.execute(ToolCall("add", {"a": 1, "b": 2, "c": 3}))[1] == (
        "arguments do not match the schema of add: Additional properties are not allowed ('c' was unexpected)")
    assert rt.execute(ToolCall("book_meeting", {"room": "r", "kind": "party"}))[1] == (
        "arguments do not match the schema of book_meeting: 'party' is not one of ['call', 'visit'] (at kind)")
    assert rt.execute(ToolCall.coerce({"function": {"name": "add", "arguments": "{a: 1"}})) == (
        None, "arguments are not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
              "(char 1)")
    assert rt.execute(ToolCall("book_meeting", {"room": "r"})) == (
        None, "ToolError: PermissionError: booking needs confirm=true")
    assert rt.execute(ToolCall("lookup", {"room": "red"})) == (
        None, "tool 'lookup' has no canned result that matches these arguments and no Python function to run")
    assert ToolRuntime([ToolDef("bare")]).execute(ToolCall("bare", {})) == (
        None, "tool 'bare' has no canned result and no Python function to run")


def test_jsonable() -> None:
    assert jsonable((1, 2)) == [1, 2]
    assert jsonable({"p": ex.Point(x=1, y=2), "s": {3}, "o": Path("a")}) == {"p": {"x": 1, "y": 2}, "s": [3],
                                                                             "o": "a"}
    assert jsonable(ex.Point(x=1, y=2)) == {"x": 1, "y": 2}
    assert jsonable({(1, 2): "tuple key"}) == "{(1, 2): 'tuple key'}"
