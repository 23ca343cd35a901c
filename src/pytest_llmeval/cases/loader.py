"""The case-file loader: one file (YAML or JSONL) in, its valid CaseSpecs and its CaseErrors out.

A suite file (YAML) holds suite-level settings and ``cases``, and may pull more cases from a JSONL
``dataset`` with a field mapping; a bare JSONL file under a case directory is a suite of its own.
Every problem becomes a :class:`CaseError` naming the file, the line and the field, so that one broken
case (or file) is reported on its own while everything else still runs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pytest_llmeval.cases.conversation import (
    CONVERSATION_CHECKS,
    conversation_prompt,
    parse_turn_checks,
    turn_texts,
)
from pytest_llmeval.cases.schema import (
    CASE_MODELS,
    IMAGE_SUFFIXES,
    IMPLIED_CHECK,
    KINDS,
    SAMPLING_PARAMS,
    CaseError,
    CaseFileError,
    CaseSpec,
    DatasetModel,
    LoadedFile,
    Loc,
    SuiteModel,
    _did_you_mean,
    _model_attr,
    _pydantic_errors,
    derived_fields,
    format_loc,
    params_problems,
    parse_check,
    render_prompt,
    template_fields,
)
from pytest_llmeval.cases.targets import parse_target
from pytest_llmeval.cases.tools import AGENT_FIELDS, SuiteTools, case_tools, suite_tools
from pytest_llmeval.cases.yaml_lines import Duplicate, _line_lookup, _releaser, _yaml_with_lines
from pytest_llmeval.core.checks import CheckRegistry, CheckSpec
from pytest_llmeval.core.targets import TargetRegistry, TargetSpec

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
        if not isinstance(name, str) or name in known or name in template or name in needs or name in READ_FIELDS \
                or name in AGENT_FIELDS:  # reported by cases/tools.py for a kind that has no tools
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
    listed = [n for c in checks if c.name == "files" for n in c.params.value]
    if any(n.lower().endswith(IMAGE_SUFFIXES) for n in listed):
        return []
    return [(("expect", i, c.name) if i < suite_checks else loc + ("expect", i - suite_checks, c.name),
             f"check {c.name!r} needs the image file: give file: out.png, or list the image in a files check "
             "(files: [out.png])")
            for i, c in enumerate(checks) if c.definition is not None and c.definition.vision and c.params.file is None]


def _conversation_problems(raw: dict[str, Any], loc: Loc, kind: str, suite: SuiteModel, checks: list[CheckSpec],
                           suite_checks: int, conversation: bool) -> list[tuple[Loc, str]]:
    """What does not fit a conversation: ``turns``/``simulate`` on a case of another kind, retrieval or robustness on
    a conversation, a conversation-level check (``goal``) on a case that is not one. ``checks`` are the suite's
    (the first ``suite_checks``), then the case's own."""
    problems: list[tuple[Loc, str]] = []
    if kind != "qna":
        problems += [(loc + (name,), f"a conversation ({name}) applies to qna cases, not {kind!r}")
                     for name in ("turns", "simulate") if name in raw]
        return problems
    if conversation:
        if raw.get("simulate") is None:  # a script has no simulate.goal: the check must name the goal
            for i, c in enumerate(checks):
                if c.name in CONVERSATION_CHECKS and getattr(c.params, "goal", None) is None:
                    where = ("expect", i, c.name) if i < suite_checks else loc + ("expect", i - suite_checks, c.name)
                    problems.append((where, f"a scripted conversation has no simulate.goal: name the user's goal, "
                                            f"e.g. {{{c.name}: <what the user wants>}}"))
        for name, value in (("retrieve", suite.retrieve), ("robustness", suite.robustness)):
            if raw.get(name) is not None:
                problems.append((loc + (name,), f"{name} does not apply to a conversation case (turns, simulate)"))
            elif value is not None:
                problems.append((loc, f"the suite's {name} does not apply to a conversation case (turns, "
                                      "simulate): move the conversation to a suite of its own"))
        return problems
    for i, c in enumerate(checks):
        if c.name in CONVERSATION_CHECKS:
            where = ("expect", i, c.name) if i < suite_checks else loc + ("expect", i - suite_checks, c.name)
            problems.append((where, f"the {c.name} check grades a conversation: this case has no turns or simulate"))
    return problems


class _Loader:
    """Turns one file's raw data into CaseSpecs and CaseErrors."""

    def __init__(self, path: Path, registry: CheckRegistry, targets: TargetRegistry | None = None,
                 app_default: bool = False) -> None:
        self.path = path
        self.registry = registry
        self.targets = targets
        self.target: TargetSpec | None = None
        self.suite_tools = SuiteTools()  # the suite's tools, returns and agent options (cases/tools.py)
        self.app_default = app_default  # --llm-target names an application: its references make sources meaningful
        # Problems found before validation (keys repeated in a case), by the case's location: (line, loc, message).
        self.case_problems: dict[Loc, list[tuple[int | None, Loc, str]]] = {}
        # The checks validated so far, by what was written (see _check_key): their parameters are shared.
        self.checks_seen: dict[tuple[Any, ...], CheckSpec] = {}

    @property
    def app_target(self) -> bool:
        """The cases are answered by an application (which may return references)."""
        return self.target is not None and not self.target.is_model or self.target is None and self.app_default

    def error(self, line: int | None, loc: Loc | str | None, message: str, case_id: str | None = None,
              path: Path | None = None) -> CaseError:
        shown = format_loc(loc) if isinstance(loc, tuple) else loc
        return CaseError(path or self.path, line, shown or None, message, case_id)

    def parse_check(self, entry: Any, loc: Loc, kind: str, line_of: Callable[[Loc], int | None], base: Path
                    ) -> tuple[CheckSpec | None, list[tuple[Loc, str]]]:
        """schema.parse_check, with the parameters of a check written the same way before in this file shared: the
        cases of a suite mostly repeat their checks, and a validated parameters model is ~350 B that every case would
        otherwise keep to the end of the run. Only a valid check is remembered; its line is always this entry's."""
        key = _check_key(entry, kind, base)
        seen = self.checks_seen.get(key) if key is not None else None
        if seen is not None:
            return CheckSpec(seen.name, seen.params, line_of(loc), seen.definition), []
        spec, errs = parse_check(entry, loc, kind, self.registry, line_of, base)
        if key is not None and spec is not None and not errs:
            self.checks_seen[key] = spec
        return spec, errs

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
            spec, errs = self.parse_check(entry, loc + ("expect", j), kind, line_of, path.parent)
            problems += errs
            if spec:
                checks.append(spec)
        conversation = kind == "qna" and (raw.get("turns") is not None or raw.get("simulate") is not None)
        turn_checks: list[list[CheckSpec]] = []
        if conversation:
            turn_checks, errs = parse_turn_checks(raw.get("turns"), loc, lambda entry, at: parse_check(
                entry, at, kind, self.registry, line_of, path.parent))
            problems += errs
        problems += _conversation_problems(raw, loc, kind, suite, checks, len(suite_checks), conversation)
        check_locs = [(c.name, ("expect", i, c.name) if i < len(suite_checks) else
                       loc + ("expect", i - len(suite_checks), c.name)) for i, c in enumerate(checks)]
        agent, errs = case_tools(raw, loc, kind, conversation, self.suite_tools, _model_attr(model, "agent")
                                 if model is not None else None, line_of, check_locs, self.app_target)
        problems += errs
        for spec in [*checks, *(c for t in turn_checks for c in t)]:
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
                                             retrieval=raw.get("retrieve") is not None or suite.retrieve is not None
                                             or self.app_target)
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
        if not checks and not problems and conversation and not any(turn_checks):
            problems.append((loc + ("expect",), "no checks: a simulated conversation is graded as a whole, e.g. "
                                                "expect: [{goal: true}]" if raw.get("simulate") is not None else
                             "no checks: add expect to the case (the whole conversation, e.g. [{judge: ...}]) or "
                             "to a turn ({user: ..., expect: [{contains: ...}]})"))
        if not checks and not problems and not conversation:
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
        if model is not None and conversation:
            dumped = model.model_dump()
            prompt = conversation_prompt(raw)  # no template: the turns are sent as written
        elif model is not None:
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
            if model.sources and rspec is None and not self.app_target:
                problems.append((loc + ("sources",), "sources need retrieval (add retrieve: {docs: ...} to the "
                                                     "suite or the case) or an application target that returns "
                                                     "references (target: ...)"))
            robust = model.robustness or suite.robustness
            where = loc + ("robustness", "perturb") if model.robustness else ("robustness", "perturb")
            if robust is not None and "reorder_choices" in robust.perturb and kind != "choice":
                problems.append((where, f"reorder_choices applies to choice cases, not {kind!r}"))
            if robust is not None and agent.tools:
                problems.append((where, "robustness does not apply to agent cases (tools) yet: give them a suite of "
                                        "their own"))
            if robust is not None and kind == "calibration":
                problems.append((where, "calibration cases grade a judge, not a model: robustness does not apply"))

        early = self.case_problems.get(loc, []) if loc else []
        if problems or model is None or early:
            return [self.error(at, p_loc, msg, case_id, path=path) for at, p_loc, msg in early] \
                + [self.error(line_of(p_loc), p_loc, msg, case_id, path=path) for p_loc, msg in problems]

        return CaseSpec(
            suite=suite_name, kind=kind, id=model.id, path=path, line=line,
            system=model.system if model.system is not None else suite.system,
            # The suite's params, shared, when the case has none of its own (never modified: ~200 B a case).
            prompt=prompt, params={**suite.params, **model.params} if model.params else suite.params,
            tags=tuple(dict.fromkeys([*suite.tags, *model.tags])), checks=checks,
            fields={k: v for k, v in dumped.items()
                    if k not in ("expect", "limits", "retrieve", "split", "robustness", "turns", "tools", "returns",
                                 "agent")},
            limits={**(suite.limits.model_dump(exclude_none=True) if suite.limits else {}),
                    **(limits.model_dump(exclude_none=True) if (limits := _model_attr(model, "limits")) else {})},
            pass_if=model.pass_if or suite.pass_if,
            retrieve=retrieve,
            sources=tuple(model.sources or ()),
            split=model.split or suite.split or "dev",
            robustness=(model.robustness or suite.robustness).model_dump()  # type: ignore[union-attr]
            if (model.robustness or suite.robustness) else None,
            template=suite.prompt,
            target=self.target,
            turns=tuple(turn_texts(_model_attr(model, "turns"))),
            turn_checks=tuple(tuple(t) for t in turn_checks),
            simulate=simulate.model_dump() if (simulate := _model_attr(model, "simulate")) is not None else None,
            tools=agent.tools, returns=agent.returns, agent=agent.agent,
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
        release = _releaser(lines)
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
        if suite.target is not None:
            self.target, errs = parse_target(suite.target, ("target",), self.targets, line_of, self.path)
            file_problems += errs
            out.target = self.target
        self.suite_tools, errs = suite_tools(suite, line_of)
        file_problems += errs
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
            if loc:
                release(loc)  # its nodes: every line it needs is known now
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


_SCALARS = (str, int, float, bool, type(None))


def _check_key(entry: Any, kind: str, base: Path) -> tuple[Any, ...] | None:
    """What a check entry is, as a key (None: not a one-key mapping of scalars, or of a mapping of scalars). The
    types are part of it: ``1``, ``1.0`` and ``true`` are equal keys but may validate differently."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return None
    name, value = next(iter(entry.items()))
    if isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in value.items()):
            return None
        return kind, base, name, dict, tuple((k, type(v), v) for k, v in value.items())
    if isinstance(value, _SCALARS):
        return kind, base, name, type(value), value
    return None


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


_CACHE: dict[tuple[Any, ...], LoadedFile] = {}


def load_file(path: Path, registry: CheckRegistry, targets: TargetRegistry | None = None,
              app_default: bool = False) -> LoadedFile:
    """Load and validate one case file (memoised on path, mtime, size and registries). ``targets``: the run's
    target kinds, which validate a suite's ``target:`` (None, outside a run: not checked); ``app_default``:
    ``--llm-target`` names an application, the target of the suites that name none."""
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size, id(registry), id(targets), app_default)
    if key in _CACHE:
        return _CACHE[key]
    loader = _Loader(path, registry, targets, app_default)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        loaded = LoadedFile(path, path.stem, errors=[loader.error(None, None, f"cannot read the file: {exc}")])
    else:
        loaded = loader.load_jsonl(text) if path.suffix == ".jsonl" else loader.load_yaml(text)
    _CACHE[key] = loaded
    return loaded


def referenced_datasets(files: Iterable[Path], registry: CheckRegistry, targets: TargetRegistry | None = None,
                        app_default: bool = False) -> set[Path]:
    """JSONL files that suite files use as datasets (they are not suites of their own)."""
    out: set[Path] = set()
    for f in files:
        out.update(load_file(f, registry, targets, app_default).datasets)
    return out
