"""The regression gate: compare a run with a committed baseline, per suite x model, and decide.

Pass/fail outcomes are compared on the cases present in both runs (a paired design): only the discordant
cases carry information, and an exact one-sided sign test (McNemar's exact test) on them asks whether more
cases went from pass to fail than the other way. A drop counts as a ``regression`` only when it is larger
than the allowed drop *and* significant at the configured level; a larger drop that the suite is too small
to confirm is ``inconclusive``, printed with the smallest drop the suite could confirm. Mean scores get a
paired bootstrap interval. Floors (``pass_rate>=0.8``) and budgets (``latency_p95<=2``, ``cost<=1``) are
absolute. Agent suites (issue 18) have a tool-call accuracy per case: ``tool_accuracy:-0.05`` compares it like the
score (paired bootstrap over the cases that have it in both runs), ``tool_accuracy>=0.9`` and ``mean_steps<=3`` are
limits on the suite row. Infrastructure errors never count as regressions; too many of them fail the gate as such.

Rules are small parsed objects (``--llm-gate "pass_rate:-5%"``), in the spirit of pytest-benchmark.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmeval.core.errors import UsageError

BASELINE_VERSION = 1
DEFAULT_MAX_DROP = 5.0  # points of pass rate
DEFAULT_ALPHA = 0.05
DEFAULT_MAX_ERRORS = 0.10  # share of a suite's cases


class GateError(UsageError, ValueError):
    """A rule or baseline that cannot be used (bad syntax, unreadable file)."""


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class DropRule:
    """``pass_rate:-5%`` (points), ``score:-0.05`` or ``tool_accuracy:-0.05``: the largest allowed significant drop
    vs the baseline."""

    metric: str  # pass_rate | score | tool_accuracy
    max_drop: float  # pass_rate: points (0-100); score, tool_accuracy: absolute (0-1)

    def describe(self) -> str:
        return f"{self.metric}:-{self.max_drop:g}{'%' if self.metric == 'pass_rate' else ''}"


@dataclass(frozen=True)
class LimitRule:
    """``pass_rate>=0.8``, ``latency_p95<=2.5``, ``cost<=1``, ``errors<=10%``, ``tool_accuracy>=0.9``,
    ``mean_steps<=3``: an absolute floor or budget."""

    metric: str
    op: str  # >= or <=
    value: float
    suite: str | None = None  # only this suite (from the ini's per-suite floors)

    def describe(self) -> str:
        where = f"{self.suite}:" if self.suite else ""
        return f"{where}{self.metric}{self.op}{self.value:g}"

    def holds(self, actual: float) -> bool:
        return actual >= self.value if self.op == ">=" else actual <= self.value


LIMIT_METRICS = {"pass_rate": "pass_rate", "score": "mean_score", "latency_p95": "latency_p95_s",
                 "latency_p50": "latency_p50_s", "cost": "cost_usd", "errors": "errors",
                 "tool_accuracy": "tool_accuracy", "mean_steps": "mean_steps"}  # rule metric -> suite row key
FRACTIONS = ("pass_rate", "score", "errors", "tool_accuracy")  # limits given as 0.9, 90 or 90%
FORMS = ("'pass_rate:-5%', 'score:-0.05', 'tool_accuracy:-0.05', 'pass_rate>=0.8', 'latency_p95<=2.5', "
         "'cost<=1.00', 'errors<=10%', 'tool_accuracy>=0.9', 'mean_steps<=3' or 'suite:pass_rate>=0.9'")
_DROP = re.compile(r"^(pass_rate|score|tool_accuracy)\s*:\s*-?\s*(\d+(?:\.\d+)?)\s*(%?)$")
_LIMIT = re.compile(r"^(?:([\w.\-]+):)?(\w+)\s*(>=|<=)\s*(\d+(?:\.\d+)?)\s*(%?)$")


def parse_rule(text: str) -> DropRule | LimitRule:
    """One rule from its text form; GateError says what forms exist."""
    t = text.strip()
    m = _DROP.match(t)
    if m:
        metric, amount, pct = m.group(1), float(m.group(2)), m.group(3)
        if metric == "score":
            return DropRule("score", amount / 100 if pct else amount)
        if metric == "tool_accuracy":  # a fraction like the pass rate: -5% and -5 are 0.05 too
            return DropRule("tool_accuracy", amount / 100 if pct or amount > 1 else amount)
        return DropRule("pass_rate", amount if pct or amount > 1 else amount * 100)
    m = _LIMIT.match(t)
    if m and m.group(2) in LIMIT_METRICS:
        suite, metric, op, number, pct = m.groups()
        v = float(number)
        if metric == "mean_steps" and pct:
            raise GateError(f"cannot read gate rule {text!r}: mean_steps is a number of steps, not a percentage "
                            "(e.g. 'mean_steps<=3')")
        if metric in FRACTIONS and (pct or v > 1):
            v /= 100
        return LimitRule(metric, op, v, suite)
    raise GateError(f"cannot read gate rule {text!r}: expected e.g. {FORMS}")


# ---------------------------------------------------------------------------------------------- baselines


def _key(case: dict[str, Any]) -> tuple[str, str, str]:
    return str(case["suite"]), str(case["model"]), str(case.get("case_id") or case.get("case"))


def load_baseline(path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (suite, model, case): outcome and score (and tool_accuracy, for an agent case that has one), from a
    results file or a slim baseline file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GateError(f"cannot read the baseline {path}: {exc}") from None
    cases = doc.get("cases") if isinstance(doc, dict) else None
    if not isinstance(cases, list):
        raise GateError(f"{path} is neither a results file nor a baseline (no 'cases' list)")
    return {_key(c): _entry(c) for c in cases}


def _entry(case: dict[str, Any]) -> dict[str, Any]:
    out = {"outcome": case.get("outcome"), "score": case.get("score")}
    if case.get("tool_accuracy") is not None:
        out["tool_accuracy"] = case["tool_accuracy"]
    fraction, draws = _repeats(case)
    if fraction is not None:  # a repeated case: the share of its draws that passed (what the redraws compare with)
        out["pass_fraction"], out["draws"] = fraction, draws
    return out


def _repeats(case: dict[str, Any]) -> tuple[float | None, int]:
    """(pass fraction, graded draws) of a case drawn more than once: from a slim baseline or a results file."""
    if case.get("pass_fraction") is not None:
        return float(case["pass_fraction"]), int(case.get("draws") or 1)
    rep = case.get("repeats") or {}
    if rep.get("pass_fraction") is not None and int(rep.get("scored") or 0) > 1:
        return float(rep["pass_fraction"]), int(rep["scored"])
    return None, 1


def baseline_document(results: dict[str, Any]) -> dict[str, Any]:
    """The slim baseline written by --llm-update-baseline: per-case outcomes and scores (and the tool accuracy of
    the agent cases that have one: a baseline without agent cases is what it always was), sorted, stable."""
    cases = []
    for c in results["cases"]:
        case = {"suite": c["suite"], "model": c["model"], "case": c["case_id"], "outcome": c["outcome"],
                "score": None if c.get("score") is None else round(float(c["score"]), 6)}
        if c.get("tool_accuracy") is not None:
            case["tool_accuracy"] = round(float(c["tool_accuracy"]), 6)
        fraction, draws = _repeats(c)
        if fraction is not None:  # --llm-repeat: the gate's redraws compare with the share of draws that passed
            case["pass_fraction"], case["draws"] = round(fraction, 6), draws
        cases.append(case)
    cases.sort(key=lambda c: (c["suite"], c["model"], c["case"]))
    return {"baseline_version": BASELINE_VERSION, "tool": results.get("tool"), "created_at": results.get("created_at"),
            "cases": cases}


def write_baseline(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(baseline_document(results), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- statistics


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact test on discordant pairs: P(at least ``worse`` of them went pass->fail | no change)."""
    n = worse + better
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(worse, n, 0.5, alternative="greater").pvalue)


def min_detectable_drop(n: int, alpha: float) -> float | None:
    """The smallest pass-rate drop (points) this many paired cases can confirm: with no case improving, k
    flips are significant when 0.5**k < alpha."""
    if n <= 0:
        return None
    k = math.ceil(math.log(1 / alpha, 2))
    return 100.0 * min(k, n) / n if k <= n else None


def bootstrap_interval(deltas: list[float], *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap interval of the mean per-case score change (seeded: the same data, the same answer)."""
    if not deltas:
        return None
    import numpy as np

    rng = np.random.default_rng(seed)
    d = np.asarray(deltas, dtype=float)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------- the gate


@dataclass
class SuiteVerdict:
    suite: str
    model: str
    verdict: str  # ok | regression | inconclusive | below_floor | over_budget | errors | new
    paired: int = 0
    base_pass_rate: float | None = None
    pass_rate: float | None = None
    delta_points: float | None = None
    worse: int = 0  # pass -> fail
    better: int = 0  # fail -> pass
    p_value: float | None = None
    min_detectable_drop: float | None = None
    score_delta: float | None = None
    score_interval: tuple[float, float] | None = None
    tool_paired: int = 0  # cases with a tool accuracy in both runs
    base_tool_accuracy: float | None = None  # their mean tool accuracy, before and now
    tool_accuracy: float | None = None
    tool_accuracy_delta: float | None = None  # mean per-case change (0-1)
    tool_accuracy_interval: tuple[float, float] | None = None  # its paired bootstrap 95% interval
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    flipped: list[dict[str, Any]] = field(default_factory=list)  # passed before, failed now: worst first
    reasons: list[str] = field(default_factory=list)
    # With --llm-gate-redraws: the sequential test's looks, the answers redrawn and their cost (run/redraw.py)
    sequential: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["score_interval"] = list(self.score_interval) if self.score_interval else None
        d["tool_accuracy_interval"] = list(self.tool_accuracy_interval) if self.tool_accuracy_interval else None
        return d


FAILING = ("regression", "below_floor", "over_budget", "errors")


@dataclass
class Gate:
    rules: list[DropRule | LimitRule]
    alpha: float = DEFAULT_ALPHA
    max_errors: float = DEFAULT_MAX_ERRORS

    def drop_rule(self, metric: str) -> DropRule | None:
        return next((r for r in self.rules if isinstance(r, DropRule) and r.metric == metric), None)

    def evaluate(self, results: dict[str, Any], baseline: dict[tuple[str, str, str], dict[str, Any]] | None
                 ) -> list[SuiteVerdict]:
        """One verdict per suite x model of ``results`` (a results.json document)."""
        verdicts = []
        by_suite: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c in results["cases"]:
            by_suite.setdefault((c["suite"], c["model"]), []).append(c)
        rows = {(r["suite"], r["model"]): r for r in results["suites"]}
        for (suite, model), cases in sorted(by_suite.items()):
            v = SuiteVerdict(suite, model, "ok")
            self._limits(v, rows.get((suite, model), {}), cases)
            if baseline is not None:
                self._compare(v, cases, baseline)
            verdicts.append(v)
        return verdicts

    def _limits(self, v: SuiteVerdict, row: dict[str, Any], cases: list[dict[str, Any]]) -> None:
        errors = sum(1 for c in cases if c["outcome"] == "error")
        if cases and errors / len(cases) > self.max_errors:
            v.verdict = "errors"
            v.reasons.append(f"{errors} of {len(cases)} cases errored (infrastructure), more than "
                             f"{self.max_errors:.0%}")
        for rule in self.rules:
            if not isinstance(rule, LimitRule) or (rule.suite and rule.suite != v.suite):
                continue
            actual = (errors / len(cases) if cases else 0.0) if rule.metric == "errors" \
                else row.get(LIMIT_METRICS[rule.metric])
            if actual is None:
                continue
            if not rule.holds(float(actual)):
                kind = "below_floor" if rule.op == ">=" else "over_budget"
                if v.verdict not in FAILING:
                    v.verdict = kind
                v.reasons.append(f"{rule.metric} {float(actual):.4g} breaks {rule.describe()}")

    def _compare(self, v: SuiteVerdict, cases: list[dict[str, Any]],
                 baseline: dict[tuple[str, str, str], dict[str, Any]]) -> None:
        now = {c["case_id"]: c for c in cases}
        before = {k[2]: b for k, b in baseline.items() if k[0] == v.suite and k[1] == v.model}
        v.added = sorted(set(now) - set(before))
        v.removed = sorted(set(before) - set(now))
        self._tool_deltas(v, now, before)
        graded = ("passed", "failed")
        pairs = [(cid, before[cid], now[cid]) for cid in sorted(set(now) & set(before))
                 if before[cid]["outcome"] in graded and now[cid]["outcome"] in graded]
        v.paired = len(pairs)
        if not pairs:
            if not before and v.verdict == "ok":
                v.verdict = "new"
            elif v.verdict not in FAILING:  # nothing graded in both (all unscored, say): the tool calls still tell
                self._tool_rule(v)
            return
        base_pass = sum(1 for _, b, _ in pairs if b["outcome"] == "passed")
        cur_pass = sum(1 for _, _, c in pairs if c["outcome"] == "passed")
        v.base_pass_rate, v.pass_rate = base_pass / len(pairs), cur_pass / len(pairs)
        v.delta_points = 100.0 * (v.pass_rate - v.base_pass_rate)
        flipped = [(cid, b, c) for cid, b, c in pairs if b["outcome"] == "passed" and c["outcome"] == "failed"]
        v.worse = len(flipped)
        v.better = sum(1 for _, b, c in pairs if b["outcome"] == "failed" and c["outcome"] == "passed")
        v.p_value = sign_test_p(v.worse, v.better)
        v.min_detectable_drop = min_detectable_drop(len(pairs), self.alpha)
        v.flipped = sorted(({"case_id": cid, "score_before": b.get("score"), "score_now": c.get("score"),
                             "file": c.get("file"), "line": c.get("line")} for cid, b, c in flipped),
                           key=lambda f: (-((f["score_before"] or 0) - (f["score_now"] or 0)), f["case_id"]))
        scored = [(b["score"], c["score"]) for _, b, c in pairs if b.get("score") is not None
                  and c.get("score") is not None]
        if scored:
            deltas = [float(c) - float(b) for b, c in scored]
            v.score_delta = sum(deltas) / len(deltas)
            v.score_interval = bootstrap_interval(deltas)
        if v.verdict in FAILING:
            return
        rule = self.drop_rule("pass_rate") or DropRule("pass_rate", DEFAULT_MAX_DROP)
        drop = -v.delta_points
        if drop > rule.max_drop:
            if v.p_value < self.alpha:
                v.verdict = "regression"
                v.reasons.append(f"pass rate fell {drop:.1f} points (> {rule.max_drop:g}), {v.worse} case(s) "
                                 f"passed before and fail now vs {v.better} the other way (p = {v.p_value:.3g})")
            else:
                v.verdict = "inconclusive"
                mdd = v.min_detectable_drop
                v.reasons.append(f"pass rate fell {drop:.1f} points but {v.paired} paired cases cannot confirm it "
                                 f"(p = {v.p_value:.3g}); "
                                 + (f"smallest confirmable drop here: {mdd:.1f} points" if mdd is not None
                                    else "too few cases to confirm any drop"))
        score_rule = self.drop_rule("score")
        # Also past an inconclusive pass rate: a confirmed score drop is a regression whatever the pass rate says
        # (else one more failure could turn a failing gate into a passing one).
        if score_rule and v.score_interval and v.verdict in ("ok", "inconclusive"):
            lo, hi = v.score_interval
            if v.score_delta is not None and -v.score_delta > score_rule.max_drop and hi < 0:
                v.verdict = "regression"
                v.reasons.append(f"mean score fell {-v.score_delta:.3f} (> {score_rule.max_drop:g}); 95% interval "
                                 f"[{lo:.3f}, {hi:.3f}] excludes 0")
        self._tool_rule(v)

    @staticmethod
    def _tool_deltas(v: SuiteVerdict, now: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> None:
        """The tool accuracy of the cases that have one in both runs (agent cases with trajectory checks), paired:
        mean before and now, the mean per-case change and its bootstrap interval."""
        pairs = [(float(before[cid]["tool_accuracy"]), float(now[cid]["tool_accuracy"]))
                 for cid in sorted(set(now) & set(before))
                 if before[cid].get("tool_accuracy") is not None and now[cid].get("tool_accuracy") is not None]
        v.tool_paired = len(pairs)
        if not pairs:
            return
        v.base_tool_accuracy = sum(b for b, _ in pairs) / len(pairs)
        v.tool_accuracy = sum(c for _, c in pairs) / len(pairs)
        deltas = [c - b for b, c in pairs]
        v.tool_accuracy_delta = sum(deltas) / len(deltas)
        v.tool_accuracy_interval = bootstrap_interval(deltas)

    def _tool_rule(self, v: SuiteVerdict) -> None:
        """A ``tool_accuracy:-X`` rule: a regression when the mean tool accuracy fell by more than X and its 95%
        interval lies below 0 (past an inconclusive pass rate too, as for the score)."""
        rule = self.drop_rule("tool_accuracy")
        if not rule or not v.tool_accuracy_interval or v.tool_accuracy_delta is None:
            return
        if v.verdict not in ("ok", "inconclusive"):
            return
        lo, hi = v.tool_accuracy_interval
        if -v.tool_accuracy_delta > rule.max_drop and hi < 0:
            v.verdict = "regression"
            v.reasons.append(f"tool-call accuracy fell {-v.tool_accuracy_delta:.3f} (> {rule.max_drop:g}) over "
                             f"{v.tool_paired} paired agent case(s); 95% interval [{lo:.3f}, {hi:.3f}] excludes 0")


def gate_failed(verdicts: list[SuiteVerdict]) -> bool:
    return any(v.verdict in FAILING for v in verdicts)


def format_verdicts(verdicts: list[SuiteVerdict], show_flipped: int = 10) -> list[str]:
    """The gate's table and, per failing suite, its flipped cases, worst first."""
    lines = [f"{'suite':<20} {'model':<24} {'paired':>6} {'before':>7} {'now':>7} {'delta':>7} {'p':>7}  verdict"]
    for v in verdicts:
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.1%}"
        delta = "-" if v.delta_points is None else f"{v.delta_points:+.1f}"
        p = "-" if v.p_value is None else f"{v.p_value:.3g}"
        lines.append(f"{v.suite:<20} {v.model:<24} {v.paired:>6} {pct(v.base_pass_rate):>7} {pct(v.pass_rate):>7} "
                     f"{delta:>7} {p:>7}  {v.verdict}")
    for v in verdicts:
        if v.tool_accuracy_delta is not None and v.base_tool_accuracy is not None and v.tool_accuracy is not None:
            lo, hi = v.tool_accuracy_interval or (v.tool_accuracy_delta, v.tool_accuracy_delta)
            lines.append(f"  {v.suite} [{v.model}]: tool-call accuracy {v.base_tool_accuracy:.1%} -> "
                         f"{v.tool_accuracy:.1%} ({100 * v.tool_accuracy_delta:+.1f} pts, 95% interval "
                         f"[{100 * lo:+.1f}, {100 * hi:+.1f}]) over {v.tool_paired} paired agent case(s)")
        for reason in v.reasons:
            lines.append(f"  {v.suite} [{v.model}]: {reason}")
        seq = v.sequential
        if seq and seq.get("redraws"):
            tokens = int(seq["prompt_tokens"]) + int(seq["completion_tokens"])
            cost = f", ${seq['cost_usd']:.4f}" if seq.get("cost_usd") else ""
            lines.append(f"  {v.suite} [{v.model}]: redraws: {seq['redraws']} answers in {len(seq['looks']) - 1} "
                         f"look(s), {seq['calls']} calls ({seq['cached_calls']} from the cache), {tokens} tokens{cost}")
        if v.added or v.removed:
            lines.append(f"  {v.suite} [{v.model}]: {len(v.added)} case(s) added, {len(v.removed)} removed since the "
                         "baseline (not counted)")
        if v.flipped and v.verdict in ("regression", "inconclusive"):
            lines.append(f"  {v.suite} [{v.model}]: passed before, failed now ({len(v.flipped)}), worst first:")
            for f in v.flipped[:show_flipped]:
                where = f" ({f['file']}:{f['line']})" if f.get("file") else ""
                lines.append(f"    {f['case_id']}{where}")
            if len(v.flipped) > show_flipped:
                lines.append(f"    ... and {len(v.flipped) - show_flipped} more")
    return lines
