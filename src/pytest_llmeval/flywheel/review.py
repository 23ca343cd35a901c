"""``llmeval review``: the candidates of a review file one by one in the terminal (accept, reject, edit, skip), or
all at once; and the ``llmeval review`` and ``llmeval import-feedback`` commands.

A review file (YAML, written by ``llmeval generate`` or ``llmeval import-feedback``) names its target suite file
and lists ``candidates``, each with a ``status`` (pending | accepted | rejected | skipped). Every decision is
written to the review file at once (atomic replace), so quitting or a crash loses nothing and the next run resumes
at the first undecided candidate. Reading and writing review files and accepting a candidate into its suite file
is :mod:`~pytest_llmeval.flywheel.review_file`; turning production feedback into candidates is
:mod:`~pytest_llmeval.flywheel.feedback`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from pytest_llmeval.cases.schema import InvalidCase
from pytest_llmeval.cases.writer import dump_yaml
from pytest_llmeval.core.errors import CommandError
from pytest_llmeval.flywheel.feedback import cmd_import_feedback
from pytest_llmeval.flywheel.review_file import (
    STATUSES,
    ReviewFile,
    _Loader,
    accept,
    canonical_json,
    check_case,
)

PROMPT = "[a]ccept / [r]eject / [e]dit / [s]kip / [q]uit? "


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
