"""The embedding model run with transformers directly (cache/embeddings.py MeanPooled): the packaged
all-MiniLM-L6-v2 gives the vectors sentence-transformers gives, in input order; a layout it does not run (another
pooling, an extra module, a default prompt) is left to sentence-transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pytest_llmeval.cache import embeddings
from pytest_llmeval.cache.embeddings import MeanPooled, resolve_embedding_model

TEXTS = ["The capital of France is Paris.", "Paris is France's capital city.", "", "bananas",
         "Set ORBIT_OFFSCREEN=1 before importing orbit. " * 60,  # past max_seq_length: truncated the same way
         "How do I change the radius of a sphere in Orbit?"]


@pytest.fixture(scope="module")
def packaged() -> Path:
    return Path(resolve_embedding_model(None))


def test_the_packaged_model_is_run_without_sentence_transformers_and_gives_its_vectors(packaged: Path) -> None:
    layout = embeddings._mean_pooled_layout(packaged)
    assert layout == (256, False)
    embedder = embeddings.get_embedder()
    assert isinstance(embedder._model, MeanPooled)
    ours = embedder.encode(TEXTS, batch_size=4)  # several batches, sorted by length inside: rows in input order
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(packaged), device="cpu", local_files_only=True).encode(
        TEXTS, batch_size=4, convert_to_numpy=True, normalize_embeddings=True)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def _copy(packaged: Path, into: Path) -> Path:
    shutil.copytree(packaged, into)
    return into


@pytest.mark.parametrize("change", ["cls pooling", "dense module", "query prompt"])
def test_a_layout_it_does_not_run_is_left_to_sentence_transformers(packaged: Path, tmp_path: Path,
                                                                    change: str) -> None:
    model = _copy(packaged, tmp_path / "model")
    if change == "cls pooling":
        config = json.loads((model / "1_Pooling" / "config.json").read_text())
        config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
        (model / "1_Pooling" / "config.json").write_text(json.dumps(config))
    elif change == "dense module":
        modules = json.loads((model / "modules.json").read_text())
        modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        modules[-1]["idx"] = 3
        (model / "modules.json").write_text(json.dumps(modules))
    else:
        extra = json.loads((model / "config_sentence_transformers.json").read_text())
        extra["prompts"] = {"query": "query: "}
        (model / "config_sentence_transformers.json").write_text(json.dumps(extra))
    assert embeddings._mean_pooled_layout(model) is None
    assert embeddings._mean_pooled_layout(packaged) is not None


def test_a_model_without_normalisation_is_normalised_all_the_same(packaged: Path, tmp_path: Path) -> None:
    model = _copy(packaged, tmp_path / "model")
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps(modules[:2]))
    assert embeddings._mean_pooled_layout(model) == (256, False)
    embedder = embeddings.get_embedder(str(model))
    assert isinstance(embedder._model, MeanPooled)
    np.testing.assert_allclose(embedder.encode(TEXTS[:2]), embeddings.get_embedder().encode(TEXTS[:2]), atol=1e-6)
