"""The case-file schema and loader.

A suite file (YAML) holds suite-level settings and ``cases``, and may pull more cases from a JSONL
``dataset`` with a field mapping; a bare JSONL file under a case directory is a suite of its own.
Every problem becomes a :class:`CaseError` naming the file, the line and the field, so that one broken
case (or file) is reported on its own while everything else still runs.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import string
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from pytest_llmeval.core.checks import CheckRegistry, CheckSpec
from pytest_llmeval.core.errors import CaseDataError

KINDS = ("qna", "choice", "code", "labels", "calibration")
Kind = Literal["qna", "choice", "code", "labels", "calibration"]
PassIf = Literal["all", "majority", "any"]
Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class CaseError:
    """A problem in a case file: where it is (file, line, field) and what was expected."""

    path: Path
    line: int | None
    field: str | None
    message: str
    case_id: str | None = None

    def format(self, root: Path | None = None) -> str:
        try:
            shown = self.path.relative_to(root) if root else self.path
        except ValueError:
            shown = self.path
        where = f"{shown}:{self.line}" if self.line else f"{shown}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        try:
            shown = str(self.path.relative_to(root)) if root else str(self.path)
        except ValueError:
            shown = str(self.path)
        return {"file": shown, "line": self.line, "field": self.field, "message": self.message,
                "case_id": self.case_id}


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Pydantic puts the member type of a union into the location ("value", "list[str]"); users never wrote that.
_TYPE_LOC = re.compile(r"^(str|int|float|bool|list|dict|none|literal|function-\w+|union)\b")


def _pydantic_errors(exc: ValidationError, prefix: Loc = (), model: type[BaseModel] | None = None
                     ) -> list[tuple[Loc, str]]:
    """(location, message) of each error; with the ``model`` that was validated, an unknown field names the
    closest field it has (or the sampling parameter, at the top of a suite)."""
    seen: dict[Loc, str] = {}
    for err in exc.errors():
        inner = tuple(p for p in err["loc"] if not (isinstance(p, str) and _TYPE_LOC.match(p)))
        loc = prefix + inner
        kind = err["type"]
        if kind == "missing":
            msg = "required field is missing"
        elif kind == "extra_forbidden":
            msg = "unknown field"
            if model is not None and inner and isinstance(inner[-1], str):
                msg += _did_you_mean(inner[-1], _fields_at(model, inner[:-1]),
                                     params=len(inner) == 1 and model is SuiteModel)
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            given = err.get("input")
            if kind not in ("value_error", "assertion_error") and isinstance(given, str | int | float | bool):
                msg += f" (got {given!r})"
        if loc in seen:
            if msg not in seen[loc]:
                seen[loc] += f"; or {msg}"
        else:
            seen[loc] = msg
    return list(seen.items())


def _did_you_mean(name: str, fields: Iterable[str], template: Iterable[str] = (), params: bool = False) -> str:
    """"; did you mean 'x'?" when ``name`` is close to one of ``fields``, of the fields a prompt ``template`` uses
    or (with ``params``) of the sampling parameters; "" when it resembles none of them."""
    # name -> (how to write it, why); later entries win: a field of the schema over a template's or a parameter.
    targets = {f: (f"params.{f}", " (sampling parameters go under params)") for f in SAMPLING_PARAMS} if params \
        else {}
    targets |= {f: (repr(f), " (the prompt template uses it)") for f in template}
    targets |= {f: (repr(f), "") for f in fields}
    # 0.8: one letter off in a short name (systm, tag), two in a long one (tempurature); top_k is not top_p's typo
    # only because both are known.
    close = difflib.get_close_matches(name, targets, n=1, cutoff=0.8)
    if not close:
        return ""
    shown, why = targets[close[0]]
    return f"; did you mean {shown}?{why}"


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The fields of the model found at ``loc`` below ``model`` (list items keep their model); [] if none."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) \
            else None
        if info is None:
            return []
        current = next((t for t in _members(info.annotation)
                        if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _members(annotation: Any) -> list[Any]:
    """An annotation and the types inside it (``RetrieveModel | None``, ``list[X]``)."""
    out = [annotation]
    for arg in typing.get_args(annotation):
        out += _members(arg)
    return out


class CaseFileError(CaseDataError):
    """Raised while loading: carries one or more CaseErrors."""

    def __init__(self, errors: list[CaseError]) -> None:
        super().__init__("\n".join(e.format() for e in errors))
        self.errors = errors


class InvalidCase(CaseDataError):
    """A case (or a whole file) would not load: ``errors`` are the loader's CaseErrors, ``problems`` the messages.

    Raised by the item that stands for a broken case (with CaseErrors) and by ``llmeval review`` for a candidate
    that would not load in its suite file (with messages)."""

    def __init__(self, errors: Sequence[CaseError | str]) -> None:
        self.errors = [e for e in errors if isinstance(e, CaseError)]
        self.problems = [e.message if isinstance(e, CaseError) else e for e in errors]
        super().__init__("; ".join(self.problems))


# --------------------------------------------------------------------------------------------- schema

_ID = re.compile(r"^[\w][\w.\-]*\Z")  # \Z: "$" would accept a trailing newline


class DatasetModel(BaseModel):
    """``dataset:`` in a suite file: cases from a JSONL file, with a field mapping."""

    model_config = ConfigDict(extra="forbid")
    path: str
    # case field -> source key (dotted for nested objects), or {letter: source key} for `choices`
    fields: dict[str, str | dict[str, str]] = Field(default_factory=dict)
    # case field -> {source value: case value}, e.g. answer: {"1": A, "2": B, "3": C}
    values: dict[str, dict[str, Any]] = Field(default_factory=dict)
    id: str | None = None  # template for the case id over source fields plus {line}; default: source id
    limit: int | None = Field(default=None, ge=1)


class LimitsModel(BaseModel):
    """``limits:`` on a suite or code case: resource limits of each sandboxed run."""

    model_config = ConfigDict(extra="forbid")
    timeout_s: float | None = Field(default=None, gt=0, le=600)
    cpu_s: int | None = Field(default=None, ge=1, le=600)
    memory_mb: int | None = Field(default=None, ge=16, le=65536)
    max_output_bytes: int | None = Field(default=None, ge=1024)
    max_file_mb: int | None = Field(default=None, ge=1, le=4096)
    max_processes: int | None = Field(default=None, ge=1, le=4096)
    # work dir + /tmp + /dev/shm together, a tmpfs (host memory): 8 MiB leaves gcc room for its temporary files
    disk_mb: int | None = Field(default=None, ge=8, le=65536)


class RetrieveModel(BaseModel):
    """``retrieve:`` on a suite or case: put the top-k chunks of a docs folder into the prompt."""

    model_config = ConfigDict(extra="forbid")
    docs: str  # folder, relative to the case file
    k: int = Field(default=3, ge=1, le=50)
    model: str | None = None  # embedding model (default: the packaged all-MiniLM-L6-v2)
    uri: str | None = None  # a lancedb URI elsewhere (default: .llmeval/index/<name>)
    name: str | None = None  # index name (default: the folder's name and a hash of its path)


class SamplingParams(TypedDict, total=False):
    """The sampling parameters the plugin knows, with their types (strict: ``"0.5"`` is not a number). They are
    checked when a case file loads, so that a wrong type is one collection error instead of a provider error on
    every case; the request carries them as written (the cache key is made of them), and parameters not named
    here pass through to the provider untouched (providers have many)."""

    __pydantic_config__ = ConfigDict(extra="allow", strict=True)  # type: ignore[misc]  # pydantic reads it
    temperature: Annotated[float | None, Field(ge=0, le=2)]
    top_p: Annotated[float | None, Field(ge=0, le=1)]
    top_k: int | None
    min_p: Annotated[float | None, Field(ge=0, le=1)]
    max_tokens: Annotated[int | None, Field(ge=1)]
    max_completion_tokens: Annotated[int | None, Field(ge=1)]
    max_new_tokens: Annotated[int | None, Field(ge=1)]
    n: Annotated[int | None, Field(ge=1)]
    best_of: Annotated[int | None, Field(ge=1)]
    seed: int | None
    stop: str | list[str] | None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)]
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)]
    repetition_penalty: Annotated[float | None, Field(gt=0)]
    logprobs: bool | None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)]
    logit_bias: dict[int | str, float] | None  # keys: token ids, as strings (int keys are reported on their own)
    response_format: dict[str, Any] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    parallel_tool_calls: bool | None
    reasoning_effort: str | None
    user: str | None


SAMPLING_PARAMS = tuple(SamplingParams.__annotations__)
# What the plugin passes to litellm itself: the same name in params would be a second value for it in every call.
RESERVED_PARAMS = {"model": "--llm", "messages": "the case's system and prompt", "stream": "--llm-stream",
                   "stream_options": "--llm-stream", "timeout": "--llm-timeout", "num_retries": "--llm-retries",
                   "max_retries": "--llm-retries", "api_base": "--llm-api-base"}
_PARAMS = TypeAdapter(SamplingParams)


def params_problems(params: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """What is wrong with a ``params`` mapping at ``loc``: known parameters of the wrong type or out of range,
    and names the plugin sets itself."""
    if not isinstance(params, dict):
        return []  # the schema reports it
    problems = [(loc + (name,), f"set by the plugin, not by a case file (use {RESERVED_PARAMS[name]})")
                for name in params if name in RESERVED_PARAMS]
    bias = params.get("logit_bias")
    if isinstance(bias, dict) and not all(isinstance(k, str) for k in bias):
        # YAML reads {50256: -100} with a number as the key, which the OpenAI client fails on at every call.
        problems.append((loc + ("logit_bias",), 'token ids must be quoted, e.g. {"50256": -100}'))
    try:
        _PARAMS.validate_python(params)
    except ValidationError as exc:
        problems += _pydantic_errors(exc, loc)
    return problems


SPLITS = ("dev", "test")
Split = Literal["dev", "test"]
# What `robustness: {perturb: [...]}` may name: the text perturbations of pytest_llmeval.robustness.strategies (applied to
# the case's main text) and the reordering of a multiple-choice case's options.
PERTURB_KINDS = ("case", "whitespace", "punctuation", "typo", "polite", "synonym", "distractor", "injection",
                 "reorder_choices")


class RobustnessModel(BaseModel):
    """``robustness:`` on a suite or case: graded variants that should not change the outcome."""

    model_config = ConfigDict(extra="forbid")
    perturb: list[str] = Field(min_length=1)
    samples: int = Field(default=5, ge=1, le=200)  # variants per case (distinct, each a real model call)
    min_consistency: float = Field(default=0.8, ge=0, le=1)  # share of variants whose outcome equals the original's
    seed: int = 0  # the same seed gives the same variants
    shrink: bool = True  # shrink a flipping variant to a minimal one (more model calls, bounded below)
    max_shrink_calls: int = Field(default=20, ge=0, le=1000)
    typo_rate: float = Field(default=0.05, gt=0, le=0.5)

    @field_validator("perturb")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in PERTURB_KINDS]
        if unknown:
            raise ValueError(f"unknown perturbation {unknown[0]!r}; expected some of: {', '.join(PERTURB_KINDS)}")
        return list(dict.fromkeys(v))


class SuiteModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suite: str | None = None
    kind: Kind = "qna"
    description: str | None = None
    system: str | None = None
    prompt: str | None = None  # a template over case fields: "Question: {question}"
    params: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    expect: list[Any] = Field(default_factory=list)  # checks applied to every case
    dataset: DatasetModel | None = None
    limits: LimitsModel | None = None  # code suites: sandbox limits for every case
    labels: list[str] | None = None  # labels suites: the allowed labels of every case that lists none
    pass_if: PassIf | None = None  # how a repeated case passes (--llm-repeat): all | majority | any
    retrieve: RetrieveModel | None = None  # RAG: top-k chunks of a docs folder in every case's prompt
    split: Split | None = None  # holdout: dev (default) or test (runs only with --llm-split test)
    robustness: RobustnessModel | None = None  # perturbed variants graded for consistency (an extra item)
    cases: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_cases(self) -> SuiteModel:
        if not self.cases and self.dataset is None:
            raise ValueError("a suite needs 'cases' or a 'dataset'")
        return self


class CaseModel(BaseModel):
    """Fields every case may have; other fields are free and feed the prompt template."""

    model_config = ConfigDict(extra="allow")
    id: str
    tags: list[str] = Field(default_factory=list)
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    expect: list[Any] = Field(default_factory=list)
    reference: str | None = None
    pass_if: PassIf | None = None
    retrieve: RetrieveModel | None = None
    sources: list[str] | None = None  # with retrieval: the documents that should be retrieved (recall@k, MRR)
    split: Split | None = None
    robustness: RobustnessModel | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("expected letters, digits, '_', '-' or '.', starting with a letter or digit")
        return v


class QnaCase(CaseModel):
    question: str | None = None
    prompt: str | None = None


class ChoiceCase(CaseModel):
    context: str | None = None
    question: str
    choices: dict[str, str] = Field(min_length=2)
    answer: str

    @field_validator("choices")
    @classmethod
    def _letters(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Z]", k)]
        if bad:
            raise ValueError(f"choice keys must be single capital letters A, B, C..., got {bad}")
        return v

    @model_validator(mode="after")
    def _answer_is_a_choice(self) -> ChoiceCase:
        if self.answer.upper() not in self.choices:
            raise ValueError(f"answer {self.answer!r} is not one of the choices {sorted(self.choices)}")
        self.answer = self.answer.upper()
        return self


class CodeCase(CaseModel):
    language: Literal["python", "c"]
    prompt: str | None = None
    question: str | None = None
    limits: LimitsModel | None = None


class LabelsCase(CaseModel):
    input: str
    labels: list[str] = Field(min_length=1)
    answer: list[str]

    @model_validator(mode="after")
    def _answer_in_labels(self) -> LabelsCase:
        unknown = [a for a in self.answer if a not in self.labels]
        if unknown:
            raise ValueError(f"answer labels {unknown} are not in labels {self.labels}")
        return self


class CalibrationCase(CaseModel):
    """A human-labelled example for judge calibration: the judge grades ``answer``; a person said ``score``
    (0-10) or ``verdict`` (pass/fail)."""

    question: str
    answer: str | None = None  # what a text judge grades
    image: str | None = None  # what a vision judge looks at (relative to the case file); verdict yes/no is the truth
    context: str | None = None
    score: float | None = Field(default=None, ge=0, le=10)
    verdict: Literal["pass", "fail"] | None = None

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict_words(cls, v: Any) -> Any:
        words = {"pass": "pass", "yes": "pass", "true": "pass", "good": "pass",
                 "fail": "fail", "no": "fail", "false": "fail", "bad": "fail"}
        return words.get(str(v).strip().lower(), v) if v is not None else None

    @model_validator(mode="after")
    def _labelled(self) -> CalibrationCase:
        if self.score is None and self.verdict is None:
            raise ValueError("a calibration case needs the human label: score (0-10) or verdict (pass/fail; "
                             "for an image: yes/no, the true answer to the question)")
        if (self.answer is None) == (self.image is None):
            raise ValueError("a calibration case needs either the answer a judge grades or the image a vision "
                             "judge looks at")
        return self


CASE_MODELS: dict[str, type[CaseModel]] = {
    "qna": QnaCase, "choice": ChoiceCase, "code": CodeCase, "labels": LabelsCase, "calibration": CalibrationCase,
}

# Kinds whose checks default to one implied check when `expect` is empty.
IMPLIED_CHECK = {"choice": {"choice": None}, "labels": {"jaccard": None}, "code": {"runs": True}}


@dataclass
class CaseSpec:
    """One validated case, ready to run: the rendered prompt, its checks and where it came from."""

    suite: str
    kind: str
    id: str
    path: Path
    line: int | None
    system: str | None
    prompt: str
    params: dict[str, Any]
    tags: tuple[str, ...]
    checks: list[CheckSpec]
    fields: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)  # sandbox limits (suite's, then the case's)
    pass_if: str | None = None  # all | majority | any (None: the kind's default)
    retrieve: dict[str, Any] | None = None  # docs (absolute), prefix (as written), k, model, uri, name
    sources: tuple[str, ...] = ()
    split: str = "dev"  # dev | test (the holdout)
    robustness: dict[str, Any] | None = None  # RobustnessModel as a dict
    template: str | None = None  # the suite's prompt template (None: the kind's default prompt)

    def render(self, fields: dict[str, Any]) -> str:
        """The prompt for other field values (a robustness variant): the same template or default prompt."""
        return render_prompt(self.kind, self.template, fields)

    def query(self) -> str:
        """What retrieval searches for: the question, else the prompt."""
        return str(self.fields.get("question") or self.prompt)

    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt}]


@dataclass
class LoadedFile:
    """What one case file yields: a suite name, valid cases, and errors (file-wide or per case)."""

    path: Path
    suite: str
    cases: list[CaseSpec] = field(default_factory=list)
    errors: list[CaseError] = field(default_factory=list)
    datasets: list[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ rendering


def template_fields(template: str) -> list[str]:
    """Top-level field names a str.format template uses ("{a.b}" -> "a"). Raises ValueError if malformed."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        top = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not top or top.isdigit():
            raise ValueError("positional fields such as {} or {0} are not allowed; name a case field")
        names.append(top)
    return list(dict.fromkeys(names))


def choices_text(choices: dict[str, str]) -> str:
    return "\n".join(f"{k}) {v}" for k, v in choices.items())


def derived_fields(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Fields computed from a case for use in templates."""
    out: dict[str, Any] = {}
    if kind == "choice" and isinstance(fields.get("choices"), dict):
        out["choices_text"] = choices_text(fields["choices"])
        out["letters"] = ", ".join(fields["choices"])
    if kind == "labels" and isinstance(fields.get("labels"), list):
        out["labels_text"] = ", ".join(map(str, fields["labels"]))
    return out


def default_prompt(kind: str, f: dict[str, Any]) -> str:
    """The user prompt of a case when the suite has no ``prompt`` template."""
    if kind == "choice":
        parts = [f["context"]] if f.get("context") else []
        parts += [f"Question: {f['question']}", choices_text(f["choices"]),
                  f"Answer with the letter of the correct choice ({', '.join(f['choices'])})."]
        return "\n\n".join(parts)
    if kind == "labels":
        return (f"{f['input']}\n\nAllowed labels: {', '.join(f['labels'])}\n"
                "Answer with the labels that apply, as a JSON list.")
    text = f.get("prompt") or f.get("question")
    if not text:
        raise KeyError("question")
    return str(text)


def render_prompt(kind: str, template: str | None, fields: dict[str, Any]) -> str:
    """A case's prompt: the suite's template over its fields (and derived ones), or the kind's default."""
    full = {**fields, **derived_fields(kind, fields)}
    return template.format_map(full) if template is not None else default_prompt(kind, full)


# ------------------------------------------------------------------------------------------- loading


class _Lines:
    """The 1-based line of every mapping key and sequence item of a parsed YAML document, looked up in its node
    tree when asked (a location is at most a few levels deep): walking every node up front cost more than the
    rest of loading. ``lines[loc]`` and ``loc in lines`` behave like the dict of all of them would: a mapping
    entry's line is its key's (the last one, if a key repeats), a sequence item's is where it starts."""

    def __init__(self, root: yaml.Node) -> None:
        self._root = root
        # loc -> (node, line, found) of the locations looked up so far: the cases' locations share their prefixes.
        self._known: dict[Loc, tuple[yaml.Node, int, bool]] = {(): (root, root.start_mark.line + 1, True)}

    def _walk(self, loc: Loc) -> tuple[yaml.Node, int, bool]:
        """The node of ``loc``'s longest prefix in the document, its line, and whether that prefix is all of ``loc``."""
        known = self._known.get(loc)
        if known is not None:
            return known
        node, line, found = self._walk(loc[:-1])
        part = loc[-1]
        if not found:
            result = (node, line, False)
        elif isinstance(node, yaml.MappingNode):
            result = (node, line, False)
            for k, v in reversed(node.value):
                if (k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)) == part:
                    result = (v, k.start_mark.line + 1, True)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            result = (node.value[part], node.value[part].start_mark.line + 1, True)
        else:
            result = (node, line, False)
        if len(loc) <= 3:  # remember the suite's and the cases' own levels, not every field below them
            self._known[loc] = result
        return result

    def _find(self, loc: Loc) -> tuple[int, bool]:
        """The line of ``loc``'s longest prefix in the document, and whether that prefix is all of ``loc``."""
        _, line, found = self._walk(tuple(loc))
        return line, found

    def __contains__(self, loc: object) -> bool:
        return isinstance(loc, tuple) and self._find(loc)[1]

    def __getitem__(self, loc: Loc) -> int:
        line, found = self._find(loc)
        if not found:
            raise KeyError(loc)
        return line

    def deepest(self, loc: Loc) -> int | None:
        """The line of ``loc``, else of its longest prefix that is in the document."""
        return self._find(loc)[0]


class DuplicateKeyError(yaml.constructor.ConstructorError, CaseDataError):
    """A key written twice in one mapping (YAML 1.2 requires unique keys; PyYAML would keep the last silently)."""


# (location of the repeated key, its line, the line of its first occurrence)
Duplicate = tuple[Loc, int, int]


def _yaml_with_lines(text: str, duplicates: list[Duplicate] | None = None) -> tuple[Any, _Lines | dict[Loc, int]]:
    """Parse YAML, and the 1-based line of every mapping key and sequence item (looked up lazily).

    A key repeated in a mapping raises :class:`DuplicateKeyError` at the repeat, unless ``duplicates`` is given:
    then every repeat is appended to it (the case loader reports each as the error of the case it is in) and the
    data holds the last value, as PyYAML would."""
    # libyaml's parser (when PyYAML was built with it) composes the same nodes, with marks, ~10x faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    found: list[Duplicate] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = _construct(loader, node, found)
    finally:
        loader.dispose()
    if duplicates is not None:
        duplicates += found
    elif found:
        loc, line, first = found[0]
        raise DuplicateKeyError(None, None, f"found duplicate key {format_loc(loc)!r} (first on line {first})",
                                yaml.Mark("<yaml>", 0, line - 1, 0, None, 0))
    return data, _Lines(node)


_STR_TAG, _MAP_TAG, _SEQ_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unusual(Exception):
    """A node the fast construction leaves to PyYAML (aliases, merge keys, non-string keys, explicit tags)."""


def _construct(loader: Any, root: yaml.Node, duplicates: list[Duplicate]) -> Any:
    """``loader.construct_document(root)``, faster for what case files are made of: strings, plain mappings with
    string keys, lists, and other scalars (numbers, booleans, null: built by PyYAML itself). Anything else makes
    PyYAML construct the whole document, so the result is always what it would have built. Keys repeated in a
    mapping are appended to ``duplicates``."""
    seen: set[int] = set()
    repeated: list[tuple[yaml.Node, yaml.Node, yaml.Node]] = []  # (mapping, first key, repeat): rare, located later

    def build(node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return node.value if node.tag == _STR_TAG else loader.construct_object(node, deep=True)
        if id(node) in seen:
            raise _Unusual  # an alias: PyYAML shares one object between the places (and handles cycles)
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [build(item) for item in node.value]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            out: dict[str, Any] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
                    raise _Unusual  # a merge key (<<), a number or a structure as a key
                if key.value in out:
                    first = next(k for k, _ in node.value if k.value == key.value)
                    repeated.append((node, first, key))
                out[key.value] = build(value)
            return out
        raise _Unusual

    try:
        data = build(root)
    except _Unusual:
        # Repeats are looked for before PyYAML constructs the document: constructing merges the ``<<`` mappings
        # into the nodes, and merged keys may repeat explicit ones (which the merge-key type allows).
        duplicates += _repeated_keys(loader, root)
        return loader.construct_document(root)
    duplicates += [(_locate(root, mapping) + (key.value,), key.start_mark.line + 1, first.start_mark.line + 1)
                   for mapping, first, key in repeated]
    return data


def _locate(root: yaml.Node, target: yaml.Node) -> Loc:
    """Where ``target`` is in a document of plain mappings and lists (the fast construction's documents)."""
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if node is target:
            return loc
        if isinstance(node, yaml.MappingNode):
            stack += [(v, loc + (k.value,)) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(v, loc + (i,)) for i, v in enumerate(node.value)]
    return ()


def _repeated_keys(loader: Any, root: yaml.Node) -> list[Duplicate]:
    """Keys written twice in a mapping of any document, compared as PyYAML would (``1`` and ``0x1`` are one key).
    Merge keys (``<<``) are not compared, and a mapping reached again through an alias is looked at once."""
    found: list[Duplicate] = []
    seen: set[int] = set()

    def key_of(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _MERGE_TAG:
            return None  # a structure as a key fails construction anyway; a merge is no key
        if node.tag == _STR_TAG:
            return node.value
        try:
            key = loader.construct_object(node, deep=True)
            hash(key)
        except (yaml.YAMLError, TypeError):
            return None  # constructing the document reports it
        return key

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in node.value:
                key = key_of(k)
                if key is not None:
                    if key in first:
                        found.append((loc + (key,), k.start_mark.line + 1, first[key]))
                    else:
                        first[key] = k.start_mark.line + 1
                name = key if key is not None else k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
                walk(v, loc + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, loc + (i,))

    walk(root, ())
    return found


def _line_lookup(lines: _Lines | dict[Loc, int]) -> Callable[[Loc], int | None]:
    if isinstance(lines, _Lines):
        return lines.deepest

    def line_of(loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                return lines[loc[:end]]
        return None

    return line_of


# Fields the plugin reads from a case of any kind without a schema field: judges the context, the holdout problem.
READ_FIELDS = ("context", "problem")
# Suite settings a case cannot change: written in a case, they would be ignored.
SUITE_ONLY = ("suite", "kind", "dataset")
# Sampling parameters whose names are also plain words a case may use for its own data.
_PARAM_WORDS = ("n", "user", "tools")


def _free_field_problems(raw: dict[str, Any], loc: Loc, kind: str, template: list[str], needs: list[str],
                         retrieval: bool) -> list[tuple[Loc, str]]:
    """Free fields of a case (its own data, for templates, ``llmeval split --by`` and checks) that are most likely
    mistakes: a sampling parameter or suite setting written in the case, and a name close to a field of the case's
    kind, to a field the prompt template uses or to a sampling parameter. Any other free field is the case's data."""
    known = CASE_MODELS[kind].model_fields
    problems: list[tuple[Loc, str]] = []
    for name in raw:
        if not isinstance(name, str) or name in known or name in template or name in needs or name in READ_FIELDS:
            continue
        message = _free_field_message(name, kind, tuple(template), retrieval)
        if message:
            problems.append((loc + (name,), message))
    return problems


@functools.lru_cache(maxsize=1024)
def _free_field_message(name: str, kind: str, template: tuple[str, ...], retrieval: bool) -> str:
    """Why the free field ``name`` is most likely a mistake, or "". Cached: every case of a suite tends to have the
    same free fields, and a close-match search costs ~0.3 ms."""
    if name in SAMPLING_PARAMS and name not in _PARAM_WORDS:
        return f"a sampling parameter: write it under params (params: {{{name}: ...}})"
    if name in SUITE_ONLY:
        return "a suite setting: write it once at the top of the file, not in a case"
    # ``sources`` means something only with retrieval; without it, ``source`` is the case's own data.
    fields = [f for f in (*CASE_MODELS[kind].model_fields, *READ_FIELDS) if retrieval or f != "sources"]
    hint = _did_you_mean(name, fields, template, params=True)
    return "unknown field" + hint if hint else ""


def _image_file_problems(checks: list[CheckSpec], loc: Loc, suite_checks: int) -> list[tuple[Loc, str]]:
    """An image check without ``file:`` looks at the first image the ``files`` check lists: there must be one.
    ``checks`` are the suite's (the first ``suite_checks``), then the case's own."""
    from pytest_llmeval.checks.images import IMAGE_SUFFIXES

    listed = [n for c in checks if c.name == "files" for n in c.params.value]
    if any(n.lower().endswith(IMAGE_SUFFIXES) for n in listed):
        return []
    return [(("expect", i, c.name) if i < suite_checks else loc + ("expect", i - suite_checks, c.name),
             f"check {c.name!r} needs the image file: give file: out.png, or list the image in a files check "
             "(files: [out.png])")
            for i, c in enumerate(checks) if c.definition is not None and c.definition.vision and c.params.file is None]


def _model_attr(model: BaseModel, name: str) -> Any:
    """``getattr(model, name, None)`` for a field or an extra key, without pydantic's slow path for a missing name."""
    if name in type(model).model_fields:
        return getattr(model, name)
    extra = model.__pydantic_extra__
    return extra.get(name) if extra else None


def parse_check(entry: Any, loc: Loc, kind: str, registry: CheckRegistry,
                line_of: Callable[[Loc], int | None], base: Path | None = None
                ) -> tuple[CheckSpec | None, list[tuple[Loc, str]]]:
    """Validate one ``expect`` entry such as ``{contains: Paris}``; files it names are looked up in ``base``."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return None, [(loc, "expected a one-key mapping naming a check, e.g. {contains: Paris}")]
    name, value = next(iter(entry.items()))
    definition = registry.get(str(name))
    if definition is None:
        return None, [(loc + (name,), f"unknown check {name!r}; expected one of: {', '.join(registry.names())}")]
    if definition.kinds is not None and kind not in definition.kinds:
        return None, [(loc + (name,), f"check {name!r} applies to {'/'.join(sorted(definition.kinds))} "
                                      f"cases, not {kind!r}")]
    if value is None or value is True:
        raw: dict[str, Any] = {}
    elif isinstance(value, dict):
        raw = value
    elif definition.shorthand:
        raw = {definition.shorthand: value}
    else:
        return None, [(loc + (name,), "expected true or a mapping of parameters")]
    try:
        params = definition.params.model_validate(raw)
    except ValidationError as exc:
        return None, _pydantic_errors(exc, loc + (name,), definition.params)
    # Looked up on the class first: pydantic's __getattr__ for a name a model lacks costs ~5 us.
    paths_of: Any = params
    check_paths = paths_of.check_paths if hasattr(type(params), "check_paths") else _model_attr(params, "check_paths")
    if base is not None and check_paths is not None:
        missing = [(loc + (name, f), message) for f, message in check_paths(base)]
        if missing:
            return None, missing
    return CheckSpec(str(name), params, line_of(loc), definition), []


class _Loader:
    """Turns one file's raw data into CaseSpecs and CaseErrors."""

    def __init__(self, path: Path, registry: CheckRegistry) -> None:
        self.path = path
        self.registry = registry
        # Problems found before validation (keys repeated in a case), by the case's location: (line, loc, message).
        self.case_problems: dict[Loc, list[tuple[int | None, Loc, str]]] = {}

    def error(self, line: int | None, loc: Loc | str | None, message: str, case_id: str | None = None,
              path: Path | None = None) -> CaseError:
        shown = format_loc(loc) if isinstance(loc, tuple) else loc
        return CaseError(path or self.path, line, shown or None, message, case_id)

    def build_case(self, raw: Any, loc: Loc, suite: SuiteModel, suite_name: str, kind: str,
                   suite_checks: list[CheckSpec], line_of: Callable[[Loc], int | None],
                   seen_ids: dict[str, int | None], path: Path | None = None, typed: bool = True
                   ) -> CaseSpec | list[CaseError]:
        """Validate one case. ``loc`` is its location in the file (for field names and lines). ``typed``: the case
        was written by a person (not a dataset row), so a free field that looks like a misspelling is an error."""
        path = path or self.path
        line = line_of(loc)
        if isinstance(raw, _Bad):
            return [self.error(line, None, raw.message, path=path)]
        if not isinstance(raw, dict):
            return [self.error(line, loc, "expected a mapping of case fields", path=path)]
        case_id = str(raw.get("id")) if raw.get("id") is not None else None
        if kind == "labels" and suite.labels is not None and "labels" not in raw:
            raw = {**raw, "labels": suite.labels}
        problems: list[tuple[Loc, str]] = []
        try:
            model = CASE_MODELS[kind].model_validate(raw)
        except ValidationError as exc:
            problems += _pydantic_errors(exc, loc, CASE_MODELS[kind])
            model = None
        problems += params_problems(raw.get("params"), loc + ("params",))

        if case_id is not None:
            if case_id in seen_ids:
                first = seen_ids[case_id]
                problems.append((loc + ("id",), f"duplicate id {case_id!r}"
                                 + (f" (first defined at line {first})" if first else "")))
            else:
                seen_ids[case_id] = line

        checks = list(suite_checks)
        for j, entry in enumerate(raw.get("expect") or []):
            spec, errs = parse_check(entry, loc + ("expect", j), kind, self.registry, line_of, path.parent)
            problems += errs
            if spec:
                checks.append(spec)
        for spec in checks:
            for needed in spec.definition.needs if spec.definition else ():
                if raw.get(needed) is None and getattr(spec.params, needed, None) is None:
                    problems.append((loc, f"check {spec.name!r} needs a {needed!r} field on the case "
                                          f"(or {needed}: in the check)"))
        if typed:
            try:
                used = template_fields(suite.prompt) if suite.prompt is not None else []
            except ValueError:
                used = []  # reported once for the file
            needs = [n for spec in checks for n in (spec.definition.needs if spec.definition else ())]
            problems += _free_field_problems(raw, loc, kind, used, needs,
                                             retrieval=raw.get("retrieve") is not None or suite.retrieve is not None)
        if kind == "calibration" and not problems:
            wanted = "vision" if raw.get("image") is not None else "judge"
            if not any(c.name == wanted for c in checks):
                example = ("{vision: {min_size: 16}}" if wanted == "vision"
                           else "{judge: {rubric: correctness, min: 7}}")
                problems.append((loc + ("expect",), f"a calibration case needs the {wanted} it calibrates, e.g. "
                                                    f"expect: [{example}] on the suite"))
        if kind == "code":
            problems += _image_file_problems(checks, loc, len(suite_checks))
        if kind == "calibration" and raw.get("image") is not None and not (path.parent / str(raw["image"])).is_file():
            problems.append((loc + ("image",), f"image {raw['image']!r} not found (relative to the case file)"))
        if not checks and not problems:
            implied = IMPLIED_CHECK.get(kind)
            if implied is None:
                problems.append((loc + ("expect",), "no checks: add expect, e.g. [{contains: Paris}]"))
            else:
                spec, errs = parse_check(implied, loc, kind, self.registry, line_of)
                problems += errs
                if spec:
                    checks.append(spec)

        prompt = ""
        dumped: dict[str, Any] = {}
        if model is not None:
            dumped = model.model_dump()
            fields = dict(dumped)
            fields.update(derived_fields(kind, fields))
            try:
                missing = [n for n in template_fields(suite.prompt) if fields.get(n) is None] \
                    if suite.prompt is not None else []
                if missing:
                    problems.append((loc, f"prompt template field {missing[0]!r} is missing in this "
                                          "case (the suite's prompt uses it)"))
                else:
                    prompt = render_prompt(kind, suite.prompt, fields)
            except KeyError as exc:
                problems.append((loc, f"required field {exc.args[0]!r} is missing (or give a 'prompt')"))
            except (ValueError, IndexError, AttributeError) as exc:
                problems.append((loc, f"prompt template cannot be rendered: {exc}"))

        retrieve: dict[str, Any] | None = None
        if model is not None:
            rspec = model.retrieve or suite.retrieve
            where = loc + ("retrieve", "docs") if model.retrieve else ("retrieve", "docs")
            if rspec is not None:
                folder = (self.path.parent / rspec.docs).resolve()
                if not folder.is_dir():
                    problems.append((where, f"docs folder {rspec.docs!r} not found (relative to {self.path.name})"))
                retrieve = {**rspec.model_dump(), "docs": str(folder), "prefix": rspec.docs.rstrip("/")}
            if model.sources and rspec is None:
                problems.append((loc + ("sources",), "sources need retrieval: add retrieve: {docs: ...} to the "
                                                     "suite or the case"))
            robust = model.robustness or suite.robustness
            where = loc + ("robustness", "perturb") if model.robustness else ("robustness", "perturb")
            if robust is not None and "reorder_choices" in robust.perturb and kind != "choice":
                problems.append((where, f"reorder_choices applies to choice cases, not {kind!r}"))
            if robust is not None and kind == "calibration":
                problems.append((where, "calibration cases grade a judge, not a model: robustness does not apply"))

        early = self.case_problems.get(loc, []) if loc else []
        if problems or model is None or early:
            return [self.error(at, p_loc, msg, case_id, path=path) for at, p_loc, msg in early] \
                + [self.error(line_of(p_loc), p_loc, msg, case_id, path=path) for p_loc, msg in problems]

        return CaseSpec(
            suite=suite_name, kind=kind, id=model.id, path=path, line=line,
            system=model.system if model.system is not None else suite.system,
            prompt=prompt, params={**suite.params, **model.params},
            tags=tuple(dict.fromkeys([*suite.tags, *model.tags])), checks=checks,
            fields={k: v for k, v in dumped.items() if k not in ("expect", "limits", "retrieve", "split", "robustness")},
            limits={**(suite.limits.model_dump(exclude_none=True) if suite.limits else {}),
                    **(limits.model_dump(exclude_none=True) if (limits := _model_attr(model, "limits")) else {})},
            pass_if=model.pass_if or suite.pass_if,
            retrieve=retrieve,
            sources=tuple(model.sources or ()),
            split=model.split or suite.split or "dev",
            robustness=(model.robustness or suite.robustness).model_dump()  # type: ignore[union-attr]
            if (model.robustness or suite.robustness) else None,
            template=suite.prompt,
        )

    # ---- files

    def load_yaml(self, text: str) -> LoadedFile:
        out = LoadedFile(self.path, self.path.stem)
        duplicates: list[Duplicate] = []
        try:
            data, lines = _yaml_with_lines(text, duplicates)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            msg = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
            out.errors.append(self.error(mark.line + 1 if mark else None, None, msg))
            return out
        line_of = _line_lookup(lines)
        if not isinstance(data, dict):
            out.errors.append(self.error(1, None, "expected a mapping with suite settings and 'cases'"))
            return out
        for loc, line, first in duplicates:
            # Only the case holding a repeated key is broken; a repeat anywhere else breaks the file.
            message = (f"duplicate key (first on line {first}): a key may appear once in a mapping, and the "
                       "earlier value would be ignored")
            if len(loc) > 2 and loc[0] == "cases" and isinstance(loc[1], int):
                self.case_problems.setdefault(loc[:2], []).append((line, loc, message))
            else:
                out.errors.append(self.error(line, loc, message))
        if out.errors:
            return out
        try:
            suite = SuiteModel.model_validate(data)
        except ValidationError as exc:
            out.errors += [self.error(line_of(loc), loc, msg) for loc, msg in _pydantic_errors(exc, model=SuiteModel)]
            return out
        out.suite = suite.suite or self.path.stem

        suite_checks: list[CheckSpec] = []
        file_problems: list[tuple[Loc, str]] = params_problems(data.get("params"), ("params",))
        for j, entry in enumerate(suite.expect):
            spec, errs = parse_check(entry, ("expect", j), suite.kind, self.registry, line_of, self.path.parent)
            file_problems += errs
            if spec:
                suite_checks.append(spec)
        raw_cases: list[tuple[Any, Loc, Callable[[Loc], int | None], Path]] = [
            (raw, ("cases", i), line_of, self.path) for i, raw in enumerate(suite.cases)
        ]
        if suite.dataset is not None:
            try:
                raw_cases += self.dataset_cases(suite.dataset, out, line_of(("dataset", "path")))
            except CaseFileError as exc:
                out.errors += exc.errors
                return out
        if suite.prompt is not None:
            try:
                used = template_fields(suite.prompt)
            except ValueError as exc:
                file_problems.append((("prompt",), f"bad template: {exc}"))
                used = []
            case_keys: set[str] = {"id"}
            for raw, *_ in raw_cases:
                if isinstance(raw, dict):
                    case_keys |= set(raw) | set(derived_fields(suite.kind, raw))
            for name in used:
                if name not in case_keys:
                    file_problems.append((("prompt",), f"template field {name!r} is not a field of any case "
                                                       f"(case fields: {', '.join(sorted(case_keys))})"))
        if file_problems:
            out.errors += [self.error(line_of(loc), loc, msg) for loc, msg in file_problems]
            return out

        seen: dict[str, int | None] = {}
        for raw, loc, case_line_of, path in raw_cases:
            built = self.build_case(raw, loc, suite, out.suite, suite.kind, suite_checks, case_line_of, seen,
                                    path, typed=path == self.path)
            if isinstance(built, list):
                out.errors += built
            else:
                out.cases.append(built)
        return out

    def dataset_cases(self, ds: DatasetModel, out: LoadedFile, line: int | None
                      ) -> list[tuple[Any, Loc, Callable[[Loc], int | None], Path]]:
        path = (self.path.parent / ds.path).resolve()
        out.datasets.append(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CaseFileError([self.error(line, "dataset.path", f"cannot read {ds.path}: {exc.strerror}")]
                                ) from None
        rows: list[tuple[Any, Loc, Callable[[Loc], int | None], Path]] = []
        for lineno, raw_line in enumerate(text.splitlines(), start=1):
            if not raw_line.strip():
                continue
            if ds.limit is not None and len(rows) >= ds.limit:
                break
            fixed_line: Callable[[Loc], int | None] = (lambda n: (lambda _loc: n))(lineno)
            try:
                source = json.loads(raw_line)
            except json.JSONDecodeError as exc:
                rows.append((_Bad(f"invalid JSON: {exc.msg} (column {exc.colno})"), (), fixed_line, path))
                continue
            if not isinstance(source, dict):
                rows.append((_Bad("expected a JSON object"), (), fixed_line, path))
                continue
            rows.append((_map_row(source, ds, lineno), (), fixed_line, path))
        return rows

    def load_jsonl(self, text: str) -> LoadedFile:
        """A bare JSONL suite: one case per line (``kind`` per line, default qna)."""
        out = LoadedFile(self.path, self.path.stem)
        seen: dict[str, int | None] = {}
        for lineno, raw_line in enumerate(text.splitlines(), start=1):
            if not raw_line.strip():
                continue
            line_of: Callable[[Loc], int | None] = (lambda n: (lambda _loc: n))(lineno)
            try:
                raw = json.loads(raw_line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                out.errors.append(self.error(lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})"))
                continue
            except _RepeatedKey as exc:
                out.errors.append(self.error(lineno, None, f"duplicate key {exc.args[0]!r}: a key may appear once in "
                                                           "an object, and the earlier value would be ignored"))
                continue
            if not isinstance(raw, dict):
                out.errors.append(self.error(lineno, None, "expected a JSON object (one case per line)"))
                continue
            kind = raw.pop("kind", "qna")
            if kind not in KINDS:
                out.errors.append(self.error(lineno, "kind", f"unknown kind {kind!r}; expected one of: "
                                                             f"{', '.join(KINDS)}", raw.get("id")))
                continue
            raw.setdefault("id", f"L{lineno}")
            suite = SuiteModel(kind=kind, cases=[raw])
            built = self.build_case(raw, (), suite, out.suite, kind, [], line_of, seen)
            if isinstance(built, list):
                out.errors += built
            else:
                out.cases.append(built)
        return out


class _RepeatedKey(Exception):
    """A key written twice in one JSON object (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for a bare JSONL suite's lines, which a person wrote: a repeated key is an error."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return out


class _Bad(dict):  # type: ignore[type-arg]
    """A dataset row that could not be read; build_case reports its message."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


def _lookup(source: dict[str, Any], key: str) -> Any:
    value: Any = source
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _map_row(source: dict[str, Any], ds: DatasetModel, lineno: int) -> dict[str, Any] | _Bad:
    """Apply a dataset's field mapping to one JSONL row. Unmapped source fields pass through."""
    mapped_sources = {v for v in ds.fields.values() if isinstance(v, str)}
    for v in ds.fields.values():
        if isinstance(v, dict):
            mapped_sources |= set(v.values())
    case: dict[str, Any] = {k: v for k, v in source.items() if k not in mapped_sources}
    for target, src in ds.fields.items():
        try:
            case[target] = ({k: _lookup(source, s) for k, s in src.items()} if isinstance(src, dict)
                            else _lookup(source, src))
        except KeyError as exc:
            return _Bad(f"dataset field {exc.args[0]!r} (for {target!r}) is missing in this row; "
                        "see the suite's dataset.fields")
    for target, table in ds.values.items():
        if target in case and str(case[target]) in table:
            case[target] = table[str(case[target])]
    if ds.id is not None:
        try:
            case["id"] = ds.id.format_map({**source, "line": lineno})
        except (KeyError, ValueError, IndexError) as exc:
            return _Bad(f"dataset id template {ds.id!r} cannot be rendered: {exc}")
    elif "id" not in case:
        case["id"] = f"L{lineno}"
    return case


_CACHE: dict[tuple[Path, int, int, int], LoadedFile] = {}


def load_file(path: Path, registry: CheckRegistry) -> LoadedFile:
    """Load and validate one case file (memoised on path, mtime, size and registry)."""
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size, id(registry))
    if key in _CACHE:
        return _CACHE[key]
    loader = _Loader(path, registry)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        loaded = LoadedFile(path, path.stem, errors=[loader.error(None, None, f"cannot read the file: {exc}")])
    else:
        loaded = loader.load_jsonl(text) if path.suffix == ".jsonl" else loader.load_yaml(text)
    _CACHE[key] = loaded
    return loaded


def referenced_datasets(files: Iterable[Path], registry: CheckRegistry) -> set[Path]:
    """JSONL files that suite files use as datasets (they are not suites of their own)."""
    out: set[Path] = set()
    for f in files:
        out.update(load_file(f, registry).datasets)
    return out
