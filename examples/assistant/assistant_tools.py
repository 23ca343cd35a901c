"""The example assistant's tools (issue 18): a calculator, a search over the Orbit docs, a booking function.

The suites (``suites/assistant.yaml``, ``cases/assistant_offline.yaml``) list them as
``python: examples/assistant/assistant_tools.py:<function>``; pytest-llmeval derives each tool's JSON schema from
the type hints and the ``Args:`` section of its docstring, and runs the calls the model asks for.

They are safe to run in any test: the calculator walks the expression's syntax tree and accepts numbers and
arithmetic operators only (no names, calls, attributes: nothing is ``eval``-ed); the search reads local markdown
files; ``book_meeting`` books nothing, it only says what it would have done.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DOCS", "book_meeting", "calculator", "search_docs"]

# The Orbit docs of the repository (cases/docs, the docs bot's corpus); ASSISTANT_DOCS points elsewhere.
DOCS = Path(__file__).resolve().parents[2] / "cases" / "docs"

MAX_EXPRESSION = 200  # characters
MAX_EXPONENT = 64  # 2 ** 64 is fine; 9 ** 9 ** 9 would take the process down
MAX_MAGNITUDE = 1e100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _number(node: ast.AST) -> int | float:
    """The value of an arithmetic syntax tree; ValueError for anything else (a name, a call, a string...)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"only numbers are allowed, got {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise ValueError(f"operator {type(node.op).__name__} is not allowed{hint}")
        left, right = _number(node.left), _number(node.right)
        if op is operator.pow and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        try:
            value = op(left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        if isinstance(value, complex):  # (-8) ** 0.5
            raise ValueError("the result is not a real number")
        if abs(value) > MAX_MAGNITUDE:
            raise ValueError("the result is too large")
        return value  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp):
        op1 = _UNARY.get(type(node.op))
        if op1 is None:
            raise ValueError(f"operator {type(node.op).__name__} is not allowed")
        return op1(_number(node.operand))  # type: ignore[no-any-return]
    if isinstance(node, ast.Name):
        raise ValueError(f"names are not allowed ({node.id!r}): write the numbers")
    if isinstance(node, ast.Call):
        raise ValueError("function calls are not allowed: use + - * / // % ** and parentheses")
    raise ValueError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def calculator(expression: str) -> int | float:
    """Evaluate an arithmetic expression (numbers, + - * / // % ** and parentheses; no names or functions).

    Args:
        expression: the arithmetic expression, e.g. "17 * 23".
    """
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    value = _number(tree.body)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the result is not a finite number")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)  # 1250 / 5 -> 250, as a person writes it
        return round(value, 10)
    return value


# ------------------------------------------------------------------------------------------------------ search

_WORD = re.compile(r"[a-z0-9_]+")
_STOP = frozenset("a an and are as at be by can do does for from how i in is it of on or the this to what when "
                  "where which with you your my me docs doc documentation search find".split())
EXCERPT = 400  # characters of a section returned


def _stem(word: str) -> str:
    """A crude stem: enough for "spheres"/"sphere", "renders"/"render"."""
    for suffix in ("ing", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def _sections(text: str) -> list[tuple[str, str]]:
    """A markdown page split at its headings: (heading, the section's text with the heading)."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        if line.startswith("#"):
            sections.append((line.lstrip("#").strip(), [line]))
        else:
            sections[-1][1].append(line)
    return [(title, "\n".join(lines).strip()) for title, lines in sections if "\n".join(lines).strip()]


def search_docs(query: str, k: int = 3) -> list[dict[str, str]]:
    """Search the Orbit documentation and return the best matching excerpts.

    Args:
        query: what to look for, in a few keywords, e.g. "sphere radius".
        k: how many excerpts to return (1 to 10).
    """
    k = max(1, min(int(k), 10))
    wanted = set(_terms(query))
    if not wanted:
        return []
    root = Path(os.environ.get("ASSISTANT_DOCS") or DOCS)
    scored: list[tuple[float, str, str]] = []
    for page in sorted(root.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        source = f"{root.name}/{page.relative_to(root).as_posix()}"  # docs/sphere.md, as the docs bot names it
        page_terms = set(_terms(page.stem))
        for title, section in _sections(text):
            counts: dict[str, int] = {}
            for term in _terms(section):
                counts[term] = counts.get(term, 0) + 1
            title_terms = set(_terms(title)) | page_terms
            # A query term present scores 1 plus a little for repeats; in the heading or the page name, 2 more.
            score = sum(1 + min(counts.get(t, 0), 5) / 10 + (2 if t in title_terms else 0)
                        for t in wanted if counts.get(t) or t in title_terms)
            if score > 0:
                excerpt = section if len(section) <= EXCERPT else section[:EXCERPT].rstrip() + "…"
                scored.append((score, source, excerpt))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [{"source": source, "text": excerpt} for _, source, excerpt in scored[:k]]


# ------------------------------------------------------------------------------------------------------ booking


def book_meeting(room: str, date: str, confirmed: bool = False) -> dict[str, Any]:
    """Book a meeting room. Only call this after the user has explicitly confirmed the room and the date.

    Args:
        room: the room's name, e.g. "blue".
        date: the day, as YYYY-MM-DD.
        confirmed: true only when the user confirmed this booking in their own words.
    """
    # An example: nothing is booked anywhere, whatever the arguments. The suites answer this tool with canned
    # results (returns:) in any case; this is what runs when they do not.
    if not confirmed:
        return {"booked": False, "room": room, "date": date,
                "reason": "not confirmed: ask the user to confirm the room and the date first"}
    reference = "DEMO-" + re.sub(r"[^A-Z0-9]+", "-", f"{room}-{date}".upper()).strip("-")
    return {"booked": True, "room": room, "date": date, "reference": reference, "dry_run": True}
