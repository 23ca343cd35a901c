"""The semantic cache with the real embedding model and real diskcache: paraphrases served, meaning changes
guarded, concurrent writers, the IVF search."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_llmeval.cache import semantic
from pytest_llmeval.cache.semantic import SemanticCache, VectorSet, partition_key

P = partition_key(model="m", params={})


def test_paraphrase_hit_and_meaning_changes_missed(tmp_path: Path) -> None:
    cache = SemanticCache(tmp_path / "sem")
    cache.add(P, "What is the capital of France?", "k-france")
    cache.add(P, "Is Python a compiled language?", "k-python")
    hit = cache.lookup(P, "what's the capital city of France")
    assert hit is not None and hit.key == "k-france" and hit.similarity >= cache.threshold
    assert hit.request == "What is the capital of France?"
    assert cache.lookup(P, "What is the capital of Germany?") is None  # another entity
    assert cache.lookup(P, "Is Python not a compiled language?") is None  # negated
    assert cache.lookup(partition_key(model="other", params={}), "What is the capital of France?") is None
    assert cache.lookup(P, "Write a poem about the sea.") is None  # unrelated: below the threshold


def test_guard_rejections_are_counted_when_a_later_candidate_is_served(tmp_path: Path) -> None:
    cache = SemanticCache(tmp_path / "sem")
    cache.add(P, "What is the largest ocean on Earth?", "k-largest")
    cache.add(P, "What is the smallest ocean on Earth?", "k-smallest")
    hit = cache.lookup(P, "What's the smallest ocean on Earth?")
    assert hit is not None and hit.key == "k-smallest"


WRITER = """
import sys
from pathlib import Path
import numpy as np
from pytest_llmeval.cache.semantic import SemanticCache
cache = SemanticCache(Path(sys.argv[1]))
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(50):
    v = rng.standard_normal(384).astype(np.float32)
    cache.add("p", f"request {sys.argv[2]}-{i}", f"key-{sys.argv[2]}-{i}", vector=v / np.linalg.norm(v))
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "sem"), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    reader = SemanticCache(tmp_path / "sem")
    reader._sync()
    keys = set(reader._sets["p"].keys)
    assert len(keys) == 200 and keys == {f"key-{w}-{i}" for w in range(4) for i in range(50)}


def test_ivf_search_finds_near_duplicates_like_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "BRUTE_FORCE_MAX", 1000)
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((50, 64)).astype(np.float32)
    data = centers[rng.integers(0, 50, 20000)] + 0.6 * rng.standard_normal((20000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    vs = VectorSet(dim=64)
    for i, v in enumerate(data):
        vs.add(v, f"t{i}", f"k{i}")
    found = 0
    for i in rng.choice(20000, 200, replace=False):
        q = data[i] + 0.05 * rng.standard_normal(64).astype(np.float32)
        q /= np.linalg.norm(q)
        best = vs.search(q, k=1)[0]
        found += best[1] == i
        assert best[0] > 0.8
    assert found >= 196  # near-duplicates: the IVF probe finds what brute force finds
    assert vs._ivf is not None


def test_rows_added_after_the_index_is_built_are_found_without_a_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "BRUTE_FORCE_MAX", 500)
    rng = np.random.default_rng(2)
    data = rng.standard_normal((3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    vs = VectorSet(dim=32)
    for i in range(1000):
        vs.add(data[i], f"t{i}", f"k{i}")
    vs.search(data[0])
    index = vs._ivf
    assert index is not None and index.trained == 1000
    for i in range(1000, 3000):  # past the old matrix's capacity, into the lists
        vs.add(data[i], f"t{i}", f"k{i}")
        if i % 97 == 0:
            assert vs.search(data[i], k=1)[0][1] == i  # the exact row, just added, is its own nearest
    assert vs._ivf is index  # grown 3x: no retraining yet
    assert np.array_equal(vs.matrix, data) and sum(index.counts) == 3000
    vs.add(data[0], "again", "k-again")  # past 4x the trained rows... not yet: 3001 <= 4000
    monkeypatch.setattr(semantic, "RETRAIN_GROWTH", 2)
    vs.search(data[5])
    assert vs._ivf is not index and vs._ivf.trained == 3001


def test_word_vectors_travel_through_the_store(tmp_path: Path) -> None:
    writer = SemanticCache(tmp_path / "sem")
    writer.add(P, "How do I book a flight to Lisbon?", "k-book")
    reader = SemanticCache(tmp_path / "sem")
    assert reader._open().get(("word", "book")) is not None
    vector = reader.embed("How do I reserve a flight to Lisbon?")  # embeds its own words in the same call
    assert "reserve" in reader._words and "book" not in reader._words
    hit = reader.lookup(P, "How do I reserve a flight to Lisbon?", vector)
    assert "book" in reader._words  # read from the store, not re-embedded
    similar = reader.word_similarity("book", "reserve")
    assert abs(similar - writer.word_similarity("book", "reserve")) < 1e-2  # float16 in the store
    assert (hit is not None) == (similar >= 0.75)
