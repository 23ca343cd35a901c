"""The case-file schema: the kinds, the pydantic models of a suite and its cases, the validated CaseSpec, the
problems a case file can have (CaseError) and how one ``expect`` entry becomes a check.

Loading a file (YAML or JSONL, with lines) is :mod:`pytest_llmeval.cases.loader`; this module knows nothing of files.
"""

from __future__ import annotations

import difflib
import re
import string
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from pytest_llmeval.cases.agent import ToolFields
from pytest_llmeval.cases.conversation import ConversationFields
from pytest_llmeval.core.checks import CheckRegistry, CheckSpec
from pytest_llmeval.core.errors import CaseDataError
from pytest_llmeval.core.targets import TargetSpec

KINDS = ("qna", "choice", "code", "labels", "calibration")
Kind = Literal["qna", "choice", "code", "labels", "calibration"]
PassIf = Literal["all", "majority", "any"]
Loc = tuple[str | int, ...]

# What a ``files`` check may list that image and vision checks look at.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


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


class SuiteModel(ToolFields):  # tools, returns, agent: cases/agent.py
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
    target: Any = None  # what answers the cases (core/targets.py): {python: "bot:answer"}, {http: {...}}, model
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


class QnaCase(ConversationFields, ToolFields, CaseModel):
    """A question, or a conversation: ``turns`` (a script) or ``simulate`` (a simulated user), cases/conversation.py;
    an agent case has ``tools`` (cases/agent.py)."""

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
    target: TargetSpec | None = None  # the suite's target (None: --llm-target, else the --llm model)
    # A conversation (cases/conversation.py): the user's messages of a script and each turn's checks, or the
    # simulated user (SimulateModel as a dict)
    turns: tuple[str, ...] = ()
    turn_checks: tuple[tuple[CheckSpec, ...], ...] = ()
    simulate: dict[str, Any] | None = None
    # An agent case (cases/agent.py): its tools (cases.tools.ToolSpec), canned results by tool, agent options
    tools: tuple[Any, ...] = ()
    returns: dict[str, Any] = field(default_factory=dict)
    agent: dict[str, Any] | None = None

    @property
    def is_conversation(self) -> bool:
        return bool(self.turns) or self.simulate is not None

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
    target: TargetSpec | None = None  # the suite's ``target:``, validated


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


# ------------------------------------------------------------------------------------------ checks

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
        return None, [(loc + (name,), f"unknown check {name!r}; expected one of: {', '.join(sorted(registry.names()))}")]
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
