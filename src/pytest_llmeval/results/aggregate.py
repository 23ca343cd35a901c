"""CaseResult (plain data that rides on test reports across xdist) and the per suite x model aggregate.

What a check adds to a suite x model row (the labels' per-label report, say) is computed by the check itself:
its ``aggregate`` reaches this module as a ``check_aggregates`` mapping (check name -> function) passed in by
the caller, since checks sit above results in the layers (run/session.py passes the run's registered checks,
``llmeval merge`` the built-in ones).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmeval.core.checks import AggregateFn

SCHEMA_VERSION = 2  # 2: unscored outcome, intervals, repeats, judges, labels, metrics (later additions: additive)
OUTCOMES = ("passed", "failed", "unscored", "error", "skipped")
ANSWER_LIMIT = 4000  # characters of an answer kept in results.json


@dataclass
class CaseResult:
    """What one item measured. Only JSON-friendly fields: it is serialised onto the test report."""

    suite: str
    case_id: str
    model: str
    outcome: str  # passed | failed | unscored | error | skipped
    kind: str = "qna"
    nodeid: str = ""
    file: str | None = None
    line: int | None = None
    resolved_model: str | None = None
    score: float | None = None  # mean of the check scores; None when not graded
    checks: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    answer: str | None = None
    latency_s: float | None = None
    ttft_s: float | None = None  # time to first token (streamed answers, --llm-stream)
    retries: int = 0  # extra attempts the model calls needed (429, 5xx, connection errors, timeouts)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    cached: bool | None = None
    calls: int = 0
    tags: list[str] = field(default_factory=list)
    message: str | None = None  # the error or skip reason
    # code cases
    code: str | None = None  # what was extracted from the answer
    detail: str | None = None  # NO_CODE | NO_COMPILE | None
    sandbox: str | None = None  # the isolation level the code ran under
    artifacts: dict[str, str] = field(default_factory=dict)  # files the program wrote, kept
    runs: list[dict[str, Any]] = field(default_factory=list)  # each sandboxed step: exit, reason, time
    pass_at_k: dict[str, float] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)  # each draw, with --llm-repeat/--llm-samples > 1
    # repeats, judges, metrics
    repeats: dict[str, Any] | None = None  # n, scored, passed, pass_fraction, pass_all, pass_any, pass_if
    flaky: bool = False  # repeated draws both passed and failed
    unscored_checks: int = 0  # checks (judges) whose output could not be scored, over all draws
    metrics: dict[str, float] = field(default_factory=dict)  # bleu, rouge_l, similarity vs the reference
    labels: dict[str, Any] | None = None  # labels cases: predicted, expected, unknown, format
    judge: dict[str, Any] | None = None  # judge model, self_judging, calls, latency, cost
    calibration: dict[str, Any] | None = None  # calibration cases: judge vs human label
    # retrieval
    references: list[dict[str, Any]] = field(default_factory=list)  # the chunks put into the prompt: n, source...
    retrieval: dict[str, Any] | None = None  # index, version, model, k; recall_at_k, mrr with expected sources
    # images and vision judges
    stage: str | None = None  # "runs" | "judged": the two items of a code case with vision checks
    vision: list[dict[str, Any]] = field(default_factory=list)  # per question: expect, answer, reason, image...
    vision_judge: dict[str, Any] | None = None  # vision model, calls, latency, cost, cached
    cache: str | None = None  # how the answer was served: "exact" | "semantic" | None (called the model)
    semantic_hit: dict[str, Any] | None = None  # with --llm-cache=semantic: similarity, the original request
    # holdout and robustness
    split: str = "dev"  # dev | test: the case's split (the test split runs only with --llm-split test)
    prompt_hash: str | None = None  # hash of what is tuned: system prompt, prompt template, params
    robustness: dict[str, Any] | None = None  # robust stage: consistency, flips, the minimal flipping variant
    # application targets (targets/): what answered, what its own model calls cost, what it said besides the text
    target: str | None = None  # python:bot:answer, fixture:docs_bot, http:<url>; None: the --llm model itself
    app_usage: dict[str, Any] | None = None  # the application's own model calls: calls, tokens, cost, latency
    metadata: dict[str, Any] | None = None  # the application's Answer.metadata (first draw)
    transcript: dict[str, Any] | None = None  # a conversation: its turns, how it ended (first draw)
    # agents (issue 18): the tool calls of an agent run (core.tools.Trajectory.to_dict() of the first draw, with its
    # "mode": native | prompt | app) and the mean score of the trajectory checks over every draw (None: no such check)
    trajectory: dict[str, Any] | None = None
    tool_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # Shallow: the values are already plain JSON data (asdict's deep copy cost ~0.2 ms a case). The instance's
        # __dict__ holds exactly the fields, in order, unless someone added an attribute.
        fields = self.__dataclass_fields__
        own = self.__dict__
        d = dict(own) if len(own) == len(fields) else {name: getattr(self, name) for name in fields}
        if d["answer"] and len(d["answer"]) > ANSWER_LIMIT:
            d["answer"] = d["answer"][:ANSWER_LIMIT] + "…"
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), without importing numpy for a dozen numbers."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


def wilson(k: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """The Wilson score interval of a proportion k/n (scipy's), as [low, high]; None for n = 0."""
    if n <= 0:
        return None
    # The closed form (what scipy's binomtest(k, n).proportion_ci(method="wilson") returns, checked in the
    # tests), with the standard library's normal quantile: importing scipy.stats costs a second per run.
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' labels; None when chance agreement is total (kappa undefined)."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    labels = {x for pair in pairs for x in pair}
    expected = sum((sum(1 for a, _ in pairs if a == c) / n) * (sum(1 for _, b in pairs if b == c) / n)
                   for c in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _extras(rs: list[CaseResult], kind: str, check_aggregates: Mapping[str, AggregateFn],
            check_results: Iterable[CaseResult], unscored: int, plain: bool) -> dict[str, Any]:
    """The parts of a suite row that only some suites have: repeats, metrics, judges, the checks' own aggregates
    (labels), calibration. ``rs``: the row's cases that are not plain (:func:`is_plain`; a plain case adds nothing
    here); ``check_results``: all the row's cases, for the checks' aggregates; ``unscored``: the row's unscored
    cases; ``plain``: whether the row has plain cases (they are of the dev split)."""
    graded = [r for r in rs if r.outcome in ("passed", "failed")]
    out: dict[str, Any] = {}
    unscored_checks = sum(r.unscored_checks for r in rs)
    if unscored_checks:
        out["unscored_checks"] = unscored_checks
    repeated = [r for r in rs if r.repeats and r.outcome in ("passed", "failed", "unscored")]
    if repeated:
        scored = [r for r in repeated if r.repeats and r.repeats.get("scored")]
        out["repeats"] = {
            "n": max(int(r.repeats["n"]) for r in repeated if r.repeats),
            "pass_fraction": _r(_mean([r.repeats["pass_fraction"] for r in scored if r.repeats])),
            "pass_all": _r(_mean([1.0 if r.repeats["pass_all"] else 0.0 for r in scored if r.repeats])),
            "pass_any": _r(_mean([1.0 if r.repeats["pass_any"] else 0.0 for r in scored if r.repeats])),
        }
        out["flaky"] = sorted(r.case_id for r in repeated if r.flaky)
    metric_names = sorted({m for r in graded for m in r.metrics})
    if metric_names:
        out["metrics"] = {m: _r(_mean([r.metrics[m] for r in graded if m in r.metrics])) for m in metric_names}
    judged = [r for r in rs if r.judge]
    if judged:
        out["judge"] = {"models": sorted({str(r.judge["model"]) for r in judged if r.judge}),
                        "self_judging": any(r.judge.get("self_judging") for r in judged if r.judge),
                        "calls": sum(int(r.judge["calls"]) for r in judged if r.judge)}
    for check_aggregate in check_aggregates.values():  # each returns {} for a row without anything of its own
        out.update(check_aggregate(check_results))  # type: ignore[arg-type]
    retrieved = [r.retrieval for r in rs if r.retrieval and r.retrieval.get("recall_at_k") is not None]
    if retrieved:
        out["retrieval"] = {"cases": len(retrieved), "k": max(int(x["k"]) for x in retrieved),
                            "recall_at_k": _r(_mean([float(x["recall_at_k"]) for x in retrieved])),
                            "mrr": _r(_mean([float(x["mrr"]) for x in retrieved]))}
    targeted = [r for r in rs if r.target]
    if targeted:  # an application answered: what its own model calls cost (every case it answered)
        # Answers served from the cache made no call in this run: counted apart (their recorded usage is not spent).
        usages = [r.app_usage for r in targeted if r.app_usage and not r.app_usage.get("cached")]
        measured = any(r.app_usage for r in targeted)  # a service that reports no usage: unknown, not zero
        costs = [float(u["cost_usd"]) for u in usages if u.get("cost_usd") is not None]
        out["app_calls"] = {
            "target": ", ".join(sorted({str(r.target) for r in targeted})), "cases": len(targeted),
            "cached": sum(1 for r in targeted if r.app_usage and r.app_usage.get("cached")),
            "measured": measured,
            "calls": sum(int(u.get("calls") or 0) for u in usages) if measured else None,
            "prompt_tokens": sum(int(u.get("prompt_tokens") or 0) for u in usages),
            "completion_tokens": sum(int(u.get("completion_tokens") or 0) for u in usages),
            "cost_usd": _r(sum(costs)) if costs else None,
            "latency_s": _r(sum(float(u.get("latency_s") or 0) for u in usages)),
        }
    stages = {r.stage for r in rs}
    if "judged" in stages or "runs" in stages:  # a suite with vision checks: its fast row, or its judged row
        out["stage"] = "judged" if "judged" in stages else "runs"
    questions = [q for r in rs for q in r.vision]
    if questions:
        answered = [q for q in questions if q.get("answer") in ("yes", "no")]
        out["vision"] = {
            "questions": len(questions), "answered": len(answered),
            "agreed": sum(1 for q in answered if q["answer"] == q.get("expect")),
            "precheck_failed": sum(1 for q in questions if q.get("precheck") not in (None, "ok")),
            "unscored": sum(1 for q in questions if q.get("unscored")),
            "skipped": sum(1 for q in questions if q.get("skipped")),
            "models": sorted({str(q["model"]) for q in questions if q.get("model")}),
        }
    robust = [r.robustness for r in rs if r.robustness and r.robustness.get("consistency") is not None]
    if robust:  # a robust row: pooled and per-case mean consistency, and how many cases met their minimum
        variants = sum(int(x["scored"]) for x in robust)
        out["robustness"] = {
            "cases": len(robust), "variants": variants,
            "consistency": _r(sum(int(x["consistent"]) for x in robust) / variants) if variants else None,
            "mean_case_consistency": _r(_mean([float(x["consistency"]) for x in robust])),
            "cases_consistent": sum(1 for x in robust if x["passed"]),
            "perturb": sorted({p for x in robust for p in x["perturb"]}),
        }
    splits = sorted({r.split for r in rs} | ({"dev"} if plain else set()))
    if splits != ["dev"]:
        out["split"] = splits[0] if len(splits) == 1 else "mixed"
    semantic = sum(1 for r in rs if r.cache == "semantic")
    if semantic:
        out["semantic_hits"] = semantic
    calibrated = [r.calibration for r in graded if r.calibration]
    # Kind names are compared in this module because a kind decides what a row measures (kinds are the case-file
    # contract, fixed in cases/): a calibration row measures the judge, a choice row's pass rate is an accuracy,
    # a code row counts programs that did not compile.
    if kind == "calibration" and calibrated:
        agree = sum(1 for c in calibrated if c["agree"])
        errors = [float(c["abs_error"]) for c in calibrated if c.get("abs_error") is not None]
        verdicts = [(str(c["human_verdict"]), str(c["judge_verdict"])) for c in calibrated]
        kappa = cohen_kappa(verdicts)
        out["calibration"] = {
            "examples": len(calibrated),
            "unscored": unscored,
            "agreement": _r(agree / len(calibrated)), "agreement_ci": wilson(agree, len(calibrated)),
            "mean_abs_error": _r(_mean(errors)),
            "verdict_accuracy": _r(sum(1 for h, j in verdicts if h == j) / len(verdicts)),
            "kappa": _r(kappa),
        }
    return out


# The fields only some cases set. A case with none of them set (and of the dev split, not a semantic cache hit) is
# plain: its row needs from it only its ``column``, so the streaming collector (results/stream.py) keeps no more
# of it in memory than that.
RARE_FIELDS = ("unscored_checks", "repeats", "flaky", "metrics", "judge", "retrieval", "target", "app_usage", "stage",
               "vision", "robustness", "calibration", "pass_at_k", "labels", "trajectory", "detail")


def is_plain(r: CaseResult) -> bool:
    """Whether the case adds nothing to its row beyond its ``column`` (see ``RARE_FIELDS``)."""
    return (r.split == "dev" and r.cache != "semantic" and r.tool_accuracy is None
            and not any(getattr(r, f) for f in RARE_FIELDS))


# One case as its row needs it: outcome, kind, score, latency_s, ttft_s, cost_usd, prompt_tokens,
# completion_tokens, cached, calls, retries.
Column = tuple[str, str, "float | None", "float | None", "float | None", "float | None", int, int, bool, int, int]


def column(r: CaseResult) -> Column:
    return (r.outcome, r.kind, r.score, r.latency_s, r.ttft_s, r.cost_usd, r.prompt_tokens or 0,
            r.completion_tokens or 0, bool(r.cached), r.calls, r.retries)


def make_row(suite: str, model: str, columns: Iterable[Column], special: list[CaseResult],
             check_results: Iterable[CaseResult], check_aggregates: Mapping[str, AggregateFn] | None) -> dict[str, Any]:
    """One suite x model row from its cases in order: ``columns`` of every case, ``special`` (at least) the cases
    that are not plain (:func:`is_plain`), ``check_results`` every case (iterated once per check aggregate). Sums run in the
    cases' order, so the same cases in the same order give the same row to the last bit."""
    counts = dict.fromkeys(OUTCOMES, 0)
    scores, latencies, ttfts, costs = array("d"), array("d"), array("d"), array("d")
    kinds: set[str] = set()
    first_kind: str | None = None
    prompt_tokens = completion_tokens = cache_hits = calls = retried = n = 0
    for outcome, kind, score, latency, ttft, cost, ptok, ctok, cached, ncalls, retries in columns:
        n += 1
        counts[outcome] = counts.get(outcome, 0) + 1
        if first_kind is None:
            first_kind = kind
        kinds.add(kind)
        if score is not None and outcome in ("passed", "failed"):
            scores.append(score)
        if latency is not None:
            latencies.append(latency)
        if ttft is not None:
            ttfts.append(ttft)
        if cost is not None:
            costs.append(cost)
        prompt_tokens += ptok
        completion_tokens += ctok
        cache_hits += cached
        calls += ncalls
        retried += retries
    counts = {o: counts[o] for o in OUTCOMES}
    graded = counts["passed"] + counts["failed"]
    kind = str(first_kind) if len(kinds) == 1 else "mixed"
    pass_rate = _r(counts["passed"] / graded) if graded else None
    row: dict[str, Any] = {
        "suite": suite,
        "model": model,
        "kind": kind,
        "cases": n,
        **counts,
        "pass_rate": pass_rate,
        "pass_rate_ci": wilson(counts["passed"], graded),
        "mean_score": _r(sum(scores) / len(scores)) if scores else None,
        "latency_p50_s": _r(_percentile(latencies, 50), 4),
        "latency_p95_s": _r(_percentile(latencies, 95), 4),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": _r(sum(costs)) if costs else None,
        "cache_hits": cache_hits,
        "calls": calls,
    }
    if ttfts:
        row.update(ttft_p50_s=_r(_percentile(ttfts, 50), 4), ttft_p95_s=_r(_percentile(ttfts, 95), 4))
    if retried:
        row["retries"] = retried
    if kind == "choice":  # multiple choice: the pass rate is the accuracy
        row.update(accuracy=pass_rate, accuracy_ci=row["pass_rate_ci"])
    row.update(_extras(special, kind, check_aggregates or {}, check_results, counts["unscored"], n > len(special)))
    with_k = [r.pass_at_k for r in special if r.pass_at_k and r.outcome in ("passed", "failed")]
    if with_k:
        ks = sorted({k for d in with_k for k in d}, key=int)
        row["pass_at_k"] = {k: _r(sum(d[k] for d in with_k if k in d) / sum(1 for d in with_k if k in d))
                            for k in ks}
        if kind == "code":
            row["no_compile"] = sum(1 for r in special if r.detail == "NO_COMPILE")
    return row


def aggregate(results: Iterable[CaseResult], check_aggregates: Mapping[str, AggregateFn] | None = None
              ) -> list[dict[str, Any]]:
    """One row per (suite, model), sorted. Pass rate = passed / (passed + failed), with its 95% Wilson interval:
    unscored cases, errors and skips are not the model's doing (or not measurable) and are counted on their own.
    ``check_aggregates``: check name -> ``aggregate(results) -> dict``, whose entries join each row.
    (results/stream.py makes the same rows, with :func:`make_row`, from a run's cases kept on disk.)"""
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        groups.setdefault((r.suite, r.model), []).append(r)
    # Every case as "special": the rows of the streamed form, which passes only the cases that are not plain, must
    # be these (tests/unit/test_aggregate_stream.py), which shows that leaving the plain ones out loses nothing.
    return [make_row(suite, model, map(column, rs), rs, rs, check_aggregates)
            for (suite, model), rs in sorted(groups.items())]


class EncodedCase(dict):  # type: ignore[type-arg]
    """A case's dict that carries its JSON text (the journal line written for it): dumps_results writes that
    instead of encoding the case again."""

    __slots__ = ("json",)

    def __init__(self, data: dict[str, Any], text: str) -> None:
        super().__init__(data)
        self.json = text


def _encoded_case(result: CaseResult, text: str) -> EncodedCase:
    """``EncodedCase(result.to_dict(), text)`` without the intermediate copy of the case's dict (one per case)."""
    own = result.__dict__
    answer = own.get("answer")
    if len(own) == len(result.__dataclass_fields__) and not (answer and len(answer) > ANSWER_LIMIT):
        return EncodedCase(own, text)  # what to_dict returns: the fields in order, the answer as is
    return EncodedCase(result.to_dict(), text)


def build_results(results: list[CaseResult], *, models: list[str], cache_mode: str, exit_status: int,
                  invalid: list[dict[str, Any]], workers: int, version: str, shard: str | None = None,
                  encoded: dict[int, str] | None = None,
                  check_aggregates: Mapping[str, AggregateFn] | None = None) -> dict[str, Any]:
    """The results.json document (schema documented in the README). ``encoded``: ``id(result)`` -> the JSON text
    of ``result.to_dict()``, for the results that have it already. ``check_aggregates``: see :func:`aggregate`."""
    ordered = sorted(results, key=lambda r: (r.suite, r.model, r.case_id, r.nodeid))
    if encoded:
        cases = [_encoded_case(r, text) if (text := encoded.get(id(r))) is not None else r.to_dict()
                 for r in ordered]
    else:
        cases = [r.to_dict() for r in ordered]
    return results_document(models=models, cache_mode=cache_mode, exit_status=exit_status, workers=workers,
                            version=version, shard=shard, suites=aggregate(ordered, check_aggregates), cases=cases,
                            invalid=invalid)


def results_document(*, models: list[str], cache_mode: str, exit_status: int, workers: int, version: str,
                     shard: str | None, suites: list[dict[str, Any]], cases: Sequence[dict[str, Any]],
                     invalid: list[dict[str, Any]]) -> dict[str, Any]:
    """The results.json document around its suite rows and cases (made in memory by :func:`build_results`, or
    streamed by ``stream.ResultCollector``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "pytest-llmeval", "version": version},
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {"models": models, "cache": cache_mode, "exit_status": exit_status, "workers": workers,
                "shard": shard},
        "suites": suites,
        "cases": cases,
        "invalid": sorted(invalid, key=lambda e: (e["file"], e["line"] or 0, e.get("field") or "")),
    }


_CASES_SLOT = "\x00cases\x00"  # stands for the cases list while the rest of the document is indented


def _results_chunks(document: dict[str, Any]) -> Iterator[str]:
    """The text of :func:`dumps_results`, in pieces: the document around the cases, then one case at a time
    (a ``results.stream.SpooledCases`` hands over its cases' JSON text as read from disk)."""
    cases = document.get("cases")
    if not cases or not isinstance(cases, Sequence):
        if cases is not None and not cases and not isinstance(cases, list):  # an empty SpooledCases
            document = {**document, "cases": []}
        yield json.dumps(document, indent=2, ensure_ascii=False)
        return
    text = json.dumps({**document, "cases": _CASES_SLOT}, indent=2, ensure_ascii=False)
    head, _, tail = text.partition(json.dumps(_CASES_SLOT))
    encode = json.JSONEncoder(ensure_ascii=False).encode
    texts = getattr(cases, "texts", None)
    lines = texts() if texts is not None else (case.json if type(case) is EncodedCase else encode(case)
                                               for case in cases)
    yield head + "[\n    "
    first = True
    for line in lines:
        yield line if first else ",\n    " + line
        first = False
    yield "\n  ]" + tail


def dumps_results(document: dict[str, Any]) -> str:
    """The results document as text: indented, with one line per case.

    ``json.dumps(indent=2)`` runs the pure-Python encoder (the C one does not indent), ~50 us per case; each case
    on a line of its own goes through the C encoder, ~10x faster, and a case still reads (and diffs) as a unit."""
    return "".join(_results_chunks(document))


def write_results(path: Path, document: dict[str, Any]) -> None:
    """Write atomically: a crashed run never leaves half a results file for the next CI step, and two processes
    writing one path (shards sharing a directory) never write into one temporary file. Written piece by piece
    (see :func:`dumps_results`): the cases are never one string in memory."""
    import itertools

    from pytest_llmeval.cases.writer import write_atomic

    write_atomic(path, itertools.chain(_results_chunks(document), ("\n",)))


def merge_results(documents: list[dict[str, Any]], version: str,
                  check_aggregates: Mapping[str, AggregateFn] | None = None) -> dict[str, Any]:
    """One results document from several (the shards of one run): cases concatenated, suites re-aggregated
    (``check_aggregates``: see :func:`aggregate`).

    A case present in two documents with different outcomes is an error (shards must not overlap)."""
    cases: dict[str, dict[str, Any]] = {}
    invalid: list[dict[str, Any]] = []
    models: list[str] = []
    for doc in documents:
        if doc.get("schema_version", 0) > SCHEMA_VERSION:
            raise ValueError(f"results schema {doc.get('schema_version')} is newer than this tool's {SCHEMA_VERSION}")
        for case in doc["cases"]:
            key = case.get("nodeid") or f"{case['suite']}::{case['case_id']}[{case['model']}]"
            if key in cases and cases[key].get("outcome") != case.get("outcome"):
                raise ValueError(f"{key} is in two of the files with different outcomes: do the shards overlap?")
            cases[key] = case
        invalid += [e for e in doc.get("invalid", []) if e not in invalid]
        models += [m for m in doc.get("run", {}).get("models", []) if m not in models]
    merged = build_results([CaseResult.from_dict(c) for c in cases.values()], models=models,
                           cache_mode=str(documents[0].get("run", {}).get("cache", "on")) if documents else "on",
                           exit_status=max((int(d.get("run", {}).get("exit_status", 0)) for d in documents), default=0),
                           invalid=invalid, workers=0, version=version, check_aggregates=check_aggregates)
    merged["run"]["merged_from"] = len(documents)
    merged["run"]["shards"] = [d.get("run", {}).get("shard") for d in documents]
    return merged
