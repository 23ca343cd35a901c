"""YAML with lines: parse a case file (or a spec) and find the line of any key or list item, lazily; a key
written twice in one mapping is found, not silently dropped as PyYAML would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from pytest_llmeval.cases.schema import Loc, format_loc
from pytest_llmeval.core.errors import CaseDataError


class _Lines:
    """The 1-based line of every mapping key and sequence item of a parsed YAML document, looked up in its node
    tree when asked (a location is at most a few levels deep): walking every node up front cost more than the
    rest of loading. ``lines[loc]`` and ``loc in lines`` behave like the dict of all of them would: a mapping
    entry's line is its key's (the last one, if a key repeats), a sequence item's is where it starts."""

    def __init__(self, root: yaml.Node) -> None:
        # loc -> (node, line, found) of the locations looked up so far: the cases' locations share their prefixes.
        self._known: dict[Loc, tuple[yaml.Node, int, bool]] = {(): (root, root.start_mark.line + 1, True)}

    def _walk(self, loc: Loc) -> tuple[yaml.Node, int, bool]:
        """The node of ``loc``'s longest prefix in the document, its line, and whether that prefix is all of ``loc``."""
        known = self._known.get(loc)
        if known is not None:
            return known
        node, line, found = self._walk(loc[:-1])
        part = loc[-1]
        if not found:
            result = (node, line, False)
        elif isinstance(node, yaml.MappingNode):
            result = (node, line, False)
            for k, v in reversed(node.value):
                if (k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)) == part:
                    result = (v, k.start_mark.line + 1, True)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            result = (node.value[part], node.value[part].start_mark.line + 1, True)
        else:
            result = (node, line, False)
        if len(loc) <= 3:  # remember the suite's and the cases' own levels, not every field below them
            self._known[loc] = result
        return result

    def _find(self, loc: Loc) -> tuple[int, bool]:
        """The line of ``loc``'s longest prefix in the document, and whether that prefix is all of ``loc``."""
        _, line, found = self._walk(tuple(loc))
        return line, found

    def __contains__(self, loc: object) -> bool:
        return isinstance(loc, tuple) and self._find(loc)[1]

    def __getitem__(self, loc: Loc) -> int:
        line, found = self._find(loc)
        if not found:
            raise KeyError(loc)
        return line

    def deepest(self, loc: Loc) -> int | None:
        """The line of ``loc``, else of its longest prefix that is in the document."""
        return self._find(loc)[0]

    def release(self, loc: Loc) -> None:
        """Let the nodes of the sequence item ``loc`` go (a case, once it is built): its own line is still found,
        the locations below it are then at its line. A document's nodes, with their marks, are ~4 KiB a case, all
        alive at once beside the cases being built: released case by case, loading peaks near the nodes alone."""
        parent, _, found = self._walk(loc[:-1])
        index = loc[-1] if loc else None
        if not found or not isinstance(parent, yaml.SequenceNode) or not isinstance(index, int) \
                or not 0 <= index < len(parent.value):
            return
        node = parent.value[index]
        below: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            below = [k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark) for k, _ in node.value]
        elif isinstance(node, yaml.SequenceNode):
            below = list(range(len(node.value)))
        for part in below:
            self._known.pop(loc + (part,), None)
        self._known.pop(loc, None)
        parent.value[index] = yaml.ScalarNode(_STR_TAG, "", node.start_mark, node.start_mark)


class DuplicateKeyError(yaml.constructor.ConstructorError, CaseDataError):
    """A key written twice in one mapping (YAML 1.2 requires unique keys; PyYAML would keep the last silently)."""


# (location of the repeated key, its line, the line of its first occurrence)
Duplicate = tuple[Loc, int, int]


def _yaml_with_lines(text: str, duplicates: list[Duplicate] | None = None) -> tuple[Any, _Lines | dict[Loc, int]]:
    """Parse YAML, and the 1-based line of every mapping key and sequence item (looked up lazily).

    A key repeated in a mapping raises :class:`DuplicateKeyError` at the repeat, unless ``duplicates`` is given:
    then every repeat is appended to it (the case loader reports each as the error of the case it is in) and the
    data holds the last value, as PyYAML would."""
    # libyaml's parser (when PyYAML was built with it) composes the same nodes, with marks, ~10x faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    found: list[Duplicate] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = _construct(loader, node, found)
    finally:
        loader.dispose()
    if duplicates is not None:
        duplicates += found
    elif found:
        loc, line, first = found[0]
        raise DuplicateKeyError(None, None, f"found duplicate key {format_loc(loc)!r} (first on line {first})",
                                yaml.Mark("<yaml>", 0, line - 1, 0, None, 0))
    return data, _Lines(node)


_STR_TAG, _MAP_TAG, _SEQ_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unusual(Exception):
    """A node the fast construction leaves to PyYAML (aliases, merge keys, non-string keys, explicit tags)."""


def _construct(loader: Any, root: yaml.Node, duplicates: list[Duplicate]) -> Any:
    """``loader.construct_document(root)``, faster for what case files are made of: strings, plain mappings with
    string keys, lists, and other scalars (numbers, booleans, null: built by PyYAML itself). Anything else makes
    PyYAML construct the whole document, so the result is always what it would have built. Keys repeated in a
    mapping are appended to ``duplicates``."""
    seen: set[int] = set()
    repeated: list[tuple[yaml.Node, yaml.Node, yaml.Node]] = []  # (mapping, first key, repeat): rare, located later

    def build(node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return node.value if node.tag == _STR_TAG else loader.construct_object(node, deep=True)
        if id(node) in seen:
            raise _Unusual  # an alias: PyYAML shares one object between the places (and handles cycles)
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [build(item) for item in node.value]
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            out: dict[str, Any] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
                    raise _Unusual  # a merge key (<<), a number or a structure as a key
                if key.value in out:
                    first = next(k for k, _ in node.value if k.value == key.value)
                    repeated.append((node, first, key))
                out[key.value] = build(value)
            return out
        raise _Unusual

    try:
        data = build(root)
    except _Unusual:
        # Repeats are looked for before PyYAML constructs the document: constructing merges the ``<<`` mappings
        # into the nodes, and merged keys may repeat explicit ones (which the merge-key type allows).
        duplicates += _repeated_keys(loader, root)
        return loader.construct_document(root)
    finally:
        # ``build`` refers to itself through its closure: a cycle, which only a garbage collection frees. Collection
        # runs with the collector paused and freezes what is left (core/memory.py), so the cycle would keep ``seen``
        # (an int per node, ~270 B a case) to the end of the session: emptied now, only the small cycle is left.
        seen.clear()
    duplicates += [(_locate(root, mapping) + (key.value,), key.start_mark.line + 1, first.start_mark.line + 1)
                   for mapping, first, key in repeated]
    return data


def _locate(root: yaml.Node, target: yaml.Node) -> Loc:
    """Where ``target`` is in a document of plain mappings and lists (the fast construction's documents)."""
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if node is target:
            return loc
        if isinstance(node, yaml.MappingNode):
            stack += [(v, loc + (k.value,)) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(v, loc + (i,)) for i, v in enumerate(node.value)]
    return ()


def _repeated_keys(loader: Any, root: yaml.Node) -> list[Duplicate]:
    """Keys written twice in a mapping of any document, compared as PyYAML would (``1`` and ``0x1`` are one key).
    Merge keys (``<<``) are not compared, and a mapping reached again through an alias is looked at once."""
    found: list[Duplicate] = []
    seen: set[int] = set()

    def key_of(node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _MERGE_TAG:
            return None  # a structure as a key fails construction anyway; a merge is no key
        if node.tag == _STR_TAG:
            return node.value
        try:
            key = loader.construct_object(node, deep=True)
            hash(key)
        except (yaml.YAMLError, TypeError):
            return None  # constructing the document reports it
        return key

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for k, v in node.value:
                key = key_of(k)
                if key is not None:
                    if key in first:
                        found.append((loc + (key,), k.start_mark.line + 1, first[key]))
                    else:
                        first[key] = k.start_mark.line + 1
                name = key if key is not None else k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)
                walk(v, loc + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, loc + (i,))

    walk(root, ())
    return found


def _releaser(lines: _Lines | dict[Loc, int]) -> Callable[[Loc], None]:
    """``lines.release`` (nothing to release for a dict of lines)."""
    return lines.release if isinstance(lines, _Lines) else lambda _loc: None


def _line_lookup(lines: _Lines | dict[Loc, int]) -> Callable[[Loc], int | None]:
    if isinstance(lines, _Lines):
        return lines.deepest

    def line_of(loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in lines:
                return lines[loc[:end]]
        return None

    return line_of
