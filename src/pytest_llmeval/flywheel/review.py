"""Review candidate cases and move the accepted ones into their suite file (``llmeval review``), and turn bad
production interactions into candidates (``llmeval import-feedback``).

A review file (YAML, written by ``llmeval generate`` or ``llmeval import-feedback``) names its target suite file
(``suite:``, relative to the review file) and lists ``candidates``, each with a ``status`` (pending | accepted |
rejected | skipped), the ``case`` in the case schema, its ``provenance`` and optional ``flags``.

Every decision is written to the review file at once (atomic replace), so quitting or a crash loses nothing and
the next run resumes at the first undecided candidate. An accepted case is appended to the suite file as text
(``casefile.append_yaml_cases``: comments, order and quoting of the file are kept) with a deterministic id and a
problem-level split (``holdout.assign_splits``), and only once the resulting file loads with the real loader.
The suite file is written before the review file; a run that finds the case already written (same id, same
content: an earlier run stopped in between) records it instead of appending it twice.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

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
PROMPT = "[a]ccept / [r]eject / [e]dit / [s]kip / [q]uit? "
# Feedback rows whose label says the answer was fine are not candidates.
GOOD_LABELS = frozenset({"good", "pass", "passed", "positive", "correct", "up", "thumbs_up", "thumbsup", "+1",
                         "helpful", "ok"})
# A bad answer becomes a not_contains check only when it is short and single-line (a long answer never recurs
# verbatim) and not part of the correction (a good answer would then fail).
NOT_CONTAINS_MAX = 80


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


# ---------------------------------------------------------------------------------------- the terminal


def _summary_text(case: dict[str, Any], width: int = 60) -> str:
    text = str(case.get("question") or case.get("input") or case.get("prompt") or canonical_json(case))
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _case_yaml(case: dict[str, Any]) -> str:
    return dump_yaml(case)


def show(review: ReviewFile, index: int, out: IO[str]) -> None:
    cand = review.candidates[index]
    flags = cand.get("flags") or []
    head = f"--- candidate {index + 1}/{len(review.candidates)} ({cand['status']})"
    if flags:
        head += " flags: " + ", ".join(map(str, flags))
    out.write(f"\n{head} ---\n{_case_yaml(cand['case'])}")
    prov = {k: v for k, v in (cand.get("provenance") or {}).items() if v is not None}
    for key, value in (("provenance", prov), ("notes", cand.get("notes"))):
        if value:
            out.write(f"{key}:\n" + "".join("  " + line + "\n" for line in _case_yaml(value).splitlines()))
    out.flush()


def _editor_command() -> list[str]:
    return shlex.split(os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi")


def edit_text(text: str) -> str | None:
    """Open the editor on ``text``; the edited text, or None when the editor failed."""
    fd, name = tempfile.mkstemp(prefix="llmeval-case-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            rc = subprocess.call([*_editor_command(), name])
        except OSError as exc:
            print(f"cannot start the editor ({' '.join(_editor_command())}): {exc}; set EDITOR", flush=True)
            return None
        if rc != 0:
            print(f"the editor exited with status {rc}: the case is unchanged", flush=True)
            return None
        return Path(name).read_text(encoding="utf-8")
    finally:
        os.unlink(name)


EDIT_NOTE = "# candidate {n}: edit the case, save and quit; an empty file keeps the case as it was\n"


def _edit(review: ReviewFile, index: int, draft: str | None, out: IO[str]) -> str | None:
    """One edit: a valid case replaces the candidate's (saved at once); an invalid one is shown with the loader's
    problems and returned, to be the starting point of the next edit."""
    cand = review.candidates[index]
    start = draft if draft is not None else EDIT_NOTE.format(n=f"{index + 1}/{len(review.candidates)}") \
        + _case_yaml(cand["case"])
    edited = edit_text(start)
    if edited is None:
        return draft
    try:
        case = yaml.load(edited, Loader=_Loader)
    except yaml.YAMLError as exc:
        out.write(f"invalid edit (not applied): YAML syntax error: {exc}\n")
        return edited
    if case is None:
        out.write("empty: the case is unchanged\n")
        return None
    if not isinstance(case, dict):
        out.write("invalid edit (not applied): expected a mapping of case fields\n")
        return edited
    if case == cand["case"]:
        out.write("unchanged\n")
        return None
    problems = check_case(review, index, case)
    if problems:
        out.write("invalid edit (not applied):\n" + "".join(f"  {p}\n" for p in problems))
        return edited
    cand["case"] = case
    cand["edited"] = True
    review.save()
    out.write("edited (saved)\n")
    return None


def _todo(review: ReviewFile, include_skipped: bool) -> list[int]:
    wanted = ("pending", "skipped") if include_skipped else ("pending",)
    return [i for i, c in enumerate(review.candidates) if c["status"] in wanted]


def _counts_line(review: ReviewFile) -> str:
    counts = review.counts()
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES)


def review_interactive(review: ReviewFile, *, include_skipped: bool = False, test_fraction: float = 0.2,
                       seed: int = 0, inp: IO[str] | None = None, out: IO[str] | None = None) -> int:
    """Ask about each undecided candidate in turn; every answer is saved before the next question."""
    inp = inp or sys.stdin
    out = out or sys.stdout
    todo = _todo(review, include_skipped)
    if not todo:
        out.write(f"nothing to review in {review.path.name}: {_counts_line(review)}"
                  + ("" if include_skipped or not review.counts()["skipped"] else " (--all reviews the skipped)")
                  + "\n")
        return 0
    out.write(f"{review.path.name}: {len(todo)} to review; accepted cases go to {review.data['suite']}\n")
    for index in todo:
        draft: str | None = None
        show(review, index, out)
        while True:
            out.write(PROMPT)
            out.flush()
            line = inp.readline()
            if not line:  # end of input: like quit
                out.write("\n")
                line = "q"
            answer = line.strip().lower()[:1]
            if answer == "a":
                try:
                    done = accept(review, index, test_fraction=test_fraction, seed=seed)
                except InvalidCase as exc:
                    out.write("not accepted: the case would not load in "
                              f"{review.data['suite']}:\n" + "".join(f"  {p}\n" for p in exc.problems)
                              + "edit it (e) or reject it (r)\n")
                    continue
                how = "already in" if done.recovered else "written to"
                out.write(f"accepted as {done.id} ({done.split}), {how} {done.written_to}\n")
            elif answer == "r":
                review.decide(index, "rejected")
                out.write("rejected\n")
            elif answer == "s":
                review.decide(index, "skipped")
                out.write("skipped\n")
            elif answer == "e":
                draft = _edit(review, index, draft, out)
                if draft is None:
                    show(review, index, out)
                continue
            elif answer == "q":
                out.write(f"stopped at candidate {index + 1}/{len(review.candidates)}: {_counts_line(review)}; "
                          f"run llmeval review {review.path.name} again to resume\n")
                out.flush()
                return 0
            else:
                out.write("answer a, r, e, s or q\n")
                continue
            out.flush()
            break
    out.write(f"done: {_counts_line(review)}\n")
    out.flush()
    return 0


def review_batch(review: ReviewFile, status: str, *, include_skipped: bool, test_fraction: float, seed: int,
                 out: IO[str]) -> int:
    """--accept-all / --reject-all. A case that would not load stays pending (exit status 1)."""
    failed = 0
    total = len(review.candidates)
    for index in _todo(review, include_skipped):
        if status == "rejected":
            review.decide(index, "rejected")
            out.write(f"{index + 1}/{total} rejected\n")
            continue
        try:
            done = accept(review, index, test_fraction=test_fraction, seed=seed)
        except InvalidCase as exc:
            failed += 1
            out.write(f"{index + 1}/{total} not accepted (left pending): " + "; ".join(exc.problems) + "\n")
            continue
        out.write(f"{index + 1}/{total} accepted as {done.id} ({done.split})"
                  + (", already in the suite file\n" if done.recovered else "\n"))
    out.write(f"{review.path.name}: {_counts_line(review)}\n")
    return 1 if failed else 0


def list_table(review: ReviewFile, out: IO[str]) -> None:
    rows = [(str(i + 1), c["status"], str(c.get("id") or "-"), str(c.get("split") or "-"),
             ",".join(map(str, c.get("flags") or [])) or "-", _summary_text(c["case"]))
            for i, c in enumerate(review.candidates)]
    header = ("#", "status", "id", "split", "flags", "case")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(5)]
    for r in [header, *rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] + "\n")
    out.write(f"{review.path.name} -> {review.data['suite']}: {_counts_line(review)}\n")


# --------------------------------------------------------------------------------------- feedback intake


@dataclass
class FeedbackImport:
    """What ``import_feedback`` did: the counts, and the rows it skipped with why."""

    out: Path
    counts: dict[str, int]
    problems: list[str]


def _feedback_case(question: str, answer: str, correction: str | None) -> tuple[dict[str, Any], list[str]]:
    """The candidate case for one bad interaction: a correctness judge (against the correction as reference when
    there is one), and with a correction, a not_contains check of a short bad answer."""
    expect: list[dict[str, Any]] = [{"judge": {"rubric": "correctness"}}]
    if correction is None:
        return {"question": question, "expect": expect}, ["needs-reference"]
    bad = answer.strip()
    if bad and len(bad) <= NOT_CONTAINS_MAX and "\n" not in bad and bad.lower() not in correction.lower():
        expect.append({"not_contains": bad})
    return {"question": question, "reference": correction, "expect": expect}, []


def _rating(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def import_feedback(feedback: Path, suite: Path, out: Path, *, max_rating: float | None = None) -> FeedbackImport:
    """Turn a JSONL of bad production interactions into review candidates (appended to ``out`` when it is
    already a review file of the same suite; a candidate already there is not added twice)."""
    from pytest_llmeval.cases.holdout import normalise

    try:
        text = feedback.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"cannot read {feedback}: {exc}") from None
    suite_rel = os.path.relpath(suite.resolve(), out.resolve().parent)
    if out.exists():
        review = ReviewFile.load(out)
        if review.target.resolve() != suite.resolve():
            raise ReviewError(f"{out} reviews candidates for {review.data['suite']}, not {suite}: choose another --out")
    else:
        review = ReviewFile(out, {"suite": suite_rel, "kind": "qna", "candidates": []},
                            review_header("llmeval import-feedback", out.name))
    kind = "qna"
    in_suite: set[str] = set()
    if suite.is_file():
        try:
            current = _Suite.read(suite, "qna", out.name)
        except InvalidCase as exc:
            raise ReviewError(exc.problems[0]) from None
        kind = current.kind
        in_suite = {normalise(str(c.fields.get("question") or c.prompt)) for c in current.loaded.cases}
    if kind != "qna":
        raise ReviewError(f"import-feedback makes question-and-answer cases; {suite} is a {kind} suite: "
                          "give a qna suite with --suite")
    seen = {canonical_json(c["case"]) for c in review.candidates}
    counts = Counter({"rows": 0, "malformed": 0, "not_bad": 0, "duplicates": 0, "kept": 0})
    problems: list[str] = []
    source = os.path.relpath(feedback.resolve(), out.resolve().parent)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    new: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        counts["rows"] += 1

        def bad(message: str, lineno: int = lineno) -> None:
            counts["malformed"] += 1
            problems.append(f"{feedback}:{lineno}: {message}; skipped")

        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(row, dict):
            bad("expected a JSON object with question and answer")
            continue
        question, answer, correction = row.get("question"), row.get("answer"), row.get("correction")
        if not isinstance(question, str) or not question.strip():
            bad("'question' is missing or not a non-empty string")
            continue
        if not isinstance(answer, str):
            bad("'answer' (the bad answer) is missing or not a string")
            continue
        if correction is not None and not isinstance(correction, str):
            bad("'correction' must be a string")
            continue
        if str(row.get("label", "")).strip().lower() in GOOD_LABELS:
            counts["not_bad"] += 1
            continue
        if max_rating is not None and "rating" in row:
            rating = _rating(row["rating"])
            if rating is None:
                bad(f"rating {row['rating']!r} is not a number (--max-rating)")
                continue
            if rating > max_rating:
                counts["not_bad"] += 1
                continue
        case, flags = _feedback_case(question.strip(), answer, (correction or "").strip() or None)
        key = canonical_json(case)
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        if normalise(question) in in_suite:
            flags.append("in-suite")
        provenance: dict[str, Any] = {"source": "feedback", "file": source, "line": lineno, "answer": answer}
        provenance.update((k, row[k]) for k in ("id", "timestamp", "rating", "label", "tags") if k in row)
        cand: dict[str, Any] = {"status": "pending", "case": case, "provenance": provenance}
        if flags:
            cand["flags"] = flags
        new.append(cand)
        counts["kept"] += 1
    candidates = review.data.pop("candidates") + new
    summary = review.data.get("summary") if isinstance(review.data.get("summary"), dict) else {}
    review.data["summary"] = {k: int(summary.get(k, 0)) + v for k, v in counts.items()}  # type: ignore[union-attr]
    review.data["imported_at"] = stamp
    review.data["candidates"] = candidates  # last: the header fields read first
    review.save()
    return FeedbackImport(out, dict(counts), problems)


# --------------------------------------------------------------------------------------------- commands


def _fraction(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, e.g. 0.2 (got {value!r})") from None
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, e.g. 0.2 (got {value!r})")
    return x


def cmd_review(args: argparse.Namespace) -> int:
    review = ReviewFile.load(Path(args.file))
    if args.list:
        list_table(review, sys.stdout)
        return 0
    if args.accept_all or args.reject_all:
        return review_batch(review, "accepted" if args.accept_all else "rejected", include_skipped=args.all,
                            test_fraction=args.test, seed=args.seed, out=sys.stdout)
    try:
        return review_interactive(review, include_skipped=args.all, test_fraction=args.test, seed=args.seed)
    except KeyboardInterrupt:  # every decision so far is saved
        print(f"\ninterrupted: {_counts_line(review)}; run llmeval review {review.path.name} again to resume")
        return 130


def cmd_import_feedback(args: argparse.Namespace) -> int:
    feedback = Path(args.feedback)
    out = Path(args.out) if args.out else feedback.with_name(feedback.stem + ".review.yaml")
    done = import_feedback(feedback, Path(args.suite), out, max_rating=args.max_rating)
    for problem in done.problems:
        print(problem, file=sys.stderr)
    c = done.counts
    print(f"{c['rows']} rows: {c['kept']} new candidate(s), {c['malformed']} malformed, {c['not_bad']} not marked "
          f"bad, {c['duplicates']} duplicate(s); review with: llmeval review {out}")
    return 0


def add_parser(commands: Any) -> None:
    """Register ``review`` and ``import-feedback`` on the ``llmeval`` subcommands (argparse subparsers)."""
    review = commands.add_parser(
        "review", help="accept, reject, edit or skip candidate cases; accepted ones go into the suite file",
        description="Review the candidates of a review file (from llmeval generate or import-feedback) one by one. "
        "Each decision is saved at once; running again resumes at the first undecided candidate. An accepted case "
        "is appended to the suite file (comments and layout kept) with a deterministic id (<suite>-<hash>) and a "
        "problem-level dev/test split, once the file still loads. EDITOR (default vi) edits a case.")
    review.add_argument("file", help="the review file")
    mode = review.add_mutually_exclusive_group()
    mode.add_argument("--accept-all", action="store_true", help="accept every undecided candidate, no questions "
                      "(one that would not load stays pending; exit status 1)")
    mode.add_argument("--reject-all", action="store_true", help="reject every undecided candidate")
    mode.add_argument("--list", action="store_true", help="show every candidate's status, id and split")
    review.add_argument("--all", action="store_true", help="review skipped candidates too")
    review.add_argument("--test", type=_fraction, default=0.2, metavar="FRACTION",
                        help="share of new problems that go to the test split (default 0.2)")
    review.add_argument("--seed", type=int, default=0, help="seed of the split assignment (default 0, as in "
                        "llmeval split)")
    review.set_defaults(func=cmd_review)

    feedback = commands.add_parser(
        "import-feedback", help="turn production interactions marked bad (JSONL) into candidate cases for review",
        description="Each JSONL row is one bad interaction: question, answer (the bad one), optional correction, "
        "rating, label, tags, id, timestamp. A row becomes a candidate case with a correctness judge check (the "
        "correction as its reference; without one the candidate is flagged needs-reference). Malformed rows are "
        "reported with their line and skipped; rows labelled good are left out.")
    feedback.add_argument("feedback", help="the JSONL file")
    feedback.add_argument("--suite", required=True, help="the suite file accepted cases go to (created when missing)")
    feedback.add_argument("--out", default=None, help="the review file (default: FEEDBACK.review.yaml beside the "
                          "feedback; an existing one of the same suite gets the new candidates appended)")
    feedback.add_argument("--max-rating", type=float, default=None, metavar="R",
                          help="rows rated above R are not bad and are left out (default: ratings are only recorded)")
    feedback.set_defaults(func=cmd_import_feedback)


def main(argv: Sequence[str] | None = None) -> int:
    """``review`` and ``import-feedback`` on their own (what ``llmeval`` runs for them)."""
    parser = argparse.ArgumentParser(prog="llmeval")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CommandError as exc:
        parser.exit(2, f"llmeval: error: {exc}\n")
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
