"""``llmeval generate``: candidate cases from a model, validated, filtered and written to a review file.

The first half of the data flywheel (issue 10). A spec (YAML) names the target suite, what to cover, a few seed
cases, the generator model, its temperature and how many runs to draw per prompt. Every reply is parsed
robustly (code fences, JSON or YAML, a list, ``{"cases": [...]}`` or one object) and every candidate is validated
by the real case loader, with the target suite's own settings (its kind, labels, template, suite checks).
The valid ones then go through the filters, each counted, cheapest first:

1. duplicates: exact (always), and near (embedding cosine >= ``filters.dedupe``) against the suite's cases, the
   seeds and the candidates kept so far (never against ones a later filter drops);
2. code: the candidate's reference ``solution`` compiles, runs and passes the case's own code checks in the
   sandbox; a transformed program must also print what its source printed (seed 004);
3. judge (optional): a judge model confirms the reference answer, through checks/judge.py's prompt and parser;

until ``count`` are kept (the rest are ``surplus``). Leaks (the expected answer in the prompt) are flagged, not
dropped. Transform mode (``transform:``) rewrites existing cases' code with a named prompt instead.

The review file lists the kept candidates (``status: pending``) with their provenance, for ``llmeval review``.
Every model call goes through :class:`~pytest_llmeval.providers.runner.ModelRunner` and so through the response cache: a
rerun of an unchanged spec costs nothing, and each run of a prompt has its own cache slot (``sample=run``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pytest_llmeval.cases.schema import KINDS, CaseError, CaseFileError, Kind, _pydantic_errors, format_loc
from pytest_llmeval.cases.yaml_lines import _line_lookup, _yaml_with_lines
from pytest_llmeval.core.errors import CommandError, UsageError

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.core.checks import CheckRegistry
    from pytest_llmeval.providers.runner import ModelRunner
    from pytest_llmeval.sandbox.isolation import Sandbox

REVIEW_SUFFIX = ".review.yaml"  # <suite stem>.review.yaml: not a suite, collection should skip it
SPEC_SUFFIX = ".gen.yaml"  # the suggested name of spec files (cases/generate/*.gen.yaml): not suites either
REVIEW_HEADER = "# written by llmeval generate; review with: llmeval review {name}\n"
STATUSES = ("pending", "accepted", "rejected", "skipped")
GENERATE_PROMPT_VERSION = "1"  # part of every generation cache key: editing the prompt never serves old replies
DROPPED_FIELDS = ("id", "split")  # review assigns ids; the split step assigns splits

SYSTEM = ("You write test cases for evaluating language models. You follow the case schema exactly and reply "
          "with JSON only.")
TRANSFORM_SYSTEM = "You rewrite code exactly as asked. Reply with the complete program in one fenced code block."
TEXT_TRANSFORM_SYSTEM = "You rewrite text exactly as asked. Reply with the rewritten text only."
TEXT_TRANSFORM_RUBRIC = ("Faithfulness of a rewrite: the rewritten text (the answer) does what the instruction asks "
                         "and asks for exactly the same thing as the original (in the question): the same expected "
                         "answer would be right for both. 10 = same meaning; 5 = close but a detail changed; 0 = a "
                         "different question.")
TRANSFORM_RUBRIC = ("Faithfulness of a rewrite: the rewritten code (the answer) does what the instruction asks and "
                    "still solves the same problem as the original code (in the question), with the same behaviour. "
                    "10 = faithful and equivalent; 5 = equivalent but the instruction is not applied; 0 = different "
                    "behaviour.")

# What the generator is told about each kind: its fields, and an example when the suite offers no seed.
KIND_FIELDS: dict[str, str] = {
    "qna": (
        "- question: the question put to the model under test (a string)\n"
        "- expect: a list of checks on the model's answer, each a one-key object: {\"contains\": \"Paris\"} "
        "(or a list of strings that must all occur), {\"not_contains\": \"...\"}, {\"regex\": \"pattern\"}, "
        "{\"equals\": \"...\"}\n"
        "- reference: a short correct answer (a string)"),
    "choice": (
        "- context: optional background (a string)\n"
        "- question: the question (a string)\n"
        "- choices: an object of lettered options, {\"A\": \"...\", \"B\": \"...\", \"C\": \"...\"}\n"
        "- answer: the letter of the one correct choice"),
    "code": (
        "- language: {language}\n"
        "- prompt: the programming task put to the model under test (a string)\n"
        "- expect: a list of checks on the program, each a one-key object: {\"stdout\": {\"equals\": \"...\"}} "
        "or {\"stdout\": {\"contains\": \"...\"}}, {\"runs\": true}, {\"tests\": \"assert f(1) == 2\"} "
        "(Python only)\n"
        "- solution: a complete reference program that solves the task and passes the checks (a string)"),
    "labels": (
        "- input: the text or code to label (a string)\n"
        "- answer: the list of labels that apply, from: {labels}"),
    "calibration": (
        "- question: the question (a string)\n"
        "- answer: an answer to it, right or wrong, that a judge will grade (a string)\n"
        "- reference: a correct answer (a string)\n"
        "- score: the score a careful person would give the answer, 0-10"),
}
KIND_EXAMPLES: dict[str, dict[str, Any]] = {
    "qna": {"question": "What is the capital of France?", "expect": [{"contains": "Paris"}],
            "reference": "Paris is the capital of France."},
    "choice": {"question": "Which planet is known as the red planet?",
               "choices": {"A": "Venus", "B": "Mars", "C": "Jupiter"}, "answer": "B"},
    "code": {"language": "python", "prompt": "Write a Python program that prints the squares of 1 to 3, one per line.",
             "expect": [{"stdout": {"equals": "1\n4\n9"}}],
             "solution": "for i in range(1, 4):\n    print(i * i)\n"},
    "labels": {"input": "int f(int x) { return x * 86400; }", "answer": ["MC"]},
    "calibration": {"question": "What is the capital of Japan?", "answer": "Kyoto.", "reference": "Tokyo",
                    "score": 1},
}
# The field holding a case's main text (what duplicates are compared on, what a leak would show up in).
_TEXT_FIELDS = ("question", "prompt", "input")
_LEAK_FIELDS = ("context", "question", "prompt", "input")


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


# ------------------------------------------------------------------------------------------- parsing replies

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)",
                    re.DOTALL | re.MULTILINE)


def _as_cases(value: Any) -> list[Any] | None:
    """The candidates in a parsed reply: a list, ``{"cases": [...]}`` (or another single list value), one case."""
    if isinstance(value, list):
        return value or None
    if isinstance(value, dict):
        for key in ("cases", "candidates", "items", "tests", "examples"):
            if isinstance(value.get(key), list):
                return value[key] or None
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(value) == 1 and len(lists) == 1:
            return lists[0]
        return [value] if value else None
    return None


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON array or object embedded in the text, in order."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while True:
        starts = [p for p in (text.find("[", i), text.find("{", i)) if p != -1]
        if not starts:
            return out
        i = min(starts)
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        out.append(value)
        i = end


def parse_candidates(text: str) -> list[Any]:
    """The cases in a generator's reply, however it was written: fenced or bare, JSON or YAML, a list, a
    ``{"cases": [...]}`` wrapper, several objects one after the other, or a single object. [] when none."""
    chunks = [m.group(3) for m in _FENCE.finditer(text or "")] + [text or ""]
    for chunk in chunks:
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            found = _as_cases(json.loads(chunk))
        except json.JSONDecodeError:
            found = None
        if found:
            return found
        values = _json_values(chunk)
        if values:
            # One list (or wrapper) wins; otherwise the objects side by side are the cases.
            for v in values:
                if isinstance(v, list) and any(isinstance(x, dict) for x in v):
                    return v
            objects = [v for v in values if isinstance(v, dict)]
            if len(objects) == 1:
                found = _as_cases(objects[0])
                if found:
                    return found
            if objects:
                return objects
        try:
            found = _as_cases(yaml.safe_load(chunk))
        except yaml.YAMLError:
            found = None
        if found and any(isinstance(x, dict) for x in found):  # not a bullet list of prose
            return found
    return []


def normalise_candidate(raw: Any) -> Any:
    """Small, unambiguous repairs before validation: no id or split (review and split assign them), and an
    ``expect`` written as one mapping of several checks becomes the list of one-key checks it means."""
    if not isinstance(raw, dict):
        return raw
    case = {str(k): v for k, v in raw.items() if str(k) not in DROPPED_FIELDS}
    expect = case.get("expect")
    if isinstance(expect, dict):
        case["expect"] = [{k: v} for k, v in expect.items()]
    return case


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


def case_text(case: dict[str, Any]) -> str:
    """A case's main text (question, prompt or input): what duplicates are compared on."""
    for key in _TEXT_FIELDS:
        if isinstance(case.get(key), str) and case[key].strip():
            return str(case[key])
    return json.dumps(case, sort_keys=True, default=str)


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _normal(text: str, code: bool = False) -> str:
    """What makes two texts the same: case, spacing and punctuation do not count, except that in code only
    spacing does not (a missing semicolon is another program)."""
    return " ".join(text.split()) if code else " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _reason(err: CaseError) -> str:
    """One schema problem as a counter key: the field without the candidate's position, no quoted inputs."""
    where = re.sub(r"^cases\[0\]\.?", "", err.field or "")
    where = re.sub(r"\[\d+\]", "[]", where)
    message = re.sub(r" \(got .*\)$", "", err.message).split("; expected one of")[0]
    return f"{where}: {message}" if where else message


def leaks(case: CaseSpec) -> list[str]:
    """Expected answers that the case's own prompt text already contains (whole words, any case)."""
    f = case.fields
    shown = "\n".join(str(f[k]) for k in _LEAK_FIELDS if isinstance(f.get(k), str))
    expected: list[str] = []
    if case.kind == "choice" and isinstance(f.get("choices"), dict):
        expected.append(str(f["choices"].get(f.get("answer"), "")))
    elif case.kind == "labels":
        expected += [str(a) for a in f.get("answer") or []]
    for check in case.checks:
        params = check.params
        if check.name in ("contains", "equals"):
            value = params.value
            expected += [value] if isinstance(value, str) else list(value)
        elif check.name == "stdout":
            if params.equals:
                expected.append(params.equals)
            if params.contains:
                expected += [params.contains] if isinstance(params.contains, str) else list(params.contains)
    found = []
    for value in dict.fromkeys(v.strip() for v in expected if v and v.strip()):
        if re.search(rf"(?<!\w){re.escape(value)}(?!\w)", shown, re.IGNORECASE):
            found.append(value)
    return found


def _prompt_hash(messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """The request without its run (the seed): every run of one prompt shares the hash."""
    params = {k: v for k, v in params.items() if k != "seed"}
    blob = json.dumps({"messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A loaded case's fields as a person would write them: no defaults, no id or split."""
    return {k: v for k, v in fields.items()
            if k not in DROPPED_FIELDS and v is not None and v != [] and v != {}}


def _seeds(spec: GenerateSpec, target: Target) -> list[dict[str, Any]]:
    if spec.seeds is not None:
        return [normalise_candidate(s) for s in spec.seeds]
    raw = target.raw_cases or [_clean_fields(c.fields) for c in target.cases]
    return [normalise_candidate(c) for c in raw[:3]]


def generation_messages(spec: GenerateSpec, target: Target, seeds: list[dict[str, Any]], n: int
                        ) -> list[dict[str, str]]:
    """The request for ``n`` new cases: the kind's fields, the description, the seeds as examples."""
    kind = target.kind
    languages = sorted({str(s["language"]) for s in seeds if s.get("language") in ("python", "c")})
    labels = target.settings.get("labels") or sorted({str(a) for s in seeds for a in s.get("labels") or []})
    fields = KIND_FIELDS[kind].replace("{language}", " or ".join(languages) if languages else "python or c") \
        .replace("{labels}", ", ".join(map(str, labels)) if labels else "(your choice)")
    if kind == "labels" and not target.settings.get("labels"):
        fields += "\n- labels: the list of allowed labels"
    if kind == "code" and not spec.filters.compile:
        fields = fields.replace("\n- solution:", "\n- solution (optional):")
    if spec.filters.judge is not None and kind == "qna":
        fields = fields.replace("- reference: a short", "- reference (required): a short")
    examples = seeds or [KIND_EXAMPLES[kind]]
    parts = [f"Write {n} new test case{'s' if n != 1 else ''} for the suite {target.name!r} (kind: {kind})."]
    if spec.describe:
        parts.append(f"What the cases should cover: {spec.describe.strip()}")
    if target.settings.get("system"):
        parts.append(f"The model under test is told: {str(target.settings['system']).strip()}")
    if target.settings.get("expect"):
        parts.append("Every case is also checked with: " + json.dumps(target.settings["expect"], ensure_ascii=False))
    parts.append(f"Each case is a JSON object with these fields:\n{fields}")
    parts.append(("Examples of existing cases (do not repeat them):" if seeds else "An example case:")
                 + "\n```json\n[\n" + ",\n".join(json.dumps(e, ensure_ascii=False, default=str) for e in examples)
                 + "\n]\n```")
    parts.append(f"Make the {n} cases differ from the examples and from each other. Reply with a JSON list of {n} "
                 "objects and nothing else (no ids).")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


# ------------------------------------------------------------------------------------------------- pipeline


class _Pipeline:
    def __init__(self, spec_file: SpecFile, target: Target, runner: ModelRunner, generator: str,
                 judge_model: str | None, sandbox_level: str, embedding_model: str | None,
                 log: Callable[[str], None]) -> None:
        self.spec_file = spec_file
        self.spec = spec_file.spec
        self.target = target
        self.runner = runner
        self.generator = generator
        self.judge_model = judge_model
        self.sandbox_level = sandbox_level
        self.embedding_model = embedding_model
        self.log = log
        self.summary = Summary()
        self._sandbox: Sandbox | None = None
        self._existing_ids: list[str | None] = []
        self._existing_vectors: Any = None
        t = self.spec.transform
        # In transform mode duplicates are compared on the code, not on a prompt that every rewrite shares.
        self.text_field = None if t is None else (t.target_field or t.field or
                                                  ("input" if target.kind == "labels" else "solution"))

    def text_of(self, case: Any) -> str:
        if not isinstance(case, dict):
            return ""
        if self.text_field is not None and isinstance(case.get(self.text_field), str):
            return str(case[self.text_field])
        return case_text(case)

    # ---- model calls

    def complete(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], sample: int,
                 extra: dict[str, Any]) -> str:
        from pytest_llmeval.providers.resilience import BudgetExhausted
        from pytest_llmeval.providers.runner import ModelCallError

        try:
            return self.runner.complete(model, messages, params, sample=sample, key_extra=extra,
                                        semantic=False).text
        except (ModelCallError, BudgetExhausted) as exc:
            raise GenerateError(f"{model}: {getattr(exc, 'message', exc)}") from None

    def gen_params(self, run: int) -> dict[str, Any]:
        # A seed per run: a local model samples reproducibly, and hosted ones that honour it too.
        return {"temperature": self.spec.temperature, "max_tokens": self.spec.max_tokens, "seed": run}

    # ---- sandbox

    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            from pytest_llmeval.sandbox.isolation import Sandbox, SandboxUnavailable

            try:
                self._sandbox = Sandbox(self.sandbox_level, hide=[Path.cwd()])
            except SandboxUnavailable as exc:
                raise GenerateError(f"{exc} (or turn the compile filter off: filters: {{compile: false}})") from None
        return self._sandbox

    def execute(self, code: str, language: str, limits: dict[str, Any]) -> tuple[str | None, str | None, str]:
        """Run a program once: (failure step or None, why, stdout)."""
        from pytest_llmeval.checks.code import CodeContext
        from pytest_llmeval.sandbox.isolation import Limits

        with CodeContext(code, language, self.sandbox(), Limits(**limits)) as ctx:
            ok, why = ctx.compile()
            if not ok:
                return "no_compile", why, ""
            result = ctx.run()
            assert result is not None
            if not result.ok:
                tail = " | ".join(result.stderr.strip().splitlines()[-3:])[:300]
                return "failed_run", f"{result.reason}" + (f": {tail}" if tail else ""), result.stdout
            return None, None, result.stdout

    # ---- generate mode

    def generate_candidates(self) -> list[Candidate]:
        seeds = _seeds(self.spec, self.target)
        n = self.spec.per_run or self.spec.count
        messages = generation_messages(self.spec, self.target, seeds, n)
        out = []
        for run in range(self.spec.runs):
            params = self.gen_params(run)
            text = self.complete(self.generator, messages, params, run,
                                 {"purpose": "generate", "version": GENERATE_PROMPT_VERSION})
            self.summary.replies += 1
            found = parse_candidates(text)
            if not found:
                self.summary.unparsed_replies += 1
                self.summary.drops.append(("unparsed", "", f"run {run}: no cases in the reply: {_short(text, 120)!r}"))
            self.log(f"{self.generator} run {run + 1}/{self.spec.runs}: {len(found)} case(s)")
            for raw in found:
                case = normalise_candidate(raw)
                out.append(Candidate(case, run, _prompt_hash(messages, params), text=self.text_of(case)))
        return out

    # ---- transform mode

    def transform_candidates(self) -> list[Candidate]:
        from pytest_llmeval.checks.extract import extract_code

        t = self.spec.transform
        assert t is not None
        same = t.source is None
        source = self.target if t.source is None else load_target(
            (self.spec_file.path.parent / t.source).resolve(), None, self.target.registry, where="transform.source")
        text_mode = t.text if t.text is not None else self.target.kind in ("qna", "choice")
        default_field = ("question" if self.target.kind in ("qna", "choice") else "input") if text_mode \
            else ("input" if source.kind == "labels" else "solution")
        code_field = t.field or default_field
        self.text_field = t.target_field or code_field
        raw_by_id = {str(c.get("id")): c for c in source.raw_cases}
        wanted = set(t.cases) if t.cases is not None else None
        out: list[Candidate] = []
        if text_mode:
            return self._text_transforms(source, code_field, raw_by_id, wanted, same)
        for src in source.cases:
            if wanted is not None and src.id not in wanted:
                continue
            code = src.fields.get(code_field)
            if not isinstance(code, str) or not code.strip():
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"no {code_field!r} field with code"))
                continue
            language = t.language or src.fields.get("language") or _guess_language(code)
            failed, why, stdout = self.execute(code, str(language), src.limits)
            if failed:
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"the source itself does not run ({failed}: {why})"))
                continue
            self.summary.sources += 1
            messages = [{"role": "system", "content": TRANSFORM_SYSTEM},
                        {"role": "user", "content": f"{t.prompt.strip()}\n\n```{language}\n{code.rstrip()}\n```"}]
            # The new case: a copy of its source with the code replaced; a labels case made from another
            # suite's code is just the code and its label.
            base = _clean_fields(raw_by_id.get(src.id) or src.fields) if same or self.target.kind != "labels" \
                else {}
            origin = {} if same else {"source_suite": os.path.relpath(source.path, self.target.path.parent)}
            for run in range(self.spec.runs):
                params = self.gen_params(run)
                text = self.complete(self.generator, messages, params, run,
                                     {"purpose": "transform", "version": GENERATE_PROMPT_VERSION})
                self.summary.replies += 1
                new_code = extract_code(text, str(language))
                if new_code is None:
                    self.summary.unparsed_replies += 1
                    self.summary.drops.append(("unparsed", src.id, f"run {run}: no {language} code in the reply"))
                    continue
                case = {k: v for k, v in base.items() if k != code_field}
                case[t.target_field or code_field] = new_code
                if self.target.kind == "labels":
                    label = t.label or t.name
                    answer = [str(a) for a in case.get("answer") or []]
                    case["answer"] = answer + ([label] if label not in answer else [])
                else:
                    case["tags"] = [*(case.get("tags") or []), *([] if t.name in (case.get("tags") or []) else [t.name])]
                out.append(Candidate(case, run, _prompt_hash(messages, params), source_case=src.id, text=new_code,
                                     code=new_code, language=str(language), source_code=code,
                                     source_output=stdout, extra=dict(origin)))
            self.log(f"{self.generator}: {src.id} rewritten {self.spec.runs} time(s)")
        return out

    def _text_transforms(self, source: Target, text_field: str, raw_by_id: dict[str, Any], wanted: set[str] | None,
                         same: bool) -> list[Candidate]:
        """Transform mode on text (a paraphrase of each question, say): the new case is its source with the field
        rewritten, so its checks carry over; nothing runs."""
        t = self.spec.transform
        assert t is not None
        out: list[Candidate] = []
        origin = {} if same else {"source_suite": os.path.relpath(source.path, self.target.path.parent)}
        for src in source.cases:
            if wanted is not None and src.id not in wanted:
                continue
            original = src.fields.get(text_field)
            if not isinstance(original, str) or not original.strip():
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"no {text_field!r} text"))
                continue
            self.summary.sources += 1
            messages = [{"role": "system", "content": TEXT_TRANSFORM_SYSTEM},
                        {"role": "user", "content": f"{t.prompt.strip()}\n\n{original.strip()}"}]
            base = _clean_fields(raw_by_id.get(src.id) or src.fields)
            for run in range(self.spec.runs):
                params = self.gen_params(run)
                reply = self.complete(self.generator, messages, params, run,
                                      {"purpose": "transform", "version": GENERATE_PROMPT_VERSION})
                self.summary.replies += 1
                new_text = rewritten_text(reply)
                if not new_text:
                    self.summary.unparsed_replies += 1
                    self.summary.drops.append(("unparsed", src.id, f"run {run}: an empty reply"))
                    continue
                case = dict(base)
                case[t.target_field or text_field] = new_text
                case["tags"] = [*(case.get("tags") or []), *([] if t.name in (case.get("tags") or []) else [t.name])]
                out.append(Candidate(case, run, _prompt_hash(messages, params), source_case=src.id, text=new_text,
                                     source_code=original, extra=dict(origin)))
            self.log(f"{self.generator}: {src.id} rewritten {self.spec.runs} time(s)")
        return out

    # ---- filters

    def run(self) -> list[Candidate]:
        spec = self.spec
        candidates = self.transform_candidates() if spec.transform else self.generate_candidates()
        s = self.summary
        s.generated = len(candidates)
        valid: list[Candidate] = []
        for c in candidates:
            if not isinstance(c.case, dict):
                s.invalid_reasons["not a mapping of case fields"] += 1
                s.drop("invalid", None, f"not a mapping: {_short(repr(c.case))}")
                continue
            if spec.transform is None and self.target.kind == "code" and spec.filters.compile \
                    and not isinstance(c.case.get("solution"), str):
                s.invalid_reasons["solution: required field is missing (filters.compile)"] += 1
                s.drop("invalid", c, "no reference solution to compile")
                continue
            loaded, errors = self.target.validate(c.case)
            if loaded is None:
                reason = _reason(errors[0])
                s.invalid_reasons[reason] += 1
                s.drop("invalid", c, reason)
                continue
            c.spec = loaded
            c.filters.append("schema")
            valid.append(c)

        existing = self.existing_texts()
        vectors = self.embed([c.text for c in valid], existing) if spec.filters.dedupe else None
        kept: list[Candidate] = []
        kept_rows: list[int] = []
        code = self.text_field is not None
        seen = {_normal(t, code): src for t, src in existing}
        for i, c in enumerate(valid):
            if len(kept) >= spec.count:
                s.drop("surplus", c, f"beyond count: {spec.count}")
                continue
            key = _normal(c.text, code)
            if c.source_code is not None and key == _normal(c.source_code, code):
                s.drop("duplicates", c, "the rewrite is its source unchanged")
                continue
            if key in seen:
                s.drop("duplicates", c, "the same text as " + (f"case {seen[key]!r}" if seen[key] else
                                                               "a seed or an earlier candidate"))
                continue
            if vectors is not None:
                near = self.nearest(i, vectors, kept_rows, c.source_case)
                if near is not None and near >= (spec.filters.dedupe or 1):
                    s.drop("duplicates", c, f"cosine {near:.3f} >= {spec.filters.dedupe}")
                    continue
                c.extra["max_similarity"] = None if near is None else round(near, 4)
                c.filters.append("dedupe")
            if not self.code_filters(c):
                continue
            if spec.filters.judge is not None and self.target.kind != "calibration" and not self.judge(c):
                continue
            if spec.filters.leak and c.spec is not None:
                leaked = leaks(c.spec)
                if leaked:
                    c.flags.append("leak")
                    c.notes.append("leak: the prompt already contains the expected " +
                                   ", ".join(repr(v) for v in leaked))
                    s.leaks_flagged += 1
            seen[key] = None
            kept.append(c)
            kept_rows.append(i)
        s.kept = len(kept)
        return kept

    def existing_texts(self) -> list[tuple[str, str | None]]:
        """(text, case id) of what candidates must not duplicate: the suite's cases and the spec's seeds."""
        out: list[tuple[str, str | None]] = [(self.text_of(c.fields), c.id) for c in self.target.cases]
        out += [(self.text_of(s), None) for s in self.spec.seeds or [] if isinstance(s, dict)]
        return out

    def embed(self, texts: list[str], existing: list[tuple[str, str | None]]) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from pytest_llmeval.cache.embeddings import EmbeddingModelError, get_embedder

        try:
            embedder = get_embedder(self.embedding_model)
        except EmbeddingModelError as exc:
            raise GenerateError(f"filters.dedupe: {exc}") from None
        self._existing_ids = [cid for _, cid in existing]
        self._existing_vectors = embedder.encode([t for t, _ in existing])
        return embedder.encode(texts)

    def nearest(self, i: int, vectors: Any, kept_rows: list[int], source_case: str | None) -> float | None:
        """The highest cosine of candidate ``i`` with the existing cases (its own transform source excepted)
        and the candidates kept so far."""
        import numpy as np

        v = vectors[i]
        sims: list[float] = []
        if len(self._existing_vectors):
            scores = self._existing_vectors @ v
            sims += [float(x) for x, cid in zip(scores, self._existing_ids, strict=True)
                     if source_case is None or cid != source_case]
        if kept_rows:
            sims += [float(x) for x in vectors[np.asarray(kept_rows)] @ v]
        return max(sims) if sims else None

    def code_filters(self, c: Candidate) -> bool:
        """Code candidates: the solution (or the rewritten code) compiles, runs, passes the case's own code
        checks, and (transform) prints what its source printed."""
        s = self.summary
        assert c.spec is not None
        if c.code is not None and c.source_output is not None:  # transform mode: always run, it is the point
            t = self.spec.transform
            assert t is not None
            failed, why, stdout = self.execute(c.code, c.language or "c", c.spec.limits)
            if failed:
                s.drop(failed, c, str(why))
                return False
            c.extra["output"] = stdout
            c.filters.append("compile")
            if t.same_output:
                if _lines(stdout) != _lines(c.source_output):
                    s.drop("changed_output", c, f"prints {_short(stdout, 60)!r}, the source printed "
                                                f"{_short(c.source_output, 60)!r}")
                    return False
                c.filters.append("same_output")
            return True
        if self.target.kind != "code" or not self.spec.filters.compile:
            return True
        solution = c.case.get("solution")
        assert isinstance(solution, str)
        from pytest_llmeval.checks.code import CodeContext
        from pytest_llmeval.checks.extract import extract_code
        from pytest_llmeval.sandbox.isolation import Limits

        language = str(c.spec.fields["language"])
        code = extract_code(solution, language) if "```" in solution else solution
        with CodeContext(code, language, self.sandbox(), Limits(**c.spec.limits)) as ctx:
            ok, why = ctx.compile()
            if not ok:
                s.drop("no_compile", c, why)
                return False
            for check in c.spec.checks:
                if check.name == "files":
                    ctx.want_files(list(check.params.value))
            result = ctx.run()
            assert result is not None
            if not result.ok:
                s.drop("failed_run", c, str(result.reason))
                return False
            c.extra["output"] = result.stdout
            failures = []
            for check in c.spec.checks:
                d = check.definition
                if d is None or d.grade is None or not d.context or d.vision or d.judge:
                    continue
                outcome = d.grade(code, c.spec, check.params, ctx)
                if not outcome.passed:
                    failures.append(f"{check.name}: {outcome.reason}")
            if failures:
                s.drop("failed_checks", c, "; ".join(failures))
                return False
        c.filters.append("compile")
        return True

    def judge(self, c: Candidate) -> bool:
        """A judge model confirms the reference answer (or, for a rewrite, that it is faithful)."""
        from pytest_llmeval.checks.judge import (
            FIX_PROMPT,
            JUDGE_PARAMS,
            JUDGE_PROMPT_VERSION,
            ask_twice,
            judge_messages,
            parse_verdict,
            resolve_rubric,
        )

        jf = self.spec.filters.judge
        assert jf is not None and c.spec is not None and self.judge_model is not None
        question, answer = self.judge_material(c)
        if answer is None:
            self.summary.drop("judge_rejected", c, "no reference answer to judge")
            return False
        if c.source_case is not None:
            name, criteria = "faithful-rewrite", TRANSFORM_RUBRIC if c.code is not None else TEXT_TRANSFORM_RUBRIC
        else:
            name, criteria = resolve_rubric(jf.rubric)
        # The reference answer is what is judged, so it is not also shown as the reference.
        messages = judge_messages(criteria, question=question, answer=answer,
                                  context=_text(c.spec.fields.get("context")))
        model = self.judge_model
        from pytest_llmeval.providers.resilience import BudgetExhausted
        from pytest_llmeval.providers.runner import ModelCallError

        try:
            verdict, _ = ask_twice(
                lambda msgs, attempt: self.runner.complete(model, msgs, JUDGE_PARAMS, sample=attempt,
                                                           key_extra={"judge_prompt": JUDGE_PROMPT_VERSION},
                                                           semantic=False),
                messages, parse_verdict, FIX_PROMPT, [])
        except (ModelCallError, BudgetExhausted) as exc:
            raise GenerateError(f"filters.judge: {model}: {getattr(exc, 'message', exc)}") from None
        if verdict.score is None:
            self.summary.drop("judge_rejected", c, f"judge gave no usable score ({verdict.problem})")
            return False
        c.extra["judge"] = {"model": model, "rubric": name, "score": verdict.score, "reason": verdict.reason}
        if verdict.score < jf.min:
            self.summary.drop("judge_rejected", c, f"{name} {verdict.score:g}/10 < {jf.min:g}: {verdict.reason}")
            return False
        c.filters.append("judge")
        return True

    def judge_material(self, c: Candidate) -> tuple[str, str | None]:
        """(question, answer) for the judge: the case's prompt and its reference answer."""
        assert c.spec is not None
        f = c.spec.fields
        if c.source_case is not None:
            t = self.spec.transform
            assert t is not None
            if c.code is None:  # a text rewrite
                return f"Instruction: {t.prompt}\n\nOriginal text:\n{c.source_code}", c.text
            return f"Instruction: {t.prompt}\n\nOriginal code:\n{c.source_code}", c.code
        kind = c.spec.kind
        if kind == "choice":
            return c.spec.prompt, f"{f['answer']}) {f['choices'][f['answer']]}"
        if kind == "labels":
            return c.spec.prompt, ", ".join(map(str, f.get("answer") or [])) or "(no label applies)"
        if kind == "code":
            solution = f.get("solution")
            return c.spec.prompt, None if solution is None else str(solution)
        if f.get("reference"):
            return c.spec.prompt, str(f["reference"])
        expected = [v for ch in c.spec.checks if ch.name in ("contains", "equals")
                    for v in ([ch.params.value] if isinstance(ch.params.value, str) else ch.params.value)]
        return c.spec.prompt, ("An answer that says: " + "; ".join(expected)) if expected else None


_LEAD = re.compile(r"^\s*(?:(?:here is|here's)\b[^:\n]*:|(?:rewritten|new|paraphrased)\s+\w+\s*:|question\s*:)\s*",
                   re.IGNORECASE)


def rewritten_text(reply: str) -> str:
    """The rewrite in a model's reply: without a fence, a "Here is the rewritten question:" lead-in or quotes;
    the first paragraph only (small models go on to answer it)."""
    text = reply.strip()
    fence = re.search(r"```[\w-]*\n(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    text = _LEAD.sub("", text, count=1).strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text.strip("“”").strip()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return "\n\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _lines(text: str) -> list[str]:
    """Output compared line by line, ignoring trailing spaces and trailing blank lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


_C_DEFINITION = re.compile(r"#include\b|^\s*(?:static\s+|const\s+|unsigned\s+|inline\s+)*(?:int|void|char|float|"
                           r"double|long|short|size_t|bool|struct\s+\w+)[\s*]+\w+\s*\([^)]*\)\s*\{", re.MULTILINE)


def _guess_language(code: str) -> str:
    """C when the code has an #include or a C function definition, else Python."""
    return "c" if _C_DEFINITION.search(code) else "python"


def generate(spec_file: SpecFile, runner: ModelRunner, *, model: str | None = None, judge_model: str | None = None,
             sandbox: str = "auto", embedding_model: str | None = None, registry: CheckRegistry | None = None,
             log: Callable[[str], None] = lambda _msg: None) -> Generated:
    """Run a spec: generate (or transform), validate, filter. Raises GenerateError on user-facing failures."""
    from pytest_llmeval.checks.builtin import builtin_registry

    spec = spec_file.spec
    target_path = (spec_file.path.parent / spec.suite).resolve()
    target = load_target(target_path, spec.kind, registry or builtin_registry())
    generator = generator_model(spec, model)
    problem = runner.check_model(generator)
    if problem:
        raise GenerateError(problem)
    judge = None
    self_judging = False
    if spec.filters.judge is not None:
        judge = spec.filters.judge.model or judge_model or os.environ.get("LLMEVAL_JUDGE") or generator
        self_judging = judge == generator
        problem = runner.check_model(judge)
        if problem:
            raise GenerateError(f"filters.judge: {problem}")
    pipeline = _Pipeline(spec_file, target, runner, generator, judge, sandbox, embedding_model, log)
    kept = pipeline.run()
    return Generated(spec_file, target, generator, judge, kept, pipeline.summary, self_judging)


def generator_model(spec: GenerateSpec, override: str | None) -> str:
    """--model > the spec's model > LLMEVAL_MODELS (its first) > local/smollm2."""
    from pytest_llmeval.config.settings import DEFAULT_MODEL

    env = [m.strip() for m in os.environ.get("LLMEVAL_MODELS", "").split(",") if m.strip()]
    return override or spec.model or (env[0] if env else DEFAULT_MODEL)


# ------------------------------------------------------------------------------------------- the review file


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key, multi-line strings as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _represent_str)


def default_review_path(target: Path) -> Path:
    """``<suite stem>.review.yaml`` next to the suite."""
    return target.with_name(target.stem + REVIEW_SUFFIX)


def review_document(result: Generated, review_path: Path) -> dict[str, Any]:
    """The review file's content (see the module docstring of ``llmeval review`` for how it is consumed)."""
    spec = result.spec.spec
    base = review_path.resolve().parent
    candidates = []
    for c in result.kept:
        provenance: dict[str, Any] = {
            "source": "transform" if c.source_case is not None else "generate",
            "generator": result.generator,
            "temperature": spec.temperature,
            "run": c.run,
            "prompt_hash": c.prompt_hash,
            "filters": c.filters,
            "transformation": spec.transform.name if spec.transform is not None else None,
            "source_case": c.source_case,
        }
        provenance.update({k: v for k, v in c.extra.items() if v is not None})
        entry: dict[str, Any] = {"status": "pending", "case": c.case, "provenance": provenance}
        if c.flags:
            entry["flags"] = c.flags
        if c.notes:
            entry["notes"] = c.notes
        candidates.append(entry)
    return {
        "suite": os.path.relpath(result.target.path, base),
        "kind": result.target.kind,
        "spec": os.path.relpath(result.spec.path.resolve(), base),
        "generated_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "spec_hash": result.spec.hash,
        "generator": result.generator,
        "judge": result.judge_model,
        "summary": result.summary.to_dict(transform=spec.transform is not None),
        "candidates": candidates,
    }


def dump_review(doc: dict[str, Any], name: str) -> str:
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    return REVIEW_HEADER.format(name=name) + body


def write_review(result: Generated, path: Path, *, force: bool = False) -> Path:
    """Write the review file atomically. An existing one in which a person already accepted, rejected or skipped
    something is kept unless ``force``."""
    if path.exists() and not force:
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        reviewed = [c for c in old.get("candidates") or [] if isinstance(c, dict) and c.get("status") != "pending"]
        if reviewed:
            raise GenerateError(f"{path} already has {len(reviewed)} reviewed candidate(s); finish it with "
                                f"`llmeval review {path}`, or pass --force to overwrite it (or --out elsewhere)")
    text = dump_review(review_document(result, path), path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def read_review(path: Path) -> dict[str, Any]:
    """A review file's content (for ``llmeval review`` and tests)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
        raise GenerateError(f"{path}: not a review file (no 'candidates')")
    return data


# ----------------------------------------------------------------------------------------------------- cli

_ROWS = [("invalid", "schema"), ("duplicates", "dedupe"), ("no_compile", "compile"), ("failed_run", "run"),
         ("failed_checks", "own checks"), ("changed_output", "same output"), ("judge_rejected", "judge"),
         ("surplus", "over count")]


def format_summary(result: Generated) -> list[str]:
    """The table ``llmeval generate`` prints: what each filter removed."""
    s = result.summary
    spec = result.spec.spec
    lines = [f"{s.generated} candidate(s) from {s.replies} repl{'y' if s.replies == 1 else 'ies'} of "
             f"{result.generator}" + (f" ({s.unparsed_replies} without any case)" if s.unparsed_replies else "")]
    if spec.transform is not None:
        lines.append(f"transform {spec.transform.name!r}: {s.sources} source case(s)"
                     + (f", {s.sources_skipped} skipped (no runnable code)" if s.sources_skipped else ""))
    rows = [("generated", "", str(s.generated), "")]
    for key, step in _ROWS:
        n = getattr(s, key)
        note = ""
        if key == "invalid" and s.invalid_reasons:
            note = "; ".join(f"{r} ({k})" for r, k in s.invalid_reasons.most_common(3))
            if len(s.invalid_reasons) > 3:
                note += f"; {len(s.invalid_reasons) - 3} more reason(s)"
        elif key == "duplicates" and spec.filters.dedupe:
            note = f"cosine >= {spec.filters.dedupe:g}"
        elif key == "judge_rejected" and result.judge_model:
            note = result.judge_model + (" (self-judging is weak)" if result.self_judging else "")
        elif key == "surplus":
            note = f"count: {spec.count}"
        rows.append((step, key, f"-{n}" if n else "0", note))
    rows.append(("kept", "", str(s.kept), f"{s.leaks_flagged} flagged: leak" if s.leaks_flagged else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("step", "counted as", "n", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header[:3], strict=True)]
    for row in [header, *rows]:
        lines.append("  " + "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                                        row[2].rjust(widths[2]), row[3]]).rstrip())
    return lines


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``llmeval generate`` on the subparsers object of cli.build_parser."""
    from pytest_llmeval.sandbox.isolation import LEVELS

    gen = commands.add_parser(
        "generate", help="generate candidate cases from a spec into a review file",
        description="Ask a model for candidate cases (from a spec file: the target suite, what to cover, seeds, "
        "count, model, temperature, runs), validate them against the suite's schema, filter them (duplicates, "
        "code that does not compile or run, a judge), and write a review file for `llmeval review`. Every model "
        "call goes through the response cache.")
    gen.add_argument("spec", help="the spec file (YAML)")
    gen.add_argument("--out", default=None, help="the review file (default: <suite stem>.review.yaml next to the "
                     "suite)")
    gen.add_argument("--model", default=None, help="the generator model (default: the spec's model, else "
                     "LLMEVAL_MODELS, else local/smollm2)")
    gen.add_argument("--judge", default=None, help="the judge model of filters.judge when the spec names none "
                     "(default: LLMEVAL_JUDGE, else the generator)")
    gen.add_argument("--api-base", default=None, help="base URL for hosted models (an OpenAI-compatible server); "
                     "env LLMEVAL_API_BASE")
    gen.add_argument("--cache-dir", default=None, help="the response cache (default: LLMEVAL_CACHE_DIR, else "
                     ".llmeval/cache)")
    gen.add_argument("--no-cache", action="store_true", help="neither read nor write the response cache")
    gen.add_argument("--sandbox", default=os.environ.get("LLMEVAL_SANDBOX", "auto"), choices=LEVELS,
                     help="isolation of candidate code (default auto: bwrap, else unshare)")
    gen.add_argument("--force", action="store_true", help="overwrite a review file that was partly reviewed")
    gen.add_argument("--dry-run", action="store_true", help="print the generation request and how many calls "
                     "it takes; call no model, write nothing")
    gen.add_argument("-v", "--verbose", action="store_true", help="list every dropped candidate and why")
    gen.set_defaults(func=cmd_generate)
    return gen  # type: ignore[no-any-return]


def cmd_generate(args: argparse.Namespace) -> int:
    """``llmeval generate SPEC``: print the summary table and write the review file."""
    from pytest_llmeval.checks.builtin import builtin_registry
    from pytest_llmeval.config.settings import Settings
    from pytest_llmeval.providers.runner import ModelRunner

    try:
        spec_file = load_spec(Path(args.spec))
    except CaseFileError as exc:
        raise CommandError("invalid spec:\n" + "\n".join(e.format() for e in exc.errors)) from None
    spec = spec_file.spec
    target_path = (spec_file.path.parent / spec.suite).resolve()
    out = Path(args.out) if args.out else default_review_path(target_path)
    if args.dry_run:
        try:
            target = load_target(target_path, spec.kind, builtin_registry())
        except GenerateError as exc:
            raise CommandError(str(exc)) from None
        model = generator_model(spec, args.model)
        if spec.transform is None:
            messages = generation_messages(spec, target, _seeds(spec, target), spec.per_run or spec.count)
            print(f"dry run: {spec.runs} call(s) to {model} at temperature {spec.temperature:g}, asking for "
                  f"{spec.per_run or spec.count} case(s) each; keeping at most {spec.count}")
            for m in messages:
                print(f"--- {m['role']}\n{m['content']}")
        else:
            print(f"dry run: {spec.runs} call(s) per source case to {model}: {spec.transform.prompt!r}")
        print(f"would write {out}")
        return 0
    api_base = args.api_base or os.environ.get("LLMEVAL_API_BASE") or None
    cache_dir = Path(args.cache_dir or os.environ.get("LLMEVAL_CACHE_DIR") or ".llmeval/cache")
    model = generator_model(spec, args.model)
    settings = Settings(models=(model,), api_base=api_base, cache_dir=cache_dir,
                        cache_mode="off" if args.no_cache else "on",
                        results_path=cache_dir.parent / "results.json", sandbox=args.sandbox)
    runner = ModelRunner(settings)
    try:
        result = generate(spec_file, runner, model=model, judge_model=args.judge, sandbox=args.sandbox,
                          log=lambda msg: print(msg, file=sys.stderr))
        path = write_review(result, out, force=args.force)
    except GenerateError as exc:
        raise CommandError(str(exc)) from None
    finally:
        runner.close()
    print(f"llmeval generate: {spec_file.path} -> {result.target.path.name} ({result.target.kind})")
    for line in format_summary(result):
        print(line)
    if args.verbose:
        for step, text, why in result.summary.drops:
            print(f"  dropped [{step}] {text}: {why}" if text else f"  dropped [{step}] {why}")
    print(f"wrote {path} ({result.summary.kept} candidate(s)); review it with: llmeval review {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``llmeval generate`` on its own (until cli.py registers it; tests call this)."""
    parser = argparse.ArgumentParser(prog="llmeval")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"llmeval: error: {exc}", file=sys.stderr)
        return 2


def is_flywheel_file(path: Path) -> bool:
    """Spec and review files (``*.gen.yaml``, ``*.review.yaml``) live among suites but are not suites: case
    collection should skip them."""
    return path.name.endswith((REVIEW_SUFFIX, SPEC_SUFFIX))


__all__ = ["GenerateError", "GenerateSpec", "Generated", "SpecFile", "Summary", "add_parser", "cmd_generate",
           "default_review_path", "format_summary", "generate", "generation_messages", "is_flywheel_file", "leaks",
           "load_spec", "main", "parse_candidates", "read_review", "review_document", "write_review"]
