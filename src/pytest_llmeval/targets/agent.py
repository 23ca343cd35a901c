"""The agent loop for models (issue 18): call the model with tools, run what it asks for, feed the results back.

:func:`run_agent` is self-contained: it knows nothing of cases, caches or the run. It talks to the model through a
``complete`` function (:func:`litellm_complete` adapts litellm's function-calling path) and runs tools through an
``execute`` function, and returns a :class:`~pytest_llmeval.core.tools.Trajectory`.

Two modes:

* ``mode="native"`` (default): the OpenAI ``tools=`` path every function-calling provider speaks. Each requested call
  becomes a step; the assistant message (with its ``tool_calls``) and one ``{"role": "tool", "tool_call_id", ...}``
  message per call go back to the model, until it answers without a call or ``max_steps`` calls were made.
* ``mode="prompt"``: for models without function calling (the embedded SmolLM2). The tools are described in the
  system prompt (:func:`prompt_tools`), a JSON call is parsed from the answer (:func:`parse_call`), and the result
  goes back as a user message ``Tool result for <name>: <json>``.

A call to an unknown tool, with arguments that are not valid JSON or that fail the tool's JSON schema, is not run: it
is recorded as a step with an ``error`` and that error is fed back, as a real runtime would, so the model can recover.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.tools import Step, ToolCall, Trajectory

__all__ = ["CheckFn", "CompleteFn", "ExecuteFn", "litellm_complete", "parse_call", "prompt_tools", "raw_arguments_error",
           "run_agent", "tool_params"]

#: ``complete(messages, tools, tool_choice, parallel_tool_calls)`` -> the assistant message as
#: ``{"content": str | None, "tool_calls": [OpenAI tool calls], "usage": {"prompt_tokens", "completion_tokens"}}``.
CompleteFn = Callable[[list[dict[str, Any]], "list[dict[str, Any]] | None", Any, "bool | None"], dict[str, Any]]
#: ``execute(call)`` -> ``(result, error)``: the tool's result, or the error text to feed back instead.
ExecuteFn = Callable[[ToolCall], "tuple[Any, str | None]"]
#: ``check(call)`` -> the error a runtime returns before running the call (unknown tool, arguments that are not JSON or
#: fail the schema), or None.
CheckFn = Callable[[ToolCall], "str | None"]

MODES = ("native", "prompt")


# -- tools ------------------------------------------------------------------------------------------------------


def _functions(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """Each tool's function spec by name, from OpenAI ``tools=`` entries or bare ``{name, parameters}`` specs."""
    out: dict[str, Mapping[str, Any]] = {}
    for tool in tools or ():
        nested = tool.get("function")
        function = nested if isinstance(nested, Mapping) else tool
        name = function.get("name")
        if isinstance(name, str) and name:
            out[name] = function
    return out


def raw_arguments_error(raw: str) -> str:
    """What a runtime answers to arguments that are not a JSON object (``ToolCall.raw_arguments``)."""
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        return f"arguments are not valid JSON: {exc}"
    return f"arguments must be a JSON object, got {type(parsed).__name__}"


def tool_params(params: Mapping[str, Any] | None, tools: Any, tool_choice: Any, parallel_tool_calls: bool | None
                ) -> dict[str, Any]:
    """``params`` with the tools offered (and, when set, ``tool_choice`` and ``parallel_tool_calls``): the arguments
    of one step's model call beside the messages (part of its cache key in a run)."""
    out = dict(params or {})
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            out["parallel_tool_calls"] = parallel_tool_calls
    return out


def _default_check(functions: Mapping[str, Mapping[str, Any]]) -> CheckFn:
    """The check a runtime makes before running a call: the tool is one of ``functions`` and the arguments are a JSON
    object that validates against its ``parameters`` (each schema compiled once per loop)."""
    import jsonschema

    validators: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for name, function in functions.items():
        schema = function.get("parameters")
        if isinstance(schema, Mapping) and schema:
            try:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                validators[name] = cls(dict(schema))
            except jsonschema.SchemaError as exc:  # the tool's own schema is broken: not the model's fault
                broken[name] = f"tool {name} has an invalid JSON schema: {exc.message}"

    def check(call: ToolCall) -> str | None:
        if call.raw_arguments is not None:
            return raw_arguments_error(call.raw_arguments)
        if functions and call.name not in functions:
            return f"unknown tool {call.name!r}; available tools: {', '.join(functions)}"
        if call.name in broken:
            return broken[call.name]
        validator = validators.get(call.name)
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(call.arguments))) if validator else None
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"arguments do not match the schema of {call.name}: {error.message}" + (f" (at {where})" if where
                                                                                        else "")

    return check


def _run_tool(call: ToolCall, check: CheckFn, execute: ExecuteFn) -> tuple[Any, str | None, float | None]:
    """(result, error, latency of the tool); a call that fails the checks is not run (latency None)."""
    error = check(call)
    if error is not None:
        return None, error, None
    start = time.perf_counter()
    try:
        result, error = execute(call)
    except Exception as exc:  # a tool that raises is a tool error the model sees, not a crash of the loop
        result, error = None, f"{type(exc).__name__}: {exc}"
    return result, error, time.perf_counter() - start


def _as_text(result: Any) -> str:
    """A tool result as message content: text as is, anything else as JSON."""
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


# -- the loop -----------------------------------------------------------------------------------------------------


def run_agent(complete: CompleteFn, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
              execute: ExecuteFn, *, max_steps: int = 8, tool_choice: Any = None,
              parallel_tool_calls: bool | None = None, mode: str = "native",
              examples: Sequence[Mapping[str, Any]] | None = None, check: CheckFn | None = None) -> Trajectory:
    """Run the agent loop until the model answers without a tool call, or ``max_steps`` tool calls were made.

    ``tool_choice`` is sent on the first model call only when it forces a call (``"required"`` or a named
    function): sent every time, it would force a call on every turn and the loop could never end with an answer.
    Each step records the call, its result or error, the tool's latency, the text the model wrote beside it, and on
    the first step of a turn, the tokens of the model call that asked for it.

    ``examples`` (prompt mode only) are few-shot messages placed after the system prompt: worked exchanges in this
    mode's format (a user question, the assistant's JSON call, ``Tool result for <name>: ...`` as a user message, the
    assistant's answer). A small model follows them far more often than the description alone
    (bench/bench_tool_calls.py).

    ``check`` validates each call before ``execute`` runs it (default: the tool is one of ``tools`` and its arguments
    are a JSON object that validates against its ``parameters``); its error is recorded and fed back instead.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if mode == "prompt":
        return _run_prompt(complete, messages, tools, execute, max_steps, examples or (), check)
    if examples:
        raise ValueError("examples are for mode='prompt'; in native mode put them in the messages")
    functions = _functions(tools)
    checked: CheckFn = check or _default_check(functions)
    history = [dict(m) for m in messages]
    trajectory = Trajectory()
    last_text: str | None = None
    forcing = tool_choice is not None and tool_choice not in ("auto", "none")
    while True:
        choice = tool_choice if not (forcing and trajectory.steps) else None
        reply = complete(history, [dict(t) for t in tools] or None, choice, parallel_tool_calls)
        text = reply.get("content") or None
        raw_calls = list(reply.get("tool_calls") or [])
        if not raw_calls:
            trajectory.final, trajectory.ended = text, "answer"
            return trajectory
        last_text = text or last_text
        usage = reply.get("usage") or {}
        sent: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for i, raw in enumerate(raw_calls):
            if len(trajectory.steps) >= max_steps:
                break
            call, error = _coerce_call(raw, len(trajectory.steps))
            result, run_error, latency = (None, error, None) if error else _run_tool(call, checked, execute)
            first = i == 0
            trajectory.steps.append(Step(len(trajectory.steps), call, result, run_error, latency,
                                         usage.get("prompt_tokens") if first else None,
                                         usage.get("completion_tokens") if first else None,
                                         text if first else None))
            sent.append(_wire_call(raw, call))
            content = f"Error: {run_error}" if run_error else _as_text(result)
            results.append({"role": "tool", "tool_call_id": sent[-1]["id"], "content": content})
        history.append({"role": "assistant", "content": text, "tool_calls": sent})
        history.extend(results)
        if len(trajectory.steps) >= max_steps:
            trajectory.final, trajectory.ended = last_text, "max_steps"
            return trajectory


def _coerce_call(raw: Any, index: int) -> tuple[ToolCall, str | None]:
    try:
        call = ToolCall.coerce(raw)
    except (TypeError, ValueError) as exc:  # no name: kept as a step whose error says so
        call_id = raw.get("id") if isinstance(raw, Mapping) else None
        return ToolCall("(unnamed)", {}, call_id or f"call_{index}"), f"invalid tool call: {exc}"
    if not call.id:
        call = ToolCall(call.name, call.arguments, f"call_{index}", call.raw_arguments)
    return call, None


def _wire_call(raw: Any, call: ToolCall) -> dict[str, Any]:
    """The call as the assistant message carries it back: the model's own arguments text when it had one."""
    function = raw.get("function") if isinstance(raw, Mapping) else None
    arguments = function.get("arguments") if isinstance(function, Mapping) else None
    if not isinstance(arguments, str):
        arguments = call.raw_arguments if call.raw_arguments is not None else json.dumps(dict(call.arguments))
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


# -- prompt-and-parse mode ------------------------------------------------------------------------------------------


def prompt_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """A system-prompt block describing ``tools`` and how to call one: a JSON object alone on a line."""
    functions = _functions(tools)
    lines = ["You can use these tools:"]
    example: tuple[str, str] | None = None
    for name, function in functions.items():
        params = function.get("parameters") or {}
        props = params.get("properties") or {} if isinstance(params, Mapping) else {}
        required = set(params.get("required") or ()) if isinstance(params, Mapping) else set()
        args = ", ".join(f"{p}: {(spec or {}).get('type', 'any')}{'' if p in required else ' (optional)'}"
                         for p, spec in props.items())
        description = str(function.get("description") or "").strip().splitlines()
        lines.append(f"- {name}({args})" + (f": {description[0]}" if description else ""))
        if example is None:
            example = (name, next(iter(props), "argument"))
    name, arg = example or ("tool_name", "argument")
    lines += [
        "",
        "To call a tool, reply with only this JSON object on one line, and nothing else:",
        '{"tool": "<tool name>", "arguments": {"<argument>": <value>}}',
        f'For example: {{"tool": "{name}", "arguments": {{"{arg}": "..."}}}}',
        'The result comes back in a message starting "Tool result for". '
        "When you can answer without a tool, reply with the answer in plain text, without JSON.",
    ]
    return "\n".join(lines)


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_NAME_KEYS = ("tool", "name", "function", "tool_name")
_ARG_KEYS = ("arguments", "args", "parameters", "input", "params")


def parse_call(text: str) -> ToolCall | None:
    """The tool call in a model's text, or None when it wrote a plain answer.

    Tried in order: fenced ```json blocks, then each ``{...}`` object in the text; the first that names a tool (under
    ``tool``, ``name``, ``function`` -- a string or ``{name, arguments}`` -- or ``tool_name``) wins. Arguments come
    from ``arguments``/``args``/``parameters``/``input`` (an object, or a JSON string), else the object's other keys.
    Single-quoted Python-style dicts, which small models write, are accepted too.
    """
    found = _find_call(text)
    return found[0] if found else None


def _find_call(text: str) -> tuple[ToolCall, int, int] | None:
    """The call and the span of the text it came from."""
    candidates: list[tuple[str, int, int]] = [(m.group(1), m.start(), m.end()) for m in _FENCE.finditer(text)]
    start = text.find("{")
    while start != -1:
        end = _balanced_end(text, start)
        if end is not None:
            candidates.append((text[start:end], start, end))
        start = text.find("{", start + 1)
    for body, begin, end in candidates:
        obj = _load_object(body.strip())
        call = _call_from(obj) if obj is not None else None
        if call is not None:
            return call, begin, end
    return None


def _balanced_end(text: str, start: int) -> int | None:
    """The index after the ``}`` closing the ``{`` at ``start`` (strings respected), or None."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _load_object(body: str) -> dict[str, Any] | None:
    if not body.startswith("{"):
        found = body.find("{")
        end = _balanced_end(body, found) if found != -1 else None
        if end is None:
            return None
        body = body[found:end]
    try:
        obj = json.loads(body)
    except ValueError:
        import ast

        try:  # {'tool': 'x', 'arguments': {'a': 1}}, with JSON's literals mapped to Python's
            obj = ast.literal_eval(re.sub(r"\b(true|false|null)\b",
                                          lambda m: {"true": "True", "false": "False", "null": "None"}[m.group(1)],
                                          body))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def _call_from(obj: Mapping[str, Any]) -> ToolCall | None:
    name_key = next((k for k in _NAME_KEYS if k in obj), None)
    if name_key is None:
        return None
    name: Any = obj[name_key]
    arguments: Any = None
    if isinstance(name, Mapping):  # {"function": {"name": ..., "arguments": ...}}
        name, arguments = name.get("name"), name.get("arguments", name.get("parameters"))
    if not isinstance(name, str) or not name.strip():
        return None
    if arguments is None:
        arg_key = next((k for k in _ARG_KEYS if k in obj), None)
        if arg_key is not None:
            arguments = obj[arg_key]
        else:
            arguments = {k: v for k, v in obj.items() if k != name_key and k not in ("id", "type")}
    try:
        return ToolCall.coerce({"name": name.strip(), "arguments": arguments if arguments is not None else {}})
    except (TypeError, ValueError):
        return ToolCall(name.strip(), {}, raw_arguments=json.dumps(arguments, default=str))


def _run_prompt(complete: CompleteFn, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                execute: ExecuteFn, max_steps: int, examples: Sequence[Mapping[str, Any]],
                check: CheckFn | None) -> Trajectory:
    functions = _functions(tools)
    checked: CheckFn = check or _default_check(functions)
    history = [dict(m) for m in messages]
    block = prompt_tools(tools)
    if history and history[0].get("role") == "system":
        history[0]["content"] = f"{history[0].get('content') or ''}\n\n{block}".lstrip()
    else:
        history.insert(0, {"role": "system", "content": block})
    history[1:1] = [dict(m) for m in examples]
    trajectory = Trajectory()
    last_text: str | None = None
    while True:
        reply = complete(history, None, None, None)
        text = reply.get("content") or ""
        found = _find_call(text)
        if found is None:
            trajectory.final, trajectory.ended = text or None, "answer"
            return trajectory
        call, begin, end = found
        beside = (text[:begin] + text[end:]).strip() or None
        last_text = beside or last_text
        index = len(trajectory.steps)
        call = ToolCall(call.name, call.arguments, f"call_{index}", call.raw_arguments)
        result, error, latency = _run_tool(call, checked, execute)
        usage = reply.get("usage") or {}
        trajectory.steps.append(Step(index, call, result, error, latency, usage.get("prompt_tokens"),
                                     usage.get("completion_tokens"), beside))
        history.append({"role": "assistant", "content": text})
        fed = f"Tool error for {call.name}: {error}" if error else f"Tool result for {call.name}: {_as_text(result)}"
        history.append({"role": "user", "content": fed})
        if len(trajectory.steps) >= max_steps:
            trajectory.final, trajectory.ended = last_text, "max_steps"
            return trajectory


# -- litellm ------------------------------------------------------------------------------------------------------


def litellm_complete(model: str, api_base: str | None = None, params: Mapping[str, Any] | None = None) -> CompleteFn:
    """A ``complete`` function over ``litellm.completion`` with ``tools=``, ``tool_choice=`` and
    ``parallel_tool_calls=`` (each sent only when set), converting the response to the assistant message dict."""

    def complete(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tool_choice: Any,
                 parallel_tool_calls: bool | None) -> dict[str, Any]:
        import litellm

        kwargs: dict[str, Any] = {**tool_params(params, tools, tool_choice, parallel_tool_calls), "model": model,
                                  "messages": messages}
        if api_base:
            kwargs["api_base"] = api_base
        response = litellm.completion(**kwargs)
        return assistant_message(response)

    return complete


def assistant_message(response: Any) -> dict[str, Any]:
    """litellm's ModelResponse as ``{"content", "tool_calls", "usage"}`` (plain dicts, JSON-friendly)."""
    message = response.choices[0].message
    calls = []
    for tc in getattr(message, "tool_calls", None) or []:
        function = tc.function
        calls.append({"id": tc.id, "type": "function",
                      "function": {"name": function.name, "arguments": function.arguments}})
    usage = getattr(response, "usage", None)
    return {
        "content": message.content,
        "tool_calls": calls,
        "usage": {"prompt_tokens": getattr(usage, "prompt_tokens", None),
                  "completion_tokens": getattr(usage, "completion_tokens", None)},
    }
