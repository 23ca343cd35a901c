"""The converted-model cache of ``local/`` models: a dequantized GGUF saved once as safetensors.

Loading a ``.gguf`` makes transformers dequantize it in Python (~20 s); the result is kept under
:func:`model_cache_dir` (``LLMEVAL_MODEL_CACHE``), keyed on the file's identity and the converting libraries'
versions, so later processes -- xdist workers, later runs -- load it in a fraction of that. Entries are written
atomically (a temporary directory renamed into place), workers starting together convert once (a lock file), and
an unusable entry is moved aside with a warning and rebuilt. Every failure here only costs the cache, never the run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MODEL_CACHE_ENV", "CacheEntry", "LocalModelCacheWarning", "cache_entry", "model_cache_dir"]

log = logging.getLogger(__name__)

#: Environment variable: directory of the converted-model cache, or ``off`` (also 0, none, false, no).
MODEL_CACHE_ENV = "LLMEVAL_MODEL_CACHE"
#: Bumped when the layout of a cache entry changes, so entries written by older code are not read.
MODEL_CACHE_FORMAT = 1
_OFF_VALUES = frozenset({"off", "0", "none", "false", "no", "disabled"})
_MARKER = "complete.json"  # written last: an entry without it is not (yet) an entry
# How long a process waits for another one converting the same GGUF before converting it too: long
# enough for a slow conversion, short enough that a stuck holder does not hang the run.
_LOCK_WAIT_SECONDS = 300.0
_STALE_SECONDS = 3600.0  # leftovers of killed writers older than this are swept when writing
_UNWRITABLE: set[Path] = set()  # cache roots that failed a write: warned about once, not tried again


class LocalModelCacheWarning(UserWarning):
    """The converted-model cache met a problem it went around (an unusable entry, an unwritable directory)."""


def model_cache_dir() -> Path | None:
    """Directory of the converted-model cache, or None when ``LLMEVAL_MODEL_CACHE`` turns it off.

    ``LLMEVAL_MODEL_CACHE`` names the directory (``~`` expanded, relative paths against the current
    directory); unset or empty, it is ``$XDG_CACHE_HOME/pytest-llmeval/models``, or
    ``~/.cache/pytest-llmeval/models`` where XDG_CACHE_HOME is unset or not absolute (as the XDG spec says).
    """
    raw = os.environ.get(MODEL_CACHE_ENV, "").strip()
    if raw.lower() in _OFF_VALUES:
        return None
    if raw:
        return Path(raw).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    except RuntimeError:  # no HOME and no passwd entry: nowhere sensible to cache
        return None
    return base / "pytest-llmeval" / "models"


def cache_entry(gguf: Path) -> CacheEntry | None:
    """The cache entry of the GGUF file ``gguf`` (absolute, resolved) under :func:`model_cache_dir`, or None when
    the cache is off."""
    root = model_cache_dir()
    if root is None:
        return None
    try:
        stat = gguf.stat()
    except OSError:  # the load itself reports the missing file
        return None

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    # The file by identity (path, size, mtime) rather than content: exact, and free, where hashing it is not.
    # The libraries that turn the file into tensors and a tokenizer are in the key, so an upgrade that
    # changes the conversion also changes the entry.
    key = {
        "format": MODEL_CACHE_FORMAT, "path": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "dtype": "float32", "versions": {dist: version(dist) for dist in ("transformers", "torch", "tokenizers", "gguf")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf.stem)[:60]
    return CacheEntry(root=root, path=root / f"{stem}-{digest}", key=key)


@dataclass(frozen=True)
class CacheEntry:
    """One converted model: ``<root>/<gguf stem>-<hash of key>/`` with the safetensors model, the tokenizer
    files and, written last, ``complete.json`` (``key``, file sizes, timings).

    Entries are written into a temporary directory beside them and renamed into place, so a reader sees
    either no entry or a complete one; anything else found there (missing or truncated files, a load that
    raises) is moved aside with a warning and rebuilt from the GGUF.
    """

    root: Path
    path: Path
    key: dict[str, Any]

    @property
    def marker(self) -> Path:
        return self.path / _MARKER

    def read(self, *, repair: bool) -> tuple[Any, Any] | None:
        """(tokenizer, model) from this entry, or None when there is none or it is unusable.

        With ``repair`` (only under :meth:`converting`, so no writer is mid-way), an unusable entry is
        moved aside with a warning; without, it is just a miss.
        """
        if not self.path.exists():
            return None
        try:
            return self._read()
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if not repair:
            log.debug("converted-model cache entry %s unusable (%s)", self.path, problem)
            return None
        gguf = self.key["path"]
        removed = _remove_dir(self.path, self.root, f".{self.path.name}.broken-")
        if removed is None:
            _warn(f"the converted-model cache entry {self.path} is unusable ({problem}); moved it aside, loading "
                  f"{gguf} instead and writing the entry again")
        else:
            _warn(f"the converted-model cache entry {self.path} is unusable ({problem}) and could not be removed "
                  f"({removed}); loading {gguf} instead")
            _UNWRITABLE.add(self.root)
        return None

    def _read(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            meta = json.loads(self.marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"no {_MARKER}, so it was not completely written") from None
        if not isinstance(meta, dict) or meta.get("key") != self.key or not isinstance(meta.get("files"), dict):
            raise ValueError(f"its {_MARKER} does not describe this model")
        # Sizes first: cheap, and a truncated file is caught even where a loader would not notice.
        for name, size in meta["files"].items():
            actual = (self.path / name).stat().st_size
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, {_MARKER} says {size}")
        source = str(self.path)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        return tokenizer, model

    @contextmanager
    def converting(self) -> Iterator[None]:
        """Hold this entry's lock file while checking, converting and writing, so that xdist workers
        starting together convert the GGUF once, not once each.  Best effort: where the lock cannot be
        taken (no fcntl, unwritable directory, or a holder busy for over _LOCK_WAIT_SECONDS) it goes on
        without it; the atomic rename in :meth:`write` keeps that safe, only wasteful.
        """
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        handle = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / f".{self.path.name}.lock", "a+b")  # held open across the yield
            deadline = time.monotonic() + _LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        log.warning("waited %.0f s for another process converting %s; converting it here too",
                                    _LOCK_WAIT_SECONDS, self.key["path"])
                        break
                    time.sleep(0.2)
        except OSError as exc:
            log.debug("no lock for the converted-model cache at %s (%s)", self.root, exc)
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # releases the lock (the lock file stays: deleting it would race other lockers)

    def write(self, tokenizer: Any, model: Any, load_seconds: float) -> None:
        """Save the converted model and tokenizer as this entry; any failure only costs the cache (warned
        about once per directory)."""
        if self.root in _UNWRITABLE:
            return
        if not _is_plain(model):
            log.info("not caching %s: its weights stay quantized in this transformers setup", self.key["path"])
            return
        started = time.perf_counter()
        tmp: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep()
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.root))
            with _without_quantizer(model):
                model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            # mkdtemp made the directory private (0700); give it the permissions the umask gave the files
            # (plus x where readable), so a cache shared by a team is readable where its files are.
            file_mode = (tmp / "config.json").stat().st_mode & 0o666
            os.chmod(tmp, file_mode | (file_mode & 0o444) >> 2)
            meta = {"key": self.key, "files": files, "gguf_load_seconds": round(load_seconds, 3),
                    "write_seconds": round(time.perf_counter() - started, 3), "written_at": time.time()}
            (tmp / _MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
            try:
                os.rename(tmp, self.path)  # atomic: readers see no entry or a complete one
            except OSError:
                if not self.marker.is_file():  # not "another process was first": a real failure
                    raise
                log.debug("converted-model cache entry %s was written by another process", self.path)
            else:
                tmp = None
                log.info("wrote the converted-model cache entry %s in %.1f s", self.path,
                         time.perf_counter() - started)
        except Exception as exc:
            _UNWRITABLE.add(self.root)
            _warn(f"cannot write the converted-model cache in {self.root} ({type(exc).__name__}: {exc}); going on "
                  f"without it (set {MODEL_CACHE_ENV} to another directory, or to off)")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove what is dead for sure: this GGUF's entries for an older version of the file (same path,
        other size or mtime), and temporary or moved-aside directories of killed writers."""
        now = time.time()
        for path in self.root.iterdir():
            name = path.name
            try:
                if name.startswith("."):
                    if (".tmp-" in name or ".broken-" in name) and now - path.stat().st_mtime > _STALE_SECONDS:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                if path == self.path or not (path / _MARKER).is_file():
                    continue
                key = json.loads((path / _MARKER).read_text(encoding="utf-8")).get("key", {})
                if key.get("path") == self.key["path"] and (key.get("size"), key.get("mtime_ns")) != (
                        self.key["size"], self.key["mtime_ns"]):
                    _remove_dir(path, self.root, f".{name}.broken-")
            except (OSError, ValueError, AttributeError):
                continue  # someone else's business, or already gone


def _is_plain(model: Any) -> bool:
    """Whether ``model`` holds ordinary floating-point weights (transformers dequantized the GGUF), rather
    than GGUF blocks computed by a kernel, which a dequantized copy would not reproduce."""
    quantizer = getattr(model, "hf_quantizer", None)
    if getattr(quantizer, "packed_modules", None):
        return False
    return all(p.is_floating_point() for p in model.parameters())


@contextmanager
def _without_quantizer(model: Any) -> Iterator[None]:
    """Let ``save_pretrained`` save a dequantized GGUF model as the plain model it is.

    transformers attaches its GGUF quantizer to the model even when it dequantized everything, and then
    refuses to save it ("not serializable"); the config would also record the GGUF file, which loading the
    saved copy must not look for.  Both come back afterwards, so the model in use is unchanged.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    config = model.config
    quant_config = getattr(config, "quantization_config", None)
    had_quant_config = hasattr(config, "quantization_config")
    try:
        if quantizer is not None:
            model.hf_quantizer = None
        if had_quant_config:
            delattr(config, "quantization_config")
        yield
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if had_quant_config:
            config.quantization_config = quant_config


def _remove_dir(path: Path, root: Path, prefix: str) -> str | None:
    """Move ``path`` aside (atomic, so no reader sees half of it), then delete it; None, or why it failed."""
    aside: Path | None = None
    try:
        aside = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        os.replace(path, aside / "entry")
    except FileNotFoundError:
        pass  # another process moved it first
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return None


def _warn(message: str) -> None:
    warnings.warn(LocalModelCacheWarning(message), stacklevel=3)
