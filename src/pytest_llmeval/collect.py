"""Case files as pytest collectors; each case x model becomes one item.

Ids read like ``cases/geography.yaml::capital-fr[groq/llama3-70b]`` so ``-k``, ``--lf``, ``--deselect``
and ``-n`` work as usual. An invalid case (or file) becomes an item that errors in setup with a precise
message, instead of a collection error that would abort the whole run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmeval.cases import CaseError, CaseSpec, load_file
from pytest_llmeval.checks import CheckOutcome
from pytest_llmeval.models import Completion, ModelCallError
from pytest_llmeval.results import CaseResult

if TYPE_CHECKING:
    from pytest_llmeval.session import LLMEvalSession

SHOW_CHARS = 1200  # of prompt and answer in a failure report


def _session(config: pytest.Config) -> LLMEvalSession:
    from pytest_llmeval.session import STATE

    return config.stash[STATE]


class InvalidCase(Exception):
    """A case (or whole file) failed validation."""

    def __init__(self, errors: list[CaseError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


class ModelUnusable(Exception):
    """The model cannot be used at all in this run (unknown provider, missing key)."""


class CaseFailed(Exception):
    """The answer failed one or more checks."""


class CaseFile(pytest.File):
    """A suite file (YAML) or a bare JSONL suite."""

    def collect(self) -> Iterator[pytest.Item]:
        state = _session(self.config)
        loaded = load_file(self.path, state.registry)
        groups: dict[str, list[CaseError]] = {}
        for err in loaded.errors:
            groups.setdefault(err.case_id or "invalid", []).append(err)
        for name, errors in groups.items():
            yield InvalidCaseItem.from_parent(self, name=name, errors=errors)
        for case in loaded.cases:
            if case.id in groups:
                continue
            for model in state.settings.models:
                yield CaseItem.from_parent(self, **self._ids(case.id, model), case=case, model=model)

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

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, InvalidCase):
            root = self.config.rootpath
            # The first line is what -r/short summaries show: make it the first problem itself.
            return "\n".join(e.format(root) for e in self.errors)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        line = self.errors[0].line
        return self.path, (line - 1) if line else None, f"invalid: {self.name}"


class CaseItem(pytest.Item):
    """One case run against one model."""

    def __init__(self, *, case: CaseSpec, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.model = model
        self.completion: Completion | None = None
        self.completions: list[Completion] = []
        self.outcomes: list[CheckOutcome] = []
        self.samples: list[dict[str, Any]] = []  # per answer: checks, code, detail, artifacts
        self.add_marker("llmeval")
        # -k can select by suite, kind and tag.
        self.extra_keyword_matches.update([case.suite, case.kind, *case.tags])

    # ---- phases: the model call happens in setup, so a provider failure is an *error*, not a failure

    def setup(self) -> None:
        pending = sorted({c.name for c in self.case.checks if c.definition and c.definition.grade is None})
        if pending:
            pytest.skip(f"grading of {self.case.kind!r} cases ({', '.join(pending)}) is not implemented yet")
        state = _session(self.config)
        problem = state.unusable.get(self.model)
        if problem:
            raise ModelUnusable(problem)
        n = 1
        if self.case.kind == "code":
            state.get_sandbox()  # no isolation available: an error before any model call
            n = state.settings.samples
        messages = self.case.messages()
        self.completions = [state.runner.complete(self.model, messages, self.case.params, sample=i)
                            for i in range(n)]
        self.completion = self.completions[0]

    def runtest(self) -> None:
        assert self.completions
        self.samples = [self._grade(c.text, i) for i, c in enumerate(self.completions)]
        self.outcomes = self.samples[0]["outcomes"]
        # With several samples (pass@k), the case passes when any sample passes; its score is pass@1.
        if not any(s["passed"] for s in self.samples):
            raise CaseFailed()

    def _grade(self, answer: str, index: int) -> dict[str, Any]:
        checks = self.case.checks
        if self.case.kind != "code":
            outcomes = [c.definition.grade(answer, self.case, c.params) for c in checks
                        if c.definition and c.definition.grade]
            return {"outcomes": outcomes, "passed": all(o.passed for o in outcomes)}
        from pytest_llmeval.checks.code import CodeContext, save_artifacts
        from pytest_llmeval.extract import extract_code
        from pytest_llmeval.sandbox import Limits

        state = _session(self.config)
        sandbox = state.get_sandbox()
        language = str(self.case.fields["language"])
        code = extract_code(answer, language)
        with CodeContext(code, language, sandbox, Limits(**self.case.limits)) as ctx:
            for c in checks:
                if c.name == "files":
                    ctx.want_files(list(c.params.value))
            outcomes = [c.definition.grade(answer, self.case, c.params, ctx) for c in checks
                        if c.definition and c.definition.grade]
            slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.model)
            target = state.settings.artifacts_dir / self.case.suite / self.case.id / slug / str(index)
            artifacts = save_artifacts(ctx.files, target)
        return {"outcomes": outcomes, "passed": all(o.passed for o in outcomes), "code": code,
                "detail": ctx.detail, "runs": ctx.runs, "artifacts": artifacts, "sandbox": sandbox.level}

    # ---- reporting

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        exc = excinfo.value
        where = f"{self.case.path.name}:{self.case.line}" if self.case.line else self.case.path.name
        if isinstance(exc, ModelCallError):
            return f"model call failed for case {self.case.id} ({where}) on {self.model}:\n  {exc.message}"
        if isinstance(exc, ModelUnusable):
            return f"model {self.model} cannot be used: {exc}"
        if type(exc).__name__ == "SandboxUnavailable":
            return f"case {self.case.id} ({where}) cannot run: {exc}"
        if isinstance(exc, CaseFailed):
            return self._format_failure(where)
        return str(super().repr_failure(excinfo))

    def _format_failure(self, where: str) -> str:
        def block(text: str) -> str:
            text = text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + f"… [{len(text)} chars]"
            return textwrap.indent(text or "(empty)", "    ")

        assert self.completion is not None
        lines = [f"case {self.case.id} ({where}) failed on {self.model}"]
        if self.case.system:
            lines += ["  system:", block(self.case.system)]
        lines += ["  prompt:", block(self.case.prompt), "  answer:", block(self.completion.text)]
        first = self.samples[0] if self.samples else {}
        if self.case.kind == "code":
            code = first.get("code")
            lines += ["  extracted code:" if code else "  extracted code: none found", *([block(code)] if code else [])]
            if first.get("detail"):
                lines.append(f"  detail: {first['detail']}")
        if len(self.samples) > 1:
            lines.append(f"  samples: 0 of {len(self.samples)} passed; the first one's checks:")
        lines.append("  checks:")
        for o in self.outcomes:
            mark = "ok  " if o.passed else "FAIL"
            lines.append(f"    {mark} {o.name} (score {o.score:.2f})" + (f": {o.reason}" if o.reason else ""))
        return "\n".join(lines)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        line = self.case.line
        return self.case.path, (line - 1) if line else None, f"{self.case.suite}::{self.name}"

    def result(self, outcome: str, message: str | None) -> CaseResult:
        """This item's CaseResult for the given outcome."""
        from pytest_llmeval.results import pass_at_k

        c = self.completion
        graded = outcome in ("passed", "failed") and bool(self.samples)
        first = self.samples[0] if self.samples else {}
        scores = [o.score for o in self.outcomes]
        score = (sum(scores) / len(scores)) if scores and graded else None
        extra: dict[str, Any] = {}
        if self.case.kind == "code" and graded:
            n, passed = len(self.samples), sum(1 for s in self.samples if s["passed"])
            extra = {"code": first.get("code"), "detail": first.get("detail"), "sandbox": first.get("sandbox"),
                     "artifacts": first.get("artifacts") or {}, "runs": first.get("runs") or [],
                     "pass_at_k": {str(k): round(pass_at_k(n, passed, k), 6)
                                   for k in sorted({1, 5, 10, 20, 50, 100, n}) if k <= n}}
            if n > 1:
                score = passed / n  # the case's pass@1 estimate
                extra["samples"] = [
                    {"sample": i, "passed": s["passed"], "detail": s.get("detail"),
                     "answer": self.completions[i].text[:2000], "cached": self.completions[i].cached,
                     "checks": [o.to_dict() for o in s["outcomes"]], "artifacts": s.get("artifacts") or {}}
                    for i, s in enumerate(self.samples)]
        calls = self.completions or ([c] if c else [])
        return CaseResult(
            suite=self.case.suite, case_id=self.case.id, model=self.model, outcome=outcome,
            kind=self.case.kind, nodeid=self.nodeid, file=_relative(self.config, self.case.path),
            line=self.case.line, resolved_model=c.resolved_model if c else None,
            score=score, checks=[o.to_dict() for o in self.outcomes], prompt=self.case.prompt,
            answer=c.text if c else None, latency_s=c.latency_s if c else None,
            prompt_tokens=sum(x.prompt_tokens or 0 for x in calls) if calls else None,
            completion_tokens=sum(x.completion_tokens or 0 for x in calls) if calls else None,
            cost_usd=sum(x.cost_usd for x in calls if x.cost_usd is not None)
            if any(x.cost_usd is not None for x in calls) else None,
            cached=all(x.cached for x in calls) if calls else None, calls=len(calls),
            tags=list(self.case.tags), message=message, **extra,
        )


def _relative(config: pytest.Config, path: Any) -> str:
    try:
        return str(path.relative_to(config.rootpath))
    except ValueError:
        return str(path)
