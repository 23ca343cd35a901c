"""Generation with a loaded ``local/`` model: OpenAI-style chat messages and parameters in, one completion out.

The chat template is applied, decoding is greedy unless ``temperature`` > 0, ``max_tokens`` and ``stop`` are
honoured, and the finish reason is the OpenAI one. torch is imported only when a completion is generated.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_BATCH", "Batcher", "Generation", "Loaded", "batcher", "generate",
           "generate_batch", "positive_int", "report", "set_reporter"]

#: Completion length when the caller gives no ``max_tokens``; plenty for graded one-paragraph answers.
DEFAULT_MAX_TOKENS = 256
#: The most prompts generated together. On a CPU a batch of 8 costs little more than one prompt (the weights
#: are read once per token for all rows); the prefetch pool (--llm-concurrency, default 8) bounds it anyway.
MAX_BATCH = 16
#: How long the thread about to generate waits for other requests to join its batch: the prefetch pool's
#: threads arrive within milliseconds of each other, and one answer takes a second or more.
GATHER_S = 0.02
#: A batch running longer than this reports its progress, then again every as long.
PROGRESS_EVERY_S = 5.0
#: Prompts join one batch only while the longest is at most PAD_RATIO times the shortest plus PAD_SLACK tokens:
#: every row is computed at the longest prompt's width, so a 30-token question padded to a 1000-token few-shot
#: prompt costs the prefill of 1000 tokens, far more than its own batch's decoding steps (bench_first_run.py).
PAD_RATIO = 2
PAD_SLACK = 64


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


@dataclass(frozen=True)
class _Prepared:
    """One request, validated and tokenized: what generation needs, and the key of the batch it may join."""

    input_ids: list[int]
    kwargs: dict[str, Any]
    stops: tuple[str, ...]
    max_new: int
    seed: int | None

    @property
    def batchable(self) -> bool:
        """Greedy requests batch; sampled ones run alone (a batch would draw from the RNG in another order)."""
        return not self.kwargs.get("do_sample")

    @property
    def group(self) -> tuple[str, ...]:
        """Requests with equal ``group`` generate together: the same stop strings (each row keeps its own
        ``max_tokens``: a row that reaches it stops while the others go on)."""
        return self.stops


def _prepare(loaded: Loaded, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> _Prepared:
    """Validate ``params`` and tokenize ``messages`` (raises ValueError for unusable ones)."""
    tokenizer = loaded.tokenizer
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
        enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)
    else:
        # A base model without a chat template: plain concatenation is the most neutral prompt.
        prompt = "\n\n".join(m["content"] for m in chat) + "\n"
        enc = tokenizer(prompt)
    ids = enc["input_ids"]
    input_ids = [int(i) for i in (ids[0] if ids and isinstance(ids[0], list) else ids)]

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
    pad_id = _pad_id(tokenizer)
    if pad_id is not None:
        kwargs["pad_token_id"] = pad_id  # silences "Setting pad_token_id to eos_token_id"
    seed = params.get("seed")
    return _Prepared(input_ids=input_ids, kwargs=kwargs, stops=tuple(stops), max_new=max_new,
                     seed=None if seed is None else int(seed))


def _pad_id(tokenizer: Any) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate(loaded: Loaded, messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> Generation:
    """Run one chat completion on ``loaded`` with OpenAI-style ``params``.

    Greedy decoding unless ``temperature`` > 0 (then sampling with ``temperature``/``top_p``; with ``seed``
    it is reproducible and leaves the process-wide RNG as it was).  ``max_tokens`` (or
    ``max_completion_tokens``) defaults to :data:`DEFAULT_MAX_TOKENS`; ``stop`` strings end generation
    early and the text is cut at the first one.  Raises ValueError for unusable messages or parameters.

    Greedy calls made from several threads at once (the prefetch pool) are generated together, as one
    left-padded batch (see :class:`Batcher`): the same text as alone, in a fraction of the time per answer.
    """
    prepared = _prepare(loaded, messages, params)
    if not prepared.batchable:
        with loaded.lock:
            return _generate_batch(loaded, [prepared])[0]
    return batcher(loaded).submit(prepared)


def generate_batch(loaded: Loaded, requests: Sequence[tuple[Sequence[dict[str, Any]], dict[str, Any]]]
                   ) -> list[Generation]:
    """Generate the answers of ``requests`` (``(messages, params)`` pairs) in this thread: greedy requests with
    the same ``stop`` (each row stops at its own ``max_tokens``) and prompts of similar lengths (see
    :data:`PAD_RATIO`) as left-padded batches (at most :data:`MAX_BATCH` prompts each), sampled ones one at a time.
    Each answer is the one :func:`generate` gives for its request alone."""
    prepared = [_prepare(loaded, messages, params) for messages, params in requests]
    out: list[Generation | None] = [None] * len(prepared)
    waiting = list(range(len(prepared)))
    with loaded.lock:
        while waiting:
            first = prepared[waiting[0]]
            chunk = ([waiting[i] for i in _batch_of([prepared[i] for i in waiting], MAX_BATCH)]
                     if first.batchable else [waiting[0]])
            for index, generation in zip(chunk, _generate_batch(loaded, [prepared[i] for i in chunk]), strict=True):
                out[index] = generation
            waiting = [i for i in waiting if out[i] is None]
    return [g for g in out if g is not None]


def _generate_batch(loaded: Loaded, batch: Sequence[_Prepared]) -> list[Generation]:
    """Generate ``batch`` (one request, or greedy requests of one group) under the caller's hold of the lock."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    first = batch[0]
    pad_id = _pad_id(tokenizer)
    width = max(len(p.input_ids) for p in batch)
    if len(batch) > 1 and pad_id is None:
        raise ValueError("a batch needs a pad or end-of-sequence token")
    # Left padding: every prompt ends where generation starts; the attention mask hides the padding (and the
    # model derives position ids from it), so each row is generated as if it were alone.
    fill = pad_id or 0  # (a batch of one is never padded)
    rows = [[fill] * (width - len(p.input_ids)) + p.input_ids for p in batch]
    mask = [[0] * (width - len(p.input_ids)) + [1] * len(p.input_ids) for p in batch]
    inputs = {"input_ids": torch.tensor(rows, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
    kwargs = dict(first.kwargs)
    limits = [p.max_new for p in batch]
    kwargs["max_new_tokens"] = max(limits)
    kwargs["stopping_criteria"] = _progress_criteria(loaded, len(batch), max(limits))
    if len(set(limits)) > 1:  # rows of several max_tokens: each stops at its own (padded from there on)
        kwargs["stopping_criteria"].append(_row_limits_class()(width, limits))
    with torch.inference_mode():
        if first.seed is None:
            # Unseeded sampling draws from (and advances) the global RNG, so repeated calls differ.
            output = model.generate(**inputs, **kwargs)
        else:
            # Seeded: reproducible, and fork_rng restores the global RNG so the seed does not leak into
            # the user's other torch code.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(first.seed)
                output = model.generate(**inputs, **kwargs)
    eos_ids = _eos_ids(model, tokenizer)
    return [_finish(tokenizer, p, [int(t) for t in output[row][width:]], eos_ids, pad_id, len(batch) > 1)
            for row, p in enumerate(batch)]


def _finish(tokenizer: Any, prepared: _Prepared, generated: list[int], eos_ids: set[int], pad_id: int | None,
            padded: bool) -> Generation:
    """The Generation of one row: in a batch, a row that finished early was padded to the longest one, so it is
    cut after its first end-of-sequence token, else before the padding (what generating it alone gives)."""
    if padded:
        generated = generated[:prepared.max_new]  # a row stopped at its own limit was padded after it
        end = next((i + 1 for i, t in enumerate(generated) if t in eos_ids), None)
        if end is not None:
            generated = generated[:end]
        elif pad_id is not None:
            while generated and generated[-1] == pad_id:
                generated.pop()
        if prepared.stops:
            # A row ended by a stop string was padded from the next token on, and the padding may be the
            # end-of-sequence token: alone, it would have ended at the token that completed the stop string.
            end = next((k for k in range(1, len(generated) + 1)
                        if any(stop in tokenizer.decode(generated[:k], skip_special_tokens=True)
                               for stop in prepared.stops)), None)
            if end is not None:
                generated = generated[:end]
    text = tokenizer.decode(generated, skip_special_tokens=True)
    stops = prepared.stops
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
        finish: Literal["stop", "length"] = "stop"
    else:
        ended_on_eos = len(generated) > 0 and generated[-1] in eos_ids
        finish = "length" if len(generated) >= prepared.max_new and not ended_on_eos else "stop"
    return Generation(text=text, prompt_tokens=len(prepared.input_ids), completion_tokens=len(generated),
                      finish_reason=finish)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in ids} if isinstance(ids, (list, tuple)) else {int(ids)}


# ------------------------------------------------------------------------------------------------ progress

_reporter: Callable[[str], None] | None = None


def set_reporter(reporter: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Where progress lines go (the pytest terminal reporter, while a session runs); returns the previous one."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def report(message: str) -> None:
    """Send one progress line to the reporter, if there is one; a reporter's failure never fails generation."""
    reporter = _reporter
    if reporter is not None:
        try:
            reporter(message)
        except Exception:
            pass


@functools.cache
def _progress_class() -> type:
    from transformers import StoppingCriteria

    class Progress(StoppingCriteria):  # type: ignore[misc]
        """Never stops anything: counts the tokens generated and reports every PROGRESS_EVERY_S seconds."""

        def __init__(self, label: str, size: int, max_new: int) -> None:
            self.label, self.size, self.max_new = label, size, max_new
            self.start = self.last = time.perf_counter()
            self.step = 0

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            self.step += 1
            now = time.perf_counter()
            if _reporter is not None and now - self.last >= PROGRESS_EVERY_S:
                self.last = now
                answers = f"{self.size} answers" if self.size > 1 else "1 answer"
                report(f"{self.label}: generated {self.step}/{self.max_new} tokens of {answers} "
                       f"({now - self.start:.0f} s)")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return Progress


@functools.cache
def _row_limits_class() -> type:
    from transformers import StoppingCriteria

    class RowLimits(StoppingCriteria):  # type: ignore[misc]
        """Stops each row of a batch at its own ``max_tokens`` (generate's ``max_new_tokens`` is the largest)."""

        def __init__(self, width: int, limits: list[int]) -> None:
            import torch

            self.width = width
            self.limits = torch.tensor(limits, dtype=torch.long)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return (input_ids.shape[1] - self.width) >= self.limits.to(input_ids.device)

    return RowLimits


def _progress_criteria(loaded: Loaded, size: int, max_new: int) -> Any:
    from transformers import StoppingCriteriaList

    spec = getattr(loaded, "spec", None)
    label = f"local/{spec.name}" if spec is not None else "local model"
    return StoppingCriteriaList([_progress_class()(label, size, max_new)])


# ------------------------------------------------------------------------------------------------ batching


class _Pending:
    __slots__ = ("done", "error", "prepared", "result")

    def __init__(self, prepared: _Prepared) -> None:
        self.prepared = prepared
        self.result: Generation | None = None
        self.error: BaseException | None = None
        self.done = False


class Batcher:
    """Greedy requests from several threads at once, generated together (group commit).

    The first thread to arrive while no batch is being generated leads: it waits briefly for others to join
    (:data:`GATHER_S`), takes the oldest request's group (the same ``stop``, any ``max_tokens``, prompts of similar
    lengths: :data:`PAD_RATIO`, at most :data:`MAX_BATCH`), generates it as one batch and hands each thread its
    answer; requests arriving meanwhile queue for the next batch, which the leader also runs until its own answer
    is back, then another waiting thread leads. A thread alone (no prefetch pool) generates alone, as before,
    after the short wait.
    """

    def __init__(self, loaded: Loaded, max_batch: int = MAX_BATCH) -> None:
        self._loaded = loaded
        self._max = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        self.sizes: list[int] = []  # the size of every batch generated, in order (tests, benchmarks)

    def submit(self, prepared: _Prepared) -> Generation:
        pending = _Pending(prepared)
        with self._cond:
            self._queue.append(pending)
            self._cond.notify_all()
            while not pending.done and self._leading:
                self._cond.wait()
            lead = not pending.done
            if lead:
                self._leading = True
        if lead:
            try:
                self._lead(pending)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _lead(self, own: _Pending) -> None:
        while not own.done:
            with self._cond:
                seen = -1
                while seen != len(self._queue) and len(self._queue) < self._max:
                    seen = len(self._queue)
                    self._cond.wait(GATHER_S)
                taken = _batch_of([p.prepared for p in self._queue], self._max)
                batch = [self._queue[i] for i in taken]
                for pending in batch:
                    self._queue.remove(pending)
                self.sizes.append(len(batch))
            try:
                with self._loaded.lock:
                    results = _generate_batch(self._loaded, [p.prepared for p in batch])
            except BaseException as exc:  # every request of the batch fails with it (each thread raises it)
                for pending in batch:
                    pending.error = exc
            else:
                for pending, result in zip(batch, results, strict=True):
                    pending.result = result
            with self._cond:
                for pending in batch:
                    pending.done = True
                self._cond.notify_all()


def _batch_of(queue: Sequence[_Prepared], most: int) -> list[int]:
    """Indices into ``queue`` of the next batch: the oldest request and, in arrival order, the queued ones of its
    group whose prompt lengths keep the batch within the padding bound (PAD_RATIO, PAD_SLACK); at most ``most``.
    The oldest is taken whatever it is; others join only a greedy one, and only when greedy themselves."""
    group = queue[0].group
    batch: list[int] = []
    low = high = len(queue[0].input_ids)
    for index, prepared in enumerate(queue):
        if len(batch) == most:
            break
        size = len(prepared.input_ids)
        if index == 0 or (prepared.batchable and queue[0].batchable and prepared.group == group
                          and max(high, size) <= PAD_RATIO * min(low, size) + PAD_SLACK):
            batch.append(index)
            low, high = min(low, size), max(high, size)
    return batch


_BATCHERS_LOCK = threading.Lock()


def batcher(loaded: Loaded) -> Batcher:
    """The :class:`Batcher` of ``loaded`` (one per loaded model, made on first use)."""
    found = getattr(loaded, "_llmeval_batcher", None)
    if found is None:
        with _BATCHERS_LOCK:
            found = getattr(loaded, "_llmeval_batcher", None)
            if found is None:
                found = Batcher(loaded)
                loaded._llmeval_batcher = found  # type: ignore[attr-defined]
    return found
