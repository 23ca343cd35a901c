"""The tool runtime (issue 18): tools made from Python functions or schemas, and the execution of the calls a model
(or an agent) asks for.

- :func:`tool_from_function`: a :class:`ToolDef` whose JSON schema comes from the function's type hints (through a
  pydantic model built from its signature) and whose descriptions come from its docstring (the summary; Google
  ``Args:`` and reST ``:param x:`` entries describe the properties).
- :func:`load_tools`: the case file's :class:`~pytest_llmeval.cases.tools.ToolSpec` list made into ToolDefs,
  importing ``module:function`` (one :class:`ToolLoadError` naming each tool that cannot be made).
- :class:`ToolRuntime`: ``execute(call) -> (result, error)``. A call to an unknown tool, with arguments that are
  not JSON or fail the schema, is answered with the error a real runtime would feed back to the model; otherwise the
  first canned result that matches, else the Python function (its exception becomes ``ToolError: ...``).
- :func:`to_openai`: the ``tools=`` list for litellm.

Results are JSON-friendly (anything JSON cannot hold is written with ``str()``): they are cached, sent across xdist
workers and kept in results.json.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from pytest_llmeval.cases.tools import CannedRule, ToolSpec, match_canned
from pytest_llmeval.core.errors import CaseDataError
from pytest_llmeval.core.tools import ToolCall
from pytest_llmeval.targets.python import load_callable

__all__ = ["ToolDef", "ToolLoadError", "ToolRuntime", "jsonable", "load_tools", "parse_docstring", "to_openai",
           "tool_from_function"]


class ToolLoadError(CaseDataError):
    """One or more tools of a case file could not be made: ``problems`` are (tool name, message)."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"tool {name!r}: {message}" for name, message in self.problems))


@dataclass(frozen=True)
class ToolDef:
    """A tool the model is offered: its name, description and parameters (a JSON Schema of an object), and the
    Python ``function`` that runs it (None for a schema-only tool, answered by canned results)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    function: Callable[..., Any] | None = field(default=None, compare=False)
    source: str | None = None  # module:function, for messages
    # The pydantic model of the function's signature: turns JSON arguments into the declared types.
    arguments_model: type[BaseModel] | None = field(default=None, compare=False, repr=False)

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def to_openai(tools: Sequence[ToolDef]) -> list[dict[str, Any]]:
    """The ``tools=`` argument of litellm.completion (OpenAI's function format) for ``tools``."""
    return [t.to_openai() for t in tools]


# --------------------------------------------------------------------------------------------- docstrings

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Returns?|Yields?|Raises|"
                      r"Examples?|Notes?|Attributes|See Also|Warnings?|Todo)\s*:\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_REST_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_REST_FIELD = re.compile(r"^:\w+")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) of a docstring: the summary is its first paragraph; parameters are
    described in a Google ``Args:`` section or by reST ``:param name:`` fields (continuation lines indented)."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or _SECTION.match(text) or _REST_FIELD.match(text):
            break
        summary.append(text)
    params: dict[str, str] = {}
    current: str | None = None
    section_indent: int | None = None  # indent of the Args: header while inside that section
    entry_indent = 0  # indent of the current Args: entry (a deeper line continues it)
    for line in lines:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        rest = _REST_PARAM.match(text)
        if rest:
            current, section_indent = rest.group(1), None
            params[current] = rest.group(2).strip()
            continue
        if _REST_FIELD.match(text):
            current = None
            continue
        section = _SECTION.match(text)
        if section:
            current = None
            section_indent = indent if section.group(1) in ("Args", "Arguments", "Parameters", "Params",
                                                             "Keyword Args", "Keyword Arguments") else None
            continue
        if not text:
            continue
        if section_indent is not None:
            if indent <= section_indent:
                section_indent, current = None, None
                continue
            entry = _GOOGLE_ENTRY.match(text)
            if entry and (current is None or indent <= entry_indent):
                current, entry_indent = entry.group(1), indent
                params[current] = entry.group(2).strip()
                continue
        if current is not None and indent > 0:
            params[current] = (params[current] + " " + text).strip()
    return " ".join(summary), params


# --------------------------------------------------------------------------------------------- schemas

# Maps of name -> schema inside a JSON Schema: their keys are names, not keywords (a property may be called "title").
_NAME_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


def _strip_titles(schema: Any) -> Any:
    """Pydantic's generated titles removed (the model sees the name already; they only cost tokens)."""
    if isinstance(schema, list):
        return [_strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _NAME_MAPS and isinstance(value, dict):
            out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_titles(value)
    return out


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a name only imported under TYPE_CHECKING: resolve the others one by one
        pass
    namespace = getattr(fn, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in (getattr(fn, "__annotations__", {}) or {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307  # the function's own annotation text
            except Exception:
                annotation = Any  # unresolvable: any JSON value
        hints[name] = annotation
    return hints


def tool_from_function(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> ToolDef:
    """A ToolDef for ``fn``: its parameters' JSON Schema from the type hints (unannotated: any JSON value;
    with a default: optional), its description from the docstring's summary (or ``description``), each property's
    from the docstring's ``Args:``/``:param:`` entries. ``*args`` is not offered; ``**kwargs`` allows extra
    arguments. TypeError for a positional-only parameter (a tool is called with named arguments)."""
    target = fn
    if not inspect.isfunction(fn) and not inspect.ismethod(fn) and callable(fn) and not inspect.isclass(fn):
        target = fn.__call__  # type: ignore[operator]  # a callable object: its __call__ has the signature
    tool_name = name or getattr(fn, "__name__", None) or type(fn).__name__
    summary, documented = parse_docstring(inspect.getdoc(fn))
    signature = inspect.signature(target)
    hints = _hints(target)
    fields: dict[str, Any] = {}
    extra = False
    for i, param in enumerate(signature.parameters.values()):
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{tool_name}: parameter {param.name!r} is positional-only; a tool is called with "
                            "named arguments")
        annotation = hints.get(param.name, Any)
        if isinstance(annotation, str):
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        # Field names of their own, the parameter's name as the alias: a parameter may be called `json` or `_x`.
        fields[f"p{i}"] = (annotation, Field(default, alias=param.name, description=documented.get(param.name)))
    config = ConfigDict(extra="allow" if extra else "forbid", populate_by_name=False, arbitrary_types_allowed=True)
    model = create_model(f"{tool_name}_arguments", __config__=config, **fields)
    schema = _strip_titles(model.model_json_schema(by_alias=True))
    schema.setdefault("properties", {})
    schema.pop("description", None)
    return ToolDef(tool_name, description if description is not None else summary, schema, fn,
                   f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', tool_name)}", model)


def load_tools(specs: Sequence[ToolSpec], paths: Sequence[Path] = (),
               builtins: Mapping[str, Callable[..., Any]] | None = None) -> list[ToolDef]:
    """The ToolDefs of a case file's tools: ``module:function`` imported with ``paths`` first on sys.path (the
    rootdir, the suite's folder); a ``builtin`` tool is the function of that name in ``builtins``. ToolLoadError
    naming every tool that cannot be imported or described."""
    tools: list[ToolDef] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        if spec.builtin is not None:
            function = (builtins or {}).get(spec.builtin)
            if function is None:
                problems.append((spec.name, f"the built-in tool {spec.builtin} is not available here"))
            else:
                tools.append(tool_from_function(function, spec.name, spec.description))
            continue
        if spec.python is None:
            tools.append(ToolDef(spec.name, spec.description or "",
                                 dict(spec.parameters or {"type": "object", "properties": {}})))
            continue
        try:
            fn = load_callable(spec.python, [Path(p) for p in paths])
        except Exception as exc:  # ImportError, SyntaxError, whatever the module raises at import
            problems.append((spec.name, f"cannot import {spec.python}: {type(exc).__name__}: {exc}"))
            continue
        try:
            tools.append(tool_from_function(fn, spec.name, spec.description))
        except Exception as exc:  # a positional-only parameter, a type pydantic cannot describe
            problems.append((spec.name, f"cannot describe {spec.python} as a tool: {type(exc).__name__}: {exc}"))
    if problems:
        raise ToolLoadError(problems)
    return tools


# --------------------------------------------------------------------------------------------- runtime


def jsonable(value: Any) -> Any:
    """``value`` as JSON data: pydantic models and dataclasses dumped, anything else JSON cannot hold as str()."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        return json.loads(json.dumps(value, default=_json_default, ensure_ascii=False))
    except (TypeError, ValueError):  # a key JSON cannot hold (a tuple), a circular value
        return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _await(awaitable: Any) -> Any:
    """The value of a coroutine, in a thread of its own (the caller may already be inside an event loop)."""
    import asyncio

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(_as_coroutine(awaitable))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="llmeval-tool", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


class ToolRuntime:
    """Runs the calls an agent asks for against ``tools``, answering from ``canned`` results first."""

    def __init__(self, tools: Sequence[ToolDef], canned: Mapping[str, Sequence[CannedRule]] | None = None) -> None:
        from jsonschema import Draft202012Validator

        self.tools = {t.name: t for t in tools}
        self.canned = dict(canned or {})
        self._validators = {t.name: Draft202012Validator(dict(t.parameters)) for t in tools}

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def validate(self, call: ToolCall) -> str | None:
        """The error a runtime returns for ``call`` before running anything (unknown tool, arguments that are
        not JSON or fail the tool's schema); None when it may run."""
        tool = self.tools.get(call.name)
        if tool is None:
            return f"unknown tool {call.name!r}; available tools: {', '.join(self.tools) or 'none'}"
        if call.raw_arguments is not None:
            from pytest_llmeval.targets.agent import raw_arguments_error

            return raw_arguments_error(call.raw_arguments)
        from jsonschema.exceptions import best_match

        error = best_match(self._validators[call.name].iter_errors(dict(call.arguments)))
        if error is None:
            return None
        where = "/".join(map(str, error.absolute_path))
        return f"arguments do not match the schema of {call.name}: {error.message}" + (f" (at {where})" if where
                                                                                        else "")

    def execute(self, call: ToolCall) -> tuple[Any, str | None]:
        """(result, None), or (None, the error fed back to the model): validation first, then the first canned
        result that matches, else the Python function (its exception: ``ToolError: <type>: <message>``)."""
        problem = self.validate(call)
        if problem is not None:
            return None, problem
        return self.run(call)

    def run(self, call: ToolCall) -> tuple[Any, str | None]:
        """:meth:`execute` for a call :meth:`validate` let through (the agent loop validates first)."""
        tool = self.tools[call.name]
        found, result = match_canned(self.canned, call.name, call.arguments)
        if found:
            return jsonable(result), None
        if tool.function is None:
            canned = " that matches these arguments" if call.name in self.canned else ""
            return None, f"tool {call.name!r} has no canned result{canned} and no Python function to run"
        try:
            kwargs = self._arguments(tool, call.arguments)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"]))
            return None, f"invalid arguments for {call.name}: {where}: {first['msg']}"
        try:
            value = tool.function(**kwargs)
            if inspect.isawaitable(value):
                value = _await(value)
        except Exception as exc:
            return None, f"ToolError: {type(exc).__name__}: {exc}"
        return jsonable(value), None

    @staticmethod
    def _arguments(tool: ToolDef, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments converted to the function's declared types (a nested model, an enum) by its model."""
        model = tool.arguments_model
        if model is None:
            return dict(arguments)
        parsed = model.model_validate(dict(arguments))
        kwargs = {info.alias or name: getattr(parsed, name) for name, info in type(parsed).model_fields.items()}
        kwargs.update(parsed.model_extra or {})
        return kwargs
