"""The built-in litellm provider: every model name no other provider claims (``openai/...``, ``groq/...``).

Also what the other litellm-based providers share: importing and configuring litellm once (:func:`get_litellm`),
one call and its reply (:func:`call`), the ``--llm-router`` Router (:func:`router_provider`), and serving a
provider of our own to litellm as a custom provider (:func:`provider_class`, :func:`register_provider`), which is
how ``local/`` and ``local-vision/`` reach their models.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.core.memory import paused_gc
from pytest_llmeval.providers.base import MalformedResponse, Provider, Reply, Request

if TYPE_CHECKING:
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

__all__ = ["bad_request", "call", "custom_complete", "get_litellm", "provider", "provider_class", "register_provider",
           "router_models", "router_provider"]

_litellm_lock = threading.Lock()
_litellm: Any = None


def get_litellm() -> Any:
    """Import and configure litellm once per process (heavy: ~3 s, so only when a model is called)."""
    global _litellm
    with _litellm_lock:
        if _litellm is None:
            # Offline, litellm would retry downloading its cost map for seconds on import.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            with paused_gc():  # its ~half a million objects live as long as the process
                import litellm

            litellm.suppress_debug_info = True  # no "Provider List: ..." banners in test output
            litellm.telemetry = False
            litellm.drop_params = True  # a sampling param a provider lacks is dropped, not fatal
            _litellm = litellm
    return _litellm


# ------------------------------------------------------------------------------------ the catch-all provider


def provider() -> Provider:
    """The catch-all provider: any litellm model name, keys from the provider's usual environment variables."""
    return Provider(prefix="", complete=_complete, doc="a litellm model name such as openai/gpt-4o-mini",
                    vision=True, check=_check, load=_load, endpoint=_endpoint)


def _load(model: str) -> None:
    get_litellm()  # imported before the first call's clock starts: the latency is the answer's


def _complete(request: Request) -> Reply:
    kwargs: dict[str, Any] = {"timeout": request.timeout, "num_retries": 0, "max_retries": 0}
    # One HTTP attempt per litellm call: the runner retries, honouring Retry-After, with jitter.
    if request.api_base:
        kwargs["api_base"] = request.api_base
    litellm = get_litellm()
    return call(litellm, litellm.completion, request, kwargs, quiet=True)


def _check(model: str, shown: str) -> str | None:
    litellm = get_litellm()
    try:
        litellm.get_llm_provider(model)
    except Exception:
        return (f"--llm={shown}: unknown provider; use a litellm model name such as openai/gpt-4o-mini "
                "or groq/llama3-70b-8192, an alias from llmeval_aliases, or local/smollm2")
    env = litellm.validate_environment(model)
    missing = env.get("missing_keys") or []
    if missing and not env.get("keys_in_environment"):
        return (f"--llm={shown}: {', '.join(missing)} is not set; export it, or run offline with "
                "--llm=local/smollm2")
    return None


def _endpoint(model: str, api_base: str | None) -> str:
    """Where calls to ``model`` go, as the circuit breaker keys and names it: the provider and its base URL."""
    provider_name, base = model.split("/", 1)[0], api_base
    try:
        _, provider_name, _, dynamic = get_litellm().get_llm_provider(model, api_base=api_base)
        base = base or dynamic
    except Exception:
        pass
    base = base or os.environ.get(f"{provider_name.upper()}_API_BASE") or (
        os.environ.get("OPENAI_BASE_URL") if provider_name == "openai" else None)
    return f"{provider_name} at {base}" if base else f"{provider_name} (its default endpoint)"


# ------------------------------------------------------------------------------------------------ one call


def call(litellm: Any, completion: Callable[..., Any], request: Request, kwargs: dict[str, Any], *,
         quiet: bool) -> Reply:
    """One attempt through ``completion`` (litellm.completion, a Router's): the reply, its usage and price, and the
    time to its first token when streamed. ``quiet``: skip litellm's success logging when nobody listens."""
    start = time.perf_counter()
    ttft = None
    with warnings.catch_warnings():
        # litellm's response types trip a pydantic UserWarning on first use; not the user's concern.
        warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
        if not request.stream:
            with _quiet_logging(litellm, quiet):
                response = completion(model=request.model, messages=request.messages, **kwargs, **request.params)
        else:
            chunks = []
            for chunk in completion(model=request.model, messages=request.messages, stream=True,
                                    stream_options={"include_usage": True}, **kwargs, **request.params):
                chunks.append(chunk)
                if ttft is None and chunk.choices and getattr(chunk.choices[0].delta, "content", None):
                    ttft = time.perf_counter() - start
            response = litellm.stream_chunk_builder(chunks, messages=request.messages)
    text = _answer_text(response)
    usage = getattr(response, "usage", None)
    return Reply(text=text, prompt_tokens=getattr(usage, "prompt_tokens", None),
                 completion_tokens=getattr(usage, "completion_tokens", None),
                 cost_usd=_response_cost(litellm, response), ttft_s=ttft,
                 tool_calls=_tool_calls(response) if "tools" in request.params else None)


def _tool_calls(response: Any) -> list[dict[str, Any]]:
    """The first choice's tool calls as plain OpenAI-shaped dicts (JSON data: cached, sent across workers)."""
    message = response.choices[0].message
    calls = []
    for tc in getattr(message, "tool_calls", None) or []:
        function = getattr(tc, "function", None)
        arguments = getattr(function, "arguments", None)
        calls.append({"id": getattr(tc, "id", None), "type": "function",
                      "function": {"name": getattr(function, "name", None),
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return calls


def _answer_text(response: Any) -> str:
    """The first choice's text; MalformedResponse when the provider's reply has no choice or message."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponse(f"malformed response: no choices in the provider's reply ({_shorten(response)})")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise MalformedResponse(f"malformed response: the first choice has no message ({_shorten(choices[0])})")
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""


def _shorten(obj: Any, limit: int = 200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


_LOGGING_HOOKS = ("callbacks", "success_callback", "failure_callback", "input_callback", "service_callback",
                  "_async_success_callback", "_async_failure_callback", "_async_input_callback")


@contextlib.contextmanager
def _quiet_logging(litellm: Any, quiet: bool) -> Iterator[None]:
    """Skip litellm's per-call success logging (a job handed to its logging thread pool after every call: ~0.5 ms
    of CPU per call, which caps how many calls one process can keep in flight) when nobody listens to it. With
    callbacks configured (Langfuse, OpenTelemetry...), or through the Router, calls are logged as usual. The logger
    that measures an application target's own calls (targets/usage.py, marked ``llmeval_app_usage``) does not count:
    it records nothing of the plugin's own calls anyway."""
    if not quiet or any(not getattr(callback, "llmeval_app_usage", False)
                        for name in _LOGGING_HOOKS for callback in (getattr(litellm, name, None) or ())):
        yield
        return
    try:
        from litellm._internal_context import internal_sub_call
    except ImportError:  # another litellm version: log as usual
        yield
        return
    with internal_sub_call():
        yield


def _response_cost(litellm: Any, response: Any) -> float | None:
    """The price litellm already computed for the response; computed only if litellm did not (a response rebuilt
    from a stream). None when the model has no known price (unknown, not zero): litellm's None is kept, not asked
    again (for an unpriced model, a self-hosted one say, the lookup costs ~0.6 ms of CPU per call)."""
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    if cost is not None:
        return float(cost)
    if isinstance(hidden, dict) and "response_cost" in hidden:
        return None
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------- --llm-router


def router_models(path: Path) -> set[str]:
    """The model names the --llm-router configuration ``path`` serves."""
    return {str(d.get("model_name")) for d in _read_router_config(path).get("model_list", [])}


def router_provider(path: Path, before: Callable[[], None] = lambda: None) -> Provider:
    """The provider of the models a --llm-router configuration names: litellm's Router, built on first call
    (after ``before()``, which makes the run's other providers known to litellm, so the configuration can name
    ``local/`` models). No circuit breaker: the Router has its own cooldowns; its retries are the runner's."""
    lock = threading.Lock()
    router: list[Any] = []

    def get_router() -> Any:
        with lock:
            if not router:
                litellm = get_litellm()
                before()
                # Retries are ours (with Retry-After and jitter); the Router only balances.
                router.append(litellm.Router(**{**_read_router_config(path), "num_retries": 0}))
        return router[0]

    def complete(request: Request) -> Reply:
        return call(get_litellm(), get_router().completion, request, {"timeout": request.timeout}, quiet=False)

    return Provider(prefix="", complete=complete, doc=f"the models --llm-router {path} lists", load=_load)


def _read_router_config(path: Path) -> dict[str, Any]:
    """The litellm Router keyword arguments in a YAML/JSON file (``model_list`` and Router settings);
    ``os.environ/NAME`` values are resolved by litellm itself, so keys stay out of the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--llm-router {path}: cannot read it: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("router_settings"), dict):
        data = {**data["router_settings"], "model_list": data.get("model_list", [])}
    if not isinstance(data, dict) or not isinstance(data.get("model_list"), list):
        raise ValueError(f"--llm-router {path}: expected a mapping with a model_list")
    return data


# ------------------------------------------------------------------------------- our providers, inside litellm


def provider_class(name: str, doc: str, complete: Callable[[str, list[Any], Any, dict[str, Any]], Any]
                   ) -> type[CustomLLM]:
    """A litellm CustomLLM subclass named ``name`` whose completion is ``complete(model, messages,
    model_response, optional_params)`` (litellm has already stripped the provider prefix from ``model``);
    the async variant runs it in a worker thread (generation is CPU/GPU-bound torch code). Built on first
    use, since subclassing CustomLLM means importing litellm (seconds)."""
    import asyncio  # here, not at the top: ~30 ms of every process's start-up, xdist workers included

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
    litellm = get_litellm()
    current = getattr(litellm, "custom_provider_map", None)
    if not isinstance(current, list):
        current = list(current or [])
        litellm.custom_provider_map = current
    if not any(isinstance(entry, dict) and entry.get("provider") == provider for entry in current):
        current.append({"provider": provider, "custom_handler": handler_class()()})
    setup = getattr(getattr(litellm, "utils", None), "custom_llm_setup", None)
    if callable(setup):
        setup()


def fill_response(model_response: ModelResponse, provider: str, model: str, text: str, finish_reason: str,
                  prompt_tokens: int, completion_tokens: int) -> ModelResponse:
    """Put one answer of our custom provider into litellm's ``model_response`` (its one choice, the model name
    with the provider prefix, the usage)."""
    litellm = get_litellm()
    choice = model_response.choices[0]
    choice.message.content = text  # type: ignore[union-attr]
    choice.finish_reason = finish_reason  # type: ignore[assignment]
    model_response.model = f"{provider}/{model}"
    model_response.usage = litellm.Usage(  # type: ignore[attr-defined]
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
    return model_response


def bad_request(provider: str, model: str, message: str) -> Exception:
    """A litellm BadRequestError about ``<provider>/<model>``: not retried, and classified by callers as a
    configuration error."""
    return get_litellm().exceptions.BadRequestError(message=message, model=f"{provider}/{model}",
                                                    llm_provider=provider)


def custom_complete(request: Request) -> Reply:
    """Answer ``request`` through litellm with one of our custom providers (registered by the caller): no API
    base, no streaming, no price (an offline model costs nothing)."""
    litellm = get_litellm()
    reply = call(litellm, litellm.completion, request, {"timeout": request.timeout, "num_retries": 0,
                                                         "max_retries": 0}, quiet=True)
    return Reply(reply.text, reply.prompt_tokens, reply.completion_tokens, 0.0, reply.ttft_s)
