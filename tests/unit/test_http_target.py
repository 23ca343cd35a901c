"""The ``http`` target against real services: tests/helpers/apps/echo_app.py in a thread of this process, or
started by the target itself (``serve:``) as a real process group."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers.apps import echo_app

from pytest_llmeval.core.answer import Reference, TargetError, TargetRequest, Usage
from pytest_llmeval.core.targets import TargetEnv
from pytest_llmeval.targets.http import KIND, HttpParams, HttpTarget, build, check, resolve_path
from pytest_llmeval.targets.serve import free_port

APP = Path(echo_app.__file__)
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and /proc")


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The echo app in a thread of this process: its base URL."""
    server, url = echo_app.serve_in_thread()
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def env(tmp_path: Path) -> TargetEnv:
    return TargetEnv(rootdir=tmp_path, suite_dir=tmp_path, state_dir=tmp_path / ".llmeval", worker="main")


@pytest.fixture
def make(env: TargetEnv) -> Iterator[Any]:
    """make(**params) -> a built HttpTarget, closed after the test."""
    made: list[HttpTarget] = []

    def factory(**params: Any) -> HttpTarget:
        target = build(HttpParams.model_validate(params), env)
        made.append(target)
        return target

    yield factory
    for target in made:
        target.close()


def serve(mode: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"command": f"python {APP} {{port}} {mode}", "ready": "/health", **extra}


def req(question: str = "What is X?", **case: Any) -> TargetRequest:
    return TargetRequest(prompt=f"Q: {question}", messages=[{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": f"Q: {question}"}],
                         case={"question": question, **case}, case_id="c1", suite="bot", model="openai/m",
                         params={"temperature": 0.2}, system="Be brief.")


def running(pid: int) -> bool:
    """Whether the process runs (a zombie left to a non-reaping init is gone for this purpose)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def alive(pid: int) -> bool:
    """Whether the process still runs once a signal sent to it has had time to land (a SIGKILL to a process that
    is not our child is delivered asynchronously; we cannot wait() for it)."""
    for _ in range(100):
        if not running(pid):
            return False
        time.sleep(0.02)
    return True


# -- requests and replies ---------------------------------------------------------------------------------------------

def test_json_template_keeps_a_single_placeholders_type_and_formats_the_rest(make: Any, base: str) -> None:
    target = make(url=f"{base}/ask", answer="data.answer", metadata="received",
                  json={"q": "{question}", "history": "{messages}", "n": "{turn}", "text": "turn {turn} of {case_id}",
                        "literal": "{{x}}", "temp": "{params.temperature}", "first": "{messages[0][content]}",
                        "nested": ["{model}", {"s": "{suite}", "tags": "{tags}"}], "k": 3, "none": None})
    answer = target.answer(req(tags=["a", "b"]))
    assert answer.text == "echo: What is X?"
    assert answer.metadata == {
        "q": "What is X?", "history": req().messages, "n": 0, "text": "turn 0 of c1", "literal": "{x}", "temp": 0.2,
        "first": "Be brief.", "nested": ["openai/m", {"s": "bot", "tags": ["a", "b"]}], "k": 3, "none": None}


def test_default_body_and_every_path(make: Any, base: str) -> None:
    target = make(url=f"{base}/ask", answer="$.data.answer", references="data.refs", context="$.data.ctx",
                  usage="data['usage']", metadata="meta")
    answer = target.answer(req())
    assert answer.text == "echo: Q: What is X?"  # the default body is {"prompt": "{prompt}"}
    assert answer.references == [Reference("docs/a.md", "Alpha passage.", 0.9), Reference("docs/b.md")]
    assert answer.context == "Alpha passage.\n\nBeta passage."
    assert answer.usage == Usage(calls=1, prompt_tokens=12, completion_tokens=5, cost_usd=0.001)
    assert answer.metadata["path"] == "/ask"
    # null at a declared path is "none"
    assert make(url=f"{base}/ask", answer="data.answer", references="data.none").answer(req()).references == []


def test_get_with_query_and_url_placeholders(make: Any, base: str) -> None:
    target = make(url=f"{base}/ask?case={{case_id}}&sep={{suite}}", method="get", answer="data.answer",
                  query={"q": "{question}", "tags": "{tags}", "turn": "{turn}"}, metadata="received")
    answer = target.answer(req("a b/c?&", tags=["x", "y"]))
    assert answer.text == "echo: a b/c?&"
    assert answer.metadata == {"case": "c1", "sep": "bot", "q": "a b/c?&", "tags": ["x", "y"], "turn": "0"}


def test_headers_read_environment_variables(make: Any, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target = make(url=f"{base}/ask", answer="data.answer", metadata="$",
                  headers={"Authorization": "Bearer ${ECHO_TOKEN}", "X-Plain": "yes"})
    monkeypatch.setenv("ECHO_TOKEN", "s3cret")
    assert target.answer(req()).metadata["auth"] == "Bearer s3cret"
    monkeypatch.delenv("ECHO_TOKEN")
    with pytest.raises(TargetError, match=r"header 'Authorization' needs the environment variable ECHO_TOKEN"):
        target.answer(req())


def test_unknown_placeholder_names_it_and_the_known_ones(make: Any, base: str) -> None:
    target = make(url=f"{base}/ask", json={"q": "{qestion}"})
    with pytest.raises(TargetError) as info:
        target.answer(req())
    assert "unknown placeholder {qestion} in json.q" in info.value.message
    assert "case_id, messages, model" in info.value.message and "question" in info.value.message


def test_a_reply_without_the_answer_path(make: Any, base: str) -> None:
    with pytest.raises(TargetError) as info:
        make(url=f"{base}/ask", answer="data.answr").answer(req())
    message = info.value.message
    assert message.startswith(f"http:{base}/ask: the reply has no 'data.answr' (its 'data' has keys: answer, refs")
    assert '{"data": {"answer": "echo: Q: What is X?", "refs": [' in message  # a body excerpt
    with pytest.raises(TargetError, match=r"the reply has no 'answer' \(it has keys: data, meta, received, auth"):
        make(url=f"{base}/ask").answer(req())
    with pytest.raises(TargetError, match=r"the reply's 'data.refs' is a list, not a string"):
        make(url=f"{base}/ask", answer="data.refs").answer(req())
    with pytest.raises(TargetError, match=r"cannot read the reply: a list, got a dict"):
        make(url=f"{base}/ask", answer="data.answer", references="data.usage").answer(req())


def test_http_error_status(make: Any, base: str) -> None:
    with pytest.raises(TargetError) as info:
        make(url=f"{base}/error").answer(req())
    assert info.value.message.startswith(f"http:{base}/error: HTTP 500 Internal Server Error from POST {base}/error: "
                                         f"boom: the database is down")
    assert info.value.details is not None and "Traceback" in info.value.details


def test_a_reply_that_is_not_json(make: Any, base: str) -> None:
    with pytest.raises(TargetError, match=r"is not JSON \(HTTP 200, text/html\): <html><body>Welcome to nginx!"):
        make(url=f"{base}/html").answer(req())


def test_connection_refused_and_timeout(make: Any, base: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/ask"
    with pytest.raises(TargetError, match=rf"^http:{url}: cannot connect to {url}"):
        make(url=url).answer(req())
    with pytest.raises(TargetError, match=r"no reply from POST .*/slow\?s=3 within 0.3 s \(timeout_s\)"):
        make(url=f"{base}/slow?s=3", timeout_s=0.3).answer(req())


def test_paths() -> None:
    data = {"choices": [{"message": {"content": "hi"}}], "a.b": 1}
    for path in ("choices.0.message.content", "$.choices[0].message.content", "$['choices'][0].message.content"):
        assert resolve_path(data, path) == "hi"
    assert resolve_path(data, "$") is data
    with pytest.raises(KeyError, match="its 'choices' is a list of 1"):
        resolve_path(data, "choices.1.message")


def test_the_kind_validates_and_checks(env: TargetEnv) -> None:
    params = KIND.params.model_validate({"url": "http://h/ask", "json": {"q": "{question}"}, "method": "post"})
    assert isinstance(params, HttpParams) and params.body == {"q": "{question}"} and params.method == "POST"
    assert KIND.shorthand == "url" and KIND.shown(params) == "http://h/ask".join(["http:", ""])
    assert check(params, env) == []
    ok = HttpParams.model_validate({"url": "http://127.0.0.1:{port}/ask", "serve": {"command": "python app.py {port}"}})
    assert check(ok, env) == []

    def problems(**params: Any) -> dict[str, str]:
        return dict(check(HttpParams.model_validate(params), env))

    assert "{port} is only known when the plugin starts the service" in problems(url="http://127.0.0.1:{port}/a")["url"]
    assert "is not a folder" in problems(url="http://127.0.0.1:{port}/a",
                                         serve={"command": "python a.py {port}", "cwd": "nope"})["serve.cwd"]
    assert "does not use it" in problems(url="http://127.0.0.1:8000/a", serve={"command": "app --port {port}"})["url"]
    assert "malformed template" in problems(url="http://h/a", json={"q": "{question"})["json"]
    assert "malformed path" in problems(url="http://h/a", answer="data..answer")["answer"]
    assert "has no body" in problems(url="http://h/a?q={question}", method="GET", json={"q": 1})["json"]
    assert "the same request for every case" in problems(url="http://h/a", method="GET")["query"]
    with pytest.raises(ValueError, match="method must be GET or POST"):
        HttpParams.model_validate({"url": "http://h/a", "method": "PUT"})


# -- serve --------------------------------------------------------------------------------------------------------------

def test_serve_starts_the_service_once_and_close_stops_it(make: Any, env: TargetEnv, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    target = make(url="http://127.0.0.1:{port}/ask", json={"q": "{question}"}, answer="data.answer", metadata="meta",
                  serve=serve(env={"ECHO_PREFIX": "[{port}] "}, cwd="app"))
    answer = target.answer(req())
    port = target.url.split(":")[2].split("/")[0]
    assert answer.text == f"[{port}] echo: What is X?"
    assert target.answer(req("again")).metadata["pid"] == answer.metadata["pid"]
    assert target.log_path is not None and target.log_path.parent == env.state_dir / "serve"
    assert target.log_path.name.endswith("-main.log")
    log = target.log_path.read_text()
    assert "echo_app ready" in log and f"(cwd {tmp_path / 'app'}, port {port})" in log
    target.close()
    assert not alive(answer.metadata["pid"])
    target.close()  # twice is fine
    with pytest.raises(TargetError, match="closed"):
        target.answer(req())


@pytest.mark.parametrize("mode", ["ignore-term", "child"])
def test_close_leaves_no_process_behind(make: Any, mode: str) -> None:
    """A service that ignores SIGTERM is killed after stop_timeout_s; what it started goes with its group."""
    target = make(url="http://127.0.0.1:{port}/pid", method="GET", answer="pid", metadata="$",
                  serve=serve(mode, stop_timeout_s=0.5))
    pids = target.answer(req()).metadata
    assert running(pids["pid"]) and (mode != "child" or running(pids["child"]))
    target.close()
    assert not alive(pids["pid"])
    if mode == "child":
        assert not alive(pids["child"])


def test_a_service_that_exits_shows_its_log_and_is_not_restarted(make: Any, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    target = make(url="http://127.0.0.1:{port}/ask", serve=serve("exit", env={"ECHO_STARTS": str(starts)}))
    with pytest.raises(TargetError) as info:
        target.answer(req())
    message = info.value.message
    assert message.startswith("the service of http:http://127.0.0.1:{port}/ask did not become ready in 30 s (it "
                              "exited with status 3 after")
    assert f"its log ({target.log_path}):\n$ {sys.executable} {APP}" in message
    assert "fatal: missing setting ECHO_DATABASE_URL" in message
    with pytest.raises(TargetError) as again:
        target.answer(req())
    assert again.value.message == message
    assert len(starts.read_text().splitlines()) == 1


def test_a_service_that_never_becomes_ready_is_stopped(make: Any, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    target = make(url="http://127.0.0.1:{port}/ask",
                  serve=serve("never-ready", timeout_s=1, env={"ECHO_STARTS": str(starts)}))
    with pytest.raises(TargetError, match=r"did not become ready in 1 s \(still running; GET http://127.0.0.1:\d+/health "
                                          r"last gave HTTP 503; stopped it\); its log .*\n(.|\n)*GET /health"):
        target.start()
    assert not alive(int(starts.read_text()))


def test_a_command_that_cannot_start(make: Any) -> None:
    target = make(url="http://127.0.0.1:{port}/ask", serve={"command": "no-such-program-llmeval {port}"})
    with pytest.raises(TargetError, match=r"cannot start the service of http:.*: no-such-program-llmeval \d+ "):
        target.answer(req())


def test_a_service_that_dies_later_is_named_in_the_calls_error(make: Any) -> None:
    target = make(url="http://127.0.0.1:{port}/ask", answer="data.answer", metadata="meta", serve=serve())
    pid = target.answer(req()).metadata["pid"]
    os.kill(pid, signal.SIGKILL)
    assert target.service is not None and target.service.process is not None
    target.service.process.wait(5)
    with pytest.raises(TargetError, match=r"cannot connect to .*; its service exited with status -9; its log"):
        target.answer(req())


def test_eight_threads_share_one_service(make: Any, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    target = make(url="http://127.0.0.1:{port}/ask", json={"q": "{question}"}, answer="data.answer", metadata="meta",
                  serve=serve(env={"ECHO_STARTS": str(starts)}))
    questions = [f"question {i}" for i in range(64)]
    with ThreadPoolExecutor(8) as pool:  # the first eight calls race to start the service
        answers = list(pool.map(lambda q: target.answer(req(q)), questions))
    assert [a.text for a in answers] == [f"echo: {q}" for q in questions]
    assert len({a.metadata["pid"] for a in answers}) == 1
    assert len(starts.read_text().splitlines()) == 1


def test_tool_calls_path_carries_the_services_trajectory(make: Any, base: str) -> None:
    calls = [{"name": "search", "arguments": {"q": "radius"}, "result": ["docs/sphere.md"]},
             {"function": {"name": "book", "arguments": '{{"room": "blue"}}'},  # {{ }}: literal braces
              "error": "not confirmed"}]
    target = make(url=f"{base}/ask", answer="data.answer", json={"question": "{question}", "calls": calls},
                  tool_calls="received.calls")
    answer = target.answer(req())
    trajectory = answer.tool_calls
    assert trajectory.names() == ["search", "book"] and trajectory.final == answer.text
    assert trajectory.steps[0].result == ["docs/sphere.md"]
    assert trajectory.steps[1].call.arguments == {"room": "blue"} and trajectory.steps[1].error == "not confirmed"
    # a null at the path: no trajectory; a value that is not a list of calls: an error naming the reply
    assert make(url=f"{base}/ask", answer="data.answer", tool_calls="data.none").answer(req()).tool_calls is None
    bad = make(url=f"{base}/ask", answer="data.answer", json={"calls": [{"arguments": {}}]},
               tool_calls="received.calls")
    with pytest.raises(TargetError, match="cannot read the reply: tool call 1: a tool call needs a name"):
        bad.answer(req())
