"""Local vision-language models: the built-in provider ``local-vision/``, served through litellm as a custom provider.

``local-vision/<dir>`` answers a question about an image with the Hugging Face model directory ``<dir>``
that is already on disk (SmolVLM, Qwen2-VL, LLaVA, moondream2, ...); nothing is ever downloaded.  The
request is an ordinary OpenAI-style chat completion whose user message carries the question as text parts
and the image as an ``image_url`` part (a ``data:`` URL, a ``file://`` URL or a plain file path)::

    litellm.completion(
        model="local-vision/~/models/SmolVLM-256M-Instruct",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What colour is the square?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        ]}],
    )

Loading is generic: ``AutoProcessor`` plus ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on
older transformers).  A directory whose ``config.json`` has an ``auto_map`` ships its own modelling code
(moondream2 does); it is loaded with ``trust_remote_code=True`` and, when the model offers moondream's
``query(image, question)`` or ``answer_question`` method, that method generates the answer.  Models run in
float32 on the CPU, or in bfloat16 on CUDA when it is available.

Decoding the request's image is local_vision_images.py. :func:`provider` is what builtin.py registers through
``pytest_llmeval_register_providers``.

Importing this module is cheap: torch, transformers, litellm and Pillow are imported only when a model is
loaded, an image decoded or the provider registered.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
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
from pytest_llmeval.providers.local_generate import positive_int
from pytest_llmeval.providers.local_vision_images import PROVIDER, image_from_messages, to_rgb

if TYPE_CHECKING:
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse
    from PIL.Image import Image

    # Built lazily by the module __getattr__ below (subclassing CustomLLM means importing litellm).
    LocalVisionLLM: type[CustomLLM]

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PROVIDER",
    "Generation",
    "LoadedVision",
    "LocalVisionError",
    "LocalVisionLLM",
    "answer",
    "image_from_messages",
    "load",
    "provider",
    "register",
    "resolve_vision_dir",
]

log = logging.getLogger(__name__)

#: Completion length when the caller gives no ``max_tokens``: enough for a short answer about an image.
DEFAULT_MAX_TOKENS = 64

_VALID_DIR = (
    "a Hugging Face vision-language model directory (one containing config.json, the weights and the "
    "processor files, e.g. a downloaded SmolVLM, Qwen2-VL, LLaVA or moondream2 snapshot)"
)
# Auto classes tried, in order, for a directory without custom code.
_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")


class LocalVisionError(InfrastructureError):
    """A ``local-vision/...`` model that cannot be served; the message says what is wrong and how to fix it."""


# --------------------------------------------------------------------------------------------- resolve


def resolve_vision_dir(name: str) -> Path:
    """Turn the part after ``local-vision/`` into the absolute, symlink-resolved model directory.

    ``name`` is an absolute path, a path relative to the current directory, or one starting with ``~``.
    Nothing is loaded.  Raises :class:`LocalVisionError` unless it is a directory holding ``config.json``.
    """
    label = f"{PROVIDER}/{name}"
    if not name.strip():
        raise LocalVisionError(f"{label}: empty model name; use {PROVIDER}/<path to {_VALID_DIR}>")
    raw = Path(name).expanduser()
    path = raw if raw.is_absolute() else Path.cwd() / raw
    if not path.exists():
        raise LocalVisionError(f"{label}: no such directory ({path}); {PROVIDER}/<path> needs {_VALID_DIR}")
    path = path.resolve()
    if not path.is_dir():
        raise LocalVisionError(f"{label}: {path} is a file, not a directory; {PROVIDER}/<path> needs {_VALID_DIR}")
    if not (path / "config.json").is_file():
        raise LocalVisionError(
            f"{label}: {path} has no config.json, so it is not a model directory; {PROVIDER}/<path> needs "
            f"{_VALID_DIR}"
        )
    return path


# ------------------------------------------------------------------------------------------------ load


@dataclass
class LoadedVision:
    """A processor and model loaded once per process, plus the lock that serializes generation on it.

    ``kind`` is ``"processor"`` for models driven through their processor and ``generate`` (the usual
    transformers VLMs) and ``"custom"`` for custom-code models that answer through their own ``query`` /
    ``answer_question`` method (moondream2).  ``processor`` is the tokenizer for ``"custom"`` models (or
    None when there is none).
    """

    path: Path
    kind: Literal["processor", "custom"]
    processor: Any
    model: Any
    device: str
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_LOADED: dict[str, LoadedVision] = {}
# One lock for all loads: loads are rare and slow, and one lock makes "load once" trivially true.
_LOAD_LOCK = threading.Lock()


def load(path: Path) -> LoadedVision:
    """Load (once per process, keyed by the resolved path) the processor and model in directory ``path``.

    Concurrent callers wait for the first one and get the same :class:`LoadedVision`.  Raises
    :class:`LocalVisionError` when torch/transformers are missing or the directory cannot be loaded.
    """
    key = str(Path(path).expanduser().resolve())
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    with _LOAD_LOCK:
        cached = _LOADED.get(key)  # another thread may have loaded it while we waited
        if cached is not None:
            return cached
        loaded = _load_uncached(Path(key))
        _LOADED[key] = loaded
        return loaded


def _load_uncached(path: Path) -> LoadedVision:
    label = f"{PROVIDER}/{path}"
    # Nothing here may reach a hub (see local.py): offline switches plus local_files_only on every call.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LocalVisionError(
            f"{label} needs torch and transformers: pip install 'pytest-llmeval[local]' pillow ({exc})"
        ) from exc
    transformers.utils.logging.disable_progress_bar()

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LocalVisionError(f"{label}: cannot read {path / 'config.json'}: {exc}") from exc
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    custom_code = isinstance(auto_map, dict) and bool(auto_map)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    common: dict[str, Any] = {"local_files_only": True}
    if custom_code:
        common["trust_remote_code"] = True

    started = time.perf_counter()
    if custom_code:
        # Custom code (moondream2 maps only AutoModelForCausalLM): try the classes the auto_map names,
        # causal LM first, since that is how moondream-style models with query() are published.
        preferred = ("AutoModelForCausalLM", *_AUTO_CLASSES)
        names = [n for n in preferred if n in (auto_map or {})] or list(preferred)
    else:
        names = list(_AUTO_CLASSES)
    model = _load_model(transformers, names, path, label, dtype=dtype, **common)
    model.to(device)
    model.eval()  # no dropout: greedy answers must be deterministic

    if custom_code and (callable(getattr(model, "query", None)) or callable(getattr(model, "answer_question", None))):
        kind: Literal["processor", "custom"] = "custom"
        processor = getattr(model, "tokenizer", None)
        if processor is None:  # old moondream revisions take the tokenizer as an argument
            try:
                processor = transformers.AutoTokenizer.from_pretrained(str(path), **common)
            except Exception as exc:  # the newest revisions carry their own tokenizer; none is fine
                log.debug("%s: no tokenizer loaded (%s)", label, exc)
    else:
        kind = "processor"
        try:
            processor = transformers.AutoProcessor.from_pretrained(str(path), **common)
        except Exception as exc:
            raise LocalVisionError(
                f"{label}: cannot load the processor from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(processor, transformers.PreTrainedTokenizerBase) or not hasattr(processor, "image_processor"):
            raise LocalVisionError(
                f"{label}: {path} has no image processor (AutoProcessor found only a "
                f"{type(processor).__name__}), so it is not {_VALID_DIR}"
            )
    seconds = time.perf_counter() - started
    log.info("loaded %s (%s, %s) in %.1f s", label, type(model).__name__, device, seconds)
    return LoadedVision(path=path, kind=kind, processor=processor, model=model, device=device, load_seconds=seconds)


def _load_model(transformers: Any, names: Sequence[str], path: Path, label: str, **kwargs: Any) -> Any:
    """The model from the first auto class in ``names`` that exists and loads ``path``."""
    failures: list[str] = []
    for name in names:
        auto = getattr(transformers, name, None)
        if auto is None:  # AutoModelForVision2Seq is gone from transformers 5, ImageTextToText is new in 4.46
            continue
        try:
            return auto.from_pretrained(str(path), **kwargs)
        except ImportError as exc:  # a package the model code needs is missing: no other class will help
            raise LocalVisionError(f"{label}: loading {path} needs a missing package: {exc}") from exc
        except Exception as exc:  # unsupported architecture, corrupt weights, ...
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    detail = "; ".join(failures) or f"transformers {transformers.__version__} has none of {', '.join(names)}"
    raise LocalVisionError(f"{label}: cannot load {path} as a vision-language model ({detail})")


# -------------------------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generation:
    """One answer: the text, token counts and the OpenAI finish reason."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


def answer(
    loaded: LoadedVision,
    image: Image,
    prompt: str,
    *,
    system: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
) -> Generation:
    """Answer ``prompt`` about ``image`` with ``loaded``: greedy unless ``temperature`` > 0.

    ``system`` becomes a system message when the model's chat template renders one, and is put in front
    of the prompt otherwise.  Raises ValueError for an unusable ``max_new_tokens`` or ``temperature``.
    """
    import torch

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_new_tokens!r}")
    temperature = float(temperature or 0.0)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    image = to_rgb(image)
    with loaded.lock, torch.inference_mode():
        if loaded.kind == "custom":
            return _answer_custom(loaded, image, prompt, system, max_new_tokens, temperature)
        return _answer_processor(loaded, image, prompt, system, max_new_tokens, temperature)


def _answer_processor(
    loaded: LoadedVision, image: Image, prompt: str, system: str | None, max_new: int, temperature: float
) -> Generation:
    import torch

    processor, model = loaded.processor, loaded.model
    tokenizer = getattr(processor, "tokenizer", processor)
    text = _render_prompt(processor, prompt, system)
    enc = processor(images=[image], text=text, return_tensors="pt")
    dtype = getattr(model, "dtype", torch.float32)
    inputs = {
        key: (value.to(loaded.device, dtype=dtype) if torch.is_floating_point(value) else value.to(loaded.device))
        if isinstance(value, torch.Tensor)
        else value
        for key, value in enc.items()
    }
    prompt_len = int(inputs["input_ids"].shape[1])

    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": temperature > 0}
    if temperature > 0:
        kwargs["temperature"] = temperature
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None)
    if pad_id is not None:
        kwargs["pad_token_id"] = pad_id
    output = model.generate(**inputs, **kwargs)
    # Decoder-only models return prompt + answer; encoder-decoder ones only the answer.
    generated = output[0] if getattr(model.config, "is_encoder_decoder", False) else output[0][prompt_len:]
    answer_text = tokenizer.decode(generated, skip_special_tokens=True).strip()

    eos_ids = _eos_ids(model, tokenizer)
    ended_on_eos = len(generated) > 0 and int(generated[-1]) in eos_ids
    finish: Literal["stop", "length"] = "length" if len(generated) >= max_new and not ended_on_eos else "stop"
    return Generation(
        text=answer_text, prompt_tokens=prompt_len, completion_tokens=len(generated), finish_reason=finish
    )


def _render_prompt(processor: Any, prompt: str, system: str | None) -> str:
    """The model's prompt text: its chat template if it has one, else a LLaVA-style ``USER:`` prompt."""
    if getattr(processor, "chat_template", None):
        if system:
            # Not every template renders a system turn (some raise, some drop it): keep it only if it shows.
            try:
                text = _apply_template(processor, prompt, system)
            except Exception:
                text = ""
            if system in text:
                return text
        return _apply_template(processor, _joined(system, prompt), None)
    tokenizer = getattr(processor, "tokenizer", None)
    image_token = getattr(processor, "image_token", None) or getattr(tokenizer, "image_token", None) or "<image>"
    return f"USER: {image_token}\n{_joined(system, prompt)}\nASSISTANT:"


def _apply_template(processor: Any, prompt: str, system: str | None) -> str:
    """Render [system,] user(image, prompt) with the processor's chat template, ready for the answer."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(text, list):  # some processors return one string per conversation
        text = text[0]
    return str(text)


def _answer_custom(
    loaded: LoadedVision, image: Image, prompt: str, system: str | None, max_new: int, temperature: float
) -> Generation:
    """moondream-style custom code: ``query(image, question)`` or ``answer_question(embeds, question, tok)``."""
    model, tokenizer = loaded.model, loaded.processor
    question = _joined(system, prompt)
    query = getattr(model, "query", None)
    if callable(query):
        extra: dict[str, Any] = {}
        if _accepts(query, "settings"):  # moondream2 2025 revisions; older ones take no generation settings
            extra["settings"] = {"max_tokens": max_new, "temperature": temperature}
        result = query(image, question, **extra)
    else:  # older moondream2 revisions: answer_question(image_embeds, question, tokenizer, ...)
        encode = getattr(model, "encode_image", None)
        embeds = encode(image) if callable(encode) else image
        extra = {"max_new_tokens": max_new} if _accepts(model.answer_question, "max_new_tokens") else {}
        result = model.answer_question(embeds, question, tokenizer, **extra)
    if isinstance(result, dict):
        result = result.get("answer", "")
    if not isinstance(result, str):  # a streamed answer
        result = "".join(str(piece) for piece in result)
    text = result.strip()
    completion = _count_tokens(tokenizer, text)
    return Generation(
        text=text,
        prompt_tokens=_count_tokens(tokenizer, question),  # the image's own tokens are not visible here
        completion_tokens=completion,
        finish_reason="length" if completion >= max_new else "stop",
    )


def _accepts(function: Any, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (explicitly or through ``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in ``text`` under a transformers or ``tokenizers`` tokenizer; whitespace words without one."""
    if tokenizer is not None and text:
        encoded: Any = None
        try:
            encoded = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # tokenizers.Tokenizer.encode(sequence, pair=None, is_pretokenized=False, ...)
            try:
                encoded = tokenizer.encode(text)
            except Exception:
                encoded = None
        except Exception:
            encoded = None
        ids = getattr(encoded, "ids", encoded)
        if isinstance(ids, Sequence):
            return len(ids)
    return len(text.split())


def _joined(system: str | None, prompt: str) -> str:
    return f"{system}\n\n{prompt}" if system else prompt


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(tokenizer, "eos_token_id", None)
    if ids is None:
        return set()
    return {int(i) for i in ids} if isinstance(ids, (list, tuple)) else {int(ids)}


# -------------------------------------------------------------------------------------- litellm glue


_NO_IMAGE = (
    "the request has no image; add a content part "
    '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} (or a file path as the url) '
    "to the user message"
)


def _complete(
    model: str, messages: list[dict[str, Any]], model_response: ModelResponse, optional_params: dict[str, Any]
) -> ModelResponse:
    """Body of LocalVisionLLM.completion, kept module-level so it is defined without importing litellm."""
    params = optional_params or {}
    try:
        path = resolve_vision_dir(model)
        image, prompt, system = image_from_messages(messages)
        if image is None:
            raise ValueError(_NO_IMAGE)
        max_new = positive_int(
            params.get("max_tokens", params.get("max_completion_tokens")), "max_tokens", DEFAULT_MAX_TOKENS
        )
        if int(params.get("n") or 1) != 1:
            raise ValueError(f"{PROVIDER} returns one choice per call (n must be 1)")
        temperature = float(params.get("temperature") or 0.0)
        result = answer(load(path), image, prompt, system=system, max_new_tokens=max_new, temperature=temperature)
    except LocalVisionError as exc:  # its message already starts with local-vision/<name>
        raise bad_request(PROVIDER, model, str(exc)) from exc
    except ValueError as exc:  # bad messages, image or parameters
        raise bad_request(PROVIDER, model, f"{PROVIDER}/{model}: {exc}") from exc

    text, finish = result.text, result.finish_reason
    stops = params.get("stop")
    stops = [stops] if isinstance(stops, str) else [s for s in stops or () if isinstance(s, str)]
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"

    return fill_response(model_response, PROVIDER, model, text, finish, result.prompt_tokens,
                         result.completion_tokens)


@functools.lru_cache(maxsize=1)
def _local_vision_llm_class() -> type[CustomLLM]:
    cls = provider_class("LocalVisionLLM", "litellm handler for ``local-vision/<dir>``: a vision-language model "
                                           "directory on disk.", _complete)
    cls.__module__ = __name__
    return cls


def __getattr__(name: str) -> Any:
    """Expose ``LocalVisionLLM`` lazily (PEP 562), so importing this module does not import litellm."""
    if name == "LocalVisionLLM":
        cls = _local_vision_llm_class()
        globals()["LocalVisionLLM"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Make ``local-vision/...`` models callable through litellm; safe to call any number of times."""
    register_provider(PROVIDER, _local_vision_llm_class)


def provider() -> Provider:
    """The ``local-vision/`` provider, as builtin.py registers it."""
    return Provider(prefix=f"{PROVIDER}/", complete=_answer, offline=True, vision=True, tools=False,
                    check=_check, load=_prepare, setup=register,
                    doc="a vision-language model directory on disk, local-vision/<dir>")


def _check(model: str, shown: str) -> str | None:
    try:
        resolve_vision_dir(model[len(PROVIDER) + 1:])
    except LocalVisionError as exc:
        return str(exc)
    return None


def _prepare(model: str) -> None:
    """Register with litellm and load the model (once per process) before the clock starts."""
    _register_once()
    load(resolve_vision_dir(model[len(PROVIDER) + 1:]))


def _answer(request: Request) -> Reply:
    _register_once()
    return custom_complete(request)


@functools.cache
def _register_once() -> None:
    """register(), once per process: before every call, it would run litellm's provider setup every time."""
    register()
