"""Tools in case files (issue 18): a suite's or case's ``tools:`` and its canned ``returns:``, validated at load.

A tool is a Python function or a JSON schema in the OpenAI function format::

    tools:
      - python: assistant.tools:calculator         # schema from its type hints and docstring (targets/tools.py)
      - python: assistant.tools:search_docs
        name: search                               # optional overrides of the function's name and description
        description: Search the product documentation.
      - type: function                             # OpenAI's format; the bare {name, description, parameters} too
        function:
          name: book_meeting
          description: Book a meeting room.
          parameters: {type: object, properties: {room: {type: string}}, required: [room]}
    returns:                                       # canned results: deterministic, nothing real is touched
      calculator: 42                               # by name: every call returns this
      book_meeting:                                # by name and arguments: the first entry that matches wins
        - when: {room: /^blue/i}                   # a /regex/ (searched; flag i) or a value compared as is
          result: {booked: true}
        - default: {booked: false}                 # an entry without `when` matches any call

A case's ``tools`` adds to its suite's (a case's tool replaces the suite's tool of the same name); a case's
``returns`` replaces the suite's for the tools it names. Problems found here, each at its location: a ``parameters``
that is not a valid JSON Schema, two tools with one name, canned results for a tool not listed, a bad regex. A
function that cannot be imported is reported when the tools are loaded (targets/tools.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pytest_llmeval.cases.schema import Loc, _pydantic_errors, format_loc

__all__ = ["CannedRule", "Canned", "ToolSpec", "match_canned", "merge_returns", "merge_tools", "parse_returns",
           "parse_tools"]

# What OpenAI (and so litellm's other providers) accepts as a function name.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_REF = re.compile(r"^[^:\s]+:[A-Za-z_][\w.]*\Z")  # module:function (module may be a path/to/file.py)
_REGEX = re.compile(r"^/(.*)/([i]*)\Z", re.DOTALL)
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the case file lists it: a Python function (``python``: ``module:function``; its name and
    description may be overridden, its schema is derived when it is loaded) or a schema (``parameters``)."""

    name: str
    python: str | None = None
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    line: int | None = field(default=None, compare=False)  # where the case file lists it (line, field)
    where: str | None = field(default=None, compare=False)
    builtin: str | None = None  # a tool the plugin provides (BUILTIN_TOOLS), bound where the case runs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for key in ("python", "builtin", "description", "parameters"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value) if isinstance(value, Mapping) else value
        return out


@dataclass(frozen=True)
class CannedRule:
    """One canned result: ``when`` maps argument names to a value (compared as is) or a compiled regex (searched in
    the argument's text); an empty ``when`` matches any call."""

    result: Any
    when: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, arguments: Mapping[str, Any]) -> bool:
        for name, expected in self.when.items():
            if name not in arguments:
                return False
            given = arguments[name]
            if isinstance(expected, re.Pattern):
                text = given if isinstance(given, str) else json.dumps(given, ensure_ascii=False, sort_keys=True)
                if not expected.search(text):
                    return False
            elif not _equal(given, expected):
                return False
        return True


# tool name -> its rules, in order (first match wins)
Canned = dict[str, list[CannedRule]]


def _equal(given: Any, expected: Any) -> bool:
    # bool is an int in Python: True must not match 1
    if isinstance(given, bool) or isinstance(expected, bool):
        return type(given) is type(expected) and given == expected
    return bool(given == expected)


def match_canned(canned: Mapping[str, Sequence[CannedRule]], name: str, arguments: Mapping[str, Any]
                 ) -> tuple[bool, Any]:
    """(True, result) of the first rule of tool ``name`` that matches ``arguments``; (False, None) if none does."""
    for rule in canned.get(name, ()):
        if rule.matches(arguments):
            return True, rule.result
    return False, None


# --------------------------------------------------------------------------------------------- models


class _Named(BaseModel):
    @field_validator("name", check_fields=False)
    @classmethod
    def _name_shape(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("a tool name is 1-64 letters, digits, '_' or '-'")
        return v


# The tools the plugin provides: ``{builtin: run_python}`` runs the program the model wrote in the run's sandbox
# (run/agent.py binds it), under the suite's ``limits:``.
BUILTIN_TOOLS = ("run_python",)


class BuiltinToolModel(_Named):
    """``{builtin: run_python, name?, description?}``."""

    model_config = ConfigDict(extra="forbid")
    builtin: Literal["run_python"]
    name: str | None = None
    description: str | None = None


class PythonToolModel(_Named):
    """``{python: "module:function", name?, description?}``."""

    model_config = ConfigDict(extra="forbid")
    python: str
    name: str | None = None
    description: str | None = None

    @field_validator("python")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not _REF.match(v):
            raise ValueError(f"expected module:function (e.g. assistant.tools:search), got {v!r}")
        return v


class FunctionModel(_Named):
    """The bare function schema ``{name, description, parameters}`` (``strict`` passes through)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(EMPTY_PARAMETERS))
    strict: bool | None = None


class OpenAIToolModel(BaseModel):
    """``{type: function, function: {name, description, parameters}}``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionModel


class CannedEntryModel(BaseModel):
    """One entry of a tool's list of canned results: ``{when: {...}, result: ...}`` or ``{default: ...}``."""

    model_config = ConfigDict(extra="forbid")
    when: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    default: Any = None


def _schema_problems(parameters: Mapping[str, Any], loc: Loc) -> list[tuple[Loc, str]]:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        where = loc + tuple(exc.path)
        return [(where, f"not a valid JSON Schema: {exc.message}")]
    kind = parameters.get("type")
    if kind is not None and kind != "object":
        return [(loc + ("type",), f"the parameters of a tool are an object schema (type: object), got {kind!r}")]
    return []


def _one_tool(item: Any, loc: Loc) -> tuple[ToolSpec | None, list[tuple[Loc, str]]]:
    if not isinstance(item, dict):
        return None, [(loc, 'expected {python: "module:function"} or a function schema {type: function, function: '
                            f"{{name, description, parameters}}}} (got {type(item).__name__} {item!r})")]
    try:
        if "builtin" in item:
            built = BuiltinToolModel.model_validate(item)
            return ToolSpec(built.name or built.builtin, None, built.description, builtin=built.builtin), []
        if "python" in item:
            model = PythonToolModel.model_validate(item)
            default = model.python.rpartition(":")[2].rpartition(".")[2]
            return ToolSpec(model.name or default, model.python, model.description), []
        if "type" in item or "function" in item:
            function = OpenAIToolModel.model_validate(item).function
            where = loc + ("function",)
        else:
            function = FunctionModel.model_validate(item)
            where = loc
    except ValidationError as exc:
        chosen: type[BaseModel] = BuiltinToolModel if "builtin" in item else PythonToolModel if "python" in item else \
            OpenAIToolModel if "type" in item or "function" in item else FunctionModel
        return None, _pydantic_errors(exc, loc, chosen)
    problems = _schema_problems(function.parameters, where + ("parameters",))
    if problems:
        return None, problems
    return ToolSpec(function.name, None, function.description, function.parameters), []


def parse_tools(value: Any, loc: Loc, line_of: Callable[[Loc], int | None] | None = None
                ) -> tuple[list[ToolSpec], list[tuple[Loc, str]]]:
    """A ``tools:`` list validated: the tools (with their lines, given ``line_of``), and the problems at their
    locations (a duplicate name included)."""
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [(loc, "expected a list of tools")]
    tools: list[ToolSpec] = []
    problems: list[tuple[Loc, str]] = []
    first: dict[str, int] = {}
    for i, item in enumerate(value):
        spec, found = _one_tool(item, loc + (i,))
        problems += found
        if spec is None:
            continue
        if spec.name in first:
            problems.append((loc + (i,), f"duplicate tool name {spec.name!r} (also tool {first[spec.name] + 1}); "
                                         "give one of them another name"))
            continue
        first[spec.name] = i
        at = loc + (i,) + (("python",) if spec.python else ())
        tools.append(dataclasses.replace(spec, line=line_of(at), where=format_loc(at)) if line_of is not None
                     else spec)
    return tools, problems


def _compile(value: Any, loc: Loc) -> tuple[Any, list[tuple[Loc, str]]]:
    if isinstance(value, str):
        m = _REGEX.match(value)
        if m and len(value) >= 2:
            try:
                return re.compile(m.group(1), re.IGNORECASE if "i" in m.group(2) else 0), []
            except re.error as exc:
                return None, [(loc, f"bad regular expression {m.group(1)!r}: {exc}")]
    return value, []


def _is_entries(value: Any) -> bool:
    """Whether a tool's ``returns`` value is a list of ``{when, result}``/``{default}`` entries (else it is a
    result that happens to be a list)."""
    return (isinstance(value, list) and bool(value) and all(isinstance(e, dict) for e in value)
            and any(key in e for e in value for key in ("when", "result", "default")))


def parse_returns(value: Any, loc: Loc, tools: Sequence[str] | None = None
                  ) -> tuple[Canned, list[tuple[Loc, str]]]:
    """A ``returns:`` mapping validated: the canned rules of each tool and the problems (a tool not in ``tools``,
    the names of the tools the suite and case list, when given)."""
    if value is None:
        return {}, []
    if not isinstance(value, dict):
        return {}, [(loc, "expected a mapping of tool name to its canned result (or a list of {when, result})")]
    canned: Canned = {}
    problems: list[tuple[Loc, str]] = []
    for name, raw in value.items():
        where = loc + (str(name),)
        if tools is not None and name not in tools:
            listed = ", ".join(tools) if tools else "none"
            problems.append((where, f"canned results for tool {name!r}, which is not listed in tools "
                                    f"(listed: {listed})"))
            continue
        if isinstance(raw, dict) and "when" in raw and set(raw) <= {"when", "result"}:
            raw = [raw]  # one {when, result} entry written without its list
        if not _is_entries(raw):
            canned[str(name)] = [CannedRule(raw)]
            continue
        rules: list[CannedRule] = []
        for i, entry in enumerate(raw):
            try:
                model = CannedEntryModel.model_validate(entry)
            except ValidationError as exc:
                problems += _pydantic_errors(exc, where + (i,), CannedEntryModel)
                continue
            has_result, has_default = "result" in entry, "default" in entry
            if has_result == has_default or (has_default and model.when):
                problems.append((where + (i,), "an entry is {when: {<argument>: <value or /regex/>}, result: ...} "
                                               "or {default: ...}"))
                continue
            when: dict[str, Any] = {}
            for arg, expected in model.when.items():
                compiled, bad = _compile(expected, where + (i, "when", arg))
                problems += bad
                when[arg] = compiled
            rules.append(CannedRule(model.result if has_result else model.default, when))
        canned[str(name)] = rules
    return canned, problems


def merge_tools(suite: Sequence[ToolSpec], case: Sequence[ToolSpec]) -> list[ToolSpec]:
    """The suite's tools with the case's added; a case's tool replaces the suite's of the same name (in place)."""
    own = {t.name: t for t in case}
    merged = [own.pop(t.name, t) for t in suite]
    return merged + [t for t in case if t.name in own]


def merge_returns(suite: Mapping[str, list[CannedRule]], case: Mapping[str, list[CannedRule]]) -> Canned:
    """The suite's canned results, with the case's replacing them tool by tool."""
    return {**suite, **case}


# --------------------------------------------------------------------------------------------- a file's agent cases

# The checks that grade a trajectory (checks/tools.py): a case they grade needs tools, or an application target
# whose answers carry tool calls.
TRAJECTORY_CHECKS = frozenset({"tool_called", "tool_sequence", "tool_not_called", "max_steps", "tool_f1"})
AGENT_FIELDS = ("tools", "returns", "agent")
_CHOICES = ("auto", "required", "none")


@dataclass
class SuiteTools:
    """A suite's own ``tools``/``returns``/``agent`` (validated once per file), which its cases build on."""

    tools: list[ToolSpec] = field(default_factory=list)
    returns: Canned = field(default_factory=dict)
    agent: Any = None  # cases.agent.AgentModel


def suite_tools(suite: Any, line_of: Callable[[Loc], int | None]) -> tuple[SuiteTools, list[tuple[Loc, str]]]:
    """The suite's tools and canned results (``suite``: the validated SuiteModel); a suite's ``returns`` names
    the suite's own tools."""
    tools, problems = parse_tools(suite.tools, ("tools",), line_of)
    returns, found = parse_returns(suite.returns, ("returns",), [t.name for t in tools] if tools or
                                   suite.returns else None)
    return SuiteTools(tools, returns, suite.agent), problems + found


@dataclass
class CaseTools:
    """What a case's agent run needs: its tools (the suite's and its own), canned results and options."""

    tools: tuple[ToolSpec, ...] = ()
    returns: Canned = field(default_factory=dict)
    agent: dict[str, Any] | None = None


def case_tools(raw: Mapping[str, Any], loc: Loc, kind: str, conversation: bool, suite: SuiteTools,
               case_agent: Any, line_of: Callable[[Loc], int | None], check_locs: Sequence[tuple[str, Loc]],
               app_target: bool) -> tuple[CaseTools, list[tuple[Loc, str]]]:
    """A case's agent part and its problems. ``case_agent``: the case's validated AgentModel (None without
    ``agent:``); ``check_locs``: (name, location) of each of the case's checks, its suite's included;
    ``app_target``: an application answers (its answers may carry tool calls)."""
    from pytest_llmeval.cases.agent import merge_agent

    problems: list[tuple[Loc, str]] = []
    own = [name for name in AGENT_FIELDS if raw.get(name) is not None]
    if kind != "qna":
        problems += [(loc + (name,), f"{name}: only qna cases are agent cases, not {kind!r}") for name in own]
        if suite.tools or suite.agent is not None:
            problems.append((loc, f"the suite's tools apply to qna cases, not {kind!r}"))
        return CaseTools(), problems
    case_specs, found = parse_tools(raw.get("tools"), loc + ("tools",), line_of)
    problems += found
    tools = merge_tools(suite.tools, case_specs)
    names = [t.name for t in tools]
    case_returns, found = parse_returns(raw.get("returns"), loc + ("returns",), names) if tools else ({}, [])
    problems += found
    if tools and app_target:
        problems.append((loc + ("tools",) if "tools" in raw else ("tools",),
                         "tools are offered to the --llm model; an application target runs its own agent and "
                         "returns the calls it made (Answer.tool_calls): drop tools here, or the target"))
    if not tools:
        problems += [(loc + (name,), f"{name} needs tools: list them on the case or the suite (tools: [...])")
                     for name in ("returns", "agent") if raw.get(name) is not None]
        if not app_target:
            problems += [(where, f"the {name} check grades an agent's tool calls: this case has no tools (add "
                                 "tools: to the case or the suite) and no application target")
                         for name, where in check_locs if name in TRAJECTORY_CHECKS]
        return CaseTools(), problems
    if conversation:
        problems.append((loc + ("tools",) if "tools" in raw else loc,
                         "tools do not apply to a conversation case (turns, simulate): an agent case is one "
                         "question, answered with tool calls"))
    agent = merge_agent(suite.agent, case_agent)
    choice = agent["tool_choice"]
    where = loc + ("agent", "tool_choice") if case_agent is not None and case_agent.tool_choice is not None \
        else ("agent", "tool_choice")
    if isinstance(choice, str) and choice not in _CHOICES:
        if choice not in names:
            problems.append((where, f"tool_choice {choice!r} is neither auto, required, none nor a listed tool "
                                    f"(listed: {', '.join(names)})"))
        agent["tool_choice"] = {"type": "function", "function": {"name": choice}}
    elif isinstance(choice, Mapping):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            problems.append((where, "expected auto, required, none, a tool's name, or "
                                    "{type: function, function: {name: <tool>}}"))
        elif name not in names:
            problems.append((where, f"tool_choice names {name!r}, which is not a listed tool "
                                    f"(listed: {', '.join(names)})"))
    return CaseTools(tuple(tools), merge_returns(suite.returns, case_returns), agent), problems
