"""The example application, examples/docs_bot: its router, retrieval over cases/docs, the prompt it sends to
its model (real litellm against the scripted server), conversations, and the same bot as a real HTTP service."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer

from examples.docs_bot import bot as docs_bot
from pytest_llmeval.core.answer import Answer, TargetRequest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "cases" / "docs"
SERVER = REPO / "examples" / "docs_bot" / "server.py"
MODEL = "openai/test-model"


@pytest.fixture(scope="module")
def index_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("docs-bot") / "index")


@pytest.fixture(scope="module")
def bot(index_uri: str) -> docs_bot.DocsBot:
    made = docs_bot.make_bot(DOCS, k=3, index_uri=index_uri)
    made.load()
    return made


@pytest.fixture
def server(llm_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch) -> ScriptedLLMServer:
    monkeypatch.setenv("DOCS_BOT_API_BASE", llm_server.url)
    return llm_server


def request(question: str, history: list[dict[str, str]] = (), **fields: Any) -> TargetRequest:  # type: ignore[assignment]
    messages = [*history, {"role": "user", "content": question}]
    return TargetRequest(prompt=question, messages=messages, model=MODEL,
                         turn=sum(1 for m in history if m["role"] == "user"), **fields)


def user_prompt(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


# ---------------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("question, intent", [("Hello!", "greeting"), ("hi there", "greeting"),
                                              ("Thanks a lot!", "thanks"), ("bye", "goodbye")])
def test_small_talk_is_answered_without_retrieval_or_a_model(server: ScriptedLLMServer, tmp_path: Path,
                                                             question: str, intent: str) -> None:
    # A folder that does not exist: any retrieval would fail, so answering at all shows none happened.
    nowhere = docs_bot.make_bot(tmp_path / "missing", index_uri=str(tmp_path / "index"))
    answer = nowhere.answer(request(question))
    assert answer.text == docs_bot.REPLIES[intent]
    assert answer.metadata == {"route": "smalltalk", "intent": intent}
    assert answer.references == [] and answer.context is None and answer.usage is None
    assert server.requests == []
    assert not (tmp_path / "index").exists()


def test_off_topic_questions_get_a_polite_refusal(bot: docs_bot.DocsBot, server: ScriptedLLMServer) -> None:
    for question in ("How do I cook pasta?", "Who won the football world cup in 2018?"):
        answer = bot.answer(request(question))
        assert answer.metadata == {"route": "smalltalk", "intent": "off_topic"}, question
        assert "only answer questions about the Orbit" in answer.text
    assert server.requests == []


def test_a_greeting_inside_a_docs_question_is_still_a_docs_question(bot: docs_bot.DocsBot) -> None:
    assert bot.route("Hi! How do I draw a sphere?") == "docs"
    assert bot.route("thanks, and what does phi do?") == "docs"


# ---------------------------------------------------------------------------------------------- docs questions


@pytest.mark.parametrize("question, first_source", [
    ("How do I change the radius of a sphere in Orbit?", "docs/sphere.md"),
    ("How can Orbit render on a server without a display?", "docs/install.md"),
    ("How do I set the background colour of a scene?", "docs/api/window.py"),
])
def test_docs_questions_answer_from_the_right_page(bot: docs_bot.DocsBot, server: ScriptedLLMServer,
                                                   question: str, first_source: str) -> None:
    server.answer("Question:", "See the references [1].")
    answer = bot.answer(request(question))
    assert isinstance(answer, Answer)
    assert answer.text == "See the references [1]."
    assert answer.metadata["route"] == "docs" and answer.metadata["query"] == question
    assert len(answer.references) == 3
    assert answer.references[0].source == first_source
    scores = [r.score for r in answer.references]
    assert scores == sorted(scores, reverse=True) and all(s is not None for s in scores)
    assert answer.references[0].text.strip() and answer.references[0].text.strip() in user_prompt(server.last_request)
    assert answer.usage is not None and answer.usage.calls == 1 and answer.usage.prompt_tokens
    assert len(server.requests) == 1


def test_the_prompt_numbers_the_references_and_asks_for_citations(bot: docs_bot.DocsBot,
                                                                  server: ScriptedLLMServer) -> None:
    server.answer("radius", "Pass radii to orbit.actor.sphere [1].")
    answer = bot.answer(request("How do I change the radius of a sphere in Orbit?",
                                params={"temperature": 0, "max_tokens": 64, "unknown_knob": 1}))
    body = server.last_request
    assert body["model"] == "test-model" and body["temperature"] == 0 and body["max_tokens"] == 64
    assert "unknown_knob" not in body
    assert body["messages"][0] == {"role": "system", "content": docs_bot.SYSTEM_PROMPT}
    prompt = user_prompt(body)
    assert "Cite the references you use by their numbers in square brackets, like [1]" in prompt
    for n, ref in enumerate(answer.references, start=1):
        assert f"[{n}] {ref.source}:" in prompt
    assert prompt.index("[1] docs/sphere.md:") < prompt.index("[2] ") < prompt.index("[3] ")
    assert prompt.rstrip().endswith("Question: How do I change the radius of a sphere in Orbit?")
    assert answer.context is not None and answer.context in prompt
    assert answer.grounding() == answer.context
    assert answer.metadata["lines"][0].startswith("docs/sphere.md:")


def test_a_follow_up_is_searched_with_the_question_before_it(bot: docs_bot.DocsBot,
                                                             server: ScriptedLLMServer) -> None:
    first = "How do I change the radius of a sphere in Orbit?"
    history = [{"role": "system", "content": "a suite's system prompt"}, {"role": "user", "content": first},
               {"role": "assistant", "content": "Pass radii [1]."}]
    server.answer("default", "The default radius is 1.0 [1].")
    answer = bot.answer(request("And what is the default?", history))
    assert answer.metadata["route"] == "docs"
    assert answer.metadata["query"] == f"{first} And what is the default?"
    assert answer.references[0].source == "docs/sphere.md"
    assert answer.text == "The default radius is 1.0 [1]."
    # The model sees the conversation: its own system prompt, the earlier turns, then this turn with references.
    roles = [(m["role"], m["content"]) for m in server.last_request["messages"][:3]]
    assert roles == [("system", docs_bot.SYSTEM_PROMPT), ("user", first), ("assistant", "Pass radii [1].")]
    assert "Question: And what is the default?" in user_prompt(server.last_request)


def test_a_full_question_later_in_a_conversation_is_searched_alone(bot: docs_bot.DocsBot,
                                                                   server: ScriptedLLMServer) -> None:
    history = [{"role": "user", "content": "How do I change the radius of a sphere in Orbit?"},
               {"role": "assistant", "content": "Pass radii [1]."}]
    question = "On a server without any display attached, how can Orbit render its scenes to image files?"
    answer = bot.answer(request(question, history))
    assert answer.metadata["query"] == question
    assert answer.references[0].source == "docs/install.md"


def test_the_model_comes_from_the_request_unless_the_bot_pins_one(index_uri: str, server: ScriptedLLMServer) -> None:
    pinned = docs_bot.make_bot(DOCS, index_uri=index_uri, model="openai/pinned-model")
    pinned.answer(request("How do I draw a cube?"))
    assert server.last_request["model"] == "pinned-model"


def test_the_module_level_target_and_the_fixture_factory(index_uri: str, server: ScriptedLLMServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCS_BOT_INDEX", index_uri)  # the default bot over cases/docs, indexed here
    monkeypatch.setattr(docs_bot, "_DEFAULT", None)
    server.answer("cube", "Use orbit.actor.cube [1].")
    answer = docs_bot.answer(request("How do I draw a cube?"))
    assert answer.text == "Use orbit.actor.cube [1]." and answer.references[0].source == "docs/cube.md"
    assert docs_bot.default_bot().index_uri == index_uri

    target = docs_bot.bot_factory(DOCS, k=2, index_uri=index_uri)
    assert len(target(request("How do I draw a cube?")).references) == 2


def test_a_model_error_reaches_the_caller(bot: docs_bot.DocsBot, server: ScriptedLLMServer) -> None:
    server.fail("cube", 400, message="scripted refusal")
    with pytest.raises(Exception, match="scripted refusal"):
        bot.answer(request("How do I draw a cube?"))


# ---------------------------------------------------------------------------------------------- over HTTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module", autouse=True)
def _service_process(_server: ScriptedLLMServer, index_uri: str, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """The bot's HTTP service as a real subprocess, started with the module so that it loads (imports, the
    index) while the in-process tests run; the test that uses it waits for /health."""
    port = free_port()
    folder = tmp_path_factory.mktemp("docs-bot-service")
    log = folder / "docs-bot.log"
    env = {**os.environ, "DOCS_BOT_API_BASE": _server.url, "DOCS_BOT_INDEX": index_uri, "HF_HUB_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_API_KEY": "sk-test"}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(SERVER), str(port), "--model", MODEL], env=env,
                                stdout=fh, stderr=subprocess.STDOUT, cwd=folder)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def service(_service_process: tuple[subprocess.Popen[bytes], str, Path], server: ScriptedLLMServer
            ) -> tuple[str, Path]:
    proc, base, log = _service_process
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            if http(f"{base}/health")[0] == 200:
                return base, log
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"the server never became healthy:\n{log.read_text()}"
        time.sleep(0.2)


def test_the_http_service_answers_health_and_questions(service: tuple[str, Path], server: ScriptedLLMServer) -> None:
    base, log = service
    status, health = http(f"{base}/health")
    assert status == 200 and health["status"] == "ok" and health["index"]

    server.answer("ORBIT_OFFSCREEN", "Set ORBIT_OFFSCREEN=1 [1].")
    status, reply = http(f"{base}/ask", {"question": "How can Orbit render on a server without a display?"})
    assert status == 200, reply
    assert reply["answer"] == "Set ORBIT_OFFSCREEN=1 [1]." and reply["route"] == "docs"
    assert reply["references"][0]["source"] == "docs/install.md"
    assert set(reply["references"][0]) == {"source", "text", "score"}
    assert "ORBIT_OFFSCREEN" in reply["references"][0]["text"]
    assert reply["usage"]["calls"] == 1 and reply["model"]
    assert server.last_request["model"] == "test-model"

    # A conversation: the earlier turns ride along, and the follow-up is searched with them.
    history = [{"role": "user", "content": "How do I change the radius of a sphere in Orbit?"},
               {"role": "assistant", "content": "Pass radii [1]."}]
    status, reply = http(f"{base}/ask", {"question": "and what is the default?", "messages": history,
                                          "model": "openai/other-model"})
    assert status == 200 and reply["references"][0]["source"] == "docs/sphere.md"
    assert server.last_request["model"] == "other-model"
    assert [m["content"] for m in server.last_request["messages"][1:3]] == [h["content"] for h in history]

    status, reply = http(f"{base}/ask", {"question": "hello"})
    assert status == 200 and reply["route"] == "smalltalk" and reply["references"] == []
    assert reply["usage"] == {"calls": 0}

    assert http(f"{base}/ask", raw=b"not json")[0] == 400
    status, reply = http(f"{base}/ask", {"messages": []})
    assert status == 400 and "question is required" in reply["error"]
    assert http(f"{base}/nowhere")[0] == 404

    server.fail("cube", 400, message="scripted refusal")
    status, reply = http(f"{base}/ask", {"question": "How do I draw a cube?"})
    assert status == 500 and "scripted refusal" in reply["error"]

    text = log.read_text()
    assert "listening on http://127.0.0.1:" in text
    assert "POST /ask 200" in text and "route=docs" in text and "route=smalltalk" in text
    assert "POST /ask 400" in text and "POST /ask 500" in text and "GET /health 200" in text
