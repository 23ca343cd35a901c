"""The semantic response cache: serve a cached answer to a request that means the same as an earlier one.

Opt-in (``--llm-cache=semantic``). Consulted only after a miss in the exact cache, only for the same model,
API base, sampling parameters and every message but the last user message (so the same system prompt), and
never for judge calls or repeated draws. The last user message is embedded with the offline sentence model;
the nearest cached requests above the similarity threshold are candidates, and a candidate is served only
if the **guard** (:mod:`pytest_llmeval.cache.guard`) finds no difference in meaning between the two texts
(negation, numbers, quoted text, names, antonyms, swapped roles): cosine similarity alone cannot tell "is"
from "is not" (their pairs are as similar as paraphrases).

Storage: every entry (partition, request text, exact-cache key, embedding) is appended to a diskcache store
under ``<cache dir>/semantic`` in one SQLite transaction, so any number of processes (``-n 8``) can append and
read at once. Each process keeps an in-memory copy of the vectors, synchronised incrementally before a
lookup, and searches it by brute force up to :data:`BRUTE_FORCE_MAX` entries per partition and with an
inverted-file index (k-means centroids from scipy, a few lists probed) beyond that.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_THRESHOLD = 0.75  # by measurement (bench/bench_semantic.py): with the guard, 0 false hits from 0.6 to 0.8
BRUTE_FORCE_MAX = 8192  # entries per partition searched exhaustively (~0.3 ms); an IVF index beyond
PROBES = 12  # IVF lists searched per lookup (of about 2 * sqrt(n))
CANDIDATES = 8  # nearest requests offered to the guard, best first


def partition_key(**parts: Any) -> str:
    """Requests may only share answers within one partition (model, api base, params, earlier messages)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class SemanticHit:
    """A cached answer found for a similar request."""

    key: str  # the exact-cache key of the cached answer
    similarity: float
    request: str  # the cached request's text
    rejected: int = 0  # closer candidates the guard turned down

    def to_dict(self) -> dict[str, Any]:
        return {"similarity": round(self.similarity, 6), "request": self.request, "rejected": self.rejected}


@dataclass
class VectorSet:
    """The vectors of one partition, searchable by cosine similarity (rows are L2-normalised)."""

    dim: int
    texts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    _blocks: list[Any] = field(default_factory=list)
    _matrix: Any = None
    _ivf: Any = None  # (centroids, order, offsets, indexed count, rows grouped by list)

    def add(self, vector: Any, text: str, key: str) -> None:
        self._blocks.append(vector.reshape(1, -1))
        self.texts.append(text)
        self.keys.append(key)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def matrix(self) -> Any:
        import numpy as np

        if self._blocks:
            parts = ([self._matrix] if self._matrix is not None else []) + self._blocks
            self._matrix = np.vstack(parts).astype(np.float32, copy=False)
            self._blocks = []
        return self._matrix

    def search(self, query: Any, k: int = CANDIDATES) -> list[tuple[float, int]]:
        """The ``k`` most similar entries as (similarity, index), best first."""
        import numpy as np

        matrix = self.matrix
        n = 0 if matrix is None else len(matrix)
        if n == 0:
            return []
        if n <= BRUTE_FORCE_MAX:
            ids = np.arange(n)
            scores = matrix @ query
        else:
            self._maybe_index()
            centroids, order, offsets, indexed, grouped = self._ivf
            lists = np.argpartition(-(centroids @ query), min(PROBES, len(centroids) - 1))[:PROBES]
            # Each list is a contiguous block of `grouped`: slices, no gather of scattered rows.
            parts = [(grouped[offsets[c]:offsets[c + 1]] @ query, order[offsets[c]:offsets[c + 1]]) for c in lists]
            if indexed < n:  # entries added since the index was built
                parts.append((matrix[indexed:] @ query, np.arange(indexed, n)))
            scores = np.concatenate([p[0] for p in parts])
            ids = np.concatenate([p[1] for p in parts])
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        return [(float(scores[i]), int(ids[i])) for i in top]

    def _maybe_index(self) -> None:
        """(Re)build the IVF index when there is none or when the unindexed tail has grown large."""
        import numpy as np
        from scipy.cluster.vq import kmeans2

        matrix = self.matrix
        n = len(matrix)
        if self._ivf is not None and n - self._ivf[3] <= max(BRUTE_FORCE_MAX // 2, self._ivf[3] // 4):
            return
        nlist = max(16, int(2 * math.sqrt(n)))
        rng = np.random.default_rng(0)
        sample = matrix[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        with warnings.catch_warnings():  # an empty cluster is harmless here: its list is just empty
            warnings.simplefilter("ignore", UserWarning)
            centroids, _ = kmeans2(sample, nlist, iter=8, minit="points", seed=0)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        assign = np.empty(n, dtype=np.int64)
        for i in range(0, n, 16384):  # nearest centroid by cosine, in blocks (bounded memory)
            assign[i:i + 16384] = np.argmax(matrix[i:i + 16384] @ centroids.T, axis=1)
        order = np.argsort(assign, kind="stable")
        offsets = np.searchsorted(assign[order], np.arange(nlist + 1))
        self._ivf = (centroids.astype(np.float32), order, offsets, n, np.ascontiguousarray(matrix[order]))


class SemanticCache:
    """Shared storage (diskcache) plus this process's in-memory vector sets."""

    def __init__(self, directory: Path, *, threshold: float = DEFAULT_THRESHOLD, model: str | None = None) -> None:
        self.directory = directory
        self.threshold = threshold
        self.model = model
        self._store: Any = None
        self._sets: dict[str, VectorSet] = {}
        self._loaded = 0
        self._lock = threading.Lock()
        self._words: dict[str, Any] = {}

    def _open(self) -> Any:
        if self._store is None:
            import diskcache

            self.directory.mkdir(parents=True, exist_ok=True)
            self._store = diskcache.Cache(str(self.directory), timeout=60)
        return self._store

    def _embedder(self) -> Any:
        from pytest_llmeval.cache.embeddings import get_embedder

        return get_embedder(self.model)

    def embed(self, text: str) -> Any:
        return self._embedder().encode([text])[0]

    def word_similarity(self, x: str, y: str) -> float:
        """Cosine similarity of two single words (the guard's synonym test), with memoised vectors."""
        vectors = [self._words.get(w) for w in (x, y)]
        missing = [w for w, v in zip((x, y), vectors, strict=True) if v is None]
        if missing:
            for w, v in zip(missing, self._embedder().encode(missing), strict=True):
                self._words[w] = v
        return float(self._words[x] @ self._words[y])

    def _sync(self) -> None:
        """Load the entries other processes (or earlier runs) appended since the last sync."""
        import numpy as np

        store = self._open()
        count = int(store.get("count", 0))
        while self._loaded < count:
            entry = store.get(("entry", self._loaded))
            if entry is None:  # being written by another process: pick it up next time
                break
            vector = np.frombuffer(entry["vector"], dtype=np.float32)
            vs = self._sets.setdefault(entry["partition"], VectorSet(dim=len(vector)))
            vs.add(vector, entry["text"], entry["key"])
            self._loaded += 1

    def lookup(self, partition: str, text: str, vector: Any = None) -> SemanticHit | None:
        """A cached answer for a request meaning the same as ``text`` in ``partition``, or None."""
        from pytest_llmeval.cache.guard import guard

        with self._lock:
            self._sync()
            vs = self._sets.get(partition)
            if vs is None or len(vs) == 0:
                return None
            query = self.embed(text) if vector is None else vector
            rejected = 0
            for score, i in vs.search(query):
                if score < self.threshold:
                    break
                if guard(text, vs.texts[i], self.word_similarity) is None:
                    return SemanticHit(vs.keys[i], score, vs.texts[i], rejected)
                rejected += 1
            return None

    def add(self, partition: str, text: str, key: str, vector: Any = None) -> None:
        """Record a request whose answer is in the exact cache under ``key``."""
        import numpy as np

        vec = np.asarray(self.embed(text) if vector is None else vector, dtype=np.float32)
        store = self._open()
        with store.transact():  # one SQLite transaction: the count and the entry appear together
            index = int(store.get("count", 0))
            store.set(("entry", index), {"partition": partition, "text": text, "key": key,
                                         "vector": vec.tobytes()})
            store.set("count", index + 1)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
