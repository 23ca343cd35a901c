"""Retrieval: a folder of documents chunked, embedded and stored in lancedb, searched by cosine similarity.

An index lives under ``.llmeval/index/<name>`` (embedded lancedb, no server) or at any lancedb URI. Builds are
incremental by file content hash: unchanged files keep their rows, changed files are re-chunked and
re-embedded, removed files are dropped. The index *version* is a hash of every file's content hash, the
chunking format and the embedding model's fingerprint; it is part of the cache key of every model call whose
prompt used retrieval, so editing a document never serves an answer built on the old text.

Several processes (xdist workers) may open the same index at once: the first one to need it builds or
updates it under an exclusive file lock; the others wait, then find it current.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmeval.core.errors import InfrastructureError

INDEX_FORMAT = 1  # bump when the chunking or the stored rows change: every index is then rebuilt
TABLE = "chunks"
META = "meta"
PROGRESS_MIN_CHUNKS = 256  # show an embedding progress bar from this many new chunks on (real-size folders)
ANN_MIN_CHUNKS = 2048  # from this size on, an HNSW index answers queries (a flat scan of 10k chunks takes ~13 ms)


class RagIndexError(InfrastructureError):
    """The index cannot be built or opened (missing folder, unusable URI)."""


@dataclass(frozen=True)
class Retrieved:
    """One search hit: a chunk with its rank (1-based), source and similarity."""

    n: int
    source: str  # relative to the docs folder
    start_line: int
    end_line: int
    score: float  # cosine similarity of query and chunk
    text: str
    title: str = ""

    def reference(self, prefix: str = "") -> dict[str, Any]:
        """What a CaseResult records of it (no text: the prompt already has it)."""
        return {"n": self.n, "source": _join(prefix, self.source), "start_line": self.start_line,
                "end_line": self.end_line, "score": round(self.score, 6), "title": self.title}


@dataclass
class BuildStats:
    files: int = 0
    unchanged_files: int = 0
    changed_files: int = 0
    removed_files: int = 0
    chunks: int = 0
    embedded_chunks: int = 0
    seconds: float = 0.0
    version: str = ""
    rebuilt: bool = False  # from scratch (new index, other model, other format)
    extra: dict[str, Any] = field(default_factory=dict)


def default_name(docs: Path) -> str:
    """A stable index name for a docs folder: its name and a short hash of its absolute path."""
    path = str(docs.resolve())
    return f"{docs.resolve().name or 'root'}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def _join(prefix: str, source: str) -> str:
    return f"{prefix.rstrip('/')}/{source}" if prefix and prefix != "." else source


def _has_table(db: Any, name: str) -> bool:
    try:
        db.open_table(name)
    except (ValueError, FileNotFoundError):
        return False
    return True


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DocIndex:
    """An index over one docs folder, with one embedding model."""

    def __init__(self, docs: Path, *, name: str | None = None, model: str | None = None, uri: str | None = None,
                 base_dir: Path | None = None) -> None:
        from pytest_llmeval.cache.embeddings import DEFAULT_EMBEDDING_MODEL

        self.docs = Path(docs).resolve()
        self.name = name or default_name(self.docs)
        self.model = model or DEFAULT_EMBEDDING_MODEL
        self.base_dir = Path(base_dir or ".llmeval/index").resolve()
        self.uri = uri or str(self.base_dir / self.name)
        self._db: Any = None
        self._table: Any = None
        self._version: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ plumbing

    @property
    def local(self) -> bool:
        return "://" not in self.uri

    def _connect(self) -> Any:
        if self._db is None:
            # lancedb's Rust core logs routine events ("it will be created") as warnings on stderr.
            os.environ.setdefault("LANCEDB_LOG", "error")
            import lancedb

            if self.local:
                Path(self.uri).mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(self.uri)
        return self._db

    @contextmanager
    def _build_lock(self) -> Iterator[None]:
        """Exclusive across processes for a local index (xdist workers); a no-op for remote URIs."""
        if not self.local:
            yield
            return
        lock_path = Path(self.uri).with_name(Path(self.uri).name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _meta(self) -> dict[str, Any]:
        db = self._connect()
        if not _has_table(db, META):
            return {}
        rows = db.open_table(META).to_arrow().to_pylist()
        return json.loads(rows[0]["json"]) if rows else {}

    def _write_meta(self, meta: dict[str, Any]) -> None:
        import pyarrow as pa

        data = pa.table({"json": [json.dumps(meta, sort_keys=True)]})
        db = self._connect()
        db.create_table(META, data=data, mode="overwrite" if _has_table(db, META) else "create")

    # ------------------------------------------------------------------------------------------ build

    def build(self, *, progress: bool | None = None, force: bool = False) -> BuildStats:
        """Bring the index up to date with the folder (incrementally); returns what changed."""
        with self._lock, self._build_lock():
            stats = self._build(progress=progress, force=force)
            self._table = None
            self._version = stats.version
            return stats

    def _build(self, *, progress: bool | None, force: bool) -> BuildStats:
        import pyarrow as pa

        from pytest_llmeval.cache.embeddings import get_embedder
        from pytest_llmeval.rag.chunking import chunk_file, file_hash, iter_documents

        if not self.docs.is_dir():
            raise RagIndexError(f"docs folder not found: {self.docs}")
        start = time.perf_counter()
        embedder = get_embedder(self.model)
        db = self._connect()
        meta = self._meta()
        stats = BuildStats()
        fresh = (force or meta.get("format") != INDEX_FORMAT or meta.get("embedding") != embedder.fingerprint
                 or not _has_table(db, TABLE))
        files = {p.relative_to(self.docs).as_posix(): p for p in iter_documents(self.docs)}
        hashes = {rel: file_hash(p) for rel, p in files.items()}
        old: dict[str, str] = {} if fresh else dict(meta.get("files", {}))
        changed = sorted(rel for rel, h in hashes.items() if old.get(rel) != h)
        removed = sorted(rel for rel in old if rel not in hashes)
        stats.files, stats.changed_files, stats.removed_files = len(files), len(changed), len(removed)
        stats.unchanged_files = len(files) - len(changed)
        stats.rebuilt = fresh

        chunks = [c for rel in changed for c in chunk_file(files[rel], self.docs)]
        schema = pa.schema([
            pa.field("id", pa.string()), pa.field("source", pa.string()), pa.field("start_line", pa.int32()),
            pa.field("end_line", pa.int32()), pa.field("title", pa.string()), pa.field("kind", pa.string()),
            pa.field("text", pa.string()), pa.field("vector", pa.list_(pa.float32(), embedder.dim)),
        ])
        if fresh:
            table = db.create_table(TABLE, schema=schema, mode="overwrite" if _has_table(db, TABLE) else "create")
        else:
            table = db.open_table(TABLE)
            stale = changed + removed
            for i in range(0, len(stale), 200):  # bounded filter strings
                table.delete("source IN (" + ", ".join(_quote(s) for s in stale[i:i + 200]) + ")")
        if chunks:
            show = progress if progress is not None else len(chunks) >= PROGRESS_MIN_CHUNKS
            vectors = self._embed([c.text for c in chunks], show)
            rows = [{"id": c.id, "source": c.source, "start_line": c.start_line, "end_line": c.end_line,
                     "title": c.title, "kind": c.kind, "text": c.text, "vector": v.tolist()}
                    for c, v in zip(chunks, vectors, strict=True)]
            table.add(pa.Table.from_pylist(rows, schema=schema))
        stats.embedded_chunks = len(chunks)
        stats.chunks = table.count_rows()
        if stats.chunks >= ANN_MIN_CHUNKS and (chunks or changed or removed or not meta.get("ann")):
            from lancedb.index import HnswSq

            table.create_index("vector", config=HnswSq(distance_type="cosine"), replace=True)
            stats.extra["ann"] = "hnsw_sq"
        stats.version = self._compute_version(hashes, embedder.fingerprint)
        self._write_meta({"format": INDEX_FORMAT, "embedding": embedder.fingerprint, "model": self.model,
                          "docs": str(self.docs), "files": hashes, "version": stats.version,
                          "chunks": stats.chunks, "built_at": time.time(),
                          "ann": stats.extra.get("ann") or (meta.get("ann") if not fresh else None)})
        stats.seconds = time.perf_counter() - start
        return stats

    def _embed(self, texts: list[str], show: bool) -> Any:
        import numpy as np

        from pytest_llmeval.cache.embeddings import get_embedder

        embedder = get_embedder(self.model)
        batch = 64
        if not show:
            return embedder.encode(texts, batch_size=batch)
        from tqdm import tqdm

        parts = []
        with tqdm(total=len(texts), desc=f"embedding {self.name}", unit="chunk") as bar:
            for i in range(0, len(texts), batch):
                parts.append(embedder.encode(texts[i:i + batch], batch_size=batch))
                bar.update(len(texts[i:i + batch]))
        return np.concatenate(parts)

    @staticmethod
    def _compute_version(hashes: dict[str, str], fingerprint: str) -> str:
        blob = json.dumps({"format": INDEX_FORMAT, "embedding": fingerprint, "files": hashes}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------ use

    def ensure(self) -> str:
        """Build or update once per process (cheap when nothing changed); returns the index version."""
        if self._version is None:
            self.build()
        assert self._version is not None
        return self._version

    @property
    def version(self) -> str:
        return self.ensure()

    @property
    def fingerprint(self) -> str:
        from pytest_llmeval.cache.embeddings import get_embedder

        return str(get_embedder(self.model).fingerprint)

    def search(self, query: str, k: int = 3) -> list[Retrieved]:
        """The top ``k`` chunks for ``query``, best first, with cosine similarity scores."""
        from pytest_llmeval.cache.embeddings import get_embedder

        self.ensure()
        if self._table is None:
            self._table = self._connect().open_table(TABLE)
        vector = get_embedder(self.model).encode([query])[0]
        rows = (self._table.search(vector.tolist()).metric("cosine").limit(k)
                .select(["source", "start_line", "end_line", "title", "text", "_distance"]).to_list())
        return [Retrieved(n=i, source=r["source"], start_line=int(r["start_line"]), end_line=int(r["end_line"]),
                          score=1.0 - float(r["_distance"]), text=r["text"], title=r.get("title") or "")
                for i, r in enumerate(rows, start=1)]

    def info(self) -> dict[str, Any]:
        meta = self._meta()
        out = {"name": self.name, "uri": self.uri, "docs": str(self.docs), "model": self.model,
               "exists": bool(meta)}
        if meta:
            out.update(version=meta.get("version"), files=len(meta.get("files", {})), chunks=meta.get("chunks"),
                       embedding=meta.get("embedding"), format=meta.get("format"), built_at=meta.get("built_at"))
        return out


def references_block(hits: list[Retrieved], prefix: str = "") -> str:
    """The retrieved chunks as numbered references for a prompt (and for the judge's context)."""
    parts = []
    for h in hits:
        where = f"{_join(prefix, h.source)}:{h.start_line}-{h.end_line}"
        parts.append(f"[{h.n}] {where}\n{h.text.strip()}")
    return "\n\n".join(parts)


RAG_INSTRUCTION = ("Answer using the numbered references below. Cite the references you use by their numbers "
                   "in square brackets, like [1].")


def augment(prompt: str, hits: list[Retrieved], prefix: str = "") -> str:
    """The user prompt with the references in front of it."""
    return f"{RAG_INSTRUCTION}\n\nReferences:\n\n{references_block(hits, prefix)}\n\n{prompt}"


def retrieval_scores(hits: list[Retrieved], expected: list[str], prefix: str = "") -> dict[str, Any]:
    """recall@k (share of expected sources among the hits) and MRR (1 / rank of the first expected hit)."""
    norm = {os.path.normpath(e) for e in expected}
    found = [os.path.normpath(_join(prefix, h.source)) for h in hits]
    recall = len(norm & set(found)) / len(norm) if norm else None
    rank = next((i for i, s in enumerate(found, start=1) if s in norm), None)
    return {"expected": sorted(norm), "k": len(hits), "recall_at_k": recall,
            "mrr": (1.0 / rank) if rank else 0.0, "first_relevant_rank": rank}


_INDEXES: dict[tuple[str, str, str | None, str], DocIndex] = {}
_INDEXES_LOCK = threading.Lock()


def get_index(docs: Path, *, model: str | None = None, uri: str | None = None, name: str | None = None,
              base_dir: Path | None = None) -> DocIndex:
    """One DocIndex per (folder, model, uri) per process."""
    key = (str(Path(docs).resolve()), model or "", uri, name or "")
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = DocIndex(docs, name=name, model=model, uri=uri, base_dir=base_dir)
        return _INDEXES[key]


class Rag:
    """The ``rag`` fixture: retrieval for hand-written tests over the ini's docs folder (or any other)."""

    def __init__(self, docs: Path | None, *, base_dir: Path, model: str | None = None) -> None:
        self._docs = docs
        self._base_dir = base_dir
        self._model = model

    def open(self, docs: str | Path, *, model: str | None = None, uri: str | None = None) -> DocIndex:
        """The index of another docs folder (built or updated on first use)."""
        return get_index(Path(docs), model=model or self._model, uri=uri, base_dir=self._base_dir)

    @property
    def index(self) -> DocIndex:
        if self._docs is None:
            raise RagIndexError("the rag fixture needs a docs folder: set llmeval_rag_docs in the ini "
                                "(or use rag.open('path/to/docs'))")
        return self.open(self._docs)

    def search(self, query: str, k: int = 3) -> list[Retrieved]:
        """The top-k chunks of the default index: each has n, source, start_line, end_line, score, text."""
        return self.index.search(query, k)
