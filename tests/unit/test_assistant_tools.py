"""The example assistant's tools (examples/assistant/assistant_tools.py): a calculator that evaluates arithmetic and
nothing else, a keyword search over cases/docs, a booking function that books nothing; and the tool schemas
pytest-llmeval derives from them (targets/tools.py), as a model is offered them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pytest_llmeval.core.tools import ToolCall
from pytest_llmeval.targets.tools import ToolRuntime, tool_from_function

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("assistant_tools_under_test",
                                                  REPO / "examples" / "assistant" / "assistant_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tools = _load()


@pytest.mark.parametrize(("expression", "value"), [
    ("17 * 23", 391),
    ("1250 / 5 + 3", 253),  # an integral quotient is an int, as a person writes it
    ("2 ** 10", 1024),
    ("(12 + 8) * 4", 80),
    ("-3 + +5", 2),
    ("7 // 2", 3),
    ("7 % 4", 3),
    ("10 / 4", 2.5),
    ("10 / 3", 3.3333333333),
    ("6 × 7", 42),
    ("  1.5 * 2 ", 3),
])
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    result = tools.calculator(expression)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os').system('echo pwned')", "function calls are not allowed"),
    ("abs(-3)", "function calls are not allowed"),
    ("x * 2", "names are not allowed ('x')"),
    ("open", "names are not allowed"),
    ("(1).__class__", "Attribute is not allowed"),
    ("[1, 2][0]", "is not allowed"),
    ("'a' * 3", "only numbers are allowed"),
    ("True + 1", "only numbers are allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("2 ^ 3", "use ** for powers"),
    ("1 << 10", "LShift is not allowed"),
    ("9 ** 9 ** 9", "exponent 387420489 is too large"),
    ("10 ** 64 * 10 ** 64", "too large"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +", "not an arithmetic expression"),
    ("", "empty expression"),
    ("1+" * 150 + "1", "longer than 200 characters"),
])
def test_calculator_refuses_anything_but_arithmetic(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        tools.calculator(expression)


@pytest.mark.parametrize(("query", "first"), [
    ("sphere radius", "docs/sphere.md"),
    ("default radius of a sphere", "docs/sphere.md"),
    ("How do I draw cubes?", "docs/cube.md"),
    ("install orbit offscreen server", "docs/install.md"),
])
def test_search_finds_the_right_doc(query: str, first: str) -> None:
    found = tools.search_docs(query)
    assert found and found[0]["source"] == first
    assert all(set(hit) == {"source", "text"} for hit in found)


def test_search_returns_the_matching_section_with_its_text() -> None:
    (hit,) = tools.search_docs("sphere radius", k=1)
    assert hit["source"] == "docs/sphere.md"
    assert hit["text"].startswith("## Size") and "The default radius is 1.0." in hit["text"]


def test_search_limits_and_misses() -> None:
    assert len(tools.search_docs("sphere", k=2)) == 2
    assert len(tools.search_docs("sphere", k=0)) == 1  # at least one excerpt is asked for
    assert tools.search_docs("quantum chromodynamics") == []
    assert tools.search_docs("the of and") == []  # nothing but stop words


def test_search_reads_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "faq.md").write_text("# Refunds\n\nRefunds take 5 days.\n")
    (tmp_path / "notes.txt").write_text("Refunds: not markdown, not searched.\n")
    monkeypatch.setenv("ASSISTANT_DOCS", str(tmp_path))
    assert tools.search_docs("refund") == [{"source": f"{tmp_path.name}/faq.md",
                                            "text": "# Refunds\n\nRefunds take 5 days."}]


def test_book_meeting_books_nothing_without_confirmation() -> None:
    refused = tools.book_meeting("blue", "2026-03-02")
    assert refused["booked"] is False and "confirm" in refused["reason"]
    done = tools.book_meeting("Blue room", "2026-03-02", confirmed=True)
    assert done == {"booked": True, "room": "Blue room", "date": "2026-03-02",
                    "reference": "DEMO-BLUE-ROOM-2026-03-02", "dry_run": True}


def test_the_schemas_a_model_is_offered() -> None:
    calc = tool_from_function(tools.calculator).to_openai()["function"]
    assert calc["name"] == "calculator" and "no names or functions" in calc["description"]
    assert calc["parameters"]["required"] == ["expression"]
    assert calc["parameters"]["properties"]["expression"]["type"] == "string"
    search = tool_from_function(tools.search_docs).to_openai()["function"]["parameters"]
    assert search["required"] == ["query"] and search["properties"]["k"] == {
        "default": 3, "description": "how many excerpts to return (1 to 10).", "type": "integer"}
    book = tool_from_function(tools.book_meeting).to_openai()["function"]
    assert "confirmed" in book["description"]
    assert book["parameters"]["properties"]["confirmed"]["type"] == "boolean"
    assert book["parameters"]["required"] == ["room", "date"]


def test_the_runtime_runs_them_and_feeds_back_their_refusals() -> None:
    runtime = ToolRuntime([tool_from_function(f) for f in (tools.calculator, tools.search_docs, tools.book_meeting)])
    assert runtime.execute(ToolCall("calculator", {"expression": "17 * 23"})) == (391, None)
    result, error = runtime.execute(ToolCall("calculator", {"expression": "__import__('os')"}))
    assert result is None and error == ("ToolError: ValueError: function calls are not allowed: use + - * / // % ** "
                                        "and parentheses")
    hits, error = runtime.execute(ToolCall("search_docs", {"query": "cube", "k": 1}))
    assert error is None and hits[0]["source"] == "docs/cube.md"
    _, error = runtime.execute(ToolCall("search_docs", {"query": "cube", "k": "one"}))
    assert error == "arguments do not match the schema of search_docs: 'one' is not of type 'integer' (at k)"
    booked, _ = runtime.execute(ToolCall("book_meeting", {"room": "blue", "date": "2026-03-02"}))
    assert booked["booked"] is False
