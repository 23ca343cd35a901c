"""Sharded runs (``--llm-shard I/N``): which shard an item belongs to, where each shard writes by default, what
each shard records about the whole collection, and the checks ``llmeval merge`` makes before it combines shards.

Shards of one run often share a machine's ``.llmeval/`` (a matrix on one runner, a shared volume, a restored CI
cache). Everything they write there is either per shard (the results file, the journal's ``latest`` pointer),
per run id (the journal, the budget), appended atomically (the holdout ledger), or a store built for many
processes (the exact and semantic caches: SQLite through diskcache; the RAG index: a file lock). Files are
written whole and renamed into place under a name of their own, so a reader never sees half of one.

``llmeval merge`` then refuses what would make a merged gate lie: a file that is not a results file, the same
shard twice, shards of different counts, a missing shard (unless ``--allow-partial``), a case in two shards or in
a shard it does not hash to, shards that ran different models or collected different items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ShardError(ValueError):
    """Results files that cannot be merged into one run's results (the message names the files and the fix)."""


def shard_of(nodeid: str, count: int) -> int:
    """The 1-based shard of an item: a hash of its id, the same on every machine, run and collection order."""
    return int(hashlib.sha256(nodeid.encode()).hexdigest()[:12], 16) % count + 1


def shard_label(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


def shard_suffix(shard: tuple[int, int]) -> str:
    """``shard-2of4``: the part of a file name that says which shard wrote it."""
    return f"shard-{shard[0]}of{shard[1]}"


def shard_results_path(path: Path, shard: tuple[int, int]) -> Path:
    """The default results file of a shard: ``.llmeval/results.json`` -> ``.llmeval/results-shard-2of4.json``, so
    shards sharing a directory never overwrite each other's results (the last writer would silently win)."""
    return path.with_name(f"{path.stem}-{shard_suffix(shard)}{path.suffix}")


def collection_fingerprint(nodeids: Iterable[str]) -> dict[str, Any]:
    """What every shard records about the whole selection it took its slice from: the number of items and a hash
    of their ids. Shards of one run (same commit, same options) record the same fingerprint."""
    ids = sorted(nodeids)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return {"items": len(ids), "digest": digest}


@dataclass
class MergePlan:
    """What the checks found: the shard count (None: no file is a shard), the shards missing (with
    ``allow_partial``), and notes worth printing."""

    count: int | None = None
    present: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _case_key(case: dict[str, Any]) -> str:
    return str(case.get("nodeid") or f"{case.get('suite')}::{case.get('case_id')}[{case.get('model')}]")


def _parse_shard(raw: Any, name: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    index, sep, count = str(raw).partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ShardError(f"{name}: run.shard is {raw!r}, expected I/N such as 2/4")
    return int(index), int(count)


def check_shards(files: list[tuple[str, dict[str, Any]]], *, allow_partial: bool = False) -> MergePlan:
    """Check that ``files`` (name, results document) are the shards of one run, or plain results files (none of
    them a shard: merged as before, e.g. one run per model). Raises :class:`ShardError` naming the problem."""
    for name, doc in files:
        if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or "suites" not in doc:
            raise ShardError(f"{name} is not a results.json file (no 'cases'/'suites')")
    # A list, not a mapping by name: the same file given twice is a duplicated shard, not one file.
    entries = [(name, _parse_shard((doc.get("run") or {}).get("shard"), name), doc) for name, doc in files]
    sharded = [(name, s, doc) for name, s, doc in entries if s is not None]
    if not sharded:
        return MergePlan()
    whole = [name for name, s, _ in entries if s is None]
    first, first_shard, first_doc = sharded[0]
    if whole:
        raise ShardError(f"{whole[0]} is not a shard (no run.shard) but {first} is shard {shard_label(first_shard)}: "
                         "merge the shards of one run only")
    if len({s[1] for _, s, _ in sharded}) > 1:
        listed = ", ".join(f"{name} is {shard_label(s)}" for name, s, _ in sharded)
        raise ShardError(f"the files are shards of different splits ({listed}): use the shards of one run")
    count = first_shard[1]
    seen: dict[int, str] = {}
    for name, s, _ in sharded:
        if s[0] in seen:
            raise ShardError(f"shard {shard_label(s)} is there twice: {seen[s[0]]} and {name} (a job retried or an "
                             "artifact downloaded twice?): keep one of them")
        seen[s[0]] = name
    # The same models and the same collection: shards of one run, not of two commits or two option sets.
    models = sorted((first_doc.get("run") or {}).get("models") or [])
    for name, _, doc in sharded[1:]:
        theirs = sorted((doc.get("run") or {}).get("models") or [])
        if theirs != models:
            raise ShardError(f"{first} ran {models} but {name} ran {theirs}: the shards of one run run the same "
                             "--llm models")
    collected = [(name, c) for name, _, doc in sharded if isinstance(c := (doc.get("run") or {}).get("collected"), dict)]
    for name, c in collected[1:]:
        (name0, c0) = collected[0]
        if c != c0:
            raise ShardError(f"{name0} and {name} were sharded from different collections ({c0.get('items')} vs "
                             f"{c.get('items')} items, digests {c0.get('digest')} vs {c.get('digest')}): run every "
                             "shard on the same commit with the same options")
    # Every case in the shard its id hashes to, and in one shard only.
    owner: dict[str, str] = {}
    for name, (index, _), doc in sharded:
        for case in doc["cases"]:
            key = _case_key(case)
            if key in owner:
                raise ShardError(f"{key} is in {owner[key]} and in {name}: the shards overlap (was one of them run "
                                 "with --llm-resume of another shard's run, or renamed?)")
            owner[key] = name
            nodeid = case.get("nodeid")
            if nodeid and shard_of(str(nodeid), count) != index:
                raise ShardError(f"{key} in {name} (shard {index}/{count}) belongs to shard "
                                 f"{shard_of(str(nodeid), count)}/{count}: was {name} run with another --llm-shard?")
    present = sorted(seen)
    missing = [i for i in range(1, count + 1) if i not in seen]
    plan = MergePlan(count=count, present=present, missing=missing)
    if missing:
        which = ", ".join(f"{i}/{count}" for i in missing)
        if not allow_partial:
            raise ShardError(f"shard {which} missing (have {', '.join(f'{i}/{count}' for i in present)}): merge "
                             "every shard, or pass --allow-partial to gate on part of the run")
        plan.notes.append(f"partial merge: shard {which} missing")
    if len(collected) not in (0, len(sharded)):
        plan.notes.append("some shards do not record their collection (older version): not compared")
    return plan
