"""Case files as pytest collectors; each case x model becomes one item.

Ids read like ``cases/geography.yaml::capital-fr[groq/llama3-70b]`` so ``-k``, ``--lf``, ``--deselect``
and ``-n`` work as usual. An invalid case (or file) becomes an item that errors in setup with a precise
message, instead of a collection error that would abort the whole run.

No check is known by name here: a draw is graded by run/grading.py with one GradeContext for every check, and
what a check needs of the item (markers, a fast form, the models it calls, fields of the result) comes from its
CheckDef. Case kinds, by contrast, are compared by name here:
the kinds are the case-file contract (cases/), fixed and not extensible, and each one shapes the item itself:
a calibration case has no model call (the judge grades the case's own answer), a code case's answer is a
program (sandbox, samples, pass@k, artifacts). "judge" and "vision" are model roles (--llm-judge,
--llm-vision), named by a check's ``calls``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmeval.cases.holdout import cached_prompt_hash
from pytest_llmeval.cases.loader import load_file
from pytest_llmeval.cases.schema import CaseError, CaseSpec, InvalidCase
from pytest_llmeval.checks.judge import JudgeEnv
from pytest_llmeval.core.answer import TargetError
from pytest_llmeval.core.checks import CheckOutcome, CheckSpec
from pytest_llmeval.core.errors import InfrastructureError, LLMEvalError
from pytest_llmeval.core.memory import paused_gc
from pytest_llmeval.providers.runner import Completion, ModelCallError, total_latency
from pytest_llmeval.results.aggregate import CaseResult, pass_at_k
from pytest_llmeval.run.agent import AgentCalls, tool_problems
from pytest_llmeval.run.auto_repeat import draw_until_settled, planned_draws
from pytest_llmeval.run.calls import vision_summary
from pytest_llmeval.run.conversation import ConversationCalls
from pytest_llmeval.run.grading import DrawGrader, decide, relative_to
from pytest_llmeval.run.redraw_child import first_slot
from pytest_llmeval.run.state import RunState, get_state
from pytest_llmeval.run.targets import (
    app_fields,
    app_retrieval,
    grounding,
    references_of,
    suite_target,
    target_problems,
)

# Made once (add_marker with a name looks the marker up anew for every item); a Mark is immutable, so shared.
_LLMEVAL_MARK = pytest.mark.llmeval
_ROBUSTNESS_MARK = pytest.mark.robustness

NO_VISION_MODEL_ID = "no-vision-model"  # the model slot of a vision calibration item when none is configured


def _session(config: pytest.Config) -> RunState:
    return get_state(config)


class ModelUnusable(InfrastructureError):
    """The model cannot be used at all in this run (unknown provider, missing key)."""


class CaseFailed(LLMEvalError):
    """The answer failed one or more checks (a test failure, not an error: in no family of core.errors)."""


def _explained(exc: BaseException) -> bool:
    """Whether CaseItem.repr_failure explains ``exc`` by a message of its own (no traceback needed).

    Failures of the machinery, not of the model (InfrastructureError: the provider, the sandbox, the embedding
    model, the index) are an ``error`` outcome wherever they are raised."""
    return isinstance(exc, InfrastructureError | CaseFailed)


class CaseFile(pytest.File):
    """A suite file (YAML) or a bare JSONL suite."""

    def collect(self) -> list[pytest.Item]:  # type: ignore[override]
        with paused_gc():
            return list(self._collect())

    def _collect(self) -> Iterator[pytest.Item]:
        state = _session(self.config)
        loaded = load_file(self.path, state.registry, state.targets, state.default_target is not None)
        target = suite_target(loaded.target, state)
        if target is not None and not loaded.errors:
            problems = target_problems(target, state, self, self.path)
            if problems:  # the suite cannot run at all: one item stands for it, naming the target's line
                yield InvalidCaseItem.from_parent(self, name="target", errors=problems)
                return
        groups: dict[str, list[CaseError]] = {}
        for err in loaded.errors:
            groups.setdefault(err.case_id or "invalid", []).append(err)
        for name, errors in groups.items():
            yield InvalidCaseItem.from_parent(self, name=name, errors=errors)
        for case in loaded.cases:
            if case.id in groups:
                continue
            if case.tools and (problems := tool_problems(state, case)):  # a tool that cannot be imported
                yield InvalidCaseItem.from_parent(self, name=case.id, errors=problems)
                continue
            roles = {c.definition.calls for c in case.checks if c.definition is not None}
            # A calibration suite grades the judge: its items run once per judge (or vision) model.
            models = state.settings.models
            if case.kind == "calibration" and "vision" in roles:
                models = (state.settings.vision_model or NO_VISION_MODEL_ID,)
            elif case.kind == "calibration" and state.settings.judge_model:
                models = (state.settings.judge_model,)
            # A code case with a slow check (a vision check: it has a fast form) is collected twice: the fast
            # evaluation (runs, pixel pre-checks) and the judged one (slow: a vision model looks at the image), as
            # seed 000's fast and normal evals.
            slow = any(c.definition is not None and c.definition.fast is not None for c in case.checks)
            stages: tuple[str | None, ...] = ("runs", "judged") if slow and case.kind == "code" else (None,)
            # A case with a robustness block gets one more item: its perturbed variants, graded for consistency.
            if case.robustness and case.kind != "calibration":
                stages += ("robust",)
            for model in models:
                for stage in stages:
                    base = f"{case.id}:{stage}" if stage in ("judged", "robust") else case.id
                    yield CaseItem.from_parent(self, **self._ids(base, model), case=case, model=model, stage=stage)

    def _ids(self, base: str, params: str) -> dict[str, Any]:
        """Name (and, on pytest >= 9, the structured node id) of a ``base[params]`` item.

        pytest 9 matches --lf/--deselect on structured ids (path, names, params); an item whose name
        merely ends in "[...]" would not match the id parsed back from the cache file.
        """
        kwargs: dict[str, Any] = {"name": f"{base}[{params}]"}
        own_id = getattr(self, "id", None)
        if own_id is not None and hasattr(own_id, "child"):
            kwargs["nodeid"] = own_id.child(base).with_params(params)
        return kwargs


class InvalidCaseItem(pytest.Item):
    """Stands for a broken case or file: errors in setup, names file, line and field."""

    def __init__(self, *, errors: list[CaseError], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.errors = errors
        self.add_marker("llmeval")

    def setup(self) -> None:
        raise InvalidCase(self.errors)

    def runtest(self) -> None:  # pragma: no cover - setup always raises
        raise InvalidCase(self.errors)

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # pytest renders a setup error with this method, not repr_failure; see CaseItem._repr_failure_py.
        if isinstance(excinfo.value, InvalidCase):
            return self.repr_failure(excinfo)
        return super()._repr_failure_py(excinfo, style)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, InvalidCase):
            root = self.config.rootpath
            # The first line is what -r/short summaries show: make it the first problem itself.
            return "\n".join(e.format(root) for e in self.errors)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        line = self.errors[0].line
        return self.path, (line - 1) if line else None, f"invalid: {self.name}"


class CaseItem(AgentCalls, ConversationCalls, pytest.Item):
    """One case run against one model (for a calibration case: one judge model).

    With ``--llm-repeat``/``--llm-samples`` the item draws several answers (independent cache slots), grades
    each, and passes by the case's ``pass_if`` policy; each draw is kept in the CaseResult.
    """

    def __init__(self, *, case: CaseSpec, model: str, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.model = model
        self.stage = stage  # "runs" | "judged" for a code case with vision checks, else None
        # The judged stage is its own suite in the aggregates ("render:judged"), so its pass rate, gate and
        # baseline never mix with the fast stage's.
        self.suite = f"{case.suite}:{stage}" if stage in ("judged", "robust") else case.suite
        # The fast and the robustness stages grade slow checks by their fast form (a vision check by its pixel
        # pre-checks only: no vision model); the other stages, the case's own list (shared: never modified).
        self.checks = case.checks if stage not in ("runs", "robust") else \
            [self._fast(c) if c.definition and c.definition.fast else c for c in case.checks]
        self.completion: Completion | None = None
        self.completions: list[Completion] = []
        self.failed_retries = 0  # retries of a model call that failed in the end (the case is an error)
        self.outcomes: list[CheckOutcome] = []
        self.samples: list[dict[str, Any]] = []  # per draw: checks, status, score, code, detail, artifacts
        self.status: str | None = None  # passed | failed | unscored, once graded
        self.judge_env: JudgeEnv | None = None
        self.calibration: dict[str, Any] | None = None
        self.retrieved: list[Any] = []  # rag.Retrieved hits put into the prompt
        self.retrieval: dict[str, Any] | None = None  # index, version, recall@k, MRR
        self.robustness: Any = None  # robustness.Robustness, for the robust stage
        # An application target answers (run/targets.py): None when the --llm model does.
        self.target = suite_target(case.target, _session(self.config))
        self._fixture_request: Any = None  # the fixture request of a fixture target
        self.add_marker(_LLMEVAL_MARK)
        if stage == "robust":
            self.add_marker(_ROBUSTNESS_MARK)
        # The checks' own markers (a vision check: slow, vision): -m "not slow" runs the fast evaluation; the full
        # run adds the vision judge.
        for marker in dict.fromkeys(m for c in self.checks if c.definition for m in c.definition.markers):
            self.add_marker(marker)
        # -k can select by suite, kind and tag.
        self.extra_keyword_matches.update([case.suite, case.kind, *case.tags, *([stage] if stage else []),
                                           *([self.target.kind] if self.target is not None else [])])

    def _fast(self, spec: CheckSpec) -> CheckSpec:
        """The fast form of a slow check (a vision check's pixel pre-checks alone, as an ``image`` check)."""
        assert spec.definition is not None and spec.definition.fast is not None
        name, params = spec.definition.fast(spec.params)
        return CheckSpec(name, params, spec.line, _session(self.config).registry.get(name))

    @property
    def draws(self) -> int:
        settings = _session(self.config).settings
        if self.case.kind == "calibration" or self.stage == "robust":
            return 1  # the judge grades a fixed answer; a robustness item compares variants with one answer
        return max(planned_draws(self, settings.repeat), settings.samples if self.case.kind == "code" else 1)

    @property
    def pass_if(self) -> str:
        return self.case.pass_if or ("any" if self.case.kind == "code" else "all")

    def judge_models(self) -> set[str]:
        """Every model this item's checks will call (its judge and vision checks): a check's ``model`` parameter,
        else the run's model for the role it calls."""
        models: set[str] = set()
        for c in self.checks:
            role = c.definition.calls if c.definition is not None else None
            if role and (m := getattr(c.params, "model", None) or self._default_model(role)):
                models.add(m)
        return models | ({m} if (m := self.simulated_user_model()) else set())  # it must be usable too

    def _default_model(self, role: str) -> str | None:
        """The model a check calling ``role`` asks when it names none ("vision": --llm-vision; else the judge)."""
        return self._default_vision() if role == "vision" else self._default_judge()

    def _default_vision(self) -> str | None:
        if self.case.kind == "calibration":
            return None if self.model == NO_VISION_MODEL_ID else self.model
        return _session(self.config).settings.vision_model

    def _default_judge(self) -> str:
        if self.case.kind == "calibration":
            return self.model
        return _session(self.config).settings.judge_model or self.model

    # ---- phases: the model call happens in setup, so a provider failure is an *error*, not a failure

    def setup(self) -> None:
        pending = sorted({c.name for c in self.checks if c.definition and c.definition.grade is None})
        if pending:
            pytest.skip(f"grading of {self.case.kind!r} cases ({', '.join(pending)}) is not implemented yet")
        if self.model == NO_VISION_MODEL_ID:
            from pytest_llmeval.checks.vision import NO_VISION_MODEL

            pytest.skip(NO_VISION_MODEL)
        state = _session(self.config)
        # An application is asked with the --llm model's name; whether it can use it is the application's business.
        for model in [*([self.model] if self.target is None else []), *sorted(self.judge_models())]:
            problem = state.unusable.get(model)
            if problem:
                raise ModelUnusable(problem)
        if self.case.kind == "code":
            state.get_sandbox()  # no isolation available: an error before any model call
        if self.case.kind == "calibration":
            return  # nothing to answer: the judge grades the case's own answer
        from pytest_llmeval.providers.resilience import BudgetExhausted

        try:
            self.completions = self.converse(state, self.draws) if self.case.is_conversation else \
                self.app_answers(state, self.draws) if self.target is not None else \
                self.agent_answers(state, self.draws) if self.case.tools else self._answers(state)
        except BudgetExhausted as exc:
            pytest.skip(str(exc))
        self.completion = self.completions[0]
        if self.target is not None and (self.case.sources or self.completion.references):
            self.retrieval = app_retrieval(self.completion, self.case)

    def _answers(self, state: RunState) -> list[Completion]:
        """The model's answers: prefetched by the pool where possible, else called now."""
        if self.case.retrieve:
            messages, key_extra = self._retrieve(self.case.messages())
            draws, first = self.draws, first_slot(self.config)  # the gate's redraws start past the run's slots
            return [state.runner.complete(self.model, messages, self.case.params, sample=first + i,
                                          key_extra=key_extra, semantic=draws == 1 and not first) for i in range(draws)]
        answered = state.answered(self)
        if answered is not None:
            return answered
        if state.prefetcher is not None:
            state.prefetch_from(self)
            prefetched = state.prefetcher.take(self)
            if prefetched is not None:
                return prefetched
        return [state.runner.complete(**call) for call in self._calls()]

    def _calls(self) -> list[dict[str, Any]]:
        draws, first = self.draws, first_slot(self.config)  # repeats and redraws are real samples: no semantic cache
        return [{"model": self.model, "messages": self.case.messages(), "params": self.case.params, "sample": first + i,
                 "key_extra": None, "semantic": draws == 1 and not first} for i in range(draws)]

    def plan_calls(self) -> list[dict[str, Any]] | None:
        """The model calls setup will make, for the prefetcher; None when they must not be made ahead."""
        state = _session(self.config)
        if self.case.kind == "calibration" or self.case.retrieve or self.model == NO_VISION_MODEL_ID:
            return None
        if any(c.definition and c.definition.grade is None for c in self.checks):
            return None
        if any(state.unusable.get(m) for m in [*([self.model] if self.target is None else []), *self.judge_models()]):
            return None
        # Offline models are CPU-bound in this process: threads would only take turns, except for local/ models,
        # whose greedy calls from the pool's threads are generated together as one batch (local_generate.Batcher).
        if state.runner.is_offline(self.model):
            from pytest_llmeval.providers.local import batched

            if not batched(state.settings.resolve_model(self.model)):
                return None  # (an application given an offline model most likely runs it: the same holds)
        if self.case.is_conversation:  # each draw's turns in order, in one pool thread (run/conversation.py)
            return self.conversation_plan(state, self.draws)
        if self.target is not None:
            return self.app_plan(state, self.draws)
        return self.agent_plan(state, self.draws) if self.case.tools else self._calls()

    def _retrieve(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """Search the case's index and put the top-k chunks, numbered, in front of the user prompt."""
        from pytest_llmeval.rag.index import augment, retrieval_scores

        spec = self.case.retrieve
        assert spec is not None
        index = _session(self.config).get_index(spec)
        self.retrieved = index.search(self.case.query(), int(spec["k"]))
        prefix = str(spec["prefix"])
        self.retrieval = {"index": index.name, "version": index.version, "model": index.model, "k": int(spec["k"])}
        if self.case.sources:
            self.retrieval.update(retrieval_scores(self.retrieved, list(self.case.sources), prefix))
        augmented = [*messages[:-1], {"role": "user", "content": augment(self.case.prompt, self.retrieved, prefix)}]
        # The index version (every document's hash) and the embedding model are part of the cache key.
        return augmented, {"index": index.version, "embedding": index.fingerprint}

    def runtest(self) -> None:
        state = _session(self.config)
        if self.case.kind == "calibration":
            answers = [str(self.case.fields["answer"])]
        else:
            answers = [c.text for c in self.completions]
        from pytest_llmeval.providers.resilience import BudgetExhausted

        try:
            self.samples = [self._grade(text, i) for i, text in enumerate(answers)]
            draw_until_settled(self, state)  # --llm-repeat auto: more draws while the outcome is open
        except BudgetExhausted as exc:  # a judge call past the budget: the case cannot be graded in this run
            pytest.skip(str(exc))
        self.outcomes = self.samples[0]["outcomes"]
        self.status = decide(self.samples, self.pass_if)
        if self.stage == "robust" and self.status in ("passed", "failed"):
            try:
                self.status = self._robustness(state)
            except BudgetExhausted as exc:  # the variants' calls past the budget: no consistency in this run
                pytest.skip(str(exc))
        if self.case.kind == "calibration" and self.status in ("passed", "failed"):
            from pytest_llmeval.checks.judge import calibrate

            self.calibration = calibrate(self.case, self.outcomes)
            self.status = "passed" if self.calibration["agree"] else "failed"
        if self.status == "skipped":
            reasons = [o.reason for s in self.samples for o in s["outcomes"] if o.skipped]
            pytest.skip(f"{reasons[0]} (the pixel pre-checks passed)")
        if self.status == "unscored":
            reasons = [o.reason for s in self.samples for o in s["outcomes"] if o.unscored]
            pytest.skip(f"unscored: {reasons[0]}")
        if self.status == "failed":
            raise CaseFailed()

    def _judge_env(self, state: RunState) -> JudgeEnv:
        """What this item's judge checks need: who judges, and how to call it (through the exact cache)."""
        from pytest_llmeval.checks.judge import JUDGE_PARAMS, JUDGE_PROMPT_VERSION

        judge = self._default_judge()

        def ask(model: str, messages: list[dict[str, str]], attempt: int) -> Completion:
            return state.runner.complete(model, messages, JUDGE_PARAMS, sample=attempt, semantic=False,
                                         key_extra={"purpose": "judge", "prompt_version": JUDGE_PROMPT_VERSION})

        context = grounding(self.completion) if self.target is not None else None
        if self.retrieved:
            from pytest_llmeval.rag.index import references_block

            context = references_block(self.retrieved, str((self.case.retrieve or {}).get("prefix", "")))
        return JudgeEnv(judge_model=judge, self_judging=self.case.kind != "calibration" and judge == self.model,
                        ask=ask, context=context)

    def _robustness(self, state: RunState) -> str:
        """Grade the case's perturbed variants against the original outcome; passed when consistent enough."""
        from pytest_llmeval.robustness import runner as robustness

        original = str(self.status)

        def call(v: robustness.CaseVariant) -> dict[str, Any]:
            msgs = [*([{"role": "system", "content": self.case.system}] if self.case.system else []),
                    {"role": "user", "content": v.prompt}]
            return {"model": self.model, "messages": msgs, "params": self.case.params, "semantic": False}

        def grade(v: robustness.CaseVariant, answer: str) -> tuple[str, str | None]:
            draw = self._grade(answer, len(self.samples), robustness.replace_case(self.case, v))
            failed = next((o for o in draw["outcomes"] if not o.passed and not o.unscored), None)
            return draw["status"], (f"{failed.name}: {failed.reason}" if failed and failed.reason else None)

        def answer(v: robustness.CaseVariant) -> str:  # an application answers its variants too, not the bare model
            if self.target is not None:
                return self.ask_variant(state, call(v)["messages"], v.prompt, v.fields)
            return state.runner.complete(**call(v)).text

        self.robustness = robustness.evaluate(
            self.case, self.model, original, answer, grade,
            db_root=state.settings.results_path.parent / "hypothesis", concurrency=state.settings.concurrency,
            explore=state.settings.explore)
        r = self.robustness
        c = r.consistency
        if c is None:
            verdict = CheckOutcome.unscorable("robustness", f"none of {len(r.runs)} variant(s) could be scored")
        else:
            verdict = CheckOutcome(
                "robustness", r.passed, c, f"{len(r.scored) - len(r.flips)} of {len(r.scored)} variants kept the "
                f"original outcome ({original}): consistency {c:.0%}, minimum {float(r.spec['min_consistency']):.0%}")
        # The robust item's one verdict and score is the consistency (the original's checks are kept for reference).
        self.samples[0].update(outcomes=[*self.outcomes, verdict], score=c)
        self.outcomes = self.samples[0]["outcomes"]
        return "unscored" if c is None else "passed" if r.passed else "failed"

    def _judge(self) -> JudgeEnv:
        """The judge service: one JudgeEnv per item, made when a check first asks for it, so that its calls (every
        draw's, and a robustness item's variants') are the case's judge cost."""
        if self.judge_env is None:
            self.judge_env = self._judge_env(_session(self.config))
        return self.judge_env

    def _grade(self, answer: str, index: int, case: CaseSpec | None = None) -> dict[str, Any]:
        """Grade draw ``index`` (run/grading.py); ``case`` is a robustness variant of this item's case (default: the
        case itself)."""
        grader = DrawGrader(_session(self.config), self.config.rootpath, self.model, self.stage, self.checks,
                            self._judge, self._default_vision(), self.case.path.parent, self.retrieved)
        if case is None and index < len(self.conversations):
            return grader.grade_conversation(self.conversations[index], index, self.case)
        completion = self.completions[index] if self.target is not None and index < len(self.completions) else None
        return grader.grade(answer, index, case or self.case, references=references_of(completion),
                            trajectory=self.trajectory_of(index) if case is None else None)

    # ---- reporting

    def _repr_failure_py(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # pytest renders an error in setup (a provider failure, an unusable model) with this method, not with
        # repr_failure: a full traceback with the source of every frame, each file parsed with ast (~0.25 s an error,
        # minutes for a suite against a down endpoint), which our report hook then replaces with the message anyway.
        # Errors that repr_failure explains by a message skip the traceback.
        if _explained(excinfo.value):
            return self.repr_failure(excinfo)
        return super()._repr_failure_py(excinfo, style)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        exc = excinfo.value
        where = f"{self.case.path.name}:{self.case.line}" if self.case.line else self.case.path.name
        if isinstance(exc, ModelCallError):
            return f"model call failed for case {self.case.id} ({where}) on {self.model}:\n  {exc.message}"
        if isinstance(exc, ModelUnusable):
            return f"model {self.model} cannot be used: {exc}"
        if isinstance(exc, TargetError):
            shown = f"case {self.case.id} ({where}) on {self.model}: {exc.message}"
            return shown + (f"\n{textwrap.indent(exc.details, '  ')}" if exc.details else "")
        if isinstance(exc, InfrastructureError):
            return f"case {self.case.id} ({where}) cannot run: {exc}"
        if isinstance(exc, CaseFailed):
            return self._format_failure(where)
        return str(super().repr_failure(excinfo))

    def _format_failure(self, where: str) -> str:
        from pytest_llmeval.run.failure import format_failure

        return format_failure(self, where)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        line = self.case.line
        return self.case.path, (line - 1) if line else None, f"{self.case.suite}::{self.name}"

    def result(self, outcome: str, message: str | None) -> CaseResult:
        """This item's CaseResult for the given outcome (on every run's hot path: single passes over the draws and
        calls; the optional families, such as metrics, conversations or agents, only looked at when present)."""
        if outcome == "skipped" and self.status == "unscored":
            outcome = "unscored"
        c = self.completion
        samples = self.samples
        graded = bool(samples) and outcome in ("passed", "failed", "unscored")
        first = samples[0] if samples else {}
        n, n_scored, k = len(samples), 0, 0
        draw_scores: list[float] = []
        for s in samples:
            if s["status"] != "unscored":
                n_scored += 1
                if s["status"] == "passed":
                    k += 1
                if s["score"] is not None:
                    draw_scores.append(s["score"])
        score = sum(draw_scores) / len(draw_scores) if graded and draw_scores and outcome != "unscored" else None
        extra: dict[str, Any] = {}
        if graded:
            extra["unscored_checks"] = sum(1 for s in samples for o in s["outcomes"] if o.unscored)
            metric_names = sorted({m for s in samples for m in s["metrics"]})
            extra["metrics"] = {m: round(sum(s["metrics"][m] for s in samples if m in s["metrics"])
                                         / sum(1 for s in samples if m in s["metrics"]), 6) for m in metric_names}
            # Fields a check fills from its outcome in the first draw (jaccard: labels); the first such outcome wins.
            if any(c.definition is not None and c.definition.case_fields is not None for c in self.checks):
                definitions = {c.name: c.definition for c in self.checks if c.definition is not None}
                for o in self.outcomes:
                    definition = definitions.get(o.name)
                    if definition is not None and definition.case_fields is not None:
                        for key, value in definition.case_fields(o, self.case).items():
                            extra.setdefault(key, value)
            env = self.judge_env
            if env is not None and env.calls:
                costs = [x.cost_usd for x in env.calls if x.cost_usd is not None]
                extra["judge"] = {"model": env.judge_model, "self_judging": env.self_judging,
                                  "calls": len(env.calls), "latency_s": total_latency(env.calls, 4),
                                  "cost_usd": sum(costs) if costs else None, "cached": all(x.cached for x in env.calls)}
            if self.calibration:
                extra["calibration"] = self.calibration
        if graded and n_scored and (n > 1 or self.case.kind == "code"):
            extra["pass_at_k"] = {str(j): round(pass_at_k(n_scored, k, j), 6)
                                  for j in sorted({1, 5, 10, 20, 50, 100, n_scored}) if j <= n_scored}
        if graded and n > 1:
            extra["repeats"] = {"n": n, "scored": n_scored, "passed": k, "pass_if": self.pass_if,
                                "pass_fraction": round(k / n_scored, 6) if n_scored else None,
                                "pass_all": bool(n_scored) and k == n_scored, "pass_any": k > 0}
            extra["flaky"] = 0 < k < n_scored
            extra["samples"] = [
                {"sample": i, "status": s["status"], "passed": s["status"] == "passed", "score": s["score"],
                 "detail": s.get("detail"), "answer": self.completions[i].text[:2000] if self.completions else None,
                 "cached": self.completions[i].cached if self.completions else None,
                 "checks": [o.to_dict() for o in s["outcomes"]], "artifacts": s.get("artifacts") or {},
                 **({"vision": s["vision"]} if s.get("vision") else {}), **self.sample_trajectory(i)}
                for i, s in enumerate(samples)]
        if self.case.kind == "code" and (graded or outcome == "skipped" and samples):
            extra.update(code=first.get("code"), detail=first.get("detail"), sandbox=first.get("sandbox"),
                         artifacts=first.get("artifacts") or {}, runs=first.get("runs") or [])
        if first.get("vision"):
            extra["vision"] = first["vision"]
        vision_calls = [x for s in samples if s.get("calls") for x in s["calls"]]
        extra["vision_judge"] = vision_summary(vision_calls) if vision_calls else None
        if self.robustness is not None:
            extra["robustness"] = self.robustness.to_dict()
        if self.retrieved:
            prefix = str((self.case.retrieve or {}).get("prefix", ""))
            extra["references"] = [h.reference(prefix) for h in self.retrieved]
            extra["retrieval"] = self.retrieval
        if self.target is not None:
            extra.update(app_fields(self))
        extra.update(self.conversation_fields())
        extra.update(self.agent_fields())
        answer = c.text if c else (str(self.case.fields.get("answer")) if self.case.kind == "calibration" else None)
        return CaseResult(
            suite=self.suite, case_id=self.case.id, model=self.model, outcome=outcome, stage=self.stage,
            kind=self.case.kind, nodeid=self.nodeid, file=relative_to(self.config.rootpath, self.case.path),
            line=self.case.line, resolved_model=c.resolved_model if c else None,
            score=score, checks=[o.to_dict() for o in self.outcomes], prompt=self.case.prompt,
            answer=answer, latency_s=c.latency_s if c else None, ttft_s=c.ttft_s if c else None,
            tags=list(self.case.tags), message=message, split=self.case.split,
            prompt_hash=cached_prompt_hash(self.case),
            **call_totals(self.completions or ([c] if c else []), self.failed_retries), **extra,
        )


def call_totals(calls: list[Completion], failed_retries: int) -> dict[str, Any]:
    """The CaseResult fields totalled over an item's calls (usually one), in one pass."""
    if not calls:
        return {"retries": failed_retries, "prompt_tokens": None, "completion_tokens": None, "cost_usd": None,
                "cached": None, "calls": 0, "cache": None, "semantic_hit": None}
    retries, prompt_tokens, completion_tokens = failed_retries, 0, 0
    costs: list[float] = []
    cached, semantic_hit = True, None
    for x in calls:
        if not x.cached:
            retries += x.attempts - 1
            cached = False
        prompt_tokens += x.prompt_tokens or 0
        completion_tokens += x.completion_tokens or 0
        if x.cost_usd is not None:
            costs.append(x.cost_usd)
        if x.semantic and semantic_hit is None:
            semantic_hit = x.semantic
    return {"retries": retries, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "cost_usd": sum(costs) if costs else None, "cached": cached, "calls": len(calls),
            "cache": "semantic" if semantic_hit is not None else "exact" if cached else None,
            "semantic_hit": semantic_hit}
