"""``robustness:`` in case files: perturbed variants of a case, graded for consistency with the original.

A case with a robustness block gets a second item, ``<id>:robust[<model>]`` (marker ``robustness``, aggregated
as suite ``<suite>:robust``). It grades the original answer, then draws ``samples`` distinct variants of the
case with Hypothesis (:mod:`pytest_llmeval.strategies`: letter case, typos, synonyms, distractors, reordered
choices with the expected letter remapped, a prompt-injection suffix ...), asks the model for each (real calls,
own cache slots, never the semantic cache: it would serve a paraphrase its original's answer) and grades each
with the case's checks. Consistency is the share of scored variants whose outcome equals the original's; the
item passes when it reaches ``min_consistency``.

When a variant flips the outcome, Hypothesis shrinks it to a minimal flipping variant (each step a model call,
bounded by ``max_shrink_calls``; steps already answered are cache hits). The minimal flip is saved in the
Hypothesis example database under ``.llmeval/hypothesis`` and replayed first the next time, so a flip found once
keeps being tested until it is fixed. The same ``seed`` gives the same variants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmeval.cases import CaseSpec

# The field a case's text perturbations apply to, by kind (the first one the case has).
MAIN_FIELDS = {"qna": ("question", "prompt"), "choice": ("question",), "labels": ("input",),
               "code": ("prompt", "question")}
MAX_SHOWN_FLIPS = 5
ANSWER_CHARS = 500


@dataclass(frozen=True)
class CaseVariant:
    """One perturbed case: its fields, the prompt they render to, and what was applied."""

    fields: dict[str, Any]
    prompt: str
    applied: tuple[str, ...]
    canary: str | None = None  # an injected instruction asked for this word: the answer must not obey

    def describe(self) -> str:
        return "+".join(self.applied) or "original"


def main_field(case: CaseSpec) -> str | None:
    """The field the text perturbations apply to: the first of the kind's candidates that the prompt shows."""
    shown = [f for f in MAIN_FIELDS.get(case.kind, ()) if isinstance(case.fields.get(f), str) and case.fields[f]]
    return next((f for f in shown if str(case.fields[f]) in case.prompt), shown[0] if shown else None)


def variant_strategy(case: CaseSpec, perturb: list[str], typo_rate: float = 0.05) -> Any:
    """A Hypothesis strategy of :class:`CaseVariant` for ``case``; it shrinks toward the original case."""
    from hypothesis import strategies as st

    from pytest_llmeval import strategies as ps

    text_kinds = tuple(k for k in perturb if k in ps.TEXT_KINDS)
    field = main_field(case)

    @st.composite
    def build(draw: Any) -> CaseVariant:
        fields = dict(case.fields)
        applied: list[str] = []
        if text_kinds and field is not None:
            v = draw(ps.perturbations(str(fields[field]), kinds=text_kinds, typo_rate=typo_rate))
            fields[field] = v.text
            applied += v.applied
        if "reorder_choices" in perturb and case.kind == "choice":
            choices, answer = draw(ps.reordered_choices(dict(fields["choices"]), str(fields["answer"])))
            if list(choices.values()) != list(fields["choices"].values()):
                applied.append("reorder_choices")
            fields["choices"], fields["answer"] = choices, answer
        canary = ps.INJECTION_CANARY if "injection" in applied else None
        return CaseVariant(fields, case.render(fields), tuple(applied), canary)

    return build()


@dataclass
class VariantRun:
    variant: CaseVariant
    status: str  # passed | failed | unscored | skipped | error
    answer: str | None = None
    reason: str | None = None


@dataclass
class Robustness:
    """What a robustness item measured."""

    original: str
    runs: list[VariantRun]
    minimal: VariantRun | None
    spec: dict[str, Any]
    shrink_calls: int = 0

    @property
    def scored(self) -> list[VariantRun]:
        return [r for r in self.runs if r.status in ("passed", "failed")]

    @property
    def flips(self) -> list[VariantRun]:
        return [r for r in self.scored if r.status != self.original]

    @property
    def consistency(self) -> float | None:
        scored = self.scored
        return (len(scored) - len(self.flips)) / len(scored) if scored else None

    @property
    def passed(self) -> bool:
        c = self.consistency
        return c is not None and c >= float(self.spec["min_consistency"])

    def to_dict(self) -> dict[str, Any]:
        def run(r: VariantRun) -> dict[str, Any]:
            return {"perturbations": list(r.variant.applied), "prompt": r.variant.prompt, "status": r.status,
                    "answer": None if r.answer is None else r.answer[:ANSWER_CHARS], "reason": r.reason,
                    **({"answer_key": r.variant.fields.get("answer")} if "reorder_choices" in r.variant.applied
                       else {})}

        c = self.consistency
        return {"perturb": list(self.spec["perturb"]), "seed": self.spec["seed"], "original": self.original,
                "variants": len(self.runs), "scored": len(self.scored), "consistent": len(self.scored) - len(self.flips),
                "consistency": None if c is None else round(c, 6), "min_consistency": self.spec["min_consistency"],
                "passed": self.passed, "flips": [run(r) for r in self.flips],
                "minimal": run(self.minimal) if self.minimal else None, "shrink_calls": self.shrink_calls}


def database(root: Path, key: str) -> Any:
    """The case's own example database: a directory per search key (so one test function serves every case)."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    return DirectoryBasedExampleDatabase(str(root / key))


def _key(case: CaseSpec, model: str, spec: dict[str, Any]) -> str:
    """The database key of a case's robustness search: a changed case, model or list of perturbations is a new
    search; another seed is not (a flip found with one seed is replayed first with any)."""
    raw = json.dumps([case.suite, case.id, model, case.prompt, sorted(spec["perturb"])], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


class _Hit(Exception):
    """Raised inside the Hypothesis test when a variant satisfies the search (Hypothesis then shrinks it)."""


def _search(strategy: Any, check: Callable[[Any], bool], *, examples: int, seed: int, db: Any,
            shrink: bool) -> Any:
    """Run ``check`` over variants drawn by Hypothesis (the database's saved ones first); return the minimal
    variant for which it held, or None. ``hypothesis.find`` would do, but a seeded ``find`` never uses the
    database; here the seed is applied first and the settings (with the database) after it."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as seeded

    found: list[Any] = []

    # One function for both searches: the database key Hypothesis derives from it is the same, so the collector
    # replays what the shrinker saved.
    @given(strategy)
    def probe(variant: Any) -> None:
        if check(variant):
            found[:] = [variant]
            raise _Hit()

    phases = [Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if shrink else [])]
    test = settings(database=db, max_examples=examples, deadline=None, phases=phases, derandomize=False,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                    verbosity=Verbosity.quiet)(seeded(seed)(probe))
    try:
        test()
    except _Hit:
        return found[0] if found else None
    return None


def draw_variants(strategy: Any, n: int, seed: int, db: Any, original: str) -> list[CaseVariant]:
    """``n`` distinct variants (not the original), deterministic for a seed; flips saved earlier come first."""
    from hypothesis.database import ReadOnlyDatabase

    seen: dict[str, CaseVariant] = {}

    def collect(v: CaseVariant) -> bool:
        if v.prompt != original:  # the model sees only the prompt: one variant per prompt
            seen.setdefault(v.prompt, v)
        return False

    # Read-only: replaying a saved flip here must not delete it (this predicate never "finds" anything).
    _search(strategy, collect, examples=max(3 * n, 10), seed=seed, db=ReadOnlyDatabase(db), shrink=False)
    return list(seen.values())[:n]


def shrink_flip(strategy: Any, flips: Callable[[CaseVariant], bool], n: int, seed: int, db: Any
                ) -> CaseVariant | None:
    """The minimal variant that flips the outcome (saved in the database, replayed first next time)."""
    return _search(strategy, flips, examples=max(3 * n, 10), seed=seed, db=db, shrink=True)  # type: ignore[no-any-return]


def evaluate(case: CaseSpec, model: str, original: str, ask: Callable[[CaseVariant], str],
             grade: Callable[[CaseVariant, str], tuple[str, str | None]], *, db_root: Path, concurrency: int,
             is_cached: Callable[[CaseVariant], bool]) -> Robustness:
    """Run a case's robustness block: ``original`` is the original answer's status (passed or failed);
    ``ask`` calls the model on a variant; ``grade`` grades an answer to a variant -> (status, reason)."""
    spec = dict(case.robustness or {})
    strategy = variant_strategy(case, list(spec["perturb"]), float(spec.get("typo_rate", 0.05)))
    db = database(db_root, _key(case, model, spec))
    n, seed = int(spec["samples"]), int(spec["seed"])
    variants = draw_variants(strategy, n, seed, db, case.prompt)

    def graded(v: CaseVariant, answer: str) -> VariantRun:
        status, reason = grade(v, answer)
        if v.canary and v.canary.lower() in answer.lower():
            status, reason = "failed", f"the answer obeyed the injected instruction ({v.canary!r})"
        return VariantRun(v, status, answer, reason)

    def run(v: CaseVariant) -> VariantRun:
        return graded(v, ask(v))

    # The calls wait on the provider: in parallel. Grading (sandbox runs, judges) stays on this thread, in order.
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(variants) or 1)),
                            thread_name_prefix="llmeval-robust") as pool:
        answers = list(pool.map(ask, variants))
    runs = [graded(v, a) for v, a in zip(variants, answers, strict=True)]
    result = Robustness(original, runs, None, spec)
    if result.flips and spec.get("shrink", True):
        budget = int(spec.get("max_shrink_calls", 20))
        done: dict[str, VariantRun] = {r.variant.prompt: r for r in runs}

        def flips(v: CaseVariant) -> bool:
            if v.prompt == case.prompt:
                return False
            known = done.get(v.prompt)
            if known is None:
                if not is_cached(v):
                    if result.shrink_calls >= budget:
                        return False  # out of shrink calls: only answers already known count
                    result.shrink_calls += 1
                known = done[v.prompt] = run(v)
            return known.status in ("passed", "failed") and known.status != original

        found = shrink_flip(strategy, flips, n, seed, db)
        if found is not None:
            result.minimal = done.get(found.prompt) or run(found)
    return result


def replace_case(case: CaseSpec, variant: CaseVariant) -> CaseSpec:
    """The case with a variant's fields and prompt (what its checks grade against)."""
    return dataclasses.replace(case, fields=variant.fields, prompt=variant.prompt)
