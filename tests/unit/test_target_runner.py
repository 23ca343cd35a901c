"""The target runner and the Python target kinds, without a pytest session: identities, the cache rule, errors,
secrets, async callables and the per-target limit."""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cache.exact import ResponseCache
from pytest_llmeval.cases.targets import parse_target
from pytest_llmeval.core.answer import Answer, Reference, TargetError, TargetRequest, to_answer
from pytest_llmeval.core.targets import TargetEnv, TargetSpec
from pytest_llmeval.targets.builtin import builtin_targets
from pytest_llmeval.targets.python import load_callable
from pytest_llmeval.targets.runner import TargetRunner, app_traceback, identity_of

APP = '''\
import contextvars, threading, time
CALLS = []
LIVE = {"now": 0, "max": 0}
LOCK = threading.Lock()
VAR = contextvars.ContextVar("who", default="nobody")


def answer(request):
    CALLS.append(request.case_id)
    with LOCK:
        LIVE["now"] += 1
        LIVE["max"] = max(LIVE["max"], LIVE["now"])
    time.sleep(0.02)
    with LOCK:
        LIVE["now"] -= 1
    if request.case_id == "bad":
        raise KeyError("token sk-secret-value-123456 missing")
    return f"answer to {request.prompt}"


class Bot:
    def reply(self, request):
        return "method"


BOT = Bot()


async def aanswer(request):
    return f"async {VAR.get()}"
'''


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Path]:
    """A fresh ``myapp`` module in this test's folder (never one an earlier test imported from another folder)."""
    (tmp_path / "myapp.py").write_text(APP)
    sys.modules.pop("myapp", None)
    yield tmp_path
    sys.modules.pop("myapp", None)
    while str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def _module(app: Path) -> Any:
    """The app's module, imported the way the python target imports it."""
    return sys.modules[load_callable("myapp:answer", [app]).__module__]


def _spec(app: Path, target: Any) -> TargetSpec:
    spec, problems = parse_target(target, ("target",), builtin_targets(), lambda loc: 3, app / "cases" / "s.yaml")
    assert not problems, problems
    assert spec is not None
    return spec


def _env(app: Path) -> TargetEnv:
    return TargetEnv(rootdir=app, suite_dir=app / "cases", state_dir=app / ".llmeval")


def _request(case_id: str = "c1", prompt: str = "hi", sample: int = 0) -> TargetRequest:
    return TargetRequest(prompt=prompt, messages=[{"role": "user", "content": prompt}], case={"question": prompt},
                         case_id=case_id, suite="s", model="openai/m", sample=sample)


def test_load_callable_forms(app: Path) -> None:
    assert load_callable("myapp:answer", [app]).__name__ == "answer"
    assert load_callable("myapp:BOT.reply", [app])(None) == "method"
    assert load_callable("myapp.py:answer", [app]).__name__ == "answer"
    with pytest.raises(AttributeError, match="myapp has no attribute 'nothing'"):
        load_callable("myapp:nothing", [app])
    with pytest.raises(ValueError, match="expected module:function"):
        load_callable("myapp", [app])


def test_parse_target_forms_and_errors(app: Path) -> None:
    registry = builtin_targets()

    def parse(value: Any) -> tuple[Any, list[Any]]:
        return parse_target(value, ("target",), registry, lambda loc: 7, app / "s.yaml")

    spec, _ = parse("python:myapp:answer")
    assert spec is not None and spec.kind == "python" and spec.name == "python:myapp:answer" and spec.line == 7
    spec, _ = parse({"python": "myapp:answer", "version": 2, "hash": "myapp.py", "concurrency": 1, "name": "bot"})
    assert spec is not None and (spec.version, spec.hash, spec.concurrency, spec.name) == ("2", ("myapp.py",), 1, "bot")
    spec, _ = parse("model")
    assert spec is not None and spec.is_model
    assert parse({"python": "a:b", "fixture": "x"})[1][0][1].startswith("a target names one kind")
    assert "did you mean 'fixture'" in parse({"fixtre": "x"})[1][0][1]
    assert parse({"python": "a:b", "concurrency": 0})[1][0][0] == ("target", "concurrency")
    assert parse({"python": {"callable": "a:b", "extra": 1}})[1][0] == (("target", "python", "extra"), "unknown field")


def test_identity_is_none_without_version_or_hash_and_follows_file_contents(app: Path) -> None:
    assert identity_of(_spec(app, {"python": "myapp:answer"}), [app]) is None
    hashed = _spec(app, {"python": "myapp:answer", "hash": ["myapp.py"]})
    first = identity_of(hashed, [app])
    assert first is not None and first == identity_of(hashed, [app])
    (app / "myapp.py").write_text(APP + "\n# changed\n")
    assert identity_of(hashed, [app]) != first
    assert identity_of(_spec(app, {"python": "myapp:answer", "hash": ["pytest_llmeval"]}), [app])  # a package
    with pytest.raises(ValueError, match="'nope' is neither a file or folder"):
        identity_of(_spec(app, {"python": "myapp:answer", "hash": ["nope"]}), [app])
    v1 = identity_of(_spec(app, {"python": "myapp:answer", "version": "1"}), [app])
    assert v1 != identity_of(_spec(app, {"python": "myapp:answer", "version": "2"}), [app])


def test_cached_only_under_an_identity(app: Path, tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    try:
        runner = TargetRunner(cache, "on")
        plain = _spec(app, {"python": "myapp:answer"})
        module = _module(app)
        module.CALLS.clear()
        first = runner.call(plain, _env(app), _request())
        again = runner.call(plain, _env(app), _request())
        assert not first.cached and not again.cached and module.CALLS == ["c1", "c1"]
        versioned = _spec(app, {"python": "myapp:answer", "version": "1"})
        runner.call(versioned, _env(app), _request())
        hit = runner.call(versioned, _env(app), _request())
        assert hit.cached and hit.text == "answer to hi" and module.CALLS == ["c1", "c1", "c1"]
        other_draw = runner.call(versioned, _env(app), _request(sample=1))
        assert not other_draw.cached, "another draw is another cache slot"
        replay = TargetRunner(cache, "replay")
        assert replay.call(versioned, _env(app), _request()).cached
        with pytest.raises(TargetError, match="declares no version or hash"):
            replay.call(plain, _env(app), _request())
        runner.close()
    finally:
        cache.close()


def test_app_errors_carry_its_traceback_and_no_secret(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYAPP_API_KEY", "sk-secret-value-123456")
    runner = TargetRunner(None, "off")
    with pytest.raises(TargetError) as info:
        runner.call(_spec(app, {"python": "myapp:answer"}), _env(app), _request("bad"))
    assert info.value.message.startswith("target python:myapp:answer raised KeyError")
    assert "sk-secret" not in info.value.message and "***" in info.value.message
    assert info.value.details is not None and 'myapp.py", line' in info.value.details
    assert "pytest_llmeval" not in info.value.details, "the plugin's own frames are left out"


def test_to_answer_accepts_str_and_answer_only() -> None:
    assert to_answer("x", "t").text == "x"
    answer = Answer("y", references=["a.md", {"url": "b.md", "content": "B", "score": 1}])
    assert answer.references == [Reference("a.md"), Reference("b.md", "B", 1.0)]
    with pytest.raises(TargetError, match="target t returned a dict, not a str"):
        to_answer({"text": "x"}, "t")
    with pytest.raises(ValueError, match="needs a source"):
        Answer("z", references=[{"text": "no source"}])


def test_async_callables_run_on_one_loop_with_the_callers_context(app: Path) -> None:
    runner = TargetRunner(None, "off")
    spec = _spec(app, {"python": "myapp:aanswer"})
    module = _module(app)
    results: dict[str, str] = {}

    def one(name: str) -> None:
        module.VAR.set(name)
        results[name] = runner.call(spec, _env(app), _request(name)).text

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, f"t{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {f"t{i}": f"async t{i}" for i in range(4)}
    runner.close()


def test_a_concurrency_limit_bounds_calls_in_flight(app: Path) -> None:
    module = _module(app)
    for limit, expected_max in ((1, 1), (None, 2)):
        module.LIVE["max"] = 0
        runner = TargetRunner(None, "off")
        target: dict[str, Any] = {"python": "myapp:answer"}
        if limit:
            target["concurrency"] = limit
        spec = _spec(app, target)
        threads = [threading.Thread(target=runner.call, args=(spec, _env(app), _request(f"c{i}"))) for i in range(6)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - start < 30
        assert (module.LIVE["max"] == 1) if limit else (module.LIVE["max"] >= expected_max)


def test_app_traceback_draws_no_carets() -> None:
    def inner() -> None:
        raise ValueError("boom")

    try:
        inner()
    except ValueError as exc:
        text = app_traceback(exc)
    assert "^" not in text and 'raise ValueError("boom")' in text and text.endswith("ValueError: boom")


def test_two_suites_naming_one_callable_keep_their_own_identity(app: Path, tmp_path: Path) -> None:
    """Planned calls find their own spec: an unversioned suite never borrows a versioned one's cache identity."""
    cache = ResponseCache(tmp_path / "cache")
    try:
        runner = TargetRunner(cache, "on")
        versioned = _spec(app, {"python": "myapp:answer", "version": "1", "name": "bot-v1"})
        plain = _spec(app, {"python": "myapp:answer"})
        keys = [runner.remember(versioned, _env(app)), runner.remember(plain, _env(app))]
        assert keys[0] != keys[1]
        module = _module(app)
        module.CALLS.clear()
        for _ in range(2):
            for key in keys:
                runner.planned(key, _request().to_dict())
        assert module.CALLS == ["c1", "c1", "c1"], "versioned: asked once, then cached; plain: asked both times"
        assert runner.planned(keys[1], _request().to_dict()).target == "python:myapp:answer"
        assert runner.planned(keys[0], _request().to_dict()).target == "bot-v1"
    finally:
        cache.close()
