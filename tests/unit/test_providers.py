"""Model providers: the registry, what a provider's answer becomes, the built-ins registered through the hook, and
the runner asking the provider (not the model name's prefix) what to do."""

from __future__ import annotations

from pathlib import Path

import pluggy
import pytest

from pytest_llmeval import Provider, Reply, Request, hookspecs
from pytest_llmeval.config.settings import Settings
from pytest_llmeval.providers import builtin
from pytest_llmeval.providers.base import MalformedResponse, ProviderRegistry
from pytest_llmeval.providers.builtin import builtin_providers
from pytest_llmeval.providers.runner import ModelCallError, ModelRunner


def echo(request: Request) -> str:
    return request.prompt


def test_the_longest_matching_prefix_wins_and_a_later_registration_replaces() -> None:
    registry = ProviderRegistry()
    catch_all, local, vision = Provider("", echo), Provider("local/", echo), Provider("local-vision/", echo)
    for provider in (catch_all, local, vision):
        registry.register(provider)
    assert registry.find("openai/gpt-4o-mini") is catch_all
    assert registry.find("local/smollm2") is local
    assert registry.find("local-vision/dir") is vision
    replacement = Provider("local/", echo, doc="mine")
    registry.register(replacement)
    assert registry.find("local/smollm2") is replacement and len(registry) == 3
    assert [p.prefix for p in registry] == ["", "local-vision/", "local/"]


def test_without_a_catch_all_an_unknown_name_is_a_lookup_error() -> None:
    registry = ProviderRegistry()
    registry.register(Provider("echo/", echo, doc="answers with the prompt"))
    with pytest.raises(LookupError, match=r"no model provider serves 'openai/x'; registered: echo/ \(answers with"):
        registry.find("openai/x")
    with pytest.raises(TypeError, match="takes a pytest_llmeval.Provider"):
        registry.register(echo)  # type: ignore[arg-type]


def test_an_answer_becomes_a_reply() -> None:
    request = Request("echo/a", [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                              {"type": "image_url", "image_url": {"url": "x"}},
                                                              {"type": "text", "text": "there"}]}])
    assert request.prompt == "Hello\nthere"
    assert Provider("echo/", echo).answer(request) == Reply("Hello\nthere")  # a str; unknown price
    assert Provider("echo/", echo, offline=True).answer(request).cost_usd == 0.0  # offline: free
    priced = Provider("echo/", lambda r: Reply("x", cost_usd=0.25), offline=True)
    assert priced.answer(request).cost_usd == 0.25
    with pytest.raises(MalformedResponse, match="the echo/ provider returned a dict, not a Reply or a str"):
        Provider("echo/", lambda r: {"text": "x"}).answer(request)  # type: ignore[arg-type,return-value]


def test_the_builtin_providers() -> None:
    registry = builtin_providers()
    assert [(p.prefix, p.offline, p.vision) for p in registry] == [
        ("", False, True), ("local-vision/", True, True), ("local/", True, False)]
    assert registry.find("groq/llama3-70b-8192").prefix == ""
    assert all(p.doc and p.complete and p.check and p.load for p in registry)
    assert registry.find("").endpoint is not None  # litellm's endpoints have a circuit breaker, offline ones none
    assert registry.find("local/smollm2").endpoint is None


def test_the_builtins_register_through_the_hook_and_a_later_plugin_overrides_them() -> None:
    pm = pluggy.PluginManager("pytest")
    pm.add_hookspecs(hookspecs)
    mine = Provider("local/", echo, doc="a conftest's")

    class Conftest:
        @pytest.hookimpl
        def pytest_llmeval_register_providers(self, register):  # type: ignore[no-untyped-def]
            register(mine)

    pm.register(Conftest(), "conftest")  # before the built-ins: they are called first all the same (tryfirst)
    pm.register(builtin, "llmeval-builtin-providers")
    registry = ProviderRegistry()
    pm.hook.pytest_llmeval_register_providers(register=registry.register)
    assert registry.find("local/smollm2") is mine
    assert [p.prefix for p in registry] == ["", "local-vision/", "local/"]


def runner(tmp_path: Path, *providers: Provider, **settings: object) -> ModelRunner:
    registry = ProviderRegistry()
    for provider in providers:
        registry.register(provider)
    config = Settings(cache_dir=tmp_path / "cache", results_path=tmp_path / "results.json", **settings)  # type: ignore[arg-type]
    return ModelRunner(config, providers=registry)


def test_the_runner_calls_the_provider_behind_the_cache(tmp_path: Path) -> None:
    calls: list[Request] = []

    def complete(request: Request) -> Reply:
        calls.append(request)
        return Reply(request.prompt.upper(), prompt_tokens=3, completion_tokens=3)

    models = runner(tmp_path, Provider("echo/", complete, offline=True), api_base="http://proxy", stream=True,
                    aliases={"parrot": "echo/parrot"})
    messages = [{"role": "user", "content": "hello"}]
    first = models.complete("parrot", messages, {"temperature": 0})
    assert (first.text, first.model, first.resolved_model, first.cost_usd, first.cached) == (
        "HELLO", "parrot", "echo/parrot", 0.0, False)
    # Offline: neither the API base nor streaming is asked of it.
    assert calls == [Request("echo/parrot", messages, {"temperature": 0}, 120.0, api_base=None, stream=False)]
    second = models.complete("parrot", messages, {"temperature": 0})
    assert second.cached and second.text == "HELLO" and len(calls) == 1
    assert models.is_offline("parrot") and not models.is_offline("nobody/x")
    models.close()


def test_the_runner_asks_the_provider_whether_a_model_is_usable(tmp_path: Path) -> None:
    def check(model: str, shown: str) -> str | None:
        return f"--llm={shown}: SVC_KEY is not set"

    remote = Provider("svc/", echo, check=check)
    models = runner(tmp_path, remote, aliases={"small": "svc/small"})
    assert models.check_model("small") == "--llm=small (= svc/small): SVC_KEY is not set"
    assert models.check_model("other/x") == "--llm=other/x: no model provider serves 'other/x'; registered: svc/"
    with pytest.raises(ModelCallError, match="SVC_KEY is not set"):
        models.complete("small", [{"role": "user", "content": "hi"}])
    models.close()
    # Replay never calls a provider that is not offline: no key needed; an offline one is still checked.
    replaying = runner(tmp_path, remote, Provider("mine/", echo, offline=True, check=check), cache_mode="replay")
    assert replaying.check_model("svc/small") is None
    assert replaying.check_model("mine/x") == "--llm=mine/x: SVC_KEY is not set"
    replaying.close()


def test_a_failed_load_is_a_model_call_error(tmp_path: Path) -> None:
    def load(model: str) -> None:
        raise FileNotFoundError(f"{model}: no weights")

    models = runner(tmp_path, Provider("w/", echo, offline=True, load=load))
    with pytest.raises(ModelCallError, match="FileNotFoundError: w/x: no weights"):
        models.complete("w/x", [{"role": "user", "content": "hi"}])
    models.close()


def test_the_call_server_closes_with_workers_still_connected(tmp_path: Path) -> None:
    """The xdist controller's call server closes while workers' connections are open and their serving threads
    blocked reading: each connection is shut down and closed once, by its own thread (closing it from close() too
    raced that thread: "Bad file descriptor" at the end of a run), and a client then finds the server gone."""
    import threading
    import time

    from pytest_llmeval.providers.callserver import CallClient, CallServer

    runner = ModelRunner(Settings(cache_mode="off", cache_dir=tmp_path / "cache"), providers=ProviderRegistry())
    for _ in range(20):
        server = CallServer(runner)
        clients = [CallClient(server.address) for _ in range(8)]
        for client in clients:  # a connection per client, each served by a thread of the server
            assert "unknown call server request" in str(_raises(lambda c=client: c.request("ping")))
        serving = [t for t in threading.enumerate() if t.name == "llmeval-calls-conn"]
        assert len(serving) >= 8
        server.close()  # raised OSError(EBADF) now and then before
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in serving) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(t.is_alive() for t in serving)
        with server._lock:
            assert server._connections == []
        error = _raises(lambda c=clients[0]: c.request("check_model", model="openai/x"))
        assert isinstance(error, ModelCallError) and "cannot be reached" in str(error)


def _raises(call: object) -> BaseException:
    try:
        call()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - returned for the test to look at
        return exc
    raise AssertionError("no exception")
