"""Sharded runs: the shard an item hashes to, per-shard file names, atomic writes from racing processes, and the
checks `llmeval merge` makes before it combines shards (missing, duplicated, foreign or overlapping shards)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.results.aggregate import build_results, dumps_results, write_results
from pytest_llmeval.results.shards import (
    ShardError,
    check_shards,
    collection_fingerprint,
    shard_of,
    shard_results_path,
)

NODEIDS = [f"cases/big.yaml::q{i:03d}[openai/m]" for i in range(40)]
FINGERPRINT = collection_fingerprint(NODEIDS)


def shard_doc(index: int, count: int, *, models: tuple[str, ...] = ("openai/m",),
              collected: dict[str, Any] | None = FINGERPRINT, nodeids: list[str] = NODEIDS) -> dict[str, Any]:
    cases = [{"suite": "big", "case_id": n.split("::")[1].split("[")[0], "model": "openai/m", "nodeid": n,
              "outcome": "passed", "score": 1.0} for n in nodeids if shard_of(n, count) == index]
    return {"schema_version": 2, "run": {"shard": f"{index}/{count}", "models": list(models),
                                         **({"collected": collected} if collected else {})},
            "suites": [], "cases": cases}


def test_every_item_is_in_exactly_one_shard_whatever_the_count() -> None:
    for count in (1, 2, 3, 4, 7):
        shards = [shard_of(n, count) for n in NODEIDS]
        assert all(1 <= s <= count for s in shards)
        assert shards == [shard_of(n, count) for n in NODEIDS]  # deterministic
    assert len({shard_of(n, 4) for n in NODEIDS}) == 4  # 40 ids spread over the 4 shards


def test_a_shard_writes_its_own_results_file_by_default() -> None:
    assert shard_results_path(Path(".llmeval/results.json"), (2, 4)) == Path(".llmeval/results-shard-2of4.json")
    assert shard_results_path(Path("/x/out.json"), (1, 1)) == Path("/x/out-shard-1of1.json")


def test_the_shards_of_one_run_merge() -> None:
    files = [(f"s{i}.json", shard_doc(i, 4)) for i in (3, 1, 4, 2)]
    plan = check_shards(files)
    assert plan.count == 4 and plan.present == [1, 2, 3, 4] and plan.missing == [] and plan.notes == []


def test_plain_results_files_merge_as_before() -> None:
    a, b = shard_doc(1, 2), shard_doc(2, 2)
    a["run"]["shard"] = b["run"]["shard"] = None
    assert check_shards([("a.json", a), ("b.json", b)]).count is None


@pytest.mark.parametrize(("files", "message"), [
    ([("s1.json", shard_doc(1, 4)), ("s2.json", shard_doc(2, 4)), ("s4.json", shard_doc(4, 4))],
     "shard 3/4 missing (have 1/4, 2/4, 4/4): merge every shard, or pass --allow-partial"),
    ([("s1.json", shard_doc(1, 2)), ("again.json", shard_doc(1, 2)), ("s2.json", shard_doc(2, 2))],
     "shard 1/2 is there twice: s1.json and again.json"),
    ([("s1.json", shard_doc(1, 2)), ("s2.json", shard_doc(2, 2)), ("s1.json", shard_doc(1, 2))],
     "shard 1/2 is there twice: s1.json and s1.json"),
    ([("s1.json", shard_doc(1, 2)), ("t2.json", shard_doc(2, 3))],
     "shards of different splits (s1.json is 1/2, t2.json is 2/3)"),
    ([("s1.json", shard_doc(1, 2)), ("s2.json", shard_doc(2, 2, models=("openai/other",)))],
     "s1.json ran ['openai/m'] but s2.json ran ['openai/other']"),
    ([("s1.json", shard_doc(1, 2)), ("s2.json", shard_doc(2, 2, collected=collection_fingerprint(NODEIDS[:-1])))],
     "s1.json and s2.json were sharded from different collections (40 vs 39 items"),
    ([("s1.json", shard_doc(1, 2)), ("whole.json", {**shard_doc(2, 2), "run": {"models": ["openai/m"]}})],
     "whole.json is not a shard (no run.shard) but s1.json is shard 1/2"),
    ([("s1.json", shard_doc(1, 2)), ("notes.json", {"hello": 1})], "notes.json is not a results.json file"),
    ([("s1.json", shard_doc(1, 2)), ("s2.json", {**shard_doc(2, 2), "run": {"shard": "3/2"}})],
     "s2.json: run.shard is '3/2', expected I/N"),
])
def test_merge_refuses_what_is_not_one_whole_run(files: list[tuple[str, dict[str, Any]]], message: str) -> None:
    with pytest.raises(ShardError) as info:
        check_shards(files)
    assert message in str(info.value)


def test_a_case_in_two_shards_or_in_the_wrong_shard_is_refused() -> None:
    s1, s2 = shard_doc(1, 2), shard_doc(2, 2)
    s2["cases"].append(dict(s1["cases"][0]))  # the same case in both, even with the same outcome
    with pytest.raises(ShardError, match=r"is in s1.json and in s2.json: the shards overlap"):
        check_shards([("s1.json", s1), ("s2.json", s2)])
    s2["cases"].pop()
    s2["run"]["shard"], s1["run"]["shard"] = "1/2", "2/2"  # files whose labels were swapped
    with pytest.raises(ShardError, match=r"\(shard 2/2\) belongs to shard 1/2: was s1.json run with another"):
        check_shards([("s1.json", s1), ("s2.json", s2)])


def test_allow_partial_merges_what_is_there_and_says_what_is_missing() -> None:
    plan = check_shards([("s1.json", shard_doc(1, 3))], allow_partial=True)
    assert plan.missing == [2, 3] and plan.notes == ["partial merge: shard 2/3, 3/3 missing"]


def _write_many(path: str, tag: int, rounds: int) -> None:
    doc = build_results([], models=["m"], cache_mode="on", exit_status=0, invalid=[], workers=0, version="0")
    doc["cases"] = [{"tag": tag, "pad": "x" * 2000, "i": i} for i in range(200)]
    for _ in range(rounds):
        write_results(Path(path), doc)


def test_processes_writing_one_results_path_never_leave_half_a_file(tmp_path: Path) -> None:
    """Four processes write one path 30 times each at once: every read sees one writer's whole document, no
    write fails, no temporary file is left (a shared temporary name made writers fail or rename each other's)."""
    target = tmp_path / "results.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(target), tag, 30)) for tag in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        if target.exists():
            doc = json.loads(target.read_text(encoding="utf-8"))
            assert len(doc["cases"]) == 200 and len({c["tag"] for c in doc["cases"]}) == 1
            reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 0 and sorted(x.name for x in tmp_path.iterdir()) == ["results.json"]


def test_merge_command_says_which_shard_is_missing_and_writes_the_baseline(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"s{i}.json").write_text(dumps_results(shard_doc(i, 3)))

    def merge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "merge", *args],
                              capture_output=True, text=True, cwd=tmp_path)

    bad = merge("s1.json", "s3.json", "-o", "m.json")
    assert bad.returncode == 2 and "shard 2/3 missing (have 1/3, 3/3)" in bad.stderr
    assert not (tmp_path / "m.json").exists()
    partial = merge("s1.json", "s3.json", "-o", "m.json", "--allow-partial")
    assert partial.returncode == 0 and "partial merge: shard 2/3 missing" in partial.stderr
    assert json.loads((tmp_path / "m.json").read_text())["run"]["shards_missing"] == ["2/3"]
    whole = merge("s1.json", "s2.json", "s3.json", "-o", "m.json", "--baseline", "base.json")
    assert whole.returncode == 0, whole.stderr
    merged = json.loads((tmp_path / "m.json").read_text())
    assert len(merged["cases"]) == 40 and merged["run"]["shard_count"] == 3 and merged["run"]["shards_missing"] == []
    assert merged["run"]["collected"] == FINGERPRINT
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["baseline_version"] == 1 and len(base["cases"]) == 40
    cut = merge("s1.json", "gone.json", "-o", "m.json")
    assert cut.returncode == 2 and "cannot read gone.json" in cut.stderr


def test_cache_merge_copies_what_the_destination_lacks(tmp_path: Path) -> None:
    """Two shards' caches (exact and semantic, written by the real classes) merged into a third: every answer
    once, the destination's kept on equal keys, semantic entries renumbered after the destination's and not
    duplicated; merging again adds nothing."""
    import numpy as np

    from pytest_llmeval.cache.exact import ResponseCache
    from pytest_llmeval.cache.semantic import SemanticCache

    def fill(name: str, keys: list[str], texts: list[str]) -> Path:
        directory = tmp_path / name
        cache = ResponseCache(directory)
        for k in keys:
            cache.set(k, {"text": f"{name}:{k}"})
        cache.close()
        semantic = SemanticCache(directory / "semantic")
        for i, text in enumerate(texts):
            semantic.add("p", text, f"key-{text}", vector=np.full(4, i + 1.0, dtype=np.float32))
        semantic.close()
        return directory

    fill("a", ["k1", "k2"], ["capital of France?"])
    fill("b", ["k2", "k3"], ["capital of France?", "largest ocean?"])
    dest = fill("dest", ["k3"], [])

    def merge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_llmeval.cli.main", "cache", "merge", *args],
                              capture_output=True, text=True, cwd=tmp_path)

    done = merge("a", "b", "--into", "dest")
    assert done.returncode == 0, done.stderr
    assert "merged 2 cache(s) into dest: 2 answer(s) added, 2 there already; 2 semantic entries added" in done.stdout
    merged = ResponseCache(dest)
    assert {k: merged.get(k) for k in ("k1", "k2", "k3")} == {"k1": {"text": "a:k1"}, "k2": {"text": "a:k2"},
                                                              "k3": {"text": "dest:k3"}}
    merged.close()
    semantic = SemanticCache(dest / "semantic")
    semantic._sync()
    assert semantic._loaded == 2 and sorted(semantic._sets["p"].texts) == ["capital of France?", "largest ocean?"]
    semantic.close()
    again = merge("a", "b", "--into", "dest")
    assert "0 answer(s) added, 4 there already; 0 semantic entries added" in again.stdout
    (tmp_path / "empty").mkdir()
    bad = merge("empty", "--into", "dest")
    assert bad.returncode == 2 and "empty is not a response cache directory (no cache.db in it)" in bad.stderr
