"""The fixtures hand-written tests use: ``llm``, ``llm_model``, ``llm_judge``, ``vision_judge``, ``sandbox``, ``rag``.

Registered by plugin.py as a plugin module; each fixture reaches the run's services through the run state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_llmeval.run.calls import CALLS, VISION, VISION_CALLS
from pytest_llmeval.run.items import ModelUnusable
from pytest_llmeval.run.state import get_state


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
    return str(getattr(request, "param", get_state(request.config).settings.models[0]))


@pytest.fixture
def llm(request: pytest.FixtureRequest, llm_model: str) -> LLM:
    """Call the model under test: ``llm(prompt, system=None, **params) -> str``.

    A provider failure raises ModelCallError and is recorded as an ``error`` outcome in the aggregates.
    """
    state = get_state(request.config)
    problem = state.unusable.get(llm_model)
    if problem:
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
    return get_state(request.config).get_sandbox()


@pytest.fixture(scope="session")
def rag(request: pytest.FixtureRequest) -> Any:
    """Retrieval for hand-written tests: ``rag.search(query, k=3)`` returns the top-k chunks (``n``, ``source``,
    ``start_line``, ``end_line``, ``score``, ``text``) of the docs folder named by ini ``llmeval_rag_docs``;
    ``rag.open("other/docs").search(...)`` searches another folder. Indexes are built (incrementally) on first
    use under ``.llmeval/index``, with the packaged offline embedding model unless ``llmeval_embedding_model``
    names another.
    """
    from pytest_llmeval.rag.index import Rag

    settings = get_state(request.config).settings
    return Rag(settings.rag_docs, base_dir=settings.index_dir, model=settings.embedding_model)


@pytest.fixture
def llm_judge(request: pytest.FixtureRequest, llm_model: str) -> Callable[..., Any]:
    """Grade an answer with the LLM judge in a hand-written test.

    ``llm_judge(answer, rubric="correctness", question=..., reference=None, context=None, min=7)`` returns a
    CheckOutcome (``passed``, ``score`` 0-1, ``reason``, ``unscored``, ``details["score"]`` 0-10). The judge is
    ``--llm-judge`` (else the model under test); calls are cached like case judges.
    """
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.checks.judge import JUDGE_PARAMS, JUDGE_PROMPT_VERSION, JudgeEnv, JudgeParams, grade_judge

    state = get_state(request.config)
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

    state = get_state(request.config)
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
