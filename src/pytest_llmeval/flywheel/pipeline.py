"""The pipeline of ``llmeval generate``: candidates from the model (generate mode) or rewrites of existing cases
(transform mode), validated by the real case loader against the target suite, then filtered, each step counted,
cheapest first: duplicates (exact, then by embedding), code that does not compile, run or pass its own checks in
the sandbox, and a judge. Leaks are flagged. Every model call goes through the response cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.cases.schema import CaseError
from pytest_llmeval.flywheel.prompts import (
    GENERATE_PROMPT_VERSION,
    TEXT_TRANSFORM_RUBRIC,
    TEXT_TRANSFORM_SYSTEM,
    TRANSFORM_RUBRIC,
    TRANSFORM_SYSTEM,
    _clean_fields,
    _guess_language,
    _seeds,
    case_text,
    generation_messages,
    normalise_candidate,
    parse_candidates,
    rewritten_text,
)
from pytest_llmeval.flywheel.spec import (
    Candidate,
    Generated,
    GenerateError,
    SpecFile,
    Summary,
    Target,
    _short,
    generator_model,
    load_target,
)

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.core.checks import CheckRegistry
    from pytest_llmeval.providers.runner import ModelRunner
    from pytest_llmeval.sandbox.isolation import Sandbox

_LEAK_FIELDS = ("context", "question", "prompt", "input")


def _normal(text: str, code: bool = False) -> str:
    """What makes two texts the same: case, spacing and punctuation do not count, except that in code only
    spacing does not (a missing semicolon is another program)."""
    return " ".join(text.split()) if code else " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _reason(err: CaseError) -> str:
    """One schema problem as a counter key: the field without the candidate's position, no quoted inputs."""
    where = re.sub(r"^cases\[0\]\.?", "", err.field or "")
    where = re.sub(r"\[\d+\]", "[]", where)
    message = re.sub(r" \(got .*\)$", "", err.message).split("; expected one of")[0]
    return f"{where}: {message}" if where else message


def leaks(case: CaseSpec) -> list[str]:
    """Expected answers that the case's own prompt text already contains (whole words, any case)."""
    f = case.fields
    shown = "\n".join(str(f[k]) for k in _LEAK_FIELDS if isinstance(f.get(k), str))
    expected: list[str] = []
    if case.kind == "choice" and isinstance(f.get("choices"), dict):
        expected.append(str(f["choices"].get(f.get("answer"), "")))
    elif case.kind == "labels":
        expected += [str(a) for a in f.get("answer") or []]
    for check in case.checks:
        params = check.params
        if check.name in ("contains", "equals"):
            value = params.value
            expected += [value] if isinstance(value, str) else list(value)
        elif check.name == "stdout":
            if params.equals:
                expected.append(params.equals)
            if params.contains:
                expected += [params.contains] if isinstance(params.contains, str) else list(params.contains)
    found = []
    for value in dict.fromkeys(v.strip() for v in expected if v and v.strip()):
        if re.search(rf"(?<!\w){re.escape(value)}(?!\w)", shown, re.IGNORECASE):
            found.append(value)
    return found


def _prompt_hash(messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """The request without its run (the seed): every run of one prompt shares the hash."""
    params = {k: v for k, v in params.items() if k != "seed"}
    blob = json.dumps({"messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------- pipeline


class _Pipeline:
    def __init__(self, spec_file: SpecFile, target: Target, runner: ModelRunner, generator: str,
                 judge_model: str | None, sandbox_level: str, embedding_model: str | None,
                 log: Callable[[str], None]) -> None:
        self.spec_file = spec_file
        self.spec = spec_file.spec
        self.target = target
        self.runner = runner
        self.generator = generator
        self.judge_model = judge_model
        self.sandbox_level = sandbox_level
        self.embedding_model = embedding_model
        self.log = log
        self.summary = Summary()
        self._sandbox: Sandbox | None = None
        self._existing_ids: list[str | None] = []
        self._existing_vectors: Any = None
        t = self.spec.transform
        # In transform mode duplicates are compared on the code, not on a prompt that every rewrite shares.
        self.text_field = None if t is None else (t.target_field or t.field or
                                                  ("input" if target.kind == "labels" else "solution"))

    def text_of(self, case: Any) -> str:
        if not isinstance(case, dict):
            return ""
        if self.text_field is not None and isinstance(case.get(self.text_field), str):
            return str(case[self.text_field])
        return case_text(case)

    # ---- model calls

    def complete(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any], sample: int,
                 extra: dict[str, Any]) -> str:
        from pytest_llmeval.providers.resilience import BudgetExhausted
        from pytest_llmeval.providers.runner import ModelCallError

        try:
            return self.runner.complete(model, messages, params, sample=sample, key_extra=extra,
                                        semantic=False).text
        except (ModelCallError, BudgetExhausted) as exc:
            raise GenerateError(f"{model}: {getattr(exc, 'message', exc)}") from None

    def gen_params(self, run: int) -> dict[str, Any]:
        # A seed per run: a local model samples reproducibly, and hosted ones that honour it too.
        return {"temperature": self.spec.temperature, "max_tokens": self.spec.max_tokens, "seed": run}

    # ---- sandbox

    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            from pytest_llmeval.sandbox.isolation import Sandbox, SandboxUnavailable

            try:
                self._sandbox = Sandbox(self.sandbox_level, hide=[Path.cwd()])
            except SandboxUnavailable as exc:
                raise GenerateError(f"{exc} (or turn the compile filter off: filters: {{compile: false}})") from None
        return self._sandbox

    def execute(self, code: str, language: str, limits: dict[str, Any]) -> tuple[str | None, str | None, str]:
        """Run a program once: (failure step or None, why, stdout)."""
        from pytest_llmeval.checks.code import CodeContext
        from pytest_llmeval.sandbox.isolation import Limits

        with CodeContext(code, language, self.sandbox(), Limits(**limits)) as ctx:
            ok, why = ctx.compile()
            if not ok:
                return "no_compile", why, ""
            result = ctx.run()
            assert result is not None
            if not result.ok:
                tail = " | ".join(result.stderr.strip().splitlines()[-3:])[:300]
                return "failed_run", f"{result.reason}" + (f": {tail}" if tail else ""), result.stdout
            return None, None, result.stdout

    # ---- generate mode

    def generate_candidates(self) -> list[Candidate]:
        seeds = _seeds(self.spec, self.target)
        n = self.spec.per_run or self.spec.count
        messages = generation_messages(self.spec, self.target, seeds, n)
        out = []
        for run in range(self.spec.runs):
            params = self.gen_params(run)
            text = self.complete(self.generator, messages, params, run,
                                 {"purpose": "generate", "version": GENERATE_PROMPT_VERSION})
            self.summary.replies += 1
            found = parse_candidates(text)
            if not found:
                self.summary.unparsed_replies += 1
                self.summary.drops.append(("unparsed", "", f"run {run}: no cases in the reply: {_short(text, 120)!r}"))
            self.log(f"{self.generator} run {run + 1}/{self.spec.runs}: {len(found)} case(s)")
            for raw in found:
                case = normalise_candidate(raw)
                out.append(Candidate(case, run, _prompt_hash(messages, params), text=self.text_of(case)))
        return out

    # ---- transform mode

    def transform_candidates(self) -> list[Candidate]:
        from pytest_llmeval.checks.extract import extract_code

        t = self.spec.transform
        assert t is not None
        same = t.source is None
        source = self.target if t.source is None else load_target(
            (self.spec_file.path.parent / t.source).resolve(), None, self.target.registry, where="transform.source")
        text_mode = t.text if t.text is not None else self.target.kind in ("qna", "choice")
        default_field = ("question" if self.target.kind in ("qna", "choice") else "input") if text_mode \
            else ("input" if source.kind == "labels" else "solution")
        code_field = t.field or default_field
        self.text_field = t.target_field or code_field
        raw_by_id = {str(c.get("id")): c for c in source.raw_cases}
        wanted = set(t.cases) if t.cases is not None else None
        out: list[Candidate] = []
        if text_mode:
            return self._text_transforms(source, code_field, raw_by_id, wanted, same)
        for src in source.cases:
            if wanted is not None and src.id not in wanted:
                continue
            code = src.fields.get(code_field)
            if not isinstance(code, str) or not code.strip():
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"no {code_field!r} field with code"))
                continue
            language = t.language or src.fields.get("language") or _guess_language(code)
            failed, why, stdout = self.execute(code, str(language), src.limits)
            if failed:
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"the source itself does not run ({failed}: {why})"))
                continue
            self.summary.sources += 1
            messages = [{"role": "system", "content": TRANSFORM_SYSTEM},
                        {"role": "user", "content": f"{t.prompt.strip()}\n\n```{language}\n{code.rstrip()}\n```"}]
            # The new case: a copy of its source with the code replaced; a labels case made from another
            # suite's code is just the code and its label.
            base = _clean_fields(raw_by_id.get(src.id) or src.fields) if same or self.target.kind != "labels" \
                else {}
            origin = {} if same else {"source_suite": os.path.relpath(source.path, self.target.path.parent)}
            for run in range(self.spec.runs):
                params = self.gen_params(run)
                text = self.complete(self.generator, messages, params, run,
                                     {"purpose": "transform", "version": GENERATE_PROMPT_VERSION})
                self.summary.replies += 1
                new_code = extract_code(text, str(language))
                if new_code is None:
                    self.summary.unparsed_replies += 1
                    self.summary.drops.append(("unparsed", src.id, f"run {run}: no {language} code in the reply"))
                    continue
                case = {k: v for k, v in base.items() if k != code_field}
                case[t.target_field or code_field] = new_code
                if self.target.kind == "labels":
                    label = t.label or t.name
                    answer = [str(a) for a in case.get("answer") or []]
                    case["answer"] = answer + ([label] if label not in answer else [])
                else:
                    case["tags"] = [*(case.get("tags") or []), *([] if t.name in (case.get("tags") or []) else [t.name])]
                out.append(Candidate(case, run, _prompt_hash(messages, params), source_case=src.id, text=new_code,
                                     code=new_code, language=str(language), source_code=code,
                                     source_output=stdout, extra=dict(origin)))
            self.log(f"{self.generator}: {src.id} rewritten {self.spec.runs} time(s)")
        return out

    def _text_transforms(self, source: Target, text_field: str, raw_by_id: dict[str, Any], wanted: set[str] | None,
                         same: bool) -> list[Candidate]:
        """Transform mode on text (a paraphrase of each question, say): the new case is its source with the field
        rewritten, so its checks carry over; nothing runs."""
        t = self.spec.transform
        assert t is not None
        out: list[Candidate] = []
        origin = {} if same else {"source_suite": os.path.relpath(source.path, self.target.path.parent)}
        for src in source.cases:
            if wanted is not None and src.id not in wanted:
                continue
            original = src.fields.get(text_field)
            if not isinstance(original, str) or not original.strip():
                self.summary.sources_skipped += 1
                self.summary.drops.append(("source", src.id, f"no {text_field!r} text"))
                continue
            self.summary.sources += 1
            messages = [{"role": "system", "content": TEXT_TRANSFORM_SYSTEM},
                        {"role": "user", "content": f"{t.prompt.strip()}\n\n{original.strip()}"}]
            base = _clean_fields(raw_by_id.get(src.id) or src.fields)
            for run in range(self.spec.runs):
                params = self.gen_params(run)
                reply = self.complete(self.generator, messages, params, run,
                                      {"purpose": "transform", "version": GENERATE_PROMPT_VERSION})
                self.summary.replies += 1
                new_text = rewritten_text(reply)
                if not new_text:
                    self.summary.unparsed_replies += 1
                    self.summary.drops.append(("unparsed", src.id, f"run {run}: an empty reply"))
                    continue
                case = dict(base)
                case[t.target_field or text_field] = new_text
                case["tags"] = [*(case.get("tags") or []), *([] if t.name in (case.get("tags") or []) else [t.name])]
                out.append(Candidate(case, run, _prompt_hash(messages, params), source_case=src.id, text=new_text,
                                     source_code=original, extra=dict(origin)))
            self.log(f"{self.generator}: {src.id} rewritten {self.spec.runs} time(s)")
        return out

    # ---- filters

    def run(self) -> list[Candidate]:
        spec = self.spec
        candidates = self.transform_candidates() if spec.transform else self.generate_candidates()
        s = self.summary
        s.generated = len(candidates)
        valid: list[Candidate] = []
        for c in candidates:
            if not isinstance(c.case, dict):
                s.invalid_reasons["not a mapping of case fields"] += 1
                s.drop("invalid", None, f"not a mapping: {_short(repr(c.case))}")
                continue
            if spec.transform is None and self.target.kind == "code" and spec.filters.compile \
                    and not isinstance(c.case.get("solution"), str):
                s.invalid_reasons["solution: required field is missing (filters.compile)"] += 1
                s.drop("invalid", c, "no reference solution to compile")
                continue
            loaded, errors = self.target.validate(c.case)
            if loaded is None:
                reason = _reason(errors[0])
                s.invalid_reasons[reason] += 1
                s.drop("invalid", c, reason)
                continue
            c.spec = loaded
            c.filters.append("schema")
            valid.append(c)

        existing = self.existing_texts()
        vectors = self.embed([c.text for c in valid], existing) if spec.filters.dedupe else None
        kept: list[Candidate] = []
        kept_rows: list[int] = []
        code = self.text_field is not None
        seen = {_normal(t, code): src for t, src in existing}
        for i, c in enumerate(valid):
            if len(kept) >= spec.count:
                s.drop("surplus", c, f"beyond count: {spec.count}")
                continue
            key = _normal(c.text, code)
            if c.source_code is not None and key == _normal(c.source_code, code):
                s.drop("duplicates", c, "the rewrite is its source unchanged")
                continue
            if key in seen:
                s.drop("duplicates", c, "the same text as " + (f"case {seen[key]!r}" if seen[key] else
                                                               "a seed or an earlier candidate"))
                continue
            if vectors is not None:
                near = self.nearest(i, vectors, kept_rows, c.source_case)
                if near is not None and near >= (spec.filters.dedupe or 1):
                    s.drop("duplicates", c, f"cosine {near:.3f} >= {spec.filters.dedupe}")
                    continue
                c.extra["max_similarity"] = None if near is None else round(near, 4)
                c.filters.append("dedupe")
            if not self.code_filters(c):
                continue
            if spec.filters.judge is not None and self.target.kind != "calibration" and not self.judge(c):
                continue
            if spec.filters.leak and c.spec is not None:
                leaked = leaks(c.spec)
                if leaked:
                    c.flags.append("leak")
                    c.notes.append("leak: the prompt already contains the expected " +
                                   ", ".join(repr(v) for v in leaked))
                    s.leaks_flagged += 1
            seen[key] = None
            kept.append(c)
            kept_rows.append(i)
        s.kept = len(kept)
        return kept

    def existing_texts(self) -> list[tuple[str, str | None]]:
        """(text, case id) of what candidates must not duplicate: the suite's cases and the spec's seeds."""
        out: list[tuple[str, str | None]] = [(self.text_of(c.fields), c.id) for c in self.target.cases]
        out += [(self.text_of(s), None) for s in self.spec.seeds or [] if isinstance(s, dict)]
        return out

    def embed(self, texts: list[str], existing: list[tuple[str, str | None]]) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from pytest_llmeval.cache.embeddings import EmbeddingModelError, get_embedder

        try:
            embedder = get_embedder(self.embedding_model)
        except EmbeddingModelError as exc:
            raise GenerateError(f"filters.dedupe: {exc}") from None
        self._existing_ids = [cid for _, cid in existing]
        self._existing_vectors = embedder.encode([t for t, _ in existing])
        return embedder.encode(texts)

    def nearest(self, i: int, vectors: Any, kept_rows: list[int], source_case: str | None) -> float | None:
        """The highest cosine of candidate ``i`` with the existing cases (its own transform source excepted)
        and the candidates kept so far."""
        import numpy as np

        v = vectors[i]
        sims: list[float] = []
        if len(self._existing_vectors):
            scores = self._existing_vectors @ v
            sims += [float(x) for x, cid in zip(scores, self._existing_ids, strict=True)
                     if source_case is None or cid != source_case]
        if kept_rows:
            sims += [float(x) for x in vectors[np.asarray(kept_rows)] @ v]
        return max(sims) if sims else None

    def code_filters(self, c: Candidate) -> bool:
        """Code candidates: the solution (or the rewritten code) compiles, runs, passes the case's own code
        checks, and (transform) prints what its source printed."""
        s = self.summary
        assert c.spec is not None
        if c.code is not None and c.source_output is not None:  # transform mode: always run, it is the point
            t = self.spec.transform
            assert t is not None
            failed, why, stdout = self.execute(c.code, c.language or "c", c.spec.limits)
            if failed:
                s.drop(failed, c, str(why))
                return False
            c.extra["output"] = stdout
            c.filters.append("compile")
            if t.same_output:
                if _lines(stdout) != _lines(c.source_output):
                    s.drop("changed_output", c, f"prints {_short(stdout, 60)!r}, the source printed "
                                                f"{_short(c.source_output, 60)!r}")
                    return False
                c.filters.append("same_output")
            return True
        if self.target.kind != "code" or not self.spec.filters.compile:
            return True
        solution = c.case.get("solution")
        assert isinstance(solution, str)
        from pytest_llmeval.checks.code import CodeContext
        from pytest_llmeval.checks.extract import extract_code
        from pytest_llmeval.sandbox.isolation import Limits

        language = str(c.spec.fields["language"])
        code = extract_code(solution, language) if "```" in solution else solution
        with CodeContext(code, language, self.sandbox(), Limits(**c.spec.limits)) as ctx:
            ok, why = ctx.compile()
            if not ok:
                s.drop("no_compile", c, why)
                return False
            for check in c.spec.checks:
                if check.name == "files":
                    ctx.want_files(list(check.params.value))
            result = ctx.run()
            assert result is not None
            if not result.ok:
                s.drop("failed_run", c, str(result.reason))
                return False
            c.extra["output"] = result.stdout
            failures = []
            for check in c.spec.checks:
                d = check.definition
                if d is None or d.grade is None or not d.context or d.vision or d.judge:
                    continue
                outcome = d.grade(code, c.spec, check.params, ctx)
                if not outcome.passed:
                    failures.append(f"{check.name}: {outcome.reason}")
            if failures:
                s.drop("failed_checks", c, "; ".join(failures))
                return False
        c.filters.append("compile")
        return True

    def judge(self, c: Candidate) -> bool:
        """A judge model confirms the reference answer (or, for a rewrite, that it is faithful)."""
        from pytest_llmeval.checks.judge import (
            FIX_PROMPT,
            JUDGE_PARAMS,
            JUDGE_PROMPT_VERSION,
            ask_twice,
            judge_messages,
            parse_verdict,
            resolve_rubric,
        )

        jf = self.spec.filters.judge
        assert jf is not None and c.spec is not None and self.judge_model is not None
        question, answer = self.judge_material(c)
        if answer is None:
            self.summary.drop("judge_rejected", c, "no reference answer to judge")
            return False
        if c.source_case is not None:
            name, criteria = "faithful-rewrite", TRANSFORM_RUBRIC if c.code is not None else TEXT_TRANSFORM_RUBRIC
        else:
            name, criteria = resolve_rubric(jf.rubric)
        # The reference answer is what is judged, so it is not also shown as the reference.
        messages = judge_messages(criteria, question=question, answer=answer,
                                  context=_text(c.spec.fields.get("context")))
        model = self.judge_model
        from pytest_llmeval.providers.resilience import BudgetExhausted
        from pytest_llmeval.providers.runner import ModelCallError

        try:
            verdict, _ = ask_twice(
                lambda msgs, attempt: self.runner.complete(model, msgs, JUDGE_PARAMS, sample=attempt,
                                                           key_extra={"judge_prompt": JUDGE_PROMPT_VERSION},
                                                           semantic=False),
                messages, parse_verdict, FIX_PROMPT, [])
        except (ModelCallError, BudgetExhausted) as exc:
            raise GenerateError(f"filters.judge: {model}: {getattr(exc, 'message', exc)}") from None
        if verdict.score is None:
            self.summary.drop("judge_rejected", c, f"judge gave no usable score ({verdict.problem})")
            return False
        c.extra["judge"] = {"model": model, "rubric": name, "score": verdict.score, "reason": verdict.reason}
        if verdict.score < jf.min:
            self.summary.drop("judge_rejected", c, f"{name} {verdict.score:g}/10 < {jf.min:g}: {verdict.reason}")
            return False
        c.filters.append("judge")
        return True

    def judge_material(self, c: Candidate) -> tuple[str, str | None]:
        """(question, answer) for the judge: the case's prompt and its reference answer."""
        assert c.spec is not None
        f = c.spec.fields
        if c.source_case is not None:
            t = self.spec.transform
            assert t is not None
            if c.code is None:  # a text rewrite
                return f"Instruction: {t.prompt}\n\nOriginal text:\n{c.source_code}", c.text
            return f"Instruction: {t.prompt}\n\nOriginal code:\n{c.source_code}", c.code
        kind = c.spec.kind
        if kind == "choice":
            return c.spec.prompt, f"{f['answer']}) {f['choices'][f['answer']]}"
        if kind == "labels":
            return c.spec.prompt, ", ".join(map(str, f.get("answer") or [])) or "(no label applies)"
        if kind == "code":
            solution = f.get("solution")
            return c.spec.prompt, None if solution is None else str(solution)
        if f.get("reference"):
            return c.spec.prompt, str(f["reference"])
        expected = [v for ch in c.spec.checks if ch.name in ("contains", "equals")
                    for v in ([ch.params.value] if isinstance(ch.params.value, str) else ch.params.value)]
        return c.spec.prompt, ("An answer that says: " + "; ".join(expected)) if expected else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return "\n\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _lines(text: str) -> list[str]:
    """Output compared line by line, ignoring trailing spaces and trailing blank lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def generate(spec_file: SpecFile, runner: ModelRunner, *, model: str | None = None, judge_model: str | None = None,
             sandbox: str = "auto", embedding_model: str | None = None, registry: CheckRegistry | None = None,
             log: Callable[[str], None] = lambda _msg: None) -> Generated:
    """Run a spec: generate (or transform), validate, filter. Raises GenerateError on user-facing failures."""
    from pytest_llmeval.checks.builtin import builtin_registry

    spec = spec_file.spec
    target_path = (spec_file.path.parent / spec.suite).resolve()
    target = load_target(target_path, spec.kind, registry or builtin_registry())
    generator = generator_model(spec, model)
    problem = runner.check_model(generator)
    if problem:
        raise GenerateError(problem)
    judge = None
    self_judging = False
    if spec.filters.judge is not None:
        judge = spec.filters.judge.model or judge_model or os.environ.get("LLMEVAL_JUDGE") or generator
        self_judging = judge == generator
        problem = runner.check_model(judge)
        if problem:
            raise GenerateError(f"filters.judge: {problem}")
    pipeline = _Pipeline(spec_file, target, runner, generator, judge, sandbox, embedding_model, log)
    kept = pipeline.run()
    return Generated(spec_file, target, generator, judge, kept, pipeline.summary, self_judging)
