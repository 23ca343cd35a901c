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

Where each part lives: the spec, the target suite and the candidates in :mod:`~pytest_llmeval.flywheel.spec`; what
the model is asked and how its replies are read in :mod:`~pytest_llmeval.flywheel.prompts`; the pipeline (model
calls, validation, filters) in :mod:`~pytest_llmeval.flywheel.pipeline`; this module writes the review file and runs
the command.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pytest_llmeval.cases.schema import CaseFileError
from pytest_llmeval.cases.writer import dump_yaml, write_atomic
from pytest_llmeval.core.errors import CommandError
from pytest_llmeval.flywheel.pipeline import generate, leaks
from pytest_llmeval.flywheel.prompts import _seeds, generation_messages, parse_candidates
from pytest_llmeval.flywheel.spec import (
    Generated,
    GenerateError,
    GenerateSpec,
    SpecFile,
    Summary,
    generator_model,
    load_spec,
    load_target,
)

REVIEW_SUFFIX = ".review.yaml"  # <suite stem>.review.yaml: not a suite, collection should skip it
REVIEW_HEADER = "# written by llmeval generate; review with: llmeval review {name}\n"


# ------------------------------------------------------------------------------------------- the review file


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
    """A review file's text: block style, lists indented under their key, multi-line strings as literal blocks."""
    return REVIEW_HEADER.format(name=name) + dump_yaml(doc, width=120)


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
    write_atomic(path, text)
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


__all__ = ["GenerateError", "GenerateSpec", "Generated", "SpecFile", "Summary", "add_parser", "cmd_generate",
           "default_review_path", "format_summary", "generate", "generation_messages", "leaks",
           "load_spec", "main", "parse_candidates", "read_review", "review_document", "write_review"]
