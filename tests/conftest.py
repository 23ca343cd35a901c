"""Shared fixtures: a scripted OpenAI-compatible server on 127.0.0.1 and helpers for pytester sessions."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.llm_server import ScriptedLLMServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Converted copies of the offline model go to a temporary directory shared by this run's processes (the first
# load converts the GGUF, ~20 s; the others read the copy, ~2 s), never into the user's ~/.cache.
os.environ.setdefault("LLMEVAL_MODEL_CACHE", os.path.join(tempfile.gettempdir(), f"llmeval-test-models-{os.getuid()}"))

# Imported before any pytester test, but not when this file is imported: together they take ~10 s (torch, under
# sentence-transformers, most of it), which `pytest --help` and runs of tests that need none of them should not pay.
# Why before pytester: it snapshots sys.modules and sys.meta_path for its in-process runs and restores them after.
# litellm pulls in the importlib_metadata backport, which replaces the stdlib's distribution finder with its own
# meta-path finder; if that import happened inside a pytester run, restoring sys.meta_path afterwards would leave
# no finder at all and break entry-point loading for every later run. Keeping litellm and the local model module
# loaded also spares each in-process run a 3 s import (and a 20 s model load).
# The same for modules with native extensions that in-process runs import (they cannot be loaded twice in one
# process): the statistics and metrics libraries, and sentence-transformers (torch) for embeddings.
# Hypothesis's pytest plugin imports hypothesis in each in-process run's terminal summary; as a pytest plugin it
# is assertion-rewritten (ast.parse), and on CPython 3.11 that must not race another thread's ast.parse
# (gh-106905: "AST constructor recursion depth mismatch"). Import it once, first.
# httpx imports httpcore lazily and caches its exception map on first use: a re-imported httpcore (after a pytester
# run) would raise exceptions that map does not know.
PRELOADED = ("hypothesis", "hypothesis.strategies", "httpcore", "imagehash", "lancedb", "litellm", "numpy",
             "PIL.Image", "pyarrow", "rouge_score.rouge_scorer", "sacrebleu", "scipy.stats", "sentence_transformers",
             "pytest_llmeval.providers.local")

pytest_plugins = ["pytester"]

API_KEY = "sk-test-do-not-leak-0123456789"


@pytest.fixture(scope="session")
def _preloaded() -> None:
    """The modules of PRELOADED, imported once per test process, before the first pytester test needs them."""
    for name in PRELOADED:
        importlib.import_module(name)


@pytest.fixture
def pytester(_preloaded: None, pytester: pytest.Pytester) -> pytest.Pytester:
    """pytester's own fixture, set up after the PRELOADED modules are in sys.modules (its snapshot then keeps them)."""
    return pytester


@pytest.fixture(scope="session")
def _server() -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer(default="I don't know.") as server:
        yield server


@pytest.fixture
def llm_server(_server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch) -> ScriptedLLMServer:
    """The scripted server, reset for this test, with an OpenAI key in the environment."""
    _server.reset()
    _server.default = "I don't know."
    _server.latency = 0.0
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    for name in ("LLMEVAL_MODELS", "LLMEVAL_CACHE", "LLMEVAL_RESULTS", "LLMEVAL_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    return _server


class Project:
    """A pytester project with case files, run against the scripted server."""

    def __init__(self, pytester: pytest.Pytester, server: ScriptedLLMServer) -> None:
        self.pytester = pytester
        self.server = server

    def write(self, relpath: str, text: str) -> Path:
        path = self.pytester.path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def args(self, *extra: str, model: str = "openai/test-model") -> list[str]:
        return [f"--llm={model}", f"--llm-api-base={self.server.url}", "--llm-retries=0", *extra]

    def run(self, *extra: str, model: str = "openai/test-model", subprocess: bool = False
            ) -> pytest.RunResult:
        args = self.args(*extra, model=model)
        if subprocess or "-n" in extra or any(a.startswith("-n") for a in extra):
            return self.pytester.runpytest_subprocess(*args)
        return self.pytester.runpytest(*args)

    def results(self, name: str = ".llmeval/results.json") -> dict[str, Any]:
        return json.loads((self.pytester.path / name).read_text())


@pytest.fixture
def project(pytester: pytest.Pytester, llm_server: ScriptedLLMServer) -> Project:
    return Project(pytester, llm_server)


# A two-case support conversation: three and two turns, a check on a middle turn and one on the last.
SUPPORT_CONVERSATION = """\
suite: support
system: You are a support bot.
cases:
  - id: reset
    turns:
      - How do I reset my password?
      - user: And if I lost my email too?
        expect: [{contains: support}]
      - Thanks, bye
    expect: [{contains: welcome}]
  - id: refund
    turns:
      - Can I get a refund?
      - user: How long does it take?
        expect: [{contains: days}]
"""


GEO = """\
suite: geography
kind: qna
system: Answer in one short sentence.
params: {temperature: 0, max_tokens: 32}
tags: [smoke]
cases:
  - id: capital-fr
    question: What is the capital of France?
    expect:
      - contains: Paris
  - id: capital-jp
    question: What is the capital of Japan?
    expect:
      - contains: Tokyo
  - id: ocean
    question: What is the largest ocean?
    expect:
      - contains: Pacific
      - not_contains: Atlantic
"""

#: GEO's three questions with the answers the scripted servers give (capital-jp's is wrong: 2 passed, 1 failed).
GEO_ANSWERS = (("capital of France", "The capital of France is Paris."),
               ("capital of Japan", "The capital of Japan is Kyoto."),
               ("largest ocean", "The Pacific Ocean."))

#: One case graded by a judge (the batch tests' second round).
JUDGED = """\
suite: support
kind: qna
params: {temperature: 0}
cases:
  - id: capital
    question: What is the capital of France?
    reference: Paris is the capital of France.
    expect:
      - judge: {rubric: correctness, min: 7}
"""


def poll_batch(client: Any, batch_id: str) -> list[str]:
    """The statuses a batch client retrieves for ``batch_id`` until it is done (at most 10 polls)."""
    statuses = []
    for _ in range(10):
        info = client.retrieve(batch_id)
        statuses.append(info.status)
        if info.done:
            break
    return statuses


def plugin_env() -> dict[str, str]:
    """The environment of a pytest process a test starts itself: this checkout's src first on the path."""
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def kill_while_polling(project: Project, *args: str, model: str = "openai/test-model") -> None:
    """Start ``pytest *args`` (a process group of its own), wait until it polls its batch (the server saw a
    retrieve) and kill it with SIGKILL, the whole group."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *project.args(*args, model=model)],
                            cwd=project.pytester.path, env=plugin_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    server: Any = project.server
    try:
        deadline = time.monotonic() + 120
        while not server.retrieves and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.retrieves and proc.poll() is None  # it is polling its batch
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def batch_store(project: Project) -> dict:
    """.llmeval/batches.json of a project (--llm-batch's saved batches)."""
    return json.loads((project.pytester.path / ".llmeval" / "batches.json").read_text())


SIQA = """\
suite: social
kind: choice
cases:
  - id: tracy
    context: Tracy didn't go home that evening and resisted Riley's attacks.
    question: What does Tracy need to do before this?
    choices: {A: make a new plan, B: Go home and see Riley, C: Find somewhere to go}
    answer: C
  - id: sydney
    context: Sydney walked past a homeless woman asking for change but had no money to give.
    question: How would you describe Sydney?
    choices: {A: sympathetic, B: unable to help, C: incredulous}
    answer: A
"""


def script_geo(server: ScriptedLLMServer) -> None:
    """Answers: France right, Japan wrong, ocean right."""
    server.answer("capital of France", "The capital of France is Paris.")
    server.answer("capital of Japan", "The capital of Japan is Kyoto.")
    server.answer("largest ocean", "The Pacific Ocean.")
    server.answer("Tracy", "The answer is (C).")
    server.answer("Sydney", "B) unable to help")
