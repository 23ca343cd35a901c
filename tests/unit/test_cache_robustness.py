"""The response cache under corruption and concurrency: real diskcache, real SQLite files, real processes.

Corruption is made on disk (garbage over cache.db, a truncated cache.db, a bad pickle blob written into the
Cache table with sqlite3 the way diskcache stores values); nothing of diskcache is mocked. The one stand-in
is a counting subclass of diskcache.Cache in the thread test, to see that the lazy open happens once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import diskcache
import pytest

import pytest_llmeval.cache.exact as cache_module
from pytest_llmeval.cache.exact import LLMEvalCacheError, LLMEvalCacheWarning, ResponseCache, cache_key

SRC = Path(cache_module.__file__).resolve().parents[1]


def answer(n: int, i: int = 0) -> dict[str, Any]:
    return {"text": f"answer {n}/{i} " + "x" * 200, "latency_s": 0.5, "prompt_tokens": n, "completion_tokens": i}


def fill(directory: Path, count: int) -> list[str]:
    """A closed cache with ``count`` entries; their keys."""
    keys = [cache_key(model="m", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(count)]
    cache = ResponseCache(directory)
    for i, key in enumerate(keys):
        cache.set(key, answer(i))
    cache.close()
    return keys


def corrupt_copies(directory: Path) -> list[Path]:
    return sorted(directory.parent.glob(f"{directory.name}.corrupt-*"))


def cache_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, LLMEvalCacheWarning)]


def assert_works(directory: Path) -> None:
    """set + get work, in this instance and in a freshly opened one, with no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMEvalCacheWarning)
        cache = ResponseCache(directory)
        cache.set("after", answer(7))
        assert cache.get("after") == answer(7)
        cache.close()
        again = ResponseCache(directory)
        assert again.get("after") == answer(7)
        again.close()


# ------------------------------------------------------------------------------------------ corruption


@pytest.mark.parametrize("first", ["get", "set"])
def test_garbage_over_db_is_moved_aside_and_rebuilt(tmp_path: Path, first: str) -> None:
    directory = tmp_path / "cache"
    keys = fill(directory, 20)
    (directory / "semantic").mkdir()  # the semantic cache's store lives inside; it is not ours to move
    (directory / "semantic" / "keep").write_text("semantic store")
    db = directory / "cache.db"
    garbage = b"this is not a database at all \x00\xff" * (db.stat().st_size // 32 + 1)
    db.write_bytes(garbage)

    cache = ResponseCache(directory)
    with pytest.warns(LLMEvalCacheWarning) as caught:
        if first == "get":
            assert cache.get(keys[0]) is None  # a miss, not a crash
        else:
            cache.set(keys[0], answer(99))  # retried on the fresh cache
            assert cache.get(keys[0]) == answer(99)
    messages = cache_warnings(list(caught))
    assert len(messages) == 1
    (copy,) = corrupt_copies(directory)
    assert str(directory) in messages[0] and "file is not a database" in messages[0] and str(copy) in messages[0]
    assert copy.name.startswith("cache.corrupt-") and copy.name.endswith("Z")
    assert (copy / "cache.db").read_bytes() == garbage  # the corrupt copy, kept for a post-mortem
    assert (directory / "semantic" / "keep").read_text() == "semantic store"
    assert cache.get(keys[1]) is None  # the fresh cache is empty
    cache.set(keys[1], answer(1))
    assert cache.get(keys[1]) == answer(1)
    cache.close()
    assert_works(directory)


def test_truncated_db_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    keys = fill(directory, 300)
    db = directory / "cache.db"
    size = db.stat().st_size
    assert size > 100_000
    with open(db, "r+b") as handle:
        handle.truncate(size // 3)

    cache = ResponseCache(directory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LLMEvalCacheWarning)
        results = [cache.get(key) for key in keys]
    messages = cache_warnings(caught)
    assert len(messages) == 1, messages
    assert "malformed" in messages[0] and str(directory) in messages[0]
    assert all(r is None for r in results)  # the first read found the corruption; the rebuilt cache is empty
    (copy,) = corrupt_copies(directory)
    assert (copy / "cache.db").stat().st_size == size // 3
    cache.set(keys[0], answer(0))
    assert cache.get(keys[0]) == answer(0)
    cache.close()
    assert_works(directory)


def test_db_truncated_to_nothing_is_just_empty(tmp_path: Path) -> None:
    """SQLite reads an empty file as an empty database: a miss, nothing to warn about."""
    directory = tmp_path / "cache"
    keys = fill(directory, 5)
    (directory / "cache.db").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMEvalCacheWarning)
        cache = ResponseCache(directory)
        assert cache.get(keys[0]) is None
        cache.close()
    assert corrupt_copies(directory) == []
    assert_works(directory)


def test_corrupt_value_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    good, bad = fill(directory, 2)
    # Overwrite the stored pickle of one entry the way diskcache keeps it: a BLOB in Cache.value, mode 4.
    with sqlite3.connect(directory / "cache.db") as con:
        ((mode,),) = con.execute("SELECT mode FROM Cache WHERE key = ?", (bad,)).fetchall()
        assert mode == 4  # diskcache's MODE_PICKLE
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (sqlite3.Binary(b"\x80\x05\x95garbage"), bad))
    con.close()

    cache = ResponseCache(directory)
    with pytest.warns(LLMEvalCacheWarning, match="could not be loaded") as caught:
        assert cache.get(bad) is None
    (message,) = cache_warnings(list(caught))
    assert bad in message and str(directory) in message
    assert cache.get(good) == answer(0)  # the rest of the cache is fine: nothing moved aside
    assert corrupt_copies(directory) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMEvalCacheWarning)
        assert cache.get(bad) is None  # the bad entry was deleted: a plain miss now
        cache.set(bad, answer(5))
        assert cache.get(bad) == answer(5)
    cache.close()


def test_close_then_reuse_reopens(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    cache.close()  # closing an unopened cache is fine
    assert cache.get("k") is None
    cache.set("k", answer(1))
    cache.close()
    cache.close()
    assert cache.get("k") == answer(1)  # reopened on use
    cache.set("k2", answer(2))
    cache.close()
    assert ResponseCache(tmp_path / "cache").get("k2") == answer(2)


def test_non_dict_values_are_misses(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    cache.set("k", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert cache.get("k") is None
    cache.close()


# ------------------------------------------------------------------------------------------ batched reads


def test_get_many_reads_what_get_reads(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    keys = fill(directory, 1200)  # more than one batch of 500
    cache = ResponseCache(directory)
    cache.set("not-a-dict", ["x"])  # type: ignore[arg-type]
    asked = [*keys[::-1], "missing", keys[3], "not-a-dict"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMEvalCacheWarning)
        found = cache.get_many(asked)
    assert found == {k: v for k in asked if (v := cache.get(k)) is not None}
    assert len(found) == 1200 and found[keys[7]] == answer(7)
    assert cache.get_many([]) == {}
    cache.close()


def test_get_many_treats_a_corrupt_value_like_get(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    good, bad = fill(directory, 2)
    with sqlite3.connect(directory / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (sqlite3.Binary(b"\x80\x05\x95garbage"), bad))
    con.close()
    cache = ResponseCache(directory)
    with pytest.warns(LLMEvalCacheWarning, match="could not be loaded"):
        assert cache.get_many([good, bad]) == {good: answer(0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLMEvalCacheWarning)
        assert cache.get_many([good, bad]) == {good: answer(0)}  # deleted: a plain miss now
    cache.close()


def test_get_many_on_a_corrupt_database_moves_it_aside(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    keys = fill(directory, 20)
    db = directory / "cache.db"
    db.write_bytes(b"this is not a database at all \x00\xff" * (db.stat().st_size // 32 + 1))
    cache = ResponseCache(directory)
    with pytest.warns(LLMEvalCacheWarning, match="file is not a database"):
        assert cache.get_many(keys) == {}
    assert len(corrupt_copies(directory)) == 1
    cache.set(keys[0], answer(0))
    assert cache.get_many(keys) == {keys[0]: answer(0)}
    cache.close()


# ------------------------------------------------------------------------------------------ locks


def _hold_write_lock(directory: Path) -> sqlite3.Connection:
    con = sqlite3.connect(directory / "cache.db", isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    return con


def test_locked_database_is_retried_then_written(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache", timeout=0.1)
    cache.set("warm", answer(0))  # opened
    holder = _hold_write_lock(tmp_path / "cache")
    release = threading.Timer(0.3, holder.rollback)
    release.start()
    try:
        cache.set("k", answer(1))  # 0.1 s wait, fails; backoff; ... the lock goes at 0.3 s
    finally:
        release.join()
        holder.close()
    assert cache.locked_retries >= 1
    assert cache.get("k") == answer(1)
    cache.close()


def test_stuck_lock_raises_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "LOCKED_RETRY_DELAYS", (0.01, 0.01))
    cache = ResponseCache(tmp_path / "cache", timeout=0.05)
    cache.set("warm", answer(0))
    holder = _hold_write_lock(tmp_path / "cache")
    try:
        with pytest.raises(LLMEvalCacheError, match=r"stayed locked while writing .*3 attempts"):
            cache.set("k", answer(1))
        assert cache.get("warm") == answer(0)  # WAL: reads go on under a writer's lock
    finally:
        holder.rollback()
        holder.close()
    assert corrupt_copies(tmp_path / "cache") == []  # a lock is not corruption: nothing moved aside
    cache.set("k", answer(1))
    assert cache.get("k") == answer(1)
    cache.close()


# ------------------------------------------------------------------------------------------ concurrency


def test_threads_share_one_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads x 500 writes on one ResponseCache: opened once, every entry there, no error."""
    opens = []

    class CountingCache(diskcache.Cache):  # real diskcache; only counts (and slows) the open
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opens.append(threading.get_ident())
            time.sleep(0.05)  # widen the window in which a second thread could also open it
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(diskcache, "Cache", CountingCache)
    cache = ResponseCache(tmp_path / "cache")
    threads, per_thread = 8, 500
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                cache.set(f"t{t}-{i}", answer(t, i))
                if i % 50 == 0:
                    assert cache.get(f"t{t}-{i}") == answer(t, i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LLMEvalCacheWarning)
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    elapsed = time.perf_counter() - start
    assert errors == []
    assert cache_warnings(caught) == []
    assert len(opens) == 1
    assert cache.locked_retries == 0
    cache.close()
    reader = ResponseCache(tmp_path / "cache")
    missing = [(t, i) for t in range(threads) for i in range(per_thread) if reader.get(f"t{t}-{i}") != answer(t, i)]
    reader.close()
    assert missing == []
    print(f"threads: {threads} x {per_thread} writes in {elapsed:.2f} s")


CHILD = r"""
import json, sys, time, warnings
from pathlib import Path
from pytest_llmeval.cache.exact import LLMEvalCacheWarning, ResponseCache

directory, n, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
read_first, signals = sys.argv[4] == "1", Path(sys.argv[5])
(signals / f"ready-{n}").touch()
deadline = time.monotonic() + 60
while not (signals / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
start = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", LLMEvalCacheWarning)
    cache = ResponseCache(directory)
    for i in range(count):
        key = f"p{n}-{i}"
        if read_first and cache.get(key) is not None:
            sys.exit(f"unexpected hit for {key}")
        cache.set(key, {"text": f"answer {n}/{i} " + "x" * 200, "n": n, "i": i})
    cache.close()
print(json.dumps({"seconds": time.perf_counter() - start, "locked_retries": cache.locked_retries,
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, LLMEvalCacheWarning)]}))
"""


def run_writers(directory: Path, signals: Path, processes: int, count: int, read_first: bool) -> list[dict[str, Any]]:
    """``processes`` Python processes writing ``count`` distinct keys each, released at the same moment."""
    signals.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(n), str(count),
                               "1" if read_first else "0", str(signals)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=signals)
             for n in range(processes)]
    try:
        deadline = time.monotonic() + 60
        while len(list(signals.glob("ready-*"))) < processes:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        (signals / "go").touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failures = [(n, p.returncode, err) for n, (p, (_, err)) in enumerate(zip(procs, outputs, strict=True))
                if p.returncode != 0]
    assert failures == []
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def check_entries(directory: Path, processes: int, count: int) -> None:
    reader = ResponseCache(directory)
    missing = [(n, i) for n in range(processes) for i in range(count)
               if reader.get(f"p{n}-{i}") != {"text": f"answer {n}/{i} " + "x" * 200, "n": n, "i": i}]
    reader.close()
    assert missing == []


def test_eight_processes_write_at_once(tmp_path: Path) -> None:
    """8 processes x 1000 writes, started together on a fresh directory: all 8000 entries, no failure."""
    directory = tmp_path / "cache"
    processes, count = 8, 1000
    start = time.perf_counter()
    reports = run_writers(directory, tmp_path / "signals", processes, count, read_first=False)
    elapsed = time.perf_counter() - start
    assert [r["warnings"] for r in reports] == [[]] * processes
    assert [r["locked_retries"] for r in reports] == [0] * processes  # "database is locked" never met
    check_entries(directory, processes, count)
    slowest = max(r["seconds"] for r in reports)
    print(f"processes: {processes} x {count} writes, slowest writer {slowest:.2f} s, all in {elapsed:.2f} s")


def test_processes_recover_from_corruption_once(tmp_path: Path) -> None:
    """Garbage over cache.db, then 4 processes read and write at once: one moves it aside, all carry on."""
    directory = tmp_path / "cache"
    fill(directory, 10)
    db = directory / "cache.db"
    db.write_bytes(os.urandom(db.stat().st_size))
    processes, count = 4, 50
    reports = run_writers(directory, tmp_path / "signals", processes, count, read_first=True)
    messages = [m for r in reports for m in r["warnings"]]
    assert len(messages) == 1, messages  # moved aside once, not once per process
    assert len(corrupt_copies(directory)) == 1
    check_entries(directory, processes, count)
