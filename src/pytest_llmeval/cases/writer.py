"""Write a suite mapping back as a case file that reads like one a person wrote.

``dump_suite`` is the inverse of the loader's YAML step: what it writes, :func:`pytest_llmeval.cases.loader.load_file`
reads back to the same suite. Keys keep their order, multi-line text becomes a ``|`` block, and every string a
YAML reader could take for something else (a boolean, null, a number, a date) is quoted, for YAML 1.1 readers
(PyYAML, which the loader uses: ``yes``, ``on``, ``0123``, ``1_000``) and YAML 1.2 ones (``1e3``, ``0o17``) alike.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["dump_suite", "needs_quotes"]

# Plain scalars that some YAML reader resolves to a non-string: the YAML 1.1 booleans (y/n too, which PyYAML
# leaves alone but other 1.1 readers do not), nulls, ints (sexagesimal, binary, octal, hex, underscores), floats,
# timestamps, the value and merge keys (= and <<), and the YAML 1.2 core schema's forms of the same. A superset on
# purpose: a needless pair of quotes costs nothing, a missing pair turns an id "0123" into 83.
_NOT_A_STRING = re.compile(r"""
    y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
  | ~|null|Null|NULL|=|<<
  | [-+]?(?: 0b[0-1_]+ | 0o?[0-7_]+ | 0x[0-9a-fA-F_]+ | [0-9][0-9_]* (?::[0-5]?[0-9])* )
  | [-+]?(?: [0-9][0-9_]*(?:\.[0-9_]*)? | \.[0-9_]+ )(?:[eE][-+]?[0-9]+)?
  | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
  | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
  | [0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?
                                   (?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?
""", re.VERBOSE)
# Characters a YAML reader normalises or folds when written raw inside a block scalar (NEL becomes "\n"; the
# Unicode line and paragraph separators are line breaks too): such text is double-quoted, where they are escaped.
_BREAKS = re.compile("[\x85\u2028\u2029]")


def needs_quotes(text: str) -> bool:
    """Whether ``text`` written plain could be read back as something else than this string."""
    return (not text or text != text.strip() or bool(_NOT_A_STRING.fullmatch(text))
            or ": " in text or " #" in text or text.endswith(":") or text[0] in "-?:,[]{}#&*!|>'\"%@`")


class _SuiteDumper(yaml.SafeDumper):
    """SafeDumper with sequences indented under their key (``cases:\\n  - id: ...``), as case files are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style: str | None = None
    if _BREAKS.search(text):
        style = '"'
    elif "\n" in text:
        # The emitter keeps "|" only where a block can hold the text exactly (no trailing spaces on a line, only
        # printable characters) and falls back to a quoted style otherwise: never a lossy block.
        style = "|"
    elif needs_quotes(text):
        style = "'"  # the emitter switches to '"' itself for text that single quotes cannot carry
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_SuiteDumper.add_representer(str, _represent_str)


def dump_suite(data: dict[str, Any]) -> str:
    """YAML text of a suite mapping (settings and ``cases``, as users write them), keys in their given order.

    Lines are never wrapped: a prompt stays on one line or in one ``|`` block, as it was written."""
    return yaml.dump(data, Dumper=_SuiteDumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=1_000_000, indent=2)
