"""Checks of `code` cases: compiles, runs, stdout, tests, files. Every execution happens in the sandbox.

One :class:`CodeContext` per graded answer memoises the compile and the run, so ``runs``, ``stdout`` and
``files`` share one execution; each ``tests`` check runs the code with its test code in a fresh work dir.
The checks reach it as the grading context's ``code`` service (built by the run for code cases only).
"""

from __future__ import annotations

import re
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from pytest_llmeval.core.checks import CheckDef, CheckOutcome, CheckParams, GradeContext

if TYPE_CHECKING:
    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.sandbox.isolation import Limits, RunResult, Sandbox, WorkDir

CODE = frozenset({"code"})
USES = frozenset({"code"})  # the grading context's code service
NO_CODE = "NO_CODE"
NO_COMPILE = "NO_COMPILE"
C_COMPILE = ["gcc", "-std=gnu11", "-O1", "-w", "-o", "prog", "main.c", "-lm"]


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[:600]


class CodeContext:
    """The code extracted from one answer and its (memoised) executions in the sandbox."""

    def __init__(self, code: str | None, language: str, sandbox: Sandbox, limits: Limits,
                 python: str | None = None) -> None:
        self.code = code
        self.language = language
        self.sandbox = sandbox
        self.limits = limits
        self.python = python or sandbox.python
        self.detail: str | None = NO_CODE if code is None else None
        self.files: dict[str, Path] = {}
        self.runs: list[dict[str, Any]] = []  # what ran, for the CaseResult
        self._stack = ExitStack()
        self._workdir: WorkDir | None = None
        self._compiled: tuple[bool, str] | None = None
        self._run: RunResult | None = None
        self._collect: set[str] = set()

    def __enter__(self) -> CodeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        # The collected files were copied out for this answer only (save_artifacts keeps what is wanted):
        # a long session must not pile them up in the temporary directory until it exits.
        from pytest_llmeval.sandbox.isolation import discard_files

        discard_files(self.files)
        self.files = {}

    def want_files(self, names: list[str]) -> None:
        """Declare files to collect after the run (called before grading starts)."""
        self._collect.update(names)

    def _record(self, step: str, result: RunResult) -> None:
        self.runs.append({"step": step, "exit_code": result.exit_code, "reason": result.reason,
                          "duration_s": round(result.duration_s, 4), "level": result.level,
                          "stderr": _tail(result.stderr, 12)})

    def _wd(self) -> WorkDir:
        if self._workdir is None:
            self._workdir = self._stack.enter_context(self.sandbox.workdir(self.limits))
            assert self.code is not None
            self._workdir.write("main.py" if self.language == "python" else "main.c", self.code)
        return self._workdir

    def compile(self) -> tuple[bool, str]:
        """(compiled, why not). Python is compiled in-process (compiling runs nothing); C inside the
        sandbox (an ``#include "/etc/shadow"`` must not be read by the compiler as us)."""
        if self._compiled is None:
            self._compiled = self._compile()
            if not self._compiled[0] and self.code is not None:
                self.detail = NO_COMPILE
        return self._compiled

    def _compile(self) -> tuple[bool, str]:
        if self.code is None:
            return False, "no code found in the answer"
        if self.language == "python":
            try:
                compile(self.code, "main.py", "exec")
            except SyntaxError as exc:
                return False, f"SyntaxError: {exc.msg} (line {exc.lineno})"
            return True, ""
        result = self._wd().run(C_COMPILE, limits=self.limits)
        self._record("compile", result)
        if result.ok:
            return True, ""
        return False, str(result.reason) if result.timed_out else _tail(result.stderr) or str(result.reason)

    def run(self) -> RunResult | None:
        """Run the program once (None when it does not compile)."""
        if self._run is None:
            ok, _ = self.compile()
            if not ok:
                return None
            cmd = [self.python, "-I", "main.py"] if self.language == "python" else ["./prog"]
            self._run = self._wd().run(cmd, limits=self.limits, collect=sorted(self._collect))
            self._record("run", self._run)
            self.files = dict(self._run.files)
        return self._run

    def run_tests(self, tests: str, entry_point: str | None, setup: str | None = None) -> RunResult | None:
        ok, _ = self.compile()
        if not ok:
            return None
        assert self.code is not None
        program = f"{setup}\n{self.code}\n\n{tests}\n" if setup else f"{self.code}\n\n{tests}\n"
        if entry_point:
            program += f"\ncheck({entry_point})\n"
        result = self.sandbox.run([self.python, "-I", "main.py"], {"main.py": program}, limits=self.limits)
        self._record("tests", result)
        return result


def _program(ctx: GradeContext | CodeContext) -> CodeContext:
    """The code context: the grading context's, or a CodeContext given directly (the case generator runs the code
    checks on its candidates' programs outside a run)."""
    return ctx if isinstance(ctx, CodeContext) else ctx.code


def _no_program(name: str, ctx: CodeContext) -> CheckOutcome:
    ok, why = ctx.compile()
    return CheckOutcome(name, False, 0.0, why if not ok else "the program did not run")


def _failed_run(result: RunResult) -> str:
    return str(result.reason) if result.timed_out else (
        f"{result.reason}: {_tail(result.stderr)}" if result.stderr.strip() else str(result.reason))


class FlagParams(CheckParams):
    value: bool = True

    @field_validator("value")
    @classmethod
    def _true(cls, v: bool) -> bool:
        if not v:
            raise ValueError("only 'true' is meaningful; remove the check instead")
        return v


def grade_compiles(answer: str, case: CaseSpec, p: FlagParams, ctx: GradeContext | CodeContext) -> CheckOutcome:
    program = _program(ctx)
    ok, why = program.compile()
    return CheckOutcome("compiles", ok, float(ok), why)


def grade_runs(answer: str, case: CaseSpec, p: FlagParams, ctx: GradeContext | CodeContext) -> CheckOutcome:
    program = _program(ctx)
    result = program.run()
    if result is None:
        return _no_program("runs", program)
    return CheckOutcome("runs", result.ok, float(result.ok), "" if result.ok else _failed_run(result))


class StdoutParams(CheckParams):
    equals: str | None = None
    contains: str | list[str] | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StdoutParams:
        if self.equals is None and self.contains is None and self.regex is None:
            raise ValueError("give equals, contains or regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return self


def grade_stdout(answer: str, case: CaseSpec, p: StdoutParams, ctx: GradeContext | CodeContext) -> CheckOutcome:
    program = _program(ctx)
    result = program.run()
    if result is None:
        return _no_program("stdout", program)
    out = result.stdout
    problems = []
    if p.equals is not None and out.strip() != p.equals.strip():
        problems.append(f"stdout is {out.strip()[:200]!r}, expected {p.equals.strip()!r}")
    if p.contains is not None:
        needles = [p.contains] if isinstance(p.contains, str) else p.contains
        missing = [n for n in needles if n not in out]
        if missing:
            problems.append(f"stdout lacks {', '.join(repr(m) for m in missing)}")
    if p.regex is not None and not re.search(p.regex, out):
        problems.append(f"stdout does not match /{p.regex}/")
    if not result.ok:
        problems.append(f"and the program failed ({_failed_run(result)})")
    passed = not problems
    return CheckOutcome("stdout", passed, float(passed), "; ".join(problems))


class TestsParams(CheckParams):
    code: str = Field(min_length=1)  # assert statements, or a HumanEval-style check(candidate) function
    entry_point: str | None = None  # with check(candidate): the function under test
    setup: str | None = None  # run before the answer's code (imports the answer may have dropped)


def grade_tests(answer: str, case: CaseSpec, p: TestsParams, ctx: GradeContext | CodeContext) -> CheckOutcome:
    program = _program(ctx)
    if program.language != "python":
        return CheckOutcome("tests", False, 0.0, "tests run Python test code: use runs/stdout for C")
    result = program.run_tests(p.code, p.entry_point, p.setup)
    if result is None:
        return _no_program("tests", program)
    return CheckOutcome("tests", result.ok, float(result.ok), "" if result.ok else _failed_run(result))


class FilesParams(CheckParams):
    value: list[str] = Field(min_length=1)

    @field_validator("value")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"{name!r}: expected a path inside the work directory")
        return v


def grade_files(answer: str, case: CaseSpec, p: FilesParams, ctx: GradeContext | CodeContext) -> CheckOutcome:
    program = _program(ctx)
    result = program.run()
    if result is None:
        return _no_program("files", program)
    missing = [name for name in p.value if name not in program.files]
    passed = not missing
    reason = "" if passed else f"the program did not write {', '.join(missing)}"
    if not result.ok:
        reason += ("; " if reason else "") + f"the program failed ({_failed_run(result)})"
    return CheckOutcome("files", passed, float(passed), reason)


def _want_files(p: FilesParams, ctx: GradeContext) -> None:
    """Before the program runs: keep the files the check lists (the run copies them out of the sandbox)."""
    ctx.code.want_files(list(p.value))


def save_artifacts(files: dict[str, Path], target: Path) -> dict[str, str]:
    """Copy collected files out of the sandbox's output folder; returns name -> saved path."""
    saved = {}
    for name, src in files.items():
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        saved[name] = str(dst)
    return saved


CHECKS = [
    CheckDef("compiles", FlagParams, grade_compiles, shorthand="value", kinds=CODE, uses=USES,
             doc="the program compiles (C: gcc in the sandbox; Python: a syntax check)"),
    CheckDef("runs", FlagParams, grade_runs, shorthand="value", kinds=CODE, uses=USES,
             doc="the program exits 0 within the limits"),
    CheckDef("stdout", StdoutParams, grade_stdout, shorthand="equals", kinds=CODE, uses=USES,
             doc="standard output equals / contains / matches"),
    CheckDef("tests", TestsParams, grade_tests, shorthand="code", kinds=CODE, uses=USES,
             doc="test code (asserts, or check(candidate) with entry_point) passes against the program"),
    CheckDef("files", FilesParams, grade_files, shorthand="value", kinds=CODE, uses=USES, prepare=_want_files,
             doc="the program writes these files (kept as artifacts)"),
]
