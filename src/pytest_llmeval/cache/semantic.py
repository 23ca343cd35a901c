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
read at once; so are the vectors of the request's content words (``("word", w)``, float16), which the
guard's synonym test reads instead of calling the model during a lookup. Each process keeps an in-memory
copy of the vectors, synchronised incrementally before a lookup, in a preallocated matrix per partition that
doubles when full; it is searched by brute force up to :data:`BRUTE_FORCE_MAX` entries per partition and
with an inverted-file index (k-means centroids from scipy, a few lists probed, new rows appended to their
list) beyond that. Nothing is rebuilt per lookup: the index is retrained only when the partition has grown
:data:`RETRAIN_GROWTH` times past its training (bench/bench_semantic.py (a2)).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llmeval.cache.verify import Verifier

DEFAULT_THRESHOLD = 0.75  # by measurement (bench/bench_semantic.py): with the guard, 0 false hits from 0.6 to 0.8
BRUTE_FORCE_MAX = 8192  # entries per partition searched exhaustively (~0.3 ms); an IVF index beyond
PROBES = 12  # IVF lists searched per lookup (of about 2 * sqrt(n))
CANDIDATES = 8  # nearest requests offered to the guard, best first
RETRAIN_GROWTH = 4  # retrain the IVF centroids once the set has grown this many times past their training


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
    rejected: int = 0  # closer candidates the guard (or the verifier) turned down
    verified: dict[str, Any] | None = None  # with --llm-semantic-verify=judge: how the hit was verified

    def to_dict(self) -> dict[str, Any]:
        out = {"similarity": round(self.similarity, 6), "request": self.request, "rejected": self.rejected}
        return out if self.verified is None else {**out, "verified": self.verified}


class _Lists:
    """An inverted-file index: k-means centroids and, per centroid, a growable block of its rows.

    Trained once on the rows present at build time; rows added later are appended to their nearest
    centroid's block (amortised doubling), so a lookup never rebuilds anything. The owner retrains when the
    set has grown :data:`RETRAIN_GROWTH` times past the rows it was trained on (amortised: once per 4x).
    """

    def __init__(self, matrix: Any) -> None:
        import numpy as np
        from scipy.cluster.vq import kmeans2

        n = len(matrix)
        nlist = max(16, int(2 * math.sqrt(n)))
        rng = np.random.default_rng(0)
        sample = matrix[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
        with warnings.catch_warnings():  # an empty cluster is harmless here: its list is just empty
            warnings.simplefilter("ignore", UserWarning)
            centroids, _ = kmeans2(sample, nlist, iter=8, minit="points", seed=0)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.trained = n
        assign = np.empty(n, dtype=np.int64)
        for i in range(0, n, 16384):  # nearest centroid by cosine, in blocks (bounded memory)
            assign[i:i + 16384] = np.argmax(matrix[i:i + 16384] @ self.centroids.T, axis=1)
        order = np.argsort(assign, kind="stable")
        offsets = np.searchsorted(assign[order], np.arange(nlist + 1))
        self.rows: list[Any] = []
        self.ids: list[Any] = []
        self.counts = [0] * nlist
        for c in range(nlist):
            members = order[offsets[c]:offsets[c + 1]]
            cap = max(16, 2 * len(members))
            rows = np.empty((cap, matrix.shape[1]), dtype=np.float32)
            rows[:len(members)] = matrix[members]
            ids = np.empty(cap, dtype=np.int64)
            ids[:len(members)] = members
            self.rows.append(rows)
            self.ids.append(ids)
            self.counts[c] = len(members)

    def add(self, vector: Any, index: int) -> None:
        import numpy as np

        c = int(np.argmax(self.centroids @ vector))
        n = self.counts[c]
        if n == len(self.ids[c]):  # full: double this list's block
            self.rows[c] = np.concatenate([self.rows[c], np.empty_like(self.rows[c])])
            self.ids[c] = np.concatenate([self.ids[c], np.empty_like(self.ids[c])])
        self.rows[c][n] = vector
        self.ids[c][n] = index
        self.counts[c] = n + 1

    def search(self, query: Any) -> tuple[Any, Any]:
        import numpy as np

        lists = np.argpartition(-(self.centroids @ query), min(PROBES, len(self.centroids) - 1))[:PROBES]
        parts = [(self.rows[c][:self.counts[c]] @ query, self.ids[c][:self.counts[c]]) for c in lists]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class VectorSet:
    """The vectors of one partition, searchable by cosine similarity (rows are L2-normalised).

    Rows live in one preallocated float32 matrix that doubles when full, so adding a row is a copy of 384
    floats, never a copy of the whole set; past :data:`BRUTE_FORCE_MAX` rows an inverted-file index
    (:class:`_Lists`) is kept up to date on every add. A lookup is therefore a matrix-vector product over
    the matrix (or over the probed lists) and nothing else.
    """

    def __init__(self, dim: int) -> None:
        import numpy as np

        self.dim = dim
        self.texts: list[str] = []
        self.keys: list[str] = []
        self._data = np.empty((0, dim), dtype=np.float32)
        self._ivf: _Lists | None = None

    def add(self, vector: Any, text: str, key: str) -> None:
        import numpy as np

        n = len(self.keys)
        if n == len(self._data):
            grown = np.empty((max(1024, 2 * n), self.dim), dtype=np.float32)
            grown[:n] = self._data
            self._data = grown
        self._data[n] = vector
        self.texts.append(text)
        self.keys.append(key)
        if self._ivf is not None:
            self._ivf.add(self._data[n], n)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def matrix(self) -> Any:
        """The rows added so far (a view, not a copy)."""
        return self._data[:len(self.keys)]

    def search(self, query: Any, k: int = CANDIDATES) -> list[tuple[float, int]]:
        """The ``k`` most similar entries as (similarity, index), best first."""
        import numpy as np

        n = len(self.keys)
        if n == 0:
            return []
        if n <= BRUTE_FORCE_MAX:
            scores = self._data[:n] @ query
            ids = None
        else:
            if self._ivf is None or n > RETRAIN_GROWTH * self._ivf.trained:
                self._ivf = _Lists(self._data[:n])
            scores, ids = self._ivf.search(query)
            if len(scores) == 0:
                return []
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top])]
        if ids is None:
            return [(float(scores[i]), int(i)) for i in top]
        return [(float(scores[i]), int(ids[i])) for i in top]


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
        self._verdicts: dict[tuple[str, str], bool] = {}  # this process's verdicts (the judge's are cached too)
        from pytest_llmeval.cache.verify import VerifyStats

        self.stats = VerifyStats()  # what --llm-semantic-verify=judge did (results.json's run.semantic_verify)

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
        """The request's vector; the vectors of its content words come in the same model call.

        The guard compares substituted words by their embeddings (its synonym test). Encoding them here,
        in one batch with the request, keeps model calls out of :meth:`lookup` (one batch costs about what
        the request alone costs; a separate call per word pair cost 5-80 ms at lookup time).
        """
        import numpy as np

        words = [w for w in dict.fromkeys(_content_words(text)) if w not in self._words]
        vectors = self._embedder().encode([text, *words])
        for w, v in zip(words, vectors[1:], strict=True):
            self._words[w] = np.asarray(v, dtype=np.float32)
        return vectors[0]

    def word_similarity(self, x: str, y: str) -> float:
        """Cosine similarity of two single words (the guard's synonym test), with memoised vectors.

        A word not seen in this process is read from the shared store (where :meth:`add` leaves the words
        of every cached request) and encoded only when it is not there either.
        """
        import numpy as np

        missing = [w for w in dict.fromkeys((x, y)) if w not in self._words]
        if missing:
            store = self._open()
            for w in missing:
                raw = store.get(("word", w))
                if raw is not None:
                    self._words[w] = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
            missing = [w for w in missing if w not in self._words]
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

    def lookup(self, partition: str, text: str, vector: Any = None,
               verify: Verifier | None = None) -> SemanticHit | None:
        """A cached answer for a request meaning the same as ``text`` in ``partition``, or None.

        Without ``verify``: the best candidate from the threshold up that the guard passes. With it
        (``--llm-semantic-verify=judge``, :mod:`pytest_llmeval.cache.verify`): candidates from ``threshold -
        VERIFY_MARGIN`` up, except those the guard refuses on hard facts, are shown to ``verify`` (outside this
        cache's lock: a judge call takes a while), the guard's passes first, at most ``VERIFY_MAX``; only a
        "yes" serves one. A candidate identical to the request but for case, spacing and end punctuation is
        served unasked.
        """
        from pytest_llmeval.cache.guard import guard
        from pytest_llmeval.cache.verify import VERIFY_MARGIN, is_hard, same_text

        floor = self.threshold - VERIFY_MARGIN if verify is not None else self.threshold
        asks: list[tuple[bool, float, str, str]] = []  # (refused by the guard, similarity, key, text)
        hard = 0
        with self._lock:
            self._sync()
            vs = self._sets.get(partition)
            if vs is None or len(vs) == 0:
                if verify is not None:
                    self.stats.add(lookups=1)
                return None
            query = self.embed(text) if vector is None else vector
            rejected = 0
            for score, i in vs.search(query):
                if score < floor:
                    break
                finding = guard(text, vs.texts[i], self.word_similarity, score)
                if verify is None:
                    if finding is None:
                        return SemanticHit(vs.keys[i], score, vs.texts[i], rejected)
                    rejected += 1
                elif same_text(text, vs.texts[i]):
                    self.stats.add(lookups=1, served_identical=1)
                    return SemanticHit(vs.keys[i], score, vs.texts[i], rejected, {"judge": "identical text"})
                elif finding is not None and is_hard(finding):
                    hard += 1
                else:
                    asks.append((finding is not None or score < self.threshold, score, vs.keys[i], vs.texts[i]))
        if verify is None:
            return None
        return self._verified(text, sorted(asks, key=lambda a: (a[0], -a[1])), verify, hard)

    def _verified(self, text: str, asks: list[tuple[bool, float, str, str]], verify: Verifier,
                  hard: int) -> SemanticHit | None:
        """The first of ``asks`` the verifier says is the same request (counted in :attr:`stats`), or None."""
        from pytest_llmeval.cache.verify import VERIFY_MAX, normalize

        counts = dict.fromkeys(("judge_calls", "judge_cached", "judge_errors", "prompt_tokens",
                                "completion_tokens", "cost_micro_usd"), 0)
        hit = None
        rejected = hard
        for _, score, key, cached in asks[:VERIFY_MAX]:
            first, second = sorted((normalize(text), normalize(cached)))
            memo = (first, second)
            same = self._verdicts.get(memo)
            how = "remembered"
            if same is None:
                verdict = verify(text, cached)
                same = verdict.same
                how = "cached" if verdict.cached else "asked"
                counts["judge_cached" if verdict.cached else "judge_calls"] += 1
                counts["prompt_tokens"] += verdict.prompt_tokens
                counts["completion_tokens"] += verdict.completion_tokens
                counts["cost_micro_usd"] += round(verdict.cost_usd * 1e6)
                if verdict.error is not None:
                    counts["judge_errors"] += 1
                else:
                    self._verdicts[memo] = same
            else:
                counts["judge_cached"] += 1
            if same:
                hit = SemanticHit(key, score, cached, rejected, {"judge": "yes", "verdict": how})
                break
            rejected += 1
        asked = bool(asks[:VERIFY_MAX])
        self.stats.add(lookups=1, verified=int(asked), served=int(hit is not None),
                       refused=int(asked and hit is None), hard_refusals=int(hard > 0 and hit is None), **counts)
        return hit

    def add(self, partition: str, text: str, key: str, vector: Any = None) -> None:
        """Record a request whose answer is in the exact cache under ``key``."""
        import numpy as np

        vec = np.asarray(self.embed(text) if vector is None else vector, dtype=np.float32)
        # The request's word vectors, for other processes' guards (float16: words repeat, the table stays small).
        words = {w: self._words[w].astype(np.float16).tobytes()
                 for w in dict.fromkeys(_content_words(text)) if w in self._words}
        store = self._open()
        with store.transact():  # one SQLite transaction: the count and the entry appear together
            index = int(store.get("count", 0))
            store.set(("entry", index), {"partition": partition, "text": text, "key": key,
                                         "vector": vec.tobytes()})
            store.set("count", index + 1)
            for w, raw in words.items():
                store.add(("word", w), raw)  # add: only if absent

    def close(self) -> None:
        self.stats.close()
        if self._store is not None:
            self._store.close()
            self._store = None


def _content_words(text: str) -> tuple[str, ...]:
    """The words the guard may compare by embedding (see :func:`pytest_llmeval.cache.guard.guard`)."""
    from pytest_llmeval.cache.guard import content_words

    return content_words(text)
