"""A review file (YAML, written by ``llmeval generate`` or ``llmeval import-feedback``): read, decided on, written
back at once; and a candidate accepted into its target suite file.

The file names its target suite file (``suite:``, relative to the review file) and lists ``candidates``, each with
a ``status`` (pending | accepted | rejected | skipped), the ``case`` in the case schema, its ``provenance`` and
optional ``flags``. An accepted case is appended to the suite file as text (``cases.writer.append_yaml_cases``:
comments, order and quoting of the file are kept) with a deterministic id and a problem-level split
(``holdout.assign_splits``), and only once the resulting file loads with the real loader. The suite file is
written before the review file; a run that finds the case already written (same id, same content: an earlier run
stopped in between) records it instead of appending it twice.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from pytest_llmeval.cases.schema import InvalidCase
from pytest_llmeval.cases.writer import (
    CaseFileEditError,
    Flow,
    FlowList,
    append_jsonl_cases,
    append_yaml_cases,
    dump_yaml,
    new_suite_text,
    write_atomic,
)
from pytest_llmeval.core.errors import CommandError

STATUSES = ("pending", "accepted", "rejected", "skipped")


class ReviewError(CommandError):
    """A user-facing failure (``llmeval: error: ...``, exit status 2)."""


# ------------------------------------------------------------------------------------------ review files


class _Loader(yaml.SafeLoader):
    """Timestamps stay strings: ``generated_at`` is written back as it was read."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def dump_review(data: dict[str, Any]) -> str:
    """A review file's YAML: candidates in block style (cases readable, multi-line text as literal blocks),
    ``summary``, each ``provenance`` and ``flags`` on one line."""
    doc = dict(data)
    if isinstance(doc.get("summary"), dict):
        doc["summary"] = Flow(doc["summary"])
    cands = []
    for c in doc.get("candidates") or []:
        c = dict(c)
        if isinstance(c.get("provenance"), dict):
            c["provenance"] = Flow(c["provenance"])
        if isinstance(c.get("flags"), list):
            c["flags"] = FlowList(c["flags"])
        cands.append(c)
    doc["candidates"] = cands
    return dump_yaml(doc)


def review_header(tool: str, name: str) -> str:
    return f"# written by {tool}; review with: llmeval review {name}\n"


def write_review(path: Path, data: dict[str, Any], header: str = "") -> None:
    """Write a review file atomically (a reader never sees half a file)."""
    write_atomic(path, header + dump_review(data))


def _leading_comments(text: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        out.append(line)
    return "".join(out)


@dataclass
class ReviewFile:
    """A loaded review file. ``save`` rewrites it (its leading comment lines kept)."""

    path: Path
    data: dict[str, Any]
    header: str = ""

    @classmethod
    def load(cls, path: Path) -> ReviewFile:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReviewError(f"cannot read the review file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ReviewError(f"{path}: not a review file: YAML syntax error: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("suite"), str) or not data["suite"].strip():
            raise ReviewError(f"{path}: not a review file: expected a mapping with 'suite' (the target suite file) "
                              "and 'candidates'")
        cands = data.setdefault("candidates", [])
        if not isinstance(cands, list):
            raise ReviewError(f"{path}: 'candidates' must be a list")
        for n, c in enumerate(cands, start=1):
            if not isinstance(c, dict) or not isinstance(c.get("case"), dict):
                raise ReviewError(f"{path}: candidate {n}: expected a mapping with 'case' (a mapping of case fields)")
            status = c.get("status", "pending")
            if status not in STATUSES:
                raise ReviewError(f"{path}: candidate {n}: status {status!r} is not one of {', '.join(STATUSES)}")
            cands[n - 1] = {"status": status, **{k: v for k, v in c.items() if k != "status"}}
        return cls(path, data, _leading_comments(text))

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return self.data["candidates"]  # type: ignore[no-any-return]

    @property
    def target(self) -> Path:
        """The suite file accepted cases go to."""
        return self.path.parent / self.data["suite"]

    @property
    def kind(self) -> str:
        return str(self.data.get("kind") or "qna")

    def counts(self) -> Counter[str]:
        return Counter(c["status"] for c in self.candidates)

    def save(self) -> None:
        write_review(self.path, self.data, self.header)

    def decide(self, index: int, status: str, **fields: Any) -> None:
        """Record a decision (status first, then what it produced, then the candidate's other keys) and save."""
        old = self.candidates[index]
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        new = {"status": status, **fields, "decided_at": stamp}
        new.update((k, v) for k, v in old.items() if k not in new and k not in ("id", "split", "written_to"))
        self.candidates[index] = new
        self.save()


# ------------------------------------------------------------------------------------------- accepting


def canonical_json(case: dict[str, Any]) -> str:
    """The case's identity: its fields (without ``id`` and ``split``) as sorted, compact JSON."""
    body = {k: v for k, v in case.items() if k not in ("id", "split")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def case_id(suite: str, case: dict[str, Any]) -> str:
    """``<suite>-<first 8 hex of sha256 of the canonical JSON>``: the same case gets the same id on every run
    and machine. Characters an id may not hold (spaces in a suite name) become '-'."""
    digest = hashlib.sha256(canonical_json(case).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', suite).strip('-.') or 'case'}-{digest}"


@cache
def _registry() -> Any:
    from pytest_llmeval.checks.builtin import builtin_registry

    return builtin_registry()


@dataclass
class Accepted:
    id: str
    split: str
    written_to: str
    recovered: bool = False  # it was already in the suite file (a run stopped before recording it)


_TMP_SERIAL = itertools.count(1)


@dataclass
class _Suite:
    """The target suite file as it is now."""

    path: Path
    kind: str
    exists: bool
    text: str
    name: str
    raw: list[dict[str, Any]]  # the cases as written (YAML ``cases`` or JSONL rows)
    loaded: Any = None  # LoadedFile, when the file exists

    @classmethod
    def read(cls, path: Path, kind: str, review_name: str) -> _Suite:
        from pytest_llmeval.cases.loader import load_file

        jsonl = path.suffix == ".jsonl"
        if not path.is_file():
            text = "" if jsonl else new_suite_text(f"cases accepted with: llmeval review {review_name}", kind)
            return cls(path, kind, False, text, path.stem, [])
        text = path.read_text(encoding="utf-8")
        loaded = load_file(path, _registry())
        raw: list[Any] = []
        if jsonl:
            for line in text.splitlines():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        else:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InvalidCase([f"{path.name} does not parse, so nothing can be appended to it: {exc}"]) from None
            if isinstance(data, dict):
                kind = str(data.get("kind") or "qna")  # the file's kind, not the review's
                raw = data["cases"] if isinstance(data.get("cases"), list) else []
        return cls(path, kind, True, text, loaded.suite, [r for r in raw if isinstance(r, dict)], loaded)

    def ids(self) -> set[str]:
        ids = {str(r["id"]) for r in self.raw if r.get("id") is not None}
        return ids | ({c.id for c in self.loaded.cases} if self.loaded else set())

    def appended(self, case: dict[str, Any]) -> str:
        if self.path.suffix == ".jsonl":
            return append_jsonl_cases(self.text, [case if self.kind == "qna" else {"kind": self.kind, **case}])
        try:
            return append_yaml_cases(self.text, [case])
        except (CaseFileEditError, yaml.YAMLError) as exc:
            raise InvalidCase([f"cannot append to {self.path.name}: {exc}"]) from None

    def check(self, text: str, new_id: str) -> tuple[Path, list[str]]:
        """Load ``text`` as this suite (a temporary file beside it, so relative paths resolve) with the real
        loader: a problem that the file did not have before is the new case's. Returns the temporary file."""
        from pytest_llmeval.cases.loader import load_file

        # A fresh name each time: load_file memoises on path, mtime and size.
        tmp = self.path.with_name(f".{self.path.stem}.review-{os.getpid()}-{next(_TMP_SERIAL)}{self.path.suffix}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            if self.exists:
                os.chmod(tmp, self.path.stat().st_mode & 0o7777)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidCase([f"cannot write beside {self.path}: {exc.strerror or exc}"]) from None
        after = load_file(tmp, _registry())
        before = Counter((e.field, e.message) for e in (self.loaded.errors if self.loaded else []))
        problems = []
        for e in after.errors:
            if before[(e.field, e.message)] > 0:
                before[(e.field, e.message)] -= 1
                continue
            where = re.sub(r"^cases\[\d+\]\.?", "", e.field or "")
            problems.append(f"{where}: {e.message}" if where else e.message)
        if not problems and new_id not in {c.id for c in after.cases}:
            problems.append("the case did not load")
        return tmp, problems


def _split_for(suite: _Suite, cid: str, case: dict[str, Any], provenance: dict[str, Any],
               test_fraction: float, seed: int) -> str:
    """The new case's split, at the problem level: a problem already in the suite keeps its split; a transformed
    case (``provenance.source_case``) belongs to its source's problem; a new problem is placed by its hash."""
    from pytest_llmeval.cases.holdout import assign_splits, problem_text

    existing = list(suite.loaded.cases) if suite.loaded else []
    fields = dict(case)
    source = provenance.get("source_case")
    if source is not None and fields.get("problem") is None:
        origin = next((c for c in existing if c.id == str(source)), None)
        if origin is not None:
            fields["problem"] = problem_text(origin, None)
    new = SimpleNamespace(id=cid, fields=fields,
                          prompt=str(fields.get("prompt") or fields.get("question") or fields.get("input") or ""))
    plan = assign_splits([*existing, new], test_fraction=test_fraction, seed=seed,
                         explicit={c.id: c.split for c in existing})
    return plan[-1].split


@dataclass
class _Staged:
    case: dict[str, Any]
    split: str
    tmp: Path | None = None  # the checked new suite file, to move into place
    recovered: bool = False


def _stage(review: ReviewFile, index: int, suite: _Suite, case: dict[str, Any], test_fraction: float,
           seed: int) -> _Staged:
    provenance = review.candidates[index].get("provenance") or {}
    # Ids other accepted candidates hold: an identical case accepted twice is two cases, not one recovered twice.
    taken = {str(c.get("id")) for i, c in enumerate(review.candidates) if i != index and c["status"] == "accepted"}
    body = {k: v for k, v in case.items() if k != "id"}
    given = case.get("id")
    base = str(given) if given is not None else case_id(suite.name, case)
    cid, n, ids = base, 1, suite.ids()
    while cid in ids:
        prior = next((r for r in suite.raw if str(r.get("id")) == cid), None)
        if prior is not None and cid not in taken \
                and canonical_json({k: v for k, v in prior.items() if k != "kind"}) == canonical_json(body):
            split = str(prior.get("split") or next((c.split for c in suite.loaded.cases if c.id == cid), "dev"))
            return _Staged({"id": cid, **body}, split, recovered=True)
        if given is not None:
            break  # an id the case chose: the loader reports the duplicate
        n += 1
        cid = f"{base}-{n}"
    split = str(body.pop("split", None) or _split_for(suite, cid, case, provenance, test_fraction, seed))
    new = {"id": cid, "split": split, **body}
    tmp, problems = suite.check(suite.appended(new), cid)
    if problems:
        tmp.unlink(missing_ok=True)
        raise InvalidCase(problems)
    return _Staged(new, split, tmp)


def check_case(review: ReviewFile, index: int, case: dict[str, Any]) -> list[str]:
    """Problems the case would have in the suite file (an empty list: it would load)."""
    try:
        suite = _Suite.read(review.target, review.kind, review.path.name)
        staged = _stage(review, index, suite, case, 0.0, 0)
    except InvalidCase as exc:
        return exc.problems
    if staged.tmp is not None:
        staged.tmp.unlink(missing_ok=True)
    return []


def accept(review: ReviewFile, index: int, *, test_fraction: float = 0.2, seed: int = 0) -> Accepted:
    """Append candidate ``index`` to the suite file (raises InvalidCase, writing nothing, if it would not load)
    and record the decision in the review file."""
    cand = review.candidates[index]
    suite = _Suite.read(review.target, review.kind, review.path.name)
    staged = _stage(review, index, suite, cand["case"], test_fraction, seed)
    if staged.tmp is not None:
        try:
            os.replace(staged.tmp, review.target)
        except OSError as exc:
            staged.tmp.unlink(missing_ok=True)
            raise InvalidCase([f"cannot write {review.target}: {exc.strerror or exc}"]) from None
    written = str(review.data["suite"])
    review.decide(index, "accepted", id=staged.case["id"], split=staged.split, written_to=written)
    return Accepted(staged.case["id"], staged.split, written, staged.recovered)
