"""Issue 20 (memory per case, part 2): what a case keeps to the end of a run, slimmed without losing behaviour.

Loading a case file leaves no cyclic garbage that grows with its cases (collection runs with the collector paused
and freezes what is left); the cases of a suite share the parameters of a check written the same way, each with its
own line; an xdist worker empties its case reports' keywords and user properties once they have gone to the
controller, and an item's own properties once its teardown report has copied them, while junitxml (on the
controller, or a plain run) still gets every case's properties. The memory itself is measured in
bench/bench_memory.py."""

from __future__ import annotations

import gc
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cases.loader import _check_key, load_file
from pytest_llmeval.cases.schema import parse_check
from pytest_llmeval.checks.builtin import builtin_registry

CHECKS = """\
suite: shared
params: {temperature: 0}
cases:
  - id: a
    question: Say ok.
    expect: [{contains: ok}]
  - id: b
    question: Say ok again.
    expect:
      - contains: ok
      - {not_contains: nope}
  - id: c
    question: Say one.
    expect: [{contains: [ok, fine]}, {contains: {value: ok}}]
  - id: d
    question: Say it loudly.
    params: {max_tokens: 8}
    expect:
      - contains: {value: OK, ignore_case: false}
  - id: e
    question: Bad.
    expect: [{contains: {value: ok, nonsense: 1}}]
  - id: f
    question: Bad again.
    expect: [{contains: {value: ok, nonsense: 1}}]
"""


def test_cases_share_a_checks_parameters_each_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(CHECKS)
    registry = builtin_registry()
    loaded = load_file(path, registry)
    cases = {c.id: c for c in loaded.cases}
    assert sorted(cases) == ["a", "b", "c", "d"]
    # Every check is what schema.parse_check makes of its entry alone (name, parameters, line).
    raw_lines = CHECKS.splitlines()
    for case in cases.values():
        for spec in case.checks:
            assert spec.line is not None and spec.name in raw_lines[spec.line - 1]
    a, b, c, d = cases["a"].checks, cases["b"].checks, cases["c"].checks, cases["d"].checks
    assert a[0].params is b[0].params  # written the same way: one parameters model
    assert (a[0].line, b[0].line) == (6, 10)
    assert b[1].name == "not_contains" and b[1].params is not a[0].params
    # A list is not remembered (validated for each case); a mapping is, apart from the shorthand.
    assert c[0] == parse_check({"contains": ["ok", "fine"]}, ("x",), "qna", registry, lambda _: c[0].line)[0]
    assert c[1] == parse_check({"contains": {"value": "ok"}}, ("x",), "qna", registry, lambda _: c[1].line)[0]
    assert c[1].params is not a[0].params and c[1].params == a[0].params
    # 1 and true are equal keys, 1 and 1.0 too, but other values: each validated on its own.
    keys = {_check_key({"contains": v}, "qna", path.parent) for v in (1, True, 1.0, "1")}
    assert len(keys) == 4 and _check_key({"contains": [1]}, "qna", path.parent) is None
    assert d[0].params.ignore_case is False and d[0].params.value == "OK"
    # Params: the suite's dict shared when a case has none of its own, merged when it has.
    assert cases["a"].params is cases["b"].params and cases["a"].params == {"temperature": 0}
    assert cases["d"].params == {"temperature": 0, "max_tokens": 8}
    # A bad check is reported for every case that has it, at its own line (errors are never shared).
    errors = sorted((e.case_id, e.line) for e in loaded.errors)
    assert errors == [("e", 22), ("f", 25)], loaded.errors


def test_loading_leaves_no_garbage_that_grows_with_the_cases(tmp_path: Path) -> None:
    n = 400
    lines = ["suite: many", "cases:"]
    for i in range(n):
        lines += [f"  - id: c{i}", f"    question: 'Question {i}'", "    expect: [{contains: ok}]"]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines) + "\n")
    registry = builtin_registry()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # as collection loads files (core.memory.paused_gc): only reference counting frees anything
    try:
        loaded = load_file(path, registry)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert len(loaded.cases) == n
    sizes = [len(o) for o in garbage if isinstance(o, set | list | dict | tuple)]
    assert len(garbage) < 50 and max(sizes, default=0) < 20, sorted(sizes)[-5:]


CONFTEST = """\
import json
import os


def pytest_sessionfinish(session):
    role = getattr(session.config, "workerinput", {}).get("workerid", "main")
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    reports = [r for rs in terminal.stats.values() for r in rs if hasattr(r, "when")] if terminal else []
    seen = {
        "reports": len(reports),
        "with_keywords": sum(1 for r in reports if r.keywords),
        "with_properties": sum(1 for r in reports if r.user_properties),
        "items_with_properties": sum(1 for i in session.items if i.user_properties),
    }
    with open(os.path.join(str(session.config.rootpath), f"seen-{role}.json"), "w") as fh:
        json.dump(seen, fh)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_workers_slim_sent_reports_and_junitxml_keeps_the_properties(project: Any, workers: list[str]) -> None:
    project.server.default = "ok"
    lines = ["suite: many", "cases:"]
    for i in range(40):
        lines += [f"  - id: c{i}", f"    question: 'Question {i}'", "    expect: [{contains: ok}]"]
    project.write("cases/many.yaml", "\n".join(lines) + "\n")
    project.write("conftest.py", CONFTEST)
    result = project.run(*workers, "--llm-cache=off", "--junitxml=junit.xml")
    result.assert_outcomes(passed=40)
    root = project.pytester.path
    tree = ET.parse(root / "junit.xml")
    cases = tree.getroot().findall(".//testcase")
    assert len(cases) == 40
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.findall("./properties/property")}
        assert props["llmeval_suite"] == "many" and props["llmeval_outcome"] == "passed"
        assert props["llmeval_case"] == case.get("name").split("[")[0]
        assert props["llmeval_model"] == "openai/test-model" and props["llmeval_cached"] == "false"
    seen = {name[5:-5]: __import__("json").loads((root / name).read_text())
            for name in os.listdir(root) if name.startswith("seen-")}
    main = seen.pop("main")
    assert main["items_with_properties"] == 0  # copied into the teardown reports, then dropped from the items
    if not workers:
        assert main["reports"] == 120 and main["with_properties"] == 80  # a plain run's reports keep them
        return
    assert sorted(seen) == ["gw0", "gw1"]
    assert main["with_properties"] == 80  # the controller's reports: call and teardown
    for worker in seen.values():
        assert worker["reports"] > 0
        assert worker["with_keywords"] == worker["with_properties"] == worker["items_with_properties"] == 0
    assert sum(w["reports"] for w in seen.values()) == 120
