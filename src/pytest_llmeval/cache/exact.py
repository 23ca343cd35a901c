"""The exact response cache: diskcache under ``.llmeval/cache``, safe to share between xdist workers and threads.

Keys are hashes of everything that determines an answer (model, api base, every sampling parameter, the
full messages, the sample slot and the cache-format version) and never of credentials.

Robustness (a cache must never fail a run):

* **Threads.** One :class:`ResponseCache` may be used from several threads at once (the prefetch pool).
  diskcache gives every thread its own SQLite connection; the lazy open and the recovery below are
  serialised by a lock, so the store is opened once.
* **Corruption.** When SQLite reports the database as corrupt ("file is not a database", "database disk
  image is malformed"), on opening or on a read or write, the cache's files are moved aside to
  ``<dir>.corrupt-<UTC timestamp>`` (deleted if that fails), an :class:`LLMEvalCacheWarning` says what was
  wrong and where it went, and a fresh cache is opened: the read is a miss, the write is retried once.
  Only diskcache's own files move (``cache.db*`` and its value-file folders): ``<dir>/semantic`` (the
  semantic cache's separate store) stays where it is. Processes sharing the directory coordinate through a
  lock file, so one corruption is moved aside once, not once per worker. A value that cannot be unpickled
  is a miss (with a warning) and is deleted.
* **Locks.** "database is locked" is not corruption and should not happen: diskcache waits up to
  ``timeout`` (60 s) for a lock. Should it happen anyway, the operation is retried a few times with a short
  backoff, then :class:`LLMEvalCacheError` is raised.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pytest_llmeval.core.errors import InfrastructureError

# Bump when the stored value's shape or the key's recipe changes: old entries then simply miss.
CACHE_FORMAT = 1

# A generous SQLite timeout: eight workers writing at once must wait, not fail.
DEFAULT_TIMEOUT = 60.0
# Backoff (seconds) between attempts of an operation that still met "database is locked".
LOCKED_RETRY_DELAYS = (0.05, 0.25, 1.0)

_DBNAME = "cache.db"  # diskcache's database file
# diskcache's own entries in its directory: the database (with WAL/journal files) and the two-hex-digit
# folders holding values too large for the database. Everything else (``semantic/``) is not ours to move.
_OWNED = re.compile(r"cache\.db(-wal|-shm|-journal)?|[0-9a-f]{2}")
_RECOVERY_LOCK = ".recovery.lock"

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_NOTADB = 5, 6, 11, 26

T = TypeVar("T")


class LLMEvalCacheWarning(UserWarning):
    """The response cache met a problem it recovered from (a corrupt database or value)."""


class LLMEvalCacheError(InfrastructureError, RuntimeError):
    """The response cache could not be used (it stayed locked)."""


# json.dumps(..., sort_keys=True, default=str, ensure_ascii=False) builds this encoder anew at every call.
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False)


def cache_key(**parts: Any) -> str:
    """A stable hash of the request parts (JSON with sorted keys)."""
    blob = _KEY_ENCODER.encode({"format": CACHE_FORMAT, **parts})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (diskcache's ROLLBACK may fail too)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_corruption(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB anywhere in the chain (not a lock, not an I/O error)."""
    for e in _chain(exc):
        if not isinstance(e, sqlite3.DatabaseError):
            continue
        code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
        if code is not None:
            if code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                return True
            continue
        message = str(e).lower()
        if "malformed" in message or "not a database" in message:
            return True
    return False


def _is_locked(exc: BaseException) -> bool:
    """diskcache's Timeout (it could not begin a write transaction) or SQLite's "database is locked"/busy."""
    from diskcache import Timeout

    if isinstance(exc, Timeout):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return True
        message = str(exc).lower()
        return "database is locked" in message or "database table is locked" in message or "busy" in message
    return False


def _select(cache: Any, query: str, args: tuple[Any, ...]) -> list[Any]:
    return list(cache._sql(query, args).fetchall())


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when it does not exist: tells a rebuilt database from ours."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _interprocess_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` held against other processes (flock; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # Windows: recovery is then coordinated within a process only
        fcntl = None  # type: ignore[assignment]
    handle = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            handle = open(path, "a+b")  # closed below
    try:
        if handle is not None and fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the flock


class ResponseCache:
    """A lazily opened diskcache.Cache (SQLite underneath: several processes and threads may use it at once).

    ``get`` and ``set`` never raise for a corrupt database or value (see the module docstring); they raise
    :class:`LLMEvalCacheError` only if the database stays locked through every retry.
    """

    def __init__(self, directory: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.directory = Path(directory)
        self.timeout = timeout
        self.locked_retries = 0  # how often "database is locked" was met and retried: should stay 0
        self._cache: Any = None
        self._identity: tuple[int, int] | None = None  # of cache.db as last opened (or failed to open)
        self._disabled: str | None = None  # why the cache is off for this process (it could not be rebuilt)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ opening and recovery

    def _connect(self) -> Any:
        import diskcache

        self.directory.mkdir(parents=True, exist_ok=True)
        db = self.directory / _DBNAME
        self._identity = _file_identity(db)
        cache = diskcache.Cache(str(self.directory), timeout=self.timeout)
        self._identity = _file_identity(db)
        return cache

    def _handle(self) -> Any:
        """The open diskcache.Cache, opened (once, whatever the number of threads) on first use; None if off."""
        cache = self._cache
        if cache is not None:
            return cache
        with self._lock:
            if self._cache is None and self._disabled is None:
                for attempt in range(2):
                    try:
                        self._cache = self._connect()
                        break
                    except sqlite3.DatabaseError as exc:
                        if not _is_corruption(exc):
                            raise
                        self._discard_locked(exc, "opening it")
                        if attempt == 1 and self._disabled is None:
                            self._disabled = f"a freshly created cache was corrupt again ({exc})"
                            self._warn(f"llmeval response cache at {self.directory}: {self._disabled}; "
                                       "the cache is off for the rest of this process")
                        if self._disabled is not None:
                            break
            return self._cache

    def _invalidate(self, failed: Any, exc: BaseException, doing: str) -> None:
        """``failed`` (the diskcache.Cache an operation ran on) reported corruption: set the store aside."""
        with self._lock:
            if failed is not self._cache:
                return  # another thread already replaced (or closed) it: just use the current one
            self._cache = None
            with contextlib.suppress(Exception):
                failed.close()
            self._discard_locked(exc, doing)

    def _discard_locked(self, exc: BaseException, doing: str) -> None:
        """Move the corrupt files aside (or delete them) and warn, unless another process already did."""
        db = self.directory / _DBNAME
        with _interprocess_lock(self.directory / _RECOVERY_LOCK):
            if _file_identity(db) != self._identity:
                return  # not the file we failed on any more: another process set it aside (and maybe rebuilt it)
            problem = f"{type(exc).__name__}: {exc}"
            try:
                entries = sorted(p for p in self.directory.iterdir() if _OWNED.fullmatch(p.name))
            except OSError:
                entries = [self.directory / f"{_DBNAME}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
                entries = [p for p in entries if p.exists()]
            target: Path | None = None
            failure: BaseException | None = None
            try:
                target = self._corrupt_target()
                for entry in entries:
                    os.replace(entry, target / entry.name)
            except OSError as error:
                failure = error
            if failure is None:
                self._warn(f"llmeval response cache at {self.directory} is corrupt ({problem}, while {doing}); "
                           f"moved it aside to {target} and started a fresh, empty cache")
                return
            try:  # could not move everything aside: delete what is left of the corrupt cache
                for entry in entries:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    elif entry.exists() or entry.is_symlink():
                        entry.unlink()
            except OSError as error:
                self._disabled = f"could neither move it aside ({failure}) nor delete it ({error})"
                self._warn(f"llmeval response cache at {self.directory} is corrupt ({problem}, while {doing}); "
                           f"{self._disabled}: the cache is off for the rest of this process")
                return
            kept = f" (what could be moved is in {target})" if target is not None and any(target.iterdir()) else ""
            self._warn(f"llmeval response cache at {self.directory} is corrupt ({problem}, while {doing}); "
                       f"could not move it aside ({failure}), so deleted it{kept} and started a fresh, empty cache")

    def _corrupt_target(self) -> Path:
        """A new, empty ``<dir>.corrupt-<UTC timestamp>[-n]`` folder beside the cache directory."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        base = self.directory.with_name(f"{self.directory.name}.corrupt-{stamp}")
        for n in range(1, 1000):
            target = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                target.mkdir()
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"{base} (and 998 numbered variants) already exist")

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(LLMEvalCacheWarning(message), stacklevel=4)

    def _retry_locked(self, action: Callable[[], T], doing: str) -> T:
        """``action()``, retried with a short backoff while SQLite says the database is locked."""
        for attempt in range(len(LOCKED_RETRY_DELAYS) + 1):
            try:
                return action()
            except Exception as exc:
                if not _is_locked(exc):
                    raise
                if attempt == len(LOCKED_RETRY_DELAYS):
                    raise LLMEvalCacheError(
                        f"llmeval response cache at {self.directory} stayed locked while {doing} "
                        f"({type(exc).__name__}: {exc or 'timeout'}), through {attempt + 1} attempts that each "
                        f"waited up to {self.timeout:g} s: another process holds a write lock on "
                        f"{self.directory / _DBNAME} (a stuck process, or a file system without working "
                        "locks such as some network mounts)") from exc
                self.locked_retries += 1
                time.sleep(LOCKED_RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the public API

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached answer for ``key``, or None (a miss, also for a corrupt database or value)."""
        for _ in range(2):
            cache = self._retry_locked(self._handle, "opening it")
            if cache is None:
                return None
            try:
                value = self._retry_locked(functools.partial(cache.get, key), "reading")
            except LLMEvalCacheError:
                raise
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                self._invalidate(cache, exc, "reading an entry")
                continue  # a fresh (or another process's rebuilt) cache: almost surely a miss
            except sqlite3.Error:
                raise
            except Exception as exc:  # the stored value would not load (a bad pickle): a miss
                self._warn(f"llmeval response cache at {self.directory}: the entry {key} could not be loaded "
                           f"({type(exc).__name__}: {exc}); treated as a miss and deleted")
                with contextlib.suppress(Exception):
                    cache.delete(key)
                return None
            return value if isinstance(value, dict) else None
        return None

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """``{key: get(key)}`` for the keys that hit, read with one query per 500 keys rather than one per key.

        diskcache has no batch read, so this reads its table the way its ``get`` does on its fast path (no
        statistics, an eviction policy that does not update on reads); anything else, or any error, falls back
        to ``get`` per key, which recovers from corruption and bad values as described above."""
        found: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(keys))
        try:
            cache = self._retry_locked(self._handle, "opening it")
            if cache is None:
                return {}
            from diskcache.core import EVICTION_POLICY

            if cache.statistics or EVICTION_POLICY[cache.eviction_policy]["get"] is not None:
                raise NotImplementedError("diskcache's get has side effects here")
            disk = cache.disk
            while pending:
                chunk, pending = pending[:500], pending[500:]
                db_keys = {disk.put(k)[0]: k for k in chunk}
                query = ("SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN "
                         f"({','.join('?' * len(db_keys))}) AND (expire_time IS NULL OR expire_time > ?)")
                rows = self._retry_locked(functools.partial(_select, cache, query, (*db_keys, time.time())), "reading")
                for db_key, mode, filename, db_value in rows:
                    key = db_keys.get(db_key)
                    if key is None:
                        continue
                    try:
                        value = disk.fetch(mode, filename, db_value, False)
                    except Exception:  # a value that will not load: get() warns and deletes it
                        value = self.get(key)
                    if isinstance(value, dict):
                        found[key] = value
        except LLMEvalCacheError:
            raise
        except Exception:
            return {k: v for k in dict.fromkeys(keys) if (v := self.get(k)) is not None}
        return found

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key``; on a corrupt database, rebuild it and retry once."""
        for attempt in range(2):
            cache = self._retry_locked(self._handle, "opening it")
            if cache is None:
                return
            try:
                self._retry_locked(functools.partial(cache.set, key, value), "writing")
                return
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                self._invalidate(cache, exc, "writing an entry")
                if attempt == 1:
                    self._warn(f"llmeval response cache at {self.directory}: the entry {key} was not stored "
                               "(the rebuilt cache failed too)")

    def close(self) -> None:
        """Close this thread's connection and forget the store (the next get/set opens it again).

        diskcache keeps one connection per thread; other threads' connections close when the store is
        garbage-collected.
        """
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None
