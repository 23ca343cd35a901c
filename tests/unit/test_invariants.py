"""The plugin's own invariants, by property-based testing (Hypothesis).

1. Aggregation does not depend on how a run's cases were split across xdist workers or shards: merging the
   shards' results documents gives the suite rows of one run over all the cases; and the rows do not depend on
   the order the cases arrive in.
2. The regression gate is monotone: making the current run worse (a passing case fails, a score drops) never
   makes a suite's verdict better, and fixing a failure never makes it worse.
3. Case files survive a dump and a load: what ``dump_suite`` writes, ``load_file`` reads back to the same cases.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st

from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.cases.schema import IMPLIED_CHECK, default_prompt
from pytest_llmeval.cases.writer import dump_suite, needs_quotes
from pytest_llmeval.checks.builtin import builtin_registry
from pytest_llmeval.results.aggregate import OUTCOMES, CaseResult, aggregate, build_results, merge_results, pass_at_k
from pytest_llmeval.results.gate import FAILING, Gate, load_baseline, parse_rule, write_baseline

fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

unit = st.floats(0.0, 1.0, allow_nan=False)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped (Hypothesis reruns the test body, not function-scoped fixtures, per example).
    return tmp_path_factory.mktemp("invariants")


_names = itertools.count()


def fresh_path(folder: Path, suffix: str = ".yaml") -> Path:
    # A new name per example: load_file memoises on (path, mtime, size), and two same-sized files written to
    # one path within the file system's timestamp granularity would read as the first.
    return folder / f"suite{next(_names)}{suffix}"


def via_file(document: dict[str, Any]) -> dict[str, Any]:
    """What a shard's results.json reads back as (``llmeval merge`` reads files)."""
    return json.loads(json.dumps(document, ensure_ascii=False))


# =============================================================================== 1. sharding and order

# Suites of one kind each (so the kind-specific parts of a row appear), and one of mixed kinds.
SUITE_KINDS = {"geo": "qna", "mcq": "choice", "prog": "code", "cls": "labels", "cal": "calibration", "mix": None}
MODELS = ["openai/gpt-x", "local/tiny"]
CASE_IDS = [f"c{i}" for i in range(12)]
LABELS = ["DRY", "SRP", "MC", "NAME", "NO_COMPILE"]
INVALID = [{"file": "cases/bad.yaml", "line": 3, "field": "cases[0].id", "message": "duplicate id", "case_id": "a"},
           {"file": "cases/bad.yaml", "line": None, "field": None, "message": "YAML syntax error", "case_id": None},
           {"file": "cases/x.jsonl", "line": 7, "field": None, "message": "invalid JSON", "case_id": None}]


@st.composite
def case_results(draw: st.DrawFn) -> CaseResult:
    """One item's CaseResult with every part aggregation reads (``aggregate`` and ``_extras``)."""
    suite = draw(st.sampled_from(sorted(SUITE_KINDS)))
    kind = SUITE_KINDS[suite] or draw(st.sampled_from(["qna", "choice", "code", "labels"]))
    model = draw(st.sampled_from(MODELS))
    case_id = draw(st.sampled_from(CASE_IDS))
    outcome = draw(st.sampled_from(OUTCOMES))
    r = CaseResult(suite=suite, case_id=case_id, model=model, outcome=outcome, kind=kind,
                   nodeid=draw(st.sampled_from([f"cases/{suite}.yaml::{case_id}[{model}]", ""])))
    # Values on any outcome: aggregation must itself leave out what errors and skips carry.
    r.score = draw(maybe(unit))
    r.latency_s = draw(maybe(st.floats(0.0, 120.0)))
    r.ttft_s = draw(maybe(st.floats(0.0, 5.0)))
    r.retries = draw(st.integers(0, 3))
    r.prompt_tokens = draw(maybe(st.integers(0, 4000)))
    r.completion_tokens = draw(maybe(st.integers(0, 4000)))
    r.cost_usd = draw(maybe(st.floats(0.0, 0.5)))
    r.cached = draw(st.sampled_from([None, True, False]))
    r.calls = draw(st.integers(0, 3))
    r.unscored_checks = draw(st.integers(0, 2))
    r.cache = draw(st.sampled_from([None, None, "exact", "semantic"]))
    r.metrics = draw(st.dictionaries(st.sampled_from(["bleu", "rouge_l", "similarity"]), unit, max_size=3))
    if draw(st.booleans()):  # --llm-repeat
        n = draw(st.integers(2, 5))
        scored = draw(st.integers(0, n))
        k = draw(st.integers(0, scored))
        r.repeats = {"n": n, "scored": scored, "passed": k, "pass_if": "all",
                     "pass_fraction": round(k / scored, 6) if scored else None,
                     "pass_all": bool(scored) and k == scored, "pass_any": k > 0}
        r.flaky = 0 < k < scored
        if scored:
            r.pass_at_k = {str(j): round(pass_at_k(scored, k, j), 6) for j in sorted({1, 5, scored}) if j <= scored}
    if kind == "code":
        r.detail = draw(st.sampled_from([None, "NO_CODE", "NO_COMPILE"]))
        r.stage = draw(st.sampled_from([None, "runs", "judged"]))
        r.pass_at_k = r.pass_at_k or {"1": float(outcome == "passed")}
    if draw(st.booleans()):
        r.judge = {"model": draw(st.sampled_from(["judge-a", "judge-b"])), "self_judging": draw(st.booleans()),
                   "calls": draw(st.integers(1, 3))}
    if kind == "labels":
        r.labels = {"expected": draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=3)),
                    "predicted": draw(st.lists(st.sampled_from([*LABELS, "OTHER"]), unique=True, max_size=3)),
                    "allowed": draw(st.sampled_from([LABELS, LABELS[:3], []]))}
    if kind == "calibration":
        r.calibration = {"agree": draw(st.booleans()), "abs_error": draw(maybe(st.floats(0.0, 10.0))),
                         "human_verdict": draw(st.sampled_from(["pass", "fail"])),
                         "judge_verdict": draw(st.sampled_from(["pass", "fail"]))}
    if draw(st.booleans()):
        r.retrieval = {"k": draw(st.integers(1, 5)), "recall_at_k": draw(unit), "mrr": draw(unit)}
    r.split = draw(st.sampled_from(["dev", "dev", "test"]))  # --llm-split
    if draw(st.booleans()):  # the robust stage's perturbed variants
        scored = draw(st.integers(0, 6))
        consistent = draw(st.integers(0, scored))
        r.robustness = {"perturb": draw(st.lists(st.sampled_from(["typos", "case", "whitespace"]), min_size=1,
                                                 unique=True)),
                        "variants": scored, "scored": scored, "consistent": consistent,
                        "consistency": round(consistent / scored, 6) if scored else None,
                        "passed": draw(st.booleans())}
    r.vision = draw(st.lists(st.fixed_dictionaries({
        "expect": st.sampled_from(["yes", "no"]), "answer": st.sampled_from(["yes", "no", None]),
        "precheck": st.sampled_from([None, "ok", "blank"]), "unscored": st.booleans(), "skipped": st.booleans(),
        "model": st.sampled_from([None, "vlm-a", "vlm-b"])}), max_size=2))
    return r


# One result per (suite, model, case): what one run produces.
runs = st.lists(case_results(), max_size=40, unique_by=lambda r: (r.suite, r.model, r.case_id))


def one_run(results: list[CaseResult]) -> dict[str, Any]:
    return via_file(build_results(results, models=MODELS, cache_mode="on", exit_status=0, invalid=INVALID,
                                  workers=0, version="test"))


def close(a: Any, b: Any, where: str = "rows") -> None:
    """Equal, floats within 1e-6: the row rounds means to 6 places (``_r``), so a sum taken in another order can
    move a rounded value by one unit in the last place; anything larger is a real difference."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), f"{where}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1.01e-6), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@fast
@given(runs, st.data())
def test_merging_shards_gives_the_rows_of_one_run(results: list[CaseResult], data: st.DataObject) -> None:
    """Split a run's cases over k shards (or xdist workers) in any way and any order; ``llmeval merge`` of the
    shards' results files must give exactly the suite rows and cases of the unsplit run. Exactly: both
    documents aggregate the same cases in the same (sorted) order, so even float sums agree to the bit."""
    k = data.draw(st.integers(1, 4), label="shards")
    where = data.draw(st.lists(st.integers(0, k - 1), min_size=len(results), max_size=len(results)), label="shard of")
    rnd = data.draw(st.randoms(use_true_random=False))
    parts = [[r for r, w in zip(results, where, strict=True) if w == i] for i in range(k)]
    for part in parts:
        rnd.shuffle(part)  # a worker reports its cases in the order they finished
    exits = data.draw(st.lists(st.sampled_from([0, 1]), min_size=k, max_size=k), label="exit statuses")
    invalid = [data.draw(st.lists(st.sampled_from(INVALID), unique_by=json.dumps), label="invalid") for _ in range(k)]
    docs = [via_file(build_results(part, models=MODELS, cache_mode="on", exit_status=exits[i], invalid=invalid[i],
                                   workers=2, version="test", shard=f"{i + 1}/{k}"))
            for i, part in enumerate(parts)]
    order = data.draw(st.permutations(range(k)), label="file order")
    merged = via_file(merge_results([docs[i] for i in order], "test"))

    whole = one_run(results)
    assert merged["suites"] == whole["suites"]
    assert merged["cases"] == whole["cases"]  # none dropped, none doubled
    seen = [e for inv in invalid for e in inv]
    assert merged["invalid"] == [e for e in whole["invalid"] if e in seen]  # each collection error once
    assert merged["run"]["models"] == MODELS
    assert merged["run"]["exit_status"] == max(exits)
    assert merged["run"]["merged_from"] == k and merged["run"]["shards"] == [f"{i + 1}/{k}" for i in order]


@settings(fast, max_examples=50)
@given(runs, st.data())
def test_a_case_in_two_shards_counts_once_and_a_conflict_is_an_error(results: list[CaseResult],
                                                                     data: st.DataObject) -> None:
    """Overlapping shards (a re-run shard, a file passed twice) must not count a case twice; the same case with
    two different outcomes is an error, never silently one of them."""
    assume(results)
    again = data.draw(st.lists(st.sampled_from(results), min_size=1, unique_by=id), label="in both files")
    whole = one_run(results)
    first = one_run(results)
    second = one_run(again)
    merged = merge_results([first, second], "test")
    assert via_file(merged)["suites"] == whole["suites"]
    assert len(merged["cases"]) == len(results)

    flipped = via_file(second)
    victim = data.draw(st.sampled_from(flipped["cases"]), label="conflicting case")
    victim["outcome"] = data.draw(st.sampled_from([o for o in OUTCOMES if o != victim["outcome"]]))
    with pytest.raises(ValueError, match="different outcomes"):
        merge_results([first, flipped], "test")


@fast
@given(runs, st.randoms(use_true_random=False))
def test_aggregation_does_not_depend_on_the_order_of_cases(results: list[CaseResult], rnd: Any) -> None:
    shuffled = list(results)
    rnd.shuffle(shuffled)
    rows = aggregate(results)
    close(aggregate(shuffled), rows)
    # Not a vacuous equality: every case is in exactly one row, counted under exactly one outcome.
    assert sum(r["cases"] for r in rows) == len(results)
    for row in rows:
        assert sum(row[o] for o in OUTCOMES) == row["cases"]
        graded = row["passed"] + row["failed"]
        assert row["pass_rate"] == (None if graded == 0 else pytest.approx(row["passed"] / graded, abs=1e-6))


# =============================================================================== 2. the gate is monotone

# Rule sets as users write them (see parse_rule): drops vs the baseline, floors, budgets, a per-suite floor.
RULE_SETS = [
    [],  # the default drop rule, pass_rate:-5%
    ["pass_rate:-5%"],
    ["pass_rate:-0"],  # any significant drop
    ["pass_rate:-10%", "score:-0.05"],
    ["score:-0.02"],
    ["pass_rate>=0.8"],
    ["pass_rate>=80%", "score>=0.5", "score:-0.1"],
    ["s1:pass_rate>=0.9", "pass_rate:-5%", "score:-0.05"],
    ["errors<=10%", "latency_p95<=2.5", "cost<=1", "pass_rate:-5%"],
]
VERDICTS = {"ok", "new", "inconclusive", *FAILING}


def badness(verdict: str) -> int:
    """The order of verdicts in gate.py: ok and new pass; inconclusive passes but warns; FAILING fail the gate."""
    assert verdict in VERDICTS, f"unknown verdict {verdict!r}: place it in this order"
    return 2 if verdict in FAILING else 1 if verdict == "inconclusive" else 0


Row = tuple[str, str, str, float | None]  # suite, case id, outcome, score


@st.composite
def gate_runs(draw: st.DrawFn) -> tuple[list[Row], list[Row]]:
    """A baseline and a current run of two suites: mostly the same cases, correlated outcomes, a score drift."""
    base: list[Row] = []
    cur: list[Row] = []
    outcome = st.sampled_from(["passed"] * 5 + ["failed"] * 3 + ["error", "skipped", "unscored"])
    for suite in ("s1", "s2"):
        drift = draw(st.sampled_from([0.0, -0.05, -0.3, -1.0, 0.1]))
        for i in range(draw(st.integers(0, 24))):
            cid = f"q{i}"
            where = draw(st.sampled_from(["both"] * 6 + ["baseline", "current"]))
            before = draw(outcome)
            score = draw(st.sampled_from([None, 0.0, 0.5, 0.9, 1.0]) | unit)
            if where != "current":
                base.append((suite, cid, before, score))
            if where != "baseline":
                now = draw(st.sampled_from([before] * 8 + ["passed", "failed", "error"]))
                noise = draw(st.sampled_from([0.0, 0.0, 0.05, -0.05]))
                cur.append((suite, cid, now, None if score is None else min(1.0, max(0.0, score + drift + noise))))
    return base, cur


def results_doc(rows: list[Row]) -> dict[str, Any]:
    cases = [CaseResult(suite=s, case_id=c, model="m", outcome=o, score=sc, latency_s=1.0 + (i % 3), cost_usd=0.01)
             for i, (s, c, o, sc) in enumerate(rows)]
    return build_results(cases, models=["m"], cache_mode="on", exit_status=0, invalid=[], workers=0, version="test")


def change(rows: list[Row], edits: list[tuple[int, str, float]], worse: bool) -> list[Row]:
    """Worse: a passing case fails, or a score drops. Better: a failing case passes, or a score rises."""
    out = list(rows)
    for index, what, amount in edits:
        s, c, o, sc = out[index % len(out)]
        if what == "outcome" and o == ("passed" if worse else "failed"):
            o = "failed" if worse else "passed"
        elif what == "score" and sc is not None:
            sc = max(0.0, sc - amount) if worse else min(1.0, sc + amount)
        out[index % len(out)] = (s, c, o, sc)
    return out


# The README's regression: "... or a score:-X rule whose paired bootstrap 95% interval of the mean score change
# lies below 0". Ten cases all passed with score 1.0 before, all still pass with score 0.0 now: a score regression.
# One more failure made the pass-rate drop (10 points) too small a sample to confirm, and the gate used to stop
# there ("inconclusive") without looking at the scores: one more failure turned a failing gate into a passing one.
_SCORE_BUG: tuple[list[Row], list[Row]] = ([("s1", f"q{i}", "passed", 1.0) for i in range(10)],
                                           [("s1", f"q{i}", "passed", 0.0) for i in range(10)])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gate_runs(), st.sampled_from(RULE_SETS), st.sampled_from([0.05, 0.2]),
       st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["outcome", "score"]), st.floats(0.01, 1.0)),
                min_size=1, max_size=6), st.booleans())
@example(_SCORE_BUG, ["pass_rate:-5%", "score:-0.05"], 0.05, [(0, "outcome", 0.5)], True)
@example((_SCORE_BUG[0], change(_SCORE_BUG[1], [(0, "outcome", 0.5)], worse=True)), ["pass_rate:-5%", "score:-0.05"],
         0.05, [(0, "outcome", 0.5)], False)
def test_the_gate_is_monotone(workdir: Path, runs: tuple[list[Row], list[Row]], rules: list[str], alpha: float,
                              edits: list[tuple[int, str, float]], worse: bool) -> None:
    """A worse current run never gets a better verdict, suite by suite; a better one never a worse verdict."""
    base_rows, cur_rows = runs
    assume(cur_rows)
    changed = change(cur_rows, edits, worse)
    assume(changed != cur_rows)
    path = workdir / "baseline.json"
    write_baseline(path, results_doc(base_rows))  # the file --llm-update-baseline writes, read as the gate reads it
    baseline = load_baseline(path)
    gate = Gate([parse_rule(r) for r in rules], alpha=alpha)
    before = {(v.suite, v.model): v for v in gate.evaluate(results_doc(cur_rows), baseline)}
    after = {(v.suite, v.model): v for v in gate.evaluate(results_doc(changed), baseline)}
    assert before.keys() == after.keys()
    for key, v in before.items():
        w = after[key]
        note(f"{key}: {v.verdict} -> {w.verdict}; before {v.reasons}, after {w.reasons}")
        if worse:
            assert badness(w.verdict) >= badness(v.verdict), f"{key}: worse run, verdict {v.verdict} -> {w.verdict}"
        else:
            assert badness(w.verdict) <= badness(v.verdict), f"{key}: better run, verdict {v.verdict} -> {w.verdict}"


# =============================================================================== 3. case files round-trip

REGISTRY = builtin_registry()

# Strings a YAML reader takes for something else, or that plain style cannot hold.
TRICKY = ["yes", "No", "ON", "off", "y", "N", "null", "~", "true", "False", "1.0", "1e3", "-1", "0123", "0x1F",
          "0o17", "0b101", "1_000", "1:20", ".inf", "-.Inf", ".nan", "2024-01-01", "2024-01-01 10:00:00", "=", "<<",
          "  leading", "trailing  ", " ", "a: b", "key:", "a #b", "#hash", "- dash", "? q", ": c", "'single'",
          '"double"', "it's", "{braces}", "[list]", "*alias", "&anchor", "!tag", "%percent", "@at", "`tick`", "|",
          ">", "back\\slash", "tab\there", "é中文 🙂", "multi\nline", "ends with newline\n", "\n\nleading breaks",
          "  indented\nblock", "trailing space \nnext", "crlf\r\nline", "nel\x85next", "ls\u2028ps\u2029", "\ufeffbom",
          "nul\x00", "bell\x07", "x" * 120]
texts = st.sampled_from(TRICKY) | st.text(max_size=30) | st.lists(
    st.sampled_from(TRICKY) | st.text(max_size=8), min_size=2, max_size=4).map("".join)
nonempty = texts.filter(bool)
ids = st.sampled_from(["1.0", "0123", "1_000", "123", "0x1F", "yes", "no", "on", "null", "true", "2024-01-01",
                       "1e3", "inf", "NaN", "é", "q-1.a"]) | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,10}",
                                                                            fullmatch=True)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(nonempty, inner, max_size=3), max_leaves=8)
# Free case fields (they feed prompt templates): names that are not CaseModel fields, some YAML-special.
EXTRA_NAMES = ["topic", "difficulty", "meta", "yes", "on", "null", "1", "2024-01-01", "x y", "é"]


@st.composite
def text_checks(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(["contains", "not_contains", "regex", "equals", "json"]))
    if name == "json":
        return {"json": draw(st.sampled_from([True, None, {"schema": {"type": "object", "required": ["yes"]}}]))}
    if name == "regex":
        pattern = draw(st.sampled_from([r"^\d+(\.\d+)?$", "a: b #c", "yes|no"]) | nonempty.map(re.escape))
        return {"regex": draw(st.sampled_from([pattern, {"pattern": pattern, "ignore_case": True, "full": False}]))}
    value = draw(nonempty | st.lists(nonempty, min_size=1, max_size=3))
    full = {"value": value, "ignore_case": draw(st.booleans())} if name != "equals" else {"value": value,
                                                                                          "normalize": False}
    return {name: draw(st.sampled_from([value, full]))}


@st.composite
def common_fields(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["tags"] = draw(st.lists(nonempty, max_size=3))
    if draw(st.booleans()):
        out["system"] = draw(maybe(texts))
    if draw(st.booleans()):
        out["params"] = {"temperature": draw(st.floats(0, 2)), "max_tokens": draw(st.integers(1, 4096))}
    if draw(st.booleans()):
        out["pass_if"] = draw(st.sampled_from(["all", "majority", "any"]))
    return out


@st.composite
def suites(draw: st.DrawFn) -> dict[str, Any]:
    """A suite mapping as users write it, of one kind, with its keys (and each case's) in a random order."""
    kind = draw(st.sampled_from(["qna", "choice", "labels"]))
    settings_: dict[str, Any] = {"suite": draw(nonempty), "kind": kind, "description": draw(texts),
                                 **draw(common_fields())}
    if kind == "qna":
        if draw(st.booleans()):
            settings_["prompt"] = draw(st.sampled_from(["Q: {question}", "{question}\n\n(case {id}) #{id}: end"]))
        if draw(st.booleans()):
            settings_["expect"] = draw(st.lists(text_checks(), min_size=1, max_size=2))
    suite_labels = None
    if kind == "labels" and draw(st.booleans()):
        suite_labels = settings_["labels"] = draw(st.lists(nonempty, min_size=1, max_size=4, unique=True))
    cases = []
    for case_id in draw(st.lists(ids, min_size=1, max_size=4, unique=True)):
        case: dict[str, Any] = {"id": case_id, **draw(common_fields())}
        if kind == "qna":
            case["question"] = draw(nonempty)
            if draw(st.booleans()):
                case["reference"] = draw(texts)
            case.update(draw(st.dictionaries(st.sampled_from(EXTRA_NAMES), json_like, max_size=2)))
            if "expect" not in settings_ or draw(st.booleans()):
                case["expect"] = draw(st.lists(text_checks(), min_size=1, max_size=3))
        elif kind == "choice":
            letters = draw(st.lists(st.sampled_from("ABCDENY"), min_size=2, max_size=5, unique=True))
            if draw(st.booleans()):
                case["context"] = draw(texts)
            case["question"] = draw(texts)
            case["choices"] = {letter: draw(texts) for letter in letters}
            case["answer"] = draw(st.sampled_from(letters))
            if draw(st.booleans()):
                case["expect"] = [{"choice": draw(st.sampled_from([case["answer"], None]))}]
        else:
            labels = suite_labels or draw(st.lists(nonempty, min_size=1, max_size=4, unique=True))
            case["input"] = draw(texts)
            if suite_labels is None:
                case["labels"] = labels
            case["answer"] = draw(st.lists(st.sampled_from(labels), unique=True))
            if draw(st.booleans()):
                case["expect"] = [{"jaccard": draw(st.sampled_from([0.5, 1, {"min": 0.25}]))}]
        cases.append(shuffled_keys(draw, case))
    return {**shuffled_keys(draw, settings_), "cases": cases}


def shuffled_keys(draw: st.DrawFn, mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: mapping[k] for k in draw(st.permutations(list(mapping)))}


def key_orders(value: Any) -> Any:
    """Every mapping's keys, in order, through the whole structure (== on dicts ignores the order)."""
    if isinstance(value, dict):
        return [(k, key_orders(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [key_orders(v) for v in value]
    return None


def expected_checks(data: dict[str, Any], case: dict[str, Any], kind: str) -> list[tuple[str, Any]]:
    """The checks a case runs: the suite's, then its own, else its kind's implied one; shorthand filled in."""
    entries = [*data.get("expect", []), *case.get("expect", [])] or [IMPLIED_CHECK[kind]]
    out = []
    for entry in entries:
        ((name, value),) = entry.items()
        definition = REGISTRY.get(name)
        assert definition is not None
        raw = {} if value is None or value is True else value if isinstance(value, dict) else {
            definition.shorthand: value}
        out.append((name, definition.params.model_validate(raw)))
    return out


def check_round_trip(data: dict[str, Any], folder: Path) -> None:
    text = dump_suite(data)
    note(text)
    # The text holds exactly the data, with both PyYAML parsers (the loader takes libyaml's when it is there).
    for loader in {yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)}:
        raw = yaml.load(text, Loader=loader)  # noqa: S506 - safe loaders
        assert raw == data
        assert key_orders(raw) == key_orders(data)
    assert dump_suite(raw) == text  # stable: dumping what was read writes the same file

    path = fresh_path(folder)
    path.write_text(text, encoding="utf-8")
    loaded = load_file(path, REGISTRY)
    assert not loaded.errors, [e.format() for e in loaded.errors]
    assert loaded.suite == data["suite"]
    assert [c.id for c in loaded.cases] == [c["id"] for c in data["cases"]]
    kind = data["kind"]
    for spec, case in zip(loaded.cases, data["cases"], strict=True):
        assert spec.kind == kind
        fields = {**case, "answer": case["answer"].upper()} if kind == "choice" else dict(case)
        if kind == "labels" and "labels" not in case:
            fields["labels"] = data["labels"]
        fields.pop("expect", None)
        for name, value in fields.items():
            assert spec.fields[name] == value, name
        prompt = data["prompt"].format_map(fields) if "prompt" in data else default_prompt(kind, fields)
        assert spec.prompt == prompt
        assert spec.system == (case["system"] if case.get("system") is not None else data.get("system"))
        assert spec.params == {**data.get("params", {}), **case.get("params", {})}
        assert spec.tags == tuple(dict.fromkeys([*data.get("tags", []), *case.get("tags", [])]))
        assert spec.pass_if == (case.get("pass_if") or data.get("pass_if"))
        assert [(c.name, c.params) for c in spec.checks] == expected_checks(data, case, kind)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suites())
def test_case_files_round_trip_through_dump_and_load(workdir: Path, data: dict[str, Any]) -> None:
    check_round_trip(data, workdir)


@fast
@given(st.text(min_size=1))
def test_any_question_text_round_trips(workdir: Path, question: str) -> None:
    check_round_trip({"suite": "s", "kind": "qna", "cases": [{"id": "q", "question": question,
                                                             "expect": [{"contains": question}]}]}, workdir)


@pytest.mark.parametrize("text", ["yes", "No", "null", "~", "1.0", "0123", "1_000", "0x1F", "1e3", "0o17", ".inf",
                                  "2024-01-01", "=", "<<", " lead", "trail ", "a: b", "a #b", ""])
def test_yaml_special_strings_are_quoted(text: str) -> None:
    assert needs_quotes(text)
    line = dump_suite({"k": text}).strip()
    assert line in (f"k: '{text}'", f'k: "{text}"'), line


def test_dump_layout_is_what_people_write() -> None:
    data = {"suite": "geo", "cases": [{"id": "q1", "question": "Capital of France?\nOne word.",
                                       "expect": [{"contains": "Paris"}]}]}
    assert dump_suite(data) == ("suite: geo\n"
                                "cases:\n"
                                "  - id: q1\n"
                                "    question: |-\n"
                                "      Capital of France?\n"
                                "      One word.\n"
                                "    expect:\n"
                                "      - contains: Paris\n")


def test_a_case_id_with_a_trailing_newline_is_rejected(workdir: Path) -> None:
    path = fresh_path(workdir)
    path.write_text(dump_suite({"cases": [{"id": "abc\n", "question": "hi", "expect": [{"contains": "x"}]}]}),
                    encoding="utf-8")
    loaded = load_file(path, REGISTRY)
    assert not loaded.cases and [e.field for e in loaded.errors] == ["cases[0].id"]
