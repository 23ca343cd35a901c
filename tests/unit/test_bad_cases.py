"""The case-file YAML loader: what PyYAML builds, with the line of every field, and every repeated key."""

from __future__ import annotations

import pytest
from helpers.bad_cases import GOOD

# ------------------------------------------------------------------------------------------ the YAML loader

YAML_SHAPES = [
    GOOD,
    "a: &x {b: 1}\nc: *x\n",  # an alias: one shared object
    "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",  # a merge key
    "1: one\n2.5: two\n",  # non-string keys
    "a: !!set {x, y}\nb: !!binary aGVsbG8=\n",  # explicit tags
    "a: [1, 2.5, true, null, 2020-01-01, '3', ~, 0o17, 0x1F, .inf, yes]\nb: {c: [{d: e}]}\n",
    "base: &b {x: 1, y: 1}\nmerged:\n  <<: [*b, {y: 2, z: 2}]\n  y: 3\n",  # merges and overrides are not repeats
    "- &a [1]\n- *a\n",
]


@pytest.mark.parametrize("text", YAML_SHAPES)
def test_yaml_loader_builds_what_pyyaml_builds_with_the_same_lines(text: str) -> None:
    import yaml

    from pytest_llmeval.cases.yaml_lines import _line_lookup, _yaml_with_lines

    data, lines = _yaml_with_lines(text)
    assert data == yaml.safe_load(text) and repr(data) == repr(yaml.safe_load(text))
    # Every location's line: a mapping entry's is its key's (the last one's when a key repeats), a sequence item's
    # is where it starts; a location that is not in the document has its longest existing prefix's.
    expected: dict[tuple[object, ...], int] = {}

    def walk(node: yaml.Node, loc: tuple[object, ...], line: int) -> None:
        expected[loc] = line
        if isinstance(node, yaml.MappingNode):
            last = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
            for key, (k, v) in last.items():
                walk(v, (*loc, key), k.start_mark.line + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*loc, i), v.start_mark.line + 1)

    loader = yaml.SafeLoader(text)
    root = loader.get_single_node()
    loader.construct_document(root)  # as when the lines were read off the tree: merge keys are merged into it
    walk(root, (), root.start_mark.line + 1)
    line_of = _line_lookup(lines)
    for loc, line in expected.items():
        assert loc in lines and lines[loc] == line and line_of(loc) == line
        assert line_of((*loc, "no-such-field", 7)) == line
    assert ("no-such-field",) not in lines


@pytest.mark.parametrize(("text", "found"), [
    ("a: 1\nb: 2\na: 3\n", [(("a",), 3, 1)]),
    ("a:\n  - {x: 1, y: 2, x: 3}\n", [(("a", 0, "x"), 2, 2)]),
    ("1: one\n0x1: also one\n", [((1,), 2, 1)]),  # the same number written two ways: equal keys
    ("s: &m {k: 1}\nt: *m\nu: {<<: *m, k: 2, k: 3}\n", [(("u", "k"), 3, 3)]),  # the slow path (aliases)
    ("a: 1\na: 2\na: 3\n", [(("a",), 2, 1), (("a",), 3, 1)]),
])
def test_yaml_loader_reports_every_repeated_key(text: str, found: list[tuple[tuple[object, ...], int, int]]
                                                 ) -> None:
    import yaml

    from pytest_llmeval.cases.yaml_lines import _yaml_with_lines

    duplicates: list[tuple[tuple[object, ...], int, int]] = []
    _yaml_with_lines(text, duplicates=duplicates)
    assert duplicates == found
    # Without a list to collect them in (other YAML the plugin reads), the first one is an error at its line.
    with pytest.raises(yaml.YAMLError) as info:
        _yaml_with_lines(text)
    assert "duplicate key" in str(info.value) and info.value.problem_mark.line + 1 == found[0][1]  # type: ignore[attr-defined]
