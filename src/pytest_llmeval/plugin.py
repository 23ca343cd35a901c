"""The pytest11 entry point: options, ini keys, markers and fixtures. Run state lives in session.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_llmeval.config.settings import HELP
from pytest_llmeval.core import astguard

# Before any thread of a run can format a traceback: CPython's AST converters are not thread-safe (astguard.py).
astguard.install()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_llmeval import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _h(key: str) -> str:
    """An option's help text for argparse, which %-formats it ("pass_rate:-5%" must read "-5%%")."""
    return HELP[key].replace("%", "%%")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmeval", "LLM regression testing (pytest-llmeval)")
    group.addoption("--llm", action="append", dest="llm_models", metavar="MODEL", default=None,
                    help=_h("models"))
    group.addoption("--llm-cache", dest="llm_cache", metavar="MODE", default=None, help=_h("cache"))
    group.addoption("--llm-semantic-threshold", dest="llm_semantic_threshold", metavar="COSINE", default=None,
                    help=_h("semantic_threshold"))
    group.addoption("--llm-cache-dir", dest="llm_cache_dir", metavar="DIR", default=None,
                    help=_h("cache_dir"))
    group.addoption("--llm-results", dest="llm_results", metavar="PATH", default=None, help=_h("results"))
    group.addoption("--llm-api-base", dest="llm_api_base", metavar="URL", default=None, help=_h("api_base"))
    group.addoption("--llm-timeout", dest="llm_timeout", metavar="SECONDS", default=None,
                    help=_h("timeout"))
    group.addoption("--llm-retries", dest="llm_retries", metavar="N", default=None, help=_h("retries"))
    group.addoption("--llm-breaker", dest="llm_breaker", metavar="N", default=None, help=_h("breaker"))
    group.addoption("--llm-samples", dest="llm_samples", metavar="N", default=None, help=_h("samples"))
    group.addoption("--llm-repeat", dest="llm_repeat", metavar="N", default=None, help=_h("repeat"))
    group.addoption("--llm-judge", dest="llm_judge", metavar="MODEL", default=None, help=_h("judge"))
    group.addoption("--llm-vision", dest="llm_vision", metavar="MODEL", default=None, help=_h("vision"))
    group.addoption("--llm-baseline", dest="llm_baseline", metavar="PATH", default=None, help=_h("baseline"))
    group.addoption("--llm-update-baseline", dest="llm_update_baseline", action="store_true", default=False,
                    help=_h("update_baseline"))
    group.addoption("--llm-max-drop", dest="llm_max_drop", metavar="POINTS", default=None, help=_h("max_drop"))
    group.addoption("--llm-fail-under", dest="llm_fail_under", metavar="RATE", default=None, help=_h("fail_under"))
    group.addoption("--llm-gate", dest="llm_gate", metavar="RULE", action="append", default=None, help=_h("gate"))
    group.addoption("--llm-gate-alpha", dest="llm_gate_alpha", metavar="ALPHA", default=None,
                    help=_h("gate_alpha"))
    group.addoption("--llm-strict", dest="llm_strict", action="store_true", default=False, help=_h("strict"))
    group.addoption("--llm-shard", dest="llm_shard", metavar="I/N", default=None, help=_h("shard"))
    group.addoption("--llm-concurrency", dest="llm_concurrency", metavar="N", default=None, help=_h("concurrency"))
    group.addoption("--llm-max-cost", dest="llm_max_cost", metavar="USD", default=None, help=_h("max_cost"))
    group.addoption("--llm-max-calls", dest="llm_max_calls", metavar="N", default=None, help=_h("max_calls"))
    group.addoption("--llm-resume", dest="llm_resume", action="store_true", default=False, help=_h("resume"))
    group.addoption("--llm-router", dest="llm_router", metavar="FILE", default=None, help=_h("router"))
    group.addoption("--llm-stream", dest="llm_stream", action="store_true", default=False, help=_h("stream"))
    group.addoption("--llm-split", dest="llm_split", metavar="SPLIT", default=None, help=_h("split"))
    group.addoption("--llm-explore", dest="llm_explore", action="store_true", default=False, help=_h("explore"))
    group.addoption("--llm-sandbox", dest="llm_sandbox", metavar="LEVEL", default=None, help=_h("sandbox"))

    parser.addini("llmeval_models", type="linelist", default=[], help=HELP["models"])
    parser.addini("llmeval_cache", default="", help=HELP["cache"])
    parser.addini("llmeval_semantic_threshold", default="", help=HELP["semantic_threshold"])
    parser.addini("llmeval_cache_dir", default="", help=HELP["cache_dir"])
    parser.addini("llmeval_results", default="", help=HELP["results"])
    parser.addini("llmeval_api_base", default="", help=HELP["api_base"])
    parser.addini("llmeval_timeout", default="", help=HELP["timeout"])
    parser.addini("llmeval_retries", default="", help=HELP["retries"])
    parser.addini("llmeval_breaker", default="", help=HELP["breaker"])
    parser.addini("llmeval_samples", default="", help=HELP["samples"])
    parser.addini("llmeval_repeat", default="", help=HELP["repeat"])
    parser.addini("llmeval_judge", default="", help=HELP["judge"])
    parser.addini("llmeval_vision", default="", help=HELP["vision"])
    parser.addini("llmeval_baseline", default="", help=HELP["baseline"])
    parser.addini("llmeval_max_drop", default="", help=HELP["max_drop"])
    parser.addini("llmeval_fail_under", type="linelist", default=[], help=HELP["fail_under"])
    parser.addini("llmeval_gate", type="linelist", default=[], help=HELP["gate"])
    parser.addini("llmeval_gate_alpha", default="", help=HELP["gate_alpha"])
    parser.addini("llmeval_shard", default="", help=HELP["shard"])
    parser.addini("llmeval_concurrency", default="", help=HELP["concurrency"])
    parser.addini("llmeval_max_cost", default="", help=HELP["max_cost"])
    parser.addini("llmeval_max_calls", default="", help=HELP["max_calls"])
    parser.addini("llmeval_router", default="", help=HELP["router"])
    parser.addini("llmeval_rate_limits", type="linelist", default=[], help=HELP["rate_limits"])
    parser.addini("llmeval_sandbox", default="", help=HELP["sandbox"])
    parser.addini("llmeval_rag_docs", default="", help=HELP["rag_docs"])
    parser.addini("llmeval_embedding_model", default="", help=HELP["embedding_model"])
    parser.addini("llmeval_cases", type="linelist", default=["cases"], help=HELP["cases"])
    parser.addini("llmeval_aliases", type="linelist", default=[], help=HELP["aliases"])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmeval: an item graded by pytest-llmeval (added automatically)")
    config.addinivalue_line(
        "markers",
        "llm_case(suite=None, tags=(), split='dev'): count this hand-written test in the llmeval aggregates under "
        "`suite` (default: the module name); split='test' puts it in the holdout (runs only with --llm-split test)",
    )
    config.addinivalue_line("markers", "slow: a slow evaluation (added automatically to items with vision checks; "
                            "deselect with -m 'not slow')")
    config.addinivalue_line("markers", "vision: an item that asks a vision model about an image (added automatically)")
    config.addinivalue_line(
        "markers",
        "vision_judge(question, expect='yes', file=None, min_size=16, min_detail=0.002, reference=None, "
        "max_distance=10, model=None): a yes/no question the `vision_judge` fixture asks a vision model about an "
        "image (repeat the marker for several questions); marks the test slow and vision",
    )
    config.addinivalue_line("markers", "robustness: a case's perturbed variants graded for consistency (added "
                            "automatically to the `<id>:robust` items of cases with a robustness block)")
    if getattr(config.option, "help", False) or getattr(config.option, "version", False):
        return  # `pytest --help` needs the options (declared above), not the run state: keep it fast
    from pytest_llmeval.checks import builtin as builtin_checks
    from pytest_llmeval.run.session import LLMEvalSession
    from pytest_llmeval.run.state import STATE

    config.pluginmanager.register(builtin_checks, "llmeval-builtin-checks")
    state = LLMEvalSession(config)
    config.stash[STATE] = state
    config.pluginmanager.register(state, "llmeval-session")
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistController(state), "llmeval-xdist")


class _XdistController:
    """xdist-only hooks (registered only when xdist is present), pytest-randomly style: the controller decides
    the run id once and hands it to every worker through workerinput."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        if not self.state.config.option.collectonly:
            node.workerinput["llmeval_run"] = self.state.run


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_llmeval.run.state import STATE

    state = config.stash.get(STATE, None)
    if state is not None:
        config.pluginmanager.unregister(state)
        if config.pluginmanager.has_plugin("llmeval-xdist"):
            config.pluginmanager.unregister(name="llmeval-xdist")
        del config.stash[STATE]


class LLM:
    """The model under test, for hand-written tests: ``llm("What is 2+2?")`` returns the answer text.

    Calls go through the response cache and are counted in the test's CaseResult.
    """

    def __init__(self, model: str, complete: Callable[..., Any], record: Callable[[Any], None]) -> None:
        self.model = model
        self._complete = complete
        self._record = record

    def complete(self, prompt: str | list[dict[str, Any]], *, system: str | None = None,
                 sample: int = 0, **params: Any) -> Any:
        """Answer a prompt (or a full message list); returns a Completion (text, tokens, latency...)."""
        if isinstance(prompt, str):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
        else:
            messages = list(prompt)
        completion = self._complete(self.model, messages, params, sample=sample)
        self._record(completion)
        return completion

    def __call__(self, prompt: str | list[dict[str, Any]], *, system: str | None = None, **params: Any) -> str:
        return str(self.complete(prompt, system=system, **params).text)

    def __repr__(self) -> str:
        return f"<LLM {self.model}>"


@pytest.fixture
def llm_model(request: pytest.FixtureRequest) -> str:
    """The name of the model under test (one per --llm; tests using `llm` are parametrized over them)."""
    from pytest_llmeval.run.state import STATE

    return str(getattr(request, "param", request.config.stash[STATE].settings.models[0]))


@pytest.fixture
def llm(request: pytest.FixtureRequest, llm_model: str) -> LLM:
    """Call the model under test: ``llm(prompt, system=None, **params) -> str``.

    A provider failure raises ModelCallError and is recorded as an ``error`` outcome in the aggregates.
    """
    from pytest_llmeval.run.session import CALLS
    from pytest_llmeval.run.state import STATE

    state = request.config.stash[STATE]
    problem = state.unusable.get(llm_model)
    if problem:
        from pytest_llmeval.run.items import ModelUnusable

        raise ModelUnusable(problem)
    calls = request.node.stash.setdefault(CALLS, [])
    return LLM(llm_model, state.runner.complete, calls.append)


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Any:
    """The sandbox that runs generated code (``--llm-sandbox``), for hand-written tests.

    ``sandbox.run_python(code, limits=Limits(timeout_s=5))`` or ``sandbox.run(cmd, files={...})`` returns a
    RunResult (exit_code, stdout, stderr, reason, files, level); ``with sandbox.workdir() as wd:`` keeps one
    work directory across several runs (compile, then run).
    """
    from pytest_llmeval.run.state import STATE

    return request.config.stash[STATE].get_sandbox()


@pytest.fixture(scope="session")
def rag(request: pytest.FixtureRequest) -> Any:
    """Retrieval for hand-written tests: ``rag.search(query, k=3)`` returns the top-k chunks (``n``, ``source``,
    ``start_line``, ``end_line``, ``score``, ``text``) of the docs folder named by ini ``llmeval_rag_docs``;
    ``rag.open("other/docs").search(...)`` searches another folder. Indexes are built (incrementally) on first
    use under ``.llmeval/index``, with the packaged offline embedding model unless ``llmeval_embedding_model``
    names another.
    """
    from pytest_llmeval.rag.index import Rag
    from pytest_llmeval.run.state import STATE

    settings = request.config.stash[STATE].settings
    return Rag(settings.rag_docs, base_dir=settings.index_dir, model=settings.embedding_model)


@pytest.fixture
def llm_judge(request: pytest.FixtureRequest, llm_model: str) -> Callable[..., Any]:
    """Grade an answer with the LLM judge in a hand-written test.

    ``llm_judge(answer, rubric="correctness", question=..., reference=None, context=None, min=7)`` returns a
    CheckOutcome (``passed``, ``score`` 0-1, ``reason``, ``unscored``, ``details["score"]`` 0-10). The judge is
    ``--llm-judge`` (else the model under test); calls are cached like case judges.
    """
    from pytest_llmeval.cases.loader import CaseSpec
    from pytest_llmeval.checks.judge import JUDGE_PARAMS, JUDGE_PROMPT_VERSION, JudgeEnv, JudgeParams, grade_judge
    from pytest_llmeval.run.state import STATE

    state = request.config.stash[STATE]
    judge_model = state.settings.judge_model or llm_model

    def ask(model: str, messages: list[dict[str, str]], attempt: int) -> Any:
        return state.runner.complete(model, messages, JUDGE_PARAMS, sample=attempt, semantic=False,
                                     key_extra={"purpose": "judge", "prompt_version": JUDGE_PROMPT_VERSION})

    def judge(answer: str, rubric: str = "correctness", *, question: str, reference: str | None = None,
              context: str | None = None, min: float = 7, model: str | None = None) -> Any:  # noqa: A002
        case = CaseSpec(suite="test", kind="qna", id=request.node.name, path=request.node.path, line=None,
                        system=None, prompt=question, params={}, tags=(), checks=[],
                        fields={"reference": reference, "context": context})
        env = JudgeEnv(judge_model=judge_model, self_judging=judge_model == llm_model, ask=ask)
        return grade_judge(answer, case, JudgeParams(rubric=rubric, min=min, model=model), env)

    return judge


@pytest.fixture
def vision_judge(request: pytest.FixtureRequest) -> Any:
    """Judge an image with the vision model (``--llm-vision``) in a hand-written test.

    ``vision_judge(image)`` (a path, bytes or a PIL image) runs the pixel pre-checks, then asks each
    ``@pytest.mark.vision_judge(question=..., expect="yes")`` question; a wrong answer or a failed pre-check
    fails the test, no configured vision model skips it with a hint. ``vision_judge(image, question="...",
    expect="no")`` asks a question of its own; ``check=False`` returns the CheckOutcomes without failing.
    Reference images are relative to the test file. Images are kept under ``.llmeval/artifacts/tests``.
    """
    from pydantic import ValidationError

    from pytest_llmeval.checks.vision import VisionEnv, VisionJudge, VisionParams, vision_asker
    from pytest_llmeval.run.session import VISION, VISION_CALLS
    from pytest_llmeval.run.state import STATE

    state = request.config.stash[STATE]
    questions = []
    for mark in reversed(list(request.node.iter_markers("vision_judge"))):
        kwargs = dict(mark.kwargs)
        for name, value in zip(("question", "expect"), mark.args, strict=False):
            kwargs.setdefault(name, value)
        try:
            params = VisionParams(**kwargs)
        except ValidationError as exc:
            raise pytest.UsageError(f"{request.node.nodeid}: invalid @pytest.mark.vision_judge{mark.args or ''}: "
                                    f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from None
        if params.question is None:
            raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.vision_judge needs question=...")
        questions.append(params)
    model = state.settings.vision_model
    if model:
        problem = state.runner.check_model(model)
        if problem:
            from pytest_llmeval.run.items import ModelUnusable

            raise ModelUnusable(problem)
    base = request.node.path.parent
    records = request.node.stash.setdefault(VISION, [])

    def make_env(picture: Any) -> VisionEnv:
        return VisionEnv(model=model, image=picture, ask=vision_asker(state.runner), base_dir=base)

    def record(env: VisionEnv, data: Any) -> None:
        saved = None
        if data is not None:
            slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in request.node.nodeid)[-150:]
            target = state.settings.artifacts_dir / "tests" / slug / f"image-{data.sha256[:12]}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.original or data.data)
            saved = str(target)
        records.extend({**r, "image": saved} for r in env.records)
        request.node.stash.setdefault(VISION_CALLS, []).extend(env.calls)

    return VisionJudge(questions, make_env, record)
