"""The one place that writes case YAML: whole suite files, cases appended to a suite, fields edited in place,
review files and candidate cases shown in a terminal. Every file goes through :func:`write_atomic`.

Three ways to write, for three needs:

- :func:`dump_suite` writes a suite mapping as a new file that reads like one a person wrote, and is the
  inverse of the loader's YAML step: what it writes, :func:`pytest_llmeval.cases.loader.load_file` reads back to
  the same suite. Keys keep their order, multi-line text becomes a ``|`` block, and every string a YAML reader
  could take for something else (a boolean, null, a number, a date) is quoted, for YAML 1.1 readers (PyYAML, which
  the loader uses: ``yes``, ``on``, ``0123``, ``1_000``) and YAML 1.2 ones (``1e3``, ``0o17``) alike.
- :func:`dump_yaml` writes block-style YAML with multi-line strings as literal blocks and ``Flow``/``FlowList``
  values on one line: review files, imported suites, a case shown for review.
- :func:`edit_yaml_cases` and :func:`append_yaml_cases` change a file a person wrote, keeping everything else of it:
  comments, order, quoting, blank lines. PyYAML cannot write a document back with its comments, so edits are made
  on the text: the composed nodes give each case's position, and only the bytes of the edited values (or the
  inserted lines) change. JSONL files are rewritten line by line (JSON has no comments to keep).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pytest_llmeval.core.errors import CaseDataError

__all__ = ["CaseFileEditError", "Flow", "FlowList", "append_jsonl_cases", "append_yaml_cases", "dump_suite",
           "dump_yaml", "dump_yaml_case", "edit_jsonl", "edit_yaml_cases", "needs_quotes", "new_suite_text",
           "write_atomic"]

NO_WRAP = 1 << 30  # the emitter's line width: a long question stays on one line


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write ``text`` (or its pieces, in order) to ``path`` through a temporary file beside it, then rename it into
    place: a reader never sees half a file, and the temporary file's name is this writer's own (process and a
    random part), so two processes writing one path (shards sharing a directory) never write into each other's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            if isinstance(text, str):
                fh.write(text)
            else:
                fh.writelines(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ new suite files


def new_suite_text(comment: str, kind: str) -> str:
    """The text of a suite file that has no case yet, for :func:`append_yaml_cases` to add them to."""
    return f"# {comment}\nkind: {kind}\ncases:\n"


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


#---------------------------------------------------------------------------------------- block-style YAML


class Flow(dict):  # type: ignore[type-arg]
    """A mapping :func:`dump_yaml` writes on one line (a review file's provenance and summary)."""


class FlowList(list):  # type: ignore[type-arg]
    """A list :func:`dump_yaml` writes on one line (a candidate's flags)."""


class _BlockDumper(yaml.SafeDumper):
    """Block-style YAML: multi-line strings as literal blocks, which read like the text (PyYAML falls back to a
    quoted style by itself where a literal block cannot hold the text)."""


def _represent_block_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_block_str)
_BlockDumper.add_representer(Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_BlockDumper.add_representer(FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


class _IndentedDumper(_BlockDumper):
    """Nested lists indented under their key (``expect:`` / ``  - contains: x``), as most suite files write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: Any, *, indent_lists: bool = True, width: int = NO_WRAP) -> str:
    """Block-style YAML of ``data``, keys in their given order: multi-line strings as literal blocks, ``Flow`` and
    ``FlowList`` values on one line, lists indented under their key unless ``indent_lists`` is false. Lines longer
    than ``width`` are folded where a plain scalar allows it."""
    return yaml.dump(data, Dumper=_IndentedDumper if indent_lists else _BlockDumper, default_flow_style=False,
                     sort_keys=False, allow_unicode=True, width=width)


# ---------------------------------------------------------------------------------------- editing in place


class CaseFileEditError(CaseDataError, ValueError):
    """The file is not shaped as expected (no ``cases:`` list, a case that is not a mapping)."""


def _scalar(value: str) -> str:
    """A YAML scalar for a short value: plain when it reads back as the same string, else JSON-quoted."""
    plain = yaml.safe_load(value) == value and "\n" not in value and "#" not in value and ": " not in value
    return value if plain and value.strip() == value and value else json.dumps(value, ensure_ascii=False)


def edit_yaml_cases(text: str, updates: dict[int, dict[str, str]]) -> str:
    """Set string fields of cases (by index in the ``cases:`` list): an existing key's value is replaced where it
    stands; a new key goes on its own line after the case's ``id`` (or, in a flow mapping, after the brace)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = yaml.compose(text, Loader=loader)
    if not isinstance(root, yaml.MappingNode):
        raise CaseFileEditError("expected a mapping with suite settings and 'cases'")
    seq = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "cases"), None)
    if not isinstance(seq, yaml.SequenceNode):
        raise CaseFileEditError("no 'cases' list in the file")
    edits: list[tuple[int, int, str]] = []
    for index, fields in updates.items():
        node = seq.value[index]
        if not isinstance(node, yaml.MappingNode):
            raise CaseFileEditError(f"case {index} is not a mapping")
        pairs = [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
        for key, value in fields.items():
            new = _scalar(value)
            existing = next((v for name, _, v in pairs if name == key), None)
            if existing is not None:
                edits.append((existing.start_mark.index, existing.end_mark.index, new))
            elif node.flow_style:
                at = node.start_mark.index + 1
                edits.append((at, at, f"{key}: {new}, "))
            else:
                anchor = next(((k, v) for name, k, v in pairs if name == "id"), None)
                if anchor is not None and anchor[1].start_mark.line == anchor[1].end_mark.line \
                        and isinstance(anchor[1], yaml.ScalarNode) and anchor[1].style in (None, "", "'", '"'):
                    key_node, value_node = anchor
                    end = text.find("\n", value_node.end_mark.index)
                    end = len(text) if end < 0 else end
                    edits.append((end, end, "\n" + " " * key_node.start_mark.column + f"{key}: {new}"))
                else:  # before the first key, at its indentation
                    first = pairs[0][1] if pairs else None
                    if first is None:
                        raise CaseFileEditError(f"case {index} is an empty mapping")
                    at = first.start_mark.index
                    edits.append((at, at, f"{key}: {new}\n" + " " * first.start_mark.column))
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def edit_jsonl(text: str, updates: dict[int, dict[str, Any]]) -> str:
    """Set fields of the JSON object on given 1-based lines."""
    lines = text.splitlines(keepends=True)
    for lineno, fields in updates.items():
        raw = lines[lineno - 1]
        ending = raw[len(raw.rstrip("\r\n")):]
        obj = json.loads(raw)
        obj.update(fields)
        lines[lineno - 1] = json.dumps(obj, ensure_ascii=False) + (ending or "\n")
    return "".join(lines)


# ------------------------------------------------------------------------------------------- appending


def dump_yaml_case(case: dict[str, Any], indent: int = 0, indentless: bool = False) -> str:
    """One case as a block-style sequence item (``- key: value`` lines) whose dash sits at column ``indent``;
    keys keep their order. Nested lists are indented under their key unless ``indentless`` (the style of a file
    whose ``cases:`` items start in the key's column). Ends with a newline."""
    body = dump_yaml(case, indent_lists=not indentless)
    lines = body.splitlines()
    out = [" " * indent + "- " + lines[0]]
    # Empty lines stay empty (they may be inside a literal block, where trailing spaces would be content).
    out += [(" " * (indent + 2) + line) if line else "" for line in lines[1:]]
    return "\n".join(out) + "\n"


def _mark(event: Any, which: str = "end_mark") -> Any:
    """An event's start or end mark (typed loosely: PyYAML's stubs allow None, which parsed events never are)."""
    return getattr(event, which)


def _node_span(events: list[Any], i: int) -> tuple[int, int]:
    """The node starting at events[i]: (index of the event after it, end offset of its last written character).
    Block collections end where the next token starts (possibly after comments), so their end is taken from
    their content; scalars, aliases and flow collections end exactly."""
    ev: Any = events[i]
    if isinstance(ev, yaml.ScalarEvent | yaml.AliasEvent):
        return i + 1, int(_mark(ev).index)
    if not isinstance(ev, yaml.MappingStartEvent | yaml.SequenceStartEvent):
        raise CaseFileEditError(f"unexpected YAML event {type(ev).__name__}")
    end = int(_mark(ev).index)
    j = i + 1
    while not isinstance(events[j], yaml.MappingEndEvent | yaml.SequenceEndEvent):
        j, child_end = _node_span(events, j)
        end = max(end, child_end)
    if ev.flow_style:
        end = events[j].end_mark.index
    return j + 1, end


def _after_line(text: str, at: int) -> tuple[str, int]:
    """Where a new line can start after offset ``at``: the start of the next line (past a trailing comment).
    Returns the text (with a final newline added when it had none) and the offset."""
    if at > 0 and text[at - 1] == "\n":
        return text, at
    nl = text.find("\n", at)
    if nl < 0:
        return text + "\n", len(text) + 1
    return text, nl + 1


def append_yaml_cases(text: str, cases: list[dict[str, Any]]) -> str:
    """Append cases to a suite file's ``cases:`` list, changing no existing byte.

    New items are block-style, with their dash in the column of the existing items' dashes, placed right after
    the last item (after a comment on its last line, before any comment lines that follow). A flow list
    (``cases: [...]``) gets the new items as JSON flow mappings before its ``]``; an empty ``cases:`` gets them
    on the following lines; a file without ``cases`` gets the key at its end."""
    if not cases:
        return text
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    events: list[Any] = list(yaml.parse(text, Loader=loader))
    root = 2  # StreamStart, DocumentStart, then the document's root node
    if len(events) <= root or not isinstance(events[root], yaml.MappingStartEvent) or events[root].flow_style:
        raise CaseFileEditError("expected a block mapping with suite settings and 'cases'")
    i = root + 1
    while not isinstance(events[i], yaml.MappingEndEvent):
        key = events[i]
        value_at, _ = _node_span(events, i)
        after, _ = _node_span(events, value_at)
        if isinstance(key, yaml.ScalarEvent) and key.value == "cases":
            return _append_at(text, events, key, value_at, cases)
        i = after
    text, at = _after_line(text, len(text)) if text else ("", 0)
    return text[:at] + "cases:\n" + "".join(dump_yaml_case(c, 2) for c in cases)


def _append_at(text: str, events: list[Any], key: Any, value_at: int, cases: list[dict[str, Any]]) -> str:
    value: Any = events[value_at]
    if isinstance(value, yaml.SequenceStartEvent) and value.flow_style:
        j, _ = _node_span(events, value_at)
        close = events[j - 1].start_mark.index  # the "]"
        empty = isinstance(events[value_at + 1], yaml.SequenceEndEvent)
        items = ", ".join(json.dumps(c, ensure_ascii=False) for c in cases)
        return text[:close] + ("" if empty else ", ") + items + text[close:]
    if isinstance(value, yaml.SequenceStartEvent):
        column = int(_mark(value, "start_mark").column)  # the first item's dash
        indentless = column <= key.start_mark.column
        _, end = _node_span(events, value_at)
        text, at = _after_line(text, end)
        return text[:at] + "".join(dump_yaml_case(c, column, indentless) for c in cases) + text[at:]
    if isinstance(value, yaml.ScalarEvent) and value.value in ("", "~", "null", "Null", "NULL") and not value.style:
        column = key.start_mark.column + 2
        start, end = int(_mark(value, "start_mark").index), int(_mark(value).index)
        text = text[:start] + text[end:]  # drop an explicit null; an empty value has start == end
        text, at = _after_line(text, start)
        return text[:at] + "".join(dump_yaml_case(c, column) for c in cases) + text[at:]
    raise CaseFileEditError("'cases' is not a list")


def append_jsonl_cases(text: str, cases: list[dict[str, Any]]) -> str:
    """Append cases to a JSONL suite, one JSON object per line."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases)
