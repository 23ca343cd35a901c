"""What a generation works on: the spec (``*.gen.yaml``: the target suite, what to cover, seeds, model, filters,
or a transform), the target suite it loads, and what comes out: the candidates with the filters they passed, and
the counts of each step (``llmeval generate``, see :mod:`pytest_llmeval.flywheel.generate`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytest_llmeval.cases.schema import KINDS, CaseError, CaseFileError, Kind, _pydantic_errors, format_loc
from pytest_llmeval.cases.yaml_lines import _line_lookup, _yaml_with_lines
from pytest_llmeval.core.errors import UsageError

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.core.checks import CheckRegistry


class GenerateError(UsageError):
    """A user-facing failure of ``llmeval generate`` (bad spec, no model, no sandbox, provider failure)."""


# ------------------------------------------------------------------------------------------------ the spec


class JudgeFilter(BaseModel):
    """``filters.judge``: a judge model confirms each candidate's reference answer."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None  # default: LLMEVAL_JUDGE, else the generator (self-judging, warned)
    rubric: str = "correctness"  # a built-in rubric (checks/judge.py) or your own criteria as a sentence
    min: float = Field(default=7, ge=0, le=10)


class Filters(BaseModel):
    """``filters:``: which filters run (compile and leak by default, dedupe at 0.9, no judge)."""

    model_config = ConfigDict(extra="forbid")
    compile: bool = True  # code: the reference solution compiles, runs and passes the case's checks
    judge: JudgeFilter | None = None
    dedupe: float | None = Field(default=0.9, gt=0, le=1)  # cosine threshold; null or false: exact duplicates only
    leak: bool = True  # flag (never drop) cases whose prompt contains the expected answer

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_shorthand(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v

    @field_validator("dedupe", mode="before")
    @classmethod
    def _dedupe_off(cls, v: Any) -> Any:
        if v is True:
            return 0.9
        return None if v is False else v


class Transform(BaseModel):
    """``transform:``: rewrite existing cases' code with a named prompt (seed 004's "de-clean" step)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)  # recorded in the provenance; the tag (or label) the results get
    prompt: str = Field(min_length=1)  # the instruction; the source code follows it in a fenced block
    source: str | None = None  # the suite whose cases are rewritten (relative to the spec; default: the target)
    cases: list[str] | None = None  # ids of the source cases to rewrite (default: all)
    field: str | None = None  # the source field holding the code (default: input for labels, else solution)
    target_field: str | None = None  # where the rewritten code goes in the new case (default: field)
    language: Literal["python", "c"] | None = None  # default: the source case's language, else guessed
    label: str | None = None  # labels targets: the label added to the answer (default: name)
    same_output: bool = True  # keep a rewrite only if it prints exactly what its source prints
    # text: rewrite a text field (a qna question, say: seed 004's paraphrases) instead of a program; the source
    # case's checks carry over, and filters.judge asks whether the rewrite still means the same. Default: text
    # for qna and choice targets, code otherwise.
    text: bool | None = None


class GenerateSpec(BaseModel):
    """A generation spec file."""

    model_config = ConfigDict(extra="forbid")
    suite: str  # the target suite file, relative to the spec file
    kind: Kind | None = None  # required when the suite file does not exist yet
    describe: str | None = None  # what to cover (generate mode)
    seeds: list[dict[str, Any]] | None = None  # example cases (default: up to 3 of the suite)
    count: int = Field(default=10, ge=1, le=1000)  # at most this many candidates are kept
    per_run: int | None = Field(default=None, ge=1, le=200)  # cases asked for in each reply (default: count)
    model: str | None = None  # the generator (default: --model, LLMEVAL_MODELS, local/smollm2)
    temperature: float = Field(default=0.9, ge=0, le=2)
    runs: int = Field(default=3, ge=1, le=100)  # replies per prompt, each in its own cache slot
    max_tokens: int = Field(default=2048, ge=16, le=32768)
    filters: Filters = Field(default_factory=Filters)
    transform: Transform | None = None

    @model_validator(mode="after")
    def _mode(self) -> GenerateSpec:
        if self.transform is None and not (self.describe or "").strip():
            raise ValueError("say what to generate with describe: (or give transform: to rewrite existing cases)")
        return self


@dataclass(frozen=True)
class SpecFile:
    """A loaded spec: where it is, what it says, and a hash of its text (recorded in the review file)."""

    path: Path
    spec: GenerateSpec
    hash: str


def load_spec(path: Path) -> SpecFile:
    """Read and validate a spec file; problems raise CaseFileError naming the file, line and field."""
    def error(line: int | None, where: str | None, message: str) -> CaseFileError:
        return CaseFileError([CaseError(path, line, where, message)])

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(None, None, f"cannot read the spec: {exc}") from None
    try:
        data, lines = _yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(mark.line + 1 if mark else None, None,
                    f"YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise error(1, None, "expected a mapping: suite, describe, count, model, ...")
    try:
        spec = GenerateSpec.model_validate(data)
    except ValidationError as exc:
        line_of = _line_lookup(lines)
        raise CaseFileError([CaseError(path, line_of(loc), format_loc(loc) or None, msg)
                             for loc, msg in _pydantic_errors(exc)]) from None
    return SpecFile(path, spec, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


# ----------------------------------------------------------------------------------------------- the target


@dataclass
class Target:
    """The suite candidates are meant for: its settings (to validate candidates with), and its cases."""

    path: Path
    kind: str
    settings: dict[str, Any]  # suite-level settings as written, without cases and dataset
    raw_cases: list[dict[str, Any]]  # cases as written (YAML cases or JSONL lines)
    cases: list[CaseSpec]  # the valid cases, as loaded (dataset rows included)
    registry: CheckRegistry
    exists: bool = True

    @property
    def name(self) -> str:
        return str(self.settings.get("suite") or self.path.stem)

    def validate(self, case: dict[str, Any]) -> tuple[CaseSpec | None, list[CaseError]]:
        """Load one candidate exactly as the plugin would load it in this suite (checks, template, kind)."""
        from pytest_llmeval.cases.loader import _Loader

        loader = _Loader(self.path, self.registry)
        if self.path.suffix == ".jsonl":
            loaded = loader.load_jsonl(json.dumps({**case, "kind": self.kind, "id": "candidate"}, default=str))
        else:
            doc = {**self.settings, "kind": self.kind, "cases": [{**case, "id": "candidate"}]}
            loaded = loader.load_yaml(json.dumps(doc, default=str))  # JSON is YAML: no dumper quirks
        if loaded.errors:
            return None, loaded.errors
        return loaded.cases[0], []


def load_target(path: Path, kind: str | None, registry: CheckRegistry, *, where: str = "suite") -> Target:
    """Read a suite file (or, when it does not exist yet, a new empty one of ``kind``)."""
    from pytest_llmeval.cases.loader import load_file

    if not path.exists():
        if where != "suite":
            raise GenerateError(f"{where}: {path} does not exist")
        if kind is None:
            raise GenerateError(f"{where}: {path} does not exist yet; give its kind: in the spec "
                                f"({', '.join(KINDS)})")
        return Target(path, kind, {"suite": path.stem}, [], [], registry, exists=False)
    raw_cases: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            raw_cases = [json.loads(line) for line in text.splitlines() if line.strip()]
            kinds = {str(c.get("kind", "qna")) for c in raw_cases if isinstance(c, dict)}
            found_kind = kinds.pop() if len(kinds) == 1 else None
        else:
            data = yaml.safe_load(text)
            if not isinstance(data, dict):
                raise GenerateError(f"{path}: expected a suite mapping with settings and 'cases'")
            settings = {k: v for k, v in data.items() if k not in ("cases", "dataset")}
            raw_cases = [c for c in data.get("cases") or [] if isinstance(c, dict)]
            found_kind = str(data.get("kind", "qna"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise GenerateError(f"{path}: cannot read the suite: {exc}") from None
    if kind is not None and found_kind is not None and kind != found_kind:
        raise GenerateError(f"kind: the spec says {kind!r} but {path} is a {found_kind!r} suite; remove kind: "
                            "from the spec or point suite: at another file")
    resolved = kind or found_kind
    if resolved is None:
        raise GenerateError(f"{path} mixes kinds; give kind: in the spec")
    loaded = load_file(path, registry)
    return Target(path, resolved, settings, [c for c in raw_cases if isinstance(c, dict)], list(loaded.cases),
                  registry)


def generator_model(spec: GenerateSpec, override: str | None) -> str:
    """--model > the spec's model > LLMEVAL_MODELS (its first) > local/smollm2."""
    from pytest_llmeval.config.settings import DEFAULT_MODEL

    env = [m.strip() for m in os.environ.get("LLMEVAL_MODELS", "").split(",") if m.strip()]
    return override or spec.model or (env[0] if env else DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    """One generated case on its way through the filters."""

    case: dict[str, Any]
    run: int
    prompt_hash: str
    source_case: str | None = None
    spec: CaseSpec | None = None  # the loaded case, once valid
    filters: list[str] = field(default_factory=list)  # filters passed, in order
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance beyond the common keys
    text: str = ""  # what duplicates are compared on (the main text; a rewrite's code)
    code: str | None = None  # transform: the rewritten program
    language: str | None = None  # transform: its language
    source_code: str | None = None  # transform: the program it was rewritten from
    source_output: str | None = None  # transform: what that program printed


@dataclass
class Summary:
    """How many candidates each step produced or removed; ``generated`` = the drops + ``kept``."""

    replies: int = 0
    unparsed_replies: int = 0  # replies in which no case could be found
    generated: int = 0
    invalid: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    no_compile: int = 0
    failed_run: int = 0  # compiled, then exited non-zero or timed out
    failed_checks: int = 0  # ran, but the case's own checks fail on its reference solution
    changed_output: int = 0  # transform: prints something else than its source
    judge_rejected: int = 0
    surplus: int = 0  # valid, but beyond count
    kept: int = 0
    leaks_flagged: int = 0
    sources: int = 0  # transform: source cases rewritten
    sources_skipped: int = 0  # transform: source cases without runnable code
    drops: list[tuple[str, str, str]] = field(default_factory=list)  # (step, case text, why), for --verbose

    DROP_KEYS = ("invalid", "duplicates", "no_compile", "failed_run", "failed_checks", "changed_output",
                 "judge_rejected", "surplus")

    def drop(self, step: str, candidate: Candidate | None, why: str) -> None:
        setattr(self, step, getattr(self, step) + 1)
        self.drops.append((step, _short(candidate.text or repr(candidate.case)) if candidate else "", why))

    def to_dict(self, transform: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"replies": self.replies, "unparsed_replies": self.unparsed_replies,
                               "generated": self.generated, "invalid": self.invalid,
                               "invalid_reasons": dict(self.invalid_reasons.most_common())}
        for key in self.DROP_KEYS[1:]:
            out[key] = getattr(self, key)
        out.update(kept=self.kept, leaks_flagged=self.leaks_flagged)
        if transform:
            out.update(sources=self.sources, sources_skipped=self.sources_skipped)
        return out


@dataclass
class Generated:
    """What a generation produced: the kept candidates and the counts."""

    spec: SpecFile
    target: Target
    generator: str
    judge_model: str | None
    kept: list[Candidate]
    summary: Summary
    self_judging: bool = False


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")
