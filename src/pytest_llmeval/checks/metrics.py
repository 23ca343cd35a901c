"""Reference-answer metrics: BLEU, ROUGE-L and embedding similarity against a case's ``reference``.

The scores come from the standard libraries (sacrebleu, rouge-score, sentence-transformers) so that
they match numbers people report elsewhere. The libraries are imported on first use: a run whose cases
use none of these checks never pays for them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec

NEEDS_REFERENCE = frozenset({"bleu", "rouge_l", "similarity"})
NO_REFERENCE = "no reference answer: give the case a 'reference' field (or reference: in the check)"


def bleu(candidate: str, reference: str) -> float:
    """Sentence BLEU of ``candidate`` against one reference, in [0, 1].

    Uses sacrebleu's sentence settings (13a tokenisation, exponential smoothing, effective order), so a
    short answer is not zeroed just for having no 4-gram match; the 0-100 score is scaled to [0, 1].
    """
    import sacrebleu

    if not candidate.strip() or not reference.strip():
        return 0.0
    score = sacrebleu.sentence_bleu(candidate, [reference], smooth_method="exp", use_effective_order=True).score
    return min(1.0, max(0.0, score / 100.0))  # floating-point error gives 100.00000000000004 for a perfect match


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence, Porter-stemmed words), in [0, 1].

    rouge-score's tokenizer keeps only ASCII letters and digits, so text in other scripts scores 0.
    """
    if not candidate.strip() or not reference.strip():
        return 0.0
    return float(_rouge_scorer().score(reference, candidate)["rougeL"].fmeasure)


def similarity(candidate: str, reference: str, model: str | None = None) -> float:
    """Cosine similarity of the two texts' sentence embeddings, in [-1, 1] (not clipped).

    Unrelated sentences score near 0 with all-MiniLM-L6-v2, paraphrases 0.7-1.0. Raises
    :class:`~pytest_llmeval.cache.embeddings.EmbeddingModelError` when the model cannot be loaded.
    """
    from pytest_llmeval.cache.embeddings import cosine, get_embedder

    if not candidate.strip() or not reference.strip():
        return 0.0
    a, b = get_embedder(model).encode([candidate, reference])
    return cosine(a, b)


def reference_metrics(candidate: str, reference: str) -> dict[str, float]:
    """The cheap reference metrics (no model needed), recorded for every case that has a reference."""
    candidate = candidate.strip()
    return {"bleu": bleu(candidate, reference), "rouge_l": rouge_l(candidate, reference)}


RECORDED = ("bleu", "rouge_l", "similarity")  # what a check's details may hold that the case records as a metric


def recorded_metrics(answer: str, case: CaseSpec, outcomes: Iterable[CheckOutcome]) -> dict[str, float]:
    """The metrics one draw records: the cheap reference metrics of a qna case with a reference, whatever its
    checks, and what the metric checks measured (the similarity, say)."""
    metrics: dict[str, float] = {}
    reference = case.fields.get("reference")
    if reference and case.kind == "qna":
        metrics = reference_metrics(answer, str(reference))
    for o in outcomes:
        metrics.update({k: v for k, v in o.details.items() if k in RECORDED})
    return metrics


# ----------------------------------------------------------------------------------------------- checks


class BleuParams(CheckParams):
    min: float = Field(default=0.3, ge=0.0, le=1.0)
    reference: str | None = None  # overrides the case's `reference` field


class RougeLParams(CheckParams):
    min: float = Field(default=0.5, ge=0.0, le=1.0)
    reference: str | None = None


class SimilarityParams(CheckParams):
    min: float = Field(default=0.8, ge=-1.0, le=1.0)
    reference: str | None = None
    model: str | None = None  # embedding model: default the packaged all-MiniLM-L6-v2


def _reference(case: CaseSpec, p: BleuParams | RougeLParams | SimilarityParams) -> str | None:
    ref = p.reference if p.reference is not None else case.fields.get("reference")
    if ref is None:
        return None
    ref = str(ref)
    return ref if ref.strip() else None


def _verdict(name: str, label: str, value: float, minimum: float, details: dict[str, Any]) -> CheckOutcome:
    passed = value >= minimum
    reason = f"{label} {value:.2f} >= min {minimum:.2f}" if passed else f"{label} {value:.2f} < min {minimum:.2f}"
    # The check's score stays in [0, 1] like every score (a cosine may be negative); details keep the raw value.
    return CheckOutcome(name, passed, min(1.0, max(0.0, value)), reason, details=details)


def grade_bleu(answer: str, case: CaseSpec, p: BleuParams, ctx: GradeContext | None = None) -> CheckOutcome:
    ref = _reference(case, p)
    if ref is None:
        return CheckOutcome("bleu", False, 0.0, NO_REFERENCE)
    value = bleu(answer.strip(), ref)
    return _verdict("bleu", "BLEU", value, p.min, {"bleu": round(value, 6)})


def grade_rouge_l(answer: str, case: CaseSpec, p: RougeLParams, ctx: GradeContext | None = None) -> CheckOutcome:
    ref = _reference(case, p)
    if ref is None:
        return CheckOutcome("rouge_l", False, 0.0, NO_REFERENCE)
    value = rouge_l(answer.strip(), ref)
    return _verdict("rouge_l", "ROUGE-L", value, p.min, {"rouge_l": round(value, 6)})


def grade_similarity(answer: str, case: CaseSpec, p: SimilarityParams, ctx: GradeContext | None = None) -> CheckOutcome:
    from pytest_llmeval.cache.embeddings import DEFAULT_EMBEDDING_MODEL

    ref = _reference(case, p)
    if ref is None:
        return CheckOutcome("similarity", False, 0.0, NO_REFERENCE)
    value = similarity(answer.strip(), ref, p.model)
    # The threshold compares the raw cosine (it may be negative); the score is clipped to [0, 1].
    return _verdict("similarity", "similarity", value, p.min,
                    {"similarity": round(value, 6), "model": p.model or DEFAULT_EMBEDDING_MODEL})


CHECKS = [
    CheckDef("bleu", BleuParams, grade_bleu, shorthand="min", needs=("reference",),
             doc="sentence BLEU (sacrebleu) against the reference answer is at least min; score = BLEU in [0, 1]"),
    CheckDef("rouge_l", RougeLParams, grade_rouge_l, shorthand="min", needs=("reference",),
             doc="ROUGE-L F-measure against the reference answer is at least min; score = ROUGE-L"),
    CheckDef("similarity", SimilarityParams, grade_similarity, shorthand="min", needs=("reference",),
             doc="cosine similarity of sentence embeddings (offline all-MiniLM-L6-v2 by default) with the "
                 "reference answer is at least min (the raw cosine, in [-1, 1]); score = the cosine clipped to [0, 1]"),
]
