"""``robustness:`` in case files: perturbed variants of a case, graded for consistency with the original.

A case with a robustness block gets a second item, ``<id>:robust[<model>]`` (marker ``robustness``, aggregated
as suite ``<suite>:robust``). It grades the original answer, then draws ``samples`` distinct variants of the
case with Hypothesis (:mod:`pytest_llmeval.robustness.strategies`: letter case, typos, synonyms, distractors, reordered
choices with the expected letter remapped, a prompt-injection suffix ...), asks the model for each (real calls,
own cache slots, never the semantic cache: it would serve a paraphrase its original's answer) and grades each
with the case's checks. Consistency is the share of scored variants whose outcome equals the original's; the
item passes when it reaches ``min_consistency``.

The verdict reproduces: it is a function of the model's answers, the case, the seed and the committed
example database, so a rerun on the same state, on any machine, gives the same verdict. A run tries the
``samples`` variants the seed draws (drawn without the database, so a saved flip never displaces one of them)
plus every flip saved in the case's database under ``.llmeval/hypothesis``; it reads that database and never
writes it. When a variant flips the outcome, Hypothesis shrinks it to a minimal flipping variant for the report
(each step a model call, at most ``max_shrink_calls`` steps; a rerun's steps are cache hits).

Exploring is asked for (``--llm-explore``): the variants are drawn with a fresh seed (recorded in the results),
and the minimal flip is saved in the database, to be committed; from then on every run tries it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import unittest
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmeval.cases.schema import CaseSpec

# The field a case's text perturbations apply to, by kind (the first one the case has).
MAIN_FIELDS = {"qna": ("question", "prompt"), "choice": ("question",), "labels": ("input",),
               "code": ("prompt", "question")}
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

    from pytest_llmeval.robustness import strategies as ps

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
    spec: dict[str, Any]  # the robustness block, with the seed this run drew with
    shrink_calls: int = 0
    committed: int = 0  # the first `committed` runs are the flips replayed from the database
    explore: bool = False
    saved: bool = False  # exploring: the minimal flip was written to the database

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
        return {"perturb": list(self.spec["perturb"]), "seed": self.spec["seed"], "explore": self.explore,
                "original": self.original, "variants": len(self.runs), "committed": self.committed,
                "scored": len(self.scored), "consistent": len(self.scored) - len(self.flips),
                "consistency": None if c is None else round(c, 6), "min_consistency": self.spec["min_consistency"],
                "passed": self.passed, "flips": [run(r) for r in self.flips],
                "minimal": run(self.minimal) if self.minimal else None, "shrink_calls": self.shrink_calls,
                "saved": self.saved}


# The one key of every case's database (each case has a directory of its own). Fixed rather than derived from
# the search function's source, as Hypothesis would: a refactoring here must not orphan committed flips.
DB_KEY = b"llmeval-robust-flips"


def database(root: Path, key: str) -> Any:
    """The case's own example database: a directory per search key (so one test function serves every case)."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    return DirectoryBasedExampleDatabase(str(root / key))


def _key(case: CaseSpec, model: str, spec: dict[str, Any]) -> str:
    """The database key of a case's robustness search: a changed case, model or list of perturbations is a new
    search; another seed is not (a flip found with one seed is replayed with any)."""
    raw = json.dumps([case.suite, case.id, model, case.prompt, sorted(spec["perturb"])], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def fresh_seed() -> int:
    """A seed for exploring: from the OS, never from a generator some other code may have seeded."""
    return int.from_bytes(os.urandom(4), "big")


class _Hit(Exception):
    """Raised inside the Hypothesis test when a variant satisfies the search (Hypothesis then shrinks it)."""


def _search(strategy: Any, check: Callable[[Any], bool], *, examples: int, seed: int, phases: list[Any],
            db: Any = None) -> Any:
    """The minimal value of ``strategy`` for which ``check`` holds (``None`` if none), seeded, quiet, with the
    database (if any) under :data:`DB_KEY`. ``hypothesis.find`` would do, but a seeded ``find`` never uses the
    database (``@seed`` drops the settings' database); here the seed is applied first and the settings after."""
    from hypothesis import HealthCheck, Verbosity, given, settings
    from hypothesis import seed as seeded

    found: list[Any] = []

    @given(strategy)
    def probe(variant: Any) -> None:
        if check(variant):
            found[:] = [variant]
            raise _Hit()

    # Every setting a search depends on is given here, so that a Hypothesis profile (the "ci" one Hypothesis
    # loads by itself on CI machines derandomizes and drops the database) cannot make two machines differ.
    test = settings(database=db, max_examples=examples, deadline=None, phases=phases, derandomize=False,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                    verbosity=Verbosity.quiet)(seeded(seed)(probe))
    test._hypothesis_internal_database_key = DB_KEY  # what hypothesis.find sets for its own key
    try:
        test()
    except _Hit:
        return found[0] if found else None
    return None


def _committed(db: Any) -> Any:
    """A read-only view of a case's database with only its saved flips: Hypothesis' secondary and pareto
    entries (the larger flips a shrink went through) are not part of what a run tries."""
    from hypothesis.database import ExampleDatabase

    class Committed(ExampleDatabase):
        def fetch(self, key: bytes) -> Iterator[bytes]:
            return iter(sorted(db.fetch(key))) if key == DB_KEY else iter(())

        def save(self, key: bytes, value: bytes) -> None:
            pass

        def delete(self, key: bytes, value: bytes) -> None:
            pass  # a saved flip that stopped flipping stays: a fixed regression must stay fixed

        def move(self, src: bytes, dest: bytes, value: bytes) -> None:
            pass

    return Committed()


def committed_variants(strategy: Any, db: Any, original: str) -> list[CaseVariant]:
    """The flips saved in the case's database, replayed through the strategy (read only; an entry the current
    strategy cannot decode still yields its closest variant, deterministically)."""
    from hypothesis import Phase

    seen: dict[str, CaseVariant] = {}

    def collect(v: CaseVariant) -> bool:
        if v.prompt != original:
            seen.setdefault(v.prompt, v)
        return False

    view = _committed(db)
    if next(iter(view.fetch(DB_KEY)), None) is None:
        return []  # (Hypothesis would skip a search with nothing to replay and nothing to generate)
    try:
        _search(strategy, collect, examples=1000, seed=0, phases=[Phase.reuse], db=view)
    except unittest.SkipTest:  # no entry could be decoded: none ran
        pass
    return list(seen.values())


def draw_variants(strategy: Any, n: int, seed: int, original: str) -> list[CaseVariant]:
    """``n`` distinct variants (not the original) drawn with ``seed``: the same on every run and machine,
    whatever the database holds."""
    from hypothesis import Phase

    seen: dict[str, CaseVariant] = {}

    def collect(v: CaseVariant) -> bool:
        if v.prompt != original:  # the model sees only the prompt: one variant per prompt
            seen.setdefault(v.prompt, v)
        return False

    _search(strategy, collect, examples=max(3 * n, 10), seed=seed, phases=[Phase.generate])
    return list(seen.values())[:n]


def shrink_flip(strategy: Any, flips: Callable[[CaseVariant], bool], n: int, seed: int, db: Any = None
                ) -> CaseVariant | None:
    """The minimal variant that flips the outcome, searched from the same seeded draws as :func:`draw_variants`
    (so the first flip is found without a new call). With ``db`` (exploring), it is saved there."""
    from hypothesis import Phase
    from hypothesis.database import InMemoryExampleDatabase

    # The search keeps what it finds in memory; only the final minimal flip reaches the case's database.
    memory = InMemoryExampleDatabase()
    found = _search(strategy, flips, examples=max(3 * n, 10), seed=seed, phases=[Phase.generate, Phase.shrink],
                    db=memory)
    if found is not None and db is not None:
        for value in memory.fetch(DB_KEY):
            db.save(DB_KEY, value)
    return found  # type: ignore[no-any-return]


def evaluate(case: CaseSpec, model: str, original: str, ask: Callable[[CaseVariant], str],
             grade: Callable[[CaseVariant, str], tuple[str, str | None]], *, db_root: Path, concurrency: int,
             explore: bool = False) -> Robustness:
    """Run a case's robustness block: ``original`` is the original answer's status (passed or failed);
    ``ask`` calls the model on a variant; ``grade`` grades an answer to a variant -> (status, reason).
    ``explore``: draw with a fresh seed and save the minimal flip in the database (else it is only read)."""
    spec = dict(case.robustness or {})
    strategy = variant_strategy(case, list(spec["perturb"]), float(spec.get("typo_rate", 0.05)))
    db = database(db_root, _key(case, model, spec))
    n = int(spec["samples"])
    seed = fresh_seed() if explore else int(spec["seed"])
    spec["seed"] = seed
    committed = committed_variants(strategy, db, case.prompt)
    known = {v.prompt for v in committed}
    variants = committed + [v for v in draw_variants(strategy, n, seed, case.prompt) if v.prompt not in known]

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
    result = Robustness(original, runs, None, spec, committed=len(committed), explore=explore)
    drawn_flips = [r for r in result.flips if r.variant.prompt not in known]
    if drawn_flips and spec.get("shrink", True):
        budget = int(spec.get("max_shrink_calls", 20))
        done: dict[str, VariantRun] = {r.variant.prompt: r for r in runs}

        def flips(v: CaseVariant) -> bool:
            if v.prompt == case.prompt:
                return False
            known_run = done.get(v.prompt)
            if known_run is None:
                # Every new step counts, answered from the cache or not: a rerun stops where the first run
                # stopped (the same minimal flip, no new call) instead of shrinking further on cache hits.
                if result.shrink_calls >= budget:
                    return False  # out of shrink calls: only answers already known count
                result.shrink_calls += 1
                known_run = done[v.prompt] = run(v)
            return known_run.status in ("passed", "failed") and known_run.status != original

        found = shrink_flip(strategy, flips, n, seed, db if explore else None)
        if found is not None:
            result.minimal = done.get(found.prompt) or run(found)
            result.saved = explore and found.prompt not in known
    elif result.flips and not drawn_flips:
        # Only saved flips flipped: each was shrunk when it was saved, so the first is the minimal one shown.
        result.minimal = result.flips[0]
    return result


def replace_case(case: CaseSpec, variant: CaseVariant) -> CaseSpec:
    """The case with a variant's fields and prompt (what its checks grade against)."""
    return dataclasses.replace(case, fields=variant.fields, prompt=variant.prompt)


def failure_lines(r: Any) -> list[str]:
    """The variants that flipped the outcome, and the minimal one Hypothesis shrank them to."""
    def one(run: Any) -> str:
        reason = f" ({run.reason})" if run.reason else ""
        return (f"[{run.variant.describe()}] {run.status}{reason}\n        prompt: {run.variant.prompt!r}\n"
                f"        answer: {(run.answer or '')[:200]!r}")

    where = (f"; {r.committed} saved flip(s) replayed" if r.committed else "") + ("; exploring" if r.explore else "")
    lines = [f"  robustness: {len(r.flips)} of {len(r.scored)} variant(s) flipped the outcome "
             f"(original: {r.original}; perturb: {', '.join(r.spec['perturb'])}; seed {r.spec['seed']}{where})"]
    if r.minimal is not None:
        saved = "; saved in .llmeval/hypothesis: commit it" if r.saved else ""
        lines.append(f"  minimal flipping variant (shrunk by Hypothesis, {r.shrink_calls} extra call(s){saved}):"
                     "\n      " + one(r.minimal))
    lines += ["  flipped variants:", *(f"      {one(x)}" for x in r.flips[:5])]
    if len(r.flips) > 5:
        lines.append(f"      ... and {len(r.flips) - 5} more (results.json has them all)")
    return lines
