"""Generation with a loaded ``local/`` model: OpenAI-style chat messages and parameters in, one completion out.

The chat template is applied, decoding is greedy unless ``temperature`` > 0, ``max_tokens`` and ``stop`` are
honoured, and the finish reason is the OpenAI one. torch is imported only when a completion is generated.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["DEFAULT_MAX_TOKENS", "Generation", "Loaded", "generate", "positive_int"]

#: Completion length when the caller gives no ``max_tokens``; plenty for graded one-paragraph answers.
DEFAULT_MAX_TOKENS = 256


class Loaded(Protocol):
    """What generation needs of a loaded model (local.LoadedModel): the tokenizer, the model, and the lock that
    serializes generation on it."""

    tokenizer: Any
    model: Any
    lock: threading.Lock



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


def positive_int(value: Any, name: str, default: int) -> int:
    """``value`` (a request parameter called ``name``) as a positive integer, ``default`` when None."""
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def generate(loaded: Loaded, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> Generation:
    """Run one chat completion on ``loaded`` with OpenAI-style ``params``.

    Greedy decoding unless ``temperature`` > 0 (then sampling with ``temperature``/``top_p``; with ``seed``
    it is reproducible and leaves the process-wide RNG as it was).  ``max_tokens`` (or
    ``max_completion_tokens``) defaults to :data:`DEFAULT_MAX_TOKENS`; ``stop`` strings end generation
    early and the text is cut at the first one.  Raises ValueError for unusable messages or parameters.
    """
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    chat = _chat_messages(messages)
    max_new = positive_int(
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
