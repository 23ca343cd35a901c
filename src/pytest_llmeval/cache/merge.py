"""Merging response caches (``llmeval cache merge``): the caches of a sharded run's jobs into one.

Each shard of a CI run fills its own copy of the cache; merged, they make one cache that any shard (of any shard
count) or a later unsharded run can restore. What is copied: every exact-cache entry the destination lacks
(keys are hashes of the whole request, so equal keys hold equivalent answers and the destination's is kept), and
the semantic cache's entries (``<dir>/semantic``) whose request the destination does not have yet, renumbered
after its own, with their word vectors. Sources are only read. The destination may be in use by a run: the writes
go through diskcache (SQLite transactions), as a run's own do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEMANTIC = "semantic"  # the semantic cache's store, inside the exact cache's directory (cache/semantic.py)


class CacheMergeError(ValueError):
    """A source that is not a response cache."""


@dataclass
class MergeStats:
    sources: int = 0
    added: int = 0  # exact-cache entries copied
    present: int = 0  # exact-cache entries the destination had already
    semantic_added: int = 0
    semantic_present: int = 0


def _is_cache(directory: Path) -> bool:
    return (directory / "cache.db").is_file()


def merge_caches(sources: list[Path], dest: Path) -> MergeStats:
    """Copy into ``dest`` what the response caches ``sources`` hold and ``dest`` lacks."""
    import diskcache

    for src in sources:
        if not src.is_dir() or not _is_cache(src):
            raise CacheMergeError(f"{src} is not a response cache directory (no cache.db in it)")
    stats = MergeStats()
    dest.mkdir(parents=True, exist_ok=True)
    with diskcache.Cache(str(dest), timeout=60) as out:
        for src in sources:
            if src.resolve() == dest.resolve():
                continue
            stats.sources += 1
            with diskcache.Cache(str(src), timeout=60) as inp:
                for key in inp.iterkeys():
                    value = inp.get(key)
                    if value is None:  # expired or evicted since it was listed
                        continue
                    if out.add(key, value):
                        stats.added += 1
                    else:
                        stats.present += 1
            if _is_cache(src / SEMANTIC):
                _merge_semantic(src / SEMANTIC, dest / SEMANTIC, stats)
    return stats


def _merge_semantic(src: Path, dest: Path, stats: MergeStats) -> None:
    """The semantic store numbers its entries ``("entry", i)`` below ``count``: a source's entries are appended
    after the destination's (one transaction each, as SemanticCache.add does), unless the destination has the same
    request (partition and exact-cache key). Everything else in it (word vectors) is copied when absent."""
    import diskcache

    with diskcache.Cache(str(src), timeout=60) as inp, diskcache.Cache(str(dest), timeout=60) as out:
        have: set[tuple[Any, Any]] = set()
        for i in range(int(out.get("count", 0))):
            entry = out.get(("entry", i))
            if isinstance(entry, dict):
                have.add((entry.get("partition"), entry.get("key")))
        for i in range(int(inp.get("count", 0))):
            entry = inp.get(("entry", i))
            if not isinstance(entry, dict):
                continue
            ident = (entry.get("partition"), entry.get("key"))
            if ident in have:
                stats.semantic_present += 1
                continue
            with out.transact():
                index = int(out.get("count", 0))
                out.set(("entry", index), entry)
                out.set("count", index + 1)
            have.add(ident)
            stats.semantic_added += 1
        for key in inp.iterkeys():
            if key == "count" or (isinstance(key, tuple) and key and key[0] == "entry"):
                continue
            value = inp.get(key)
            if value is not None:
                out.add(key, value)
