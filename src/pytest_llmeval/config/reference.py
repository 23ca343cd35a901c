"""The options reference of the docs (``docs/options.md``), rendered from the option table.

The page is written by hand except between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->``
comments, whose content this module writes: ``python -m pytest_llmeval.config.reference docs/options.md``
rewrites them in place, ``--check`` only says whether they are current (a unit test runs the same comparison).
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_llmeval.config.options import OPTIONS, Option

COMMAND = "python -m pytest_llmeval.config.reference docs/options.md"
_BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated: (?P=name) -->)",
                    re.S)


def _md(text: str) -> str:
    """Help text for a Markdown table cell: code spans kept, ``<``, ``>`` and ``|`` escaped outside them."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = html.escape(parts[i], quote=False).replace("|", "\\|")
    return "`".join(parts)


def _code(text: str) -> str:
    return f"`{text}`"


def _default(option: Option) -> str:
    if option.switch:
        return "off"
    text = option.default_text
    if text is None:
        return ""
    # A value is shown as code; a default described in words (the model under test, ...) as Markdown text.
    return _code(text) if option.default_doc is None or " " not in text.strip("`") else _md(text)


def _meaning(option: Option) -> str:
    meaning = _md(option.help)
    if option.path:
        meaning += " Relative to the rootdir."
    if option.see:
        meaning += f" See {option.see}."
    return meaning


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def options_table() -> str:
    """Every command-line option with its environment variable, ini key and default."""
    rows = [_row(["option", "environment", "ini key", "default", "meaning"]), "|---|---|---|---|---|"]
    for option in OPTIONS:
        if not option.flag:
            continue
        flag = _code(f"{option.flag} {option.metavar}" if option.metavar else option.flag)
        env = f"{_code(option.env_text)}{option.env_note}" if option.env_text else ""
        ini = ((_code(option.ini) + (" (lines)" if option.linelist else "")) if option.ini
               else "(none, on purpose)" if option.no_ini else "")
        rows.append(_row([flag + (" (repeatable)" if option.repeat else ""), env, ini, _default(option),
                          _meaning(option)]))
    return "\n".join(rows) + "\n"


def ini_table() -> str:
    """The ini keys that have no command-line option."""
    rows = [_row(["ini key", "default", "meaning"]), "|---|---|---|"]
    for option in OPTIONS:
        if option.ini and not option.flag:
            ini = _code(option.ini) + (" (lines)" if option.linelist else "")
            rows.append(_row([ini, _default(option), _meaning(option)]))
    return "\n".join(rows) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {"options": options_table, "ini-keys": ini_table}


def render(page: str) -> str:
    """``page`` with every generated block rewritten; a block missing from the page is an error."""
    found = {m.group("name") for m in _BLOCK.finditer(page)}
    missing = set(BLOCKS) - found
    if missing:
        raise ValueError(f"the page has no generated block {', '.join(sorted(missing))}")
    unknown = found - set(BLOCKS)
    if unknown:
        raise ValueError(f"the page names unknown generated blocks {', '.join(sorted(unknown))}")
    return _BLOCK.sub(lambda m: m.group(1) + BLOCKS[m.group("name")]() + m.group(4), page)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmeval.config.reference", description=__doc__)
    parser.add_argument("page", type=Path, help="the options page, docs/options.md")
    parser.add_argument("--check", action="store_true", help="only check that the page is current (exit 1 if not)")
    args = parser.parse_args(argv)
    page = args.page.read_text(encoding="utf-8")
    rendered = render(page)
    if rendered == page:
        return 0
    if args.check:
        print(f"{args.page} is stale: run {COMMAND}", file=sys.stderr)
        return 1
    args.page.write_text(rendered, encoding="utf-8")
    print(f"{args.page} rewritten from the option table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
