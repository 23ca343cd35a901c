"""What a model provider is: the object ``pytest_llmeval_register_providers`` registers.

A :class:`Provider` serves the model names that start with its ``prefix`` (``local/``; the empty prefix, which the
built-in litellm provider has, matches every name). The runner (runner.py) finds the provider of a model in the
run's :class:`ProviderRegistry`, then asks it: can this model be used in this run (``check``), get it ready
before the clock starts (``load``), answer this request (``complete``), and where its calls go (``endpoint``, for
the circuit breaker). Everything around the call -- the response caches, retries, rate limits, the budget, the
breaker, the Completion with its latency -- is the runner's, the same for every provider.

Whether a provider is ``offline`` (served in this process: no API key, no network, no price) decides what the run
does around it: offline models are not prefetched in threads (CPU-bound; ``local/``'s greedy calls are, to be
generated as one batch: local_generate.py), have no circuit breaker, are not sent ``--llm-api-base`` nor streamed, and
cost nothing.

Built-in and third-party providers are peers: the built-ins (builtin.py) register through the same hook, and a
later registration of a prefix replaces an earlier one, so a conftest can replace ``local/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.core.registry import Registry

__all__ = ["MalformedResponse", "Provider", "ProviderRegistry", "Reply", "Request"]


class MalformedResponse(InfrastructureError):
    """The provider answered, but not with an answer (no choices, no message, not a Reply)."""


@dataclass(frozen=True)
class Request:
    """One model call, as the runner hands it to a provider (after the caches missed).

    ``model`` is the full model name, prefix included, aliases resolved (``local/smollm2``,
    ``openai/gpt-4o-mini``); ``messages`` the rendered OpenAI-style chat messages (the case's system prompt, its
    prompt, images as ``image_url`` parts); ``params`` the case's sampling parameters (``temperature``,
    ``max_tokens``, ``stop``, ``seed``...). ``timeout`` is ``--llm-timeout`` in seconds; ``api_base`` is
    ``--llm-api-base`` (always None for offline providers); ``stream`` asks for a streamed answer, to measure the
    time to the first token (``--llm-stream``; never for offline providers).
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 60.0
    api_base: str | None = None
    stream: bool = False

    @property
    def prompt(self) -> str:
        """The text of the last user message (its text parts joined): what a simple provider answers."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                return "\n".join(str(p.get("text", "")) for p in content or () if isinstance(p, dict)
                                 and p.get("type", "text") == "text")
        return ""


@dataclass(frozen=True)
class Reply:
    """A provider's answer to a :class:`Request`: the text and, where known, what it cost.

    ``cost_usd`` None means the price is unknown (not zero); an offline provider's None counts as 0.
    ``ttft_s``: the time to the first token of a streamed answer. ``tool_calls``: the calls the model asked for
    when the request offered tools (``params["tools"]``), in OpenAI's shape
    ``[{"id", "type": "function", "function": {"name", "arguments": "<json text>"}}]``.
    """

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    ttft_s: float | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Provider:
    """A model provider: serves the model names starting with ``prefix``.

    - ``prefix``: ``"local/"``, ``"echo/"``; ``""`` matches every name (the built-in litellm provider). The
      longest registered prefix that matches a model name wins.
    - ``complete(request) -> Reply | str``: answer one :class:`Request`. Raise on failure: the runner retries what
      looks transient (rate limits, 5xx, timeouts, by the exception's class name or ``status_code``) and turns
      the rest into the case's ``error`` outcome with the exception's message.
    - ``doc``: one line saying which models it serves (listed in the "unknown provider" error and the docs).
    - ``offline``: served in this process (no key, no network, no price; see the module docstring).
    - ``vision``: its models take images (``image_url`` content parts), so it can serve ``--llm-vision``.
    - ``tools``: its models do function calling (``params["tools"]``, ``tool_choice``; ``Reply.tool_calls``). An
      agent case (``tools:``) on a model without it runs in prompt-and-parse mode (targets/agent.py).
    - ``check(model, shown) -> str | None``: why ``model`` cannot be used in this run (a missing key, a missing
      file), or None; found once per model before anything runs, so a broken setup is one usage error. ``shown``
      is how the run names the model (``small (= openai/gpt-4o-mini)`` for an alias), for the message.
    - ``load(model)``: make the model ready before the first call's clock starts (load weights), so the latency
      measured is the answer's; raise with a clear message.
    - ``endpoint(model, api_base) -> str``: where calls go, as the circuit breaker names and keys it; None (the
      default): calls are not guarded by the breaker.
    - ``setup()``: make the provider's models callable by other means too (register a litellm custom provider, so
      a ``--llm-router`` configuration can name them); idempotent.
    """

    prefix: str
    complete: Callable[[Request], Reply | str]
    doc: str = ""
    offline: bool = False
    vision: bool = False
    tools: bool = True
    check: Callable[[str, str], str | None] | None = None
    load: Callable[[str], None] | None = None
    endpoint: Callable[[str, str | None], str] | None = None
    setup: Callable[[], None] | None = None

    def serves(self, model: str) -> bool:
        """Whether ``model`` starts with this provider's prefix."""
        return model.startswith(self.prefix)

    def answer(self, request: Request) -> Reply:
        """``complete(request)`` as a :class:`Reply` (a provider may return just the text); an offline
        provider's unknown price is 0."""
        reply = self.complete(request)
        if isinstance(reply, str):
            reply = Reply(reply)
        elif not isinstance(reply, Reply):
            raise MalformedResponse(f"malformed response: the {self.prefix or 'catch-all'} provider returned a "
                                    f"{type(reply).__name__}, not a Reply or a str")
        if self.offline and reply.cost_usd is None:
            reply = Reply(reply.text, reply.prompt_tokens, reply.completion_tokens, 0.0, reply.ttft_s, reply.tool_calls)
        return reply


class ProviderRegistry(Registry[Provider]):
    """The providers known to this run, filled by the ``pytest_llmeval_register_providers`` hook (or by
    :func:`pytest_llmeval.providers.builtin.builtin_providers` outside a pytest run), keyed by prefix."""

    key = "prefix"

    def register(self, provider: Provider) -> None:
        """Add ``provider``; one registered earlier with the same prefix is replaced (a conftest overrides a
        built-in)."""
        if not isinstance(provider, Provider):
            raise TypeError(f"register() takes a pytest_llmeval.Provider, got {type(provider).__name__}")
        super().register(provider)

    def find(self, model: str) -> Provider:
        """The provider of ``model``: the one with the longest prefix it starts with. LookupError when none
        matches (no catch-all registered)."""
        best: Provider | None = None
        for provider in self:
            if provider.serves(model) and (best is None or len(provider.prefix) > len(best.prefix)):
                best = provider
        if best is None:
            raise LookupError(f"no model provider serves {model!r}; registered: {self.describe()}")
        return best

    def describe(self) -> str:
        """The registered providers, one phrase each, for messages: ``local/<name> (the offline model), ...``."""
        parts = [f"{p.prefix or '<any other name>'}" + (f" ({p.doc})" if p.doc else "") for p in self]
        return ", ".join(parts) or "none"

    def __iter__(self) -> Iterator[Provider]:
        """By prefix (the catch-all first), whatever the order of registration."""
        return iter(sorted(super().__iter__(), key=lambda p: p.prefix))
