"""A provider that fails or is down: the AST race (provoked directly, with threads, in a subprocess of its own)
that astguard closes, and the circuit breaker shared by the processes of a run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


# ------------------------------------------------------------------------------------------ the AST race

RACE = textwrap.dedent("""
    import ast, sys, threading, time, traceback
    if sys.argv[1] == "guarded":
        sys.path.insert(0, sys.argv[3])
        from pytest_llmeval.core import astguard
        astguard.install()
    source = open(ast.__file__).read()
    errors = []
    stop = time.monotonic() + float(sys.argv[2])

    class Cyclic:
        def __del__(self):  # run by a collection in the middle of a conversion: Python code, a thread switch
            pass

    def deep(n):
        if n == 0:
            raise ValueError("provider down")
        return deep(n - 1)

    def formatter():  # what litellm does in a prefetch thread when a call fails: format the traceback
        while time.monotonic() < stop:
            for _ in range(50):
                c = Cyclic()
                c.me = c
            try:
                deep(20)
            except ValueError:
                try:
                    traceback.format_exc()  # 3.11+: ast.parse of each frame's line for the carets
                except SystemError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=formatter) for _ in range(4)]
    for t in threads:
        t.start()
    parses = 0
    while time.monotonic() < stop:  # what pytest does on the main thread when it renders a report
        try:
            ast.parse(source)
            parses += 1
        except SystemError as exc:
            errors.append(repr(exc))
    for t in threads:
        t.join()
    print(parses, len(errors), errors[:1])
""")


def race(tmp_path: Path, mode: str, seconds: float = 3.0) -> tuple[int, int]:
    script = tmp_path / "race.py"  # a file: the traceback module draws carets only for lines it can read
    script.write_text(RACE)
    out = subprocess.run([sys.executable, str(script), mode, str(seconds), SRC], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    parses, errors, _ = out.stdout.split(" ", 2)
    return int(parses), int(errors)


def test_concurrent_ast_conversions_cannot_corrupt_each_other(tmp_path: Path) -> None:
    parses, errors = race(tmp_path, "guarded")
    assert parses > 0 and errors == 0


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the CPython bug the guard is for shows on 3.11")
def test_the_race_is_real_without_the_guard(tmp_path: Path) -> None:
    """The control: the same load without the guard does hit gh-106905 here, so the test above can fail."""
    _, errors = race(tmp_path, "bare")
    assert errors > 0


def test_the_compile_guard_keeps_compiles_semantics() -> None:
    import ast
    import builtins

    from pytest_llmeval.core import astguard

    assert astguard.installed()  # by the plugin, at import
    original = astguard._original
    source = "def f(x: undefined_name) -> None:\n    pass\n"
    for kwargs in ({}, {"dont_inherit": True}, {"flags": 0, "dont_inherit": False}):
        # This module has `from __future__ import annotations`: a compile() that inherits it leaves annotations
        # unevaluated; one that does not evaluates them (NameError). The guard must inherit exactly as the built-in.
        ours, theirs = builtins.compile(source, "<t>", "exec", **kwargs), original(source, "<t>", "exec", **kwargs)
        assert ours.co_flags == theirs.co_flags
        outcome = []
        for code in (ours, theirs):
            try:
                exec(code, {})
                outcome.append("ok")
            except NameError:
                outcome.append("NameError")
        assert outcome[0] == outcome[1]
    assert ast.dump(ast.parse("a = [i for i in b]")) == ast.dump(original("a = [i for i in b]", "<unknown>", "exec",
                                                                          ast.PyCF_ONLY_AST))
    tree = ast.parse("x = 1 + 2")
    namespace: dict[str, int] = {}
    exec(compile(tree, "<tree>", "exec"), namespace)
    assert namespace["x"] == 3


def test_the_breaker_is_shared_by_the_processes_of_a_run(tmp_path: Path) -> None:
    from pytest_llmeval.providers.resilience import CircuitBreaker, EndpointDown

    refused = ConnectionRefusedError(111, "Connection refused")
    wrapper = RuntimeError("Connection error.")
    wrapper.__cause__ = refused
    one, other = CircuitBreaker(tmp_path, threshold=2), CircuitBreaker(tmp_path, threshold=2)
    assert one.failure("openai at http://x", wrapper) is None
    one.failure("openai at http://y", RuntimeError("HTTP 500"))  # another endpoint, not a connection failure
    down = one.failure("openai at http://x", wrapper)
    assert isinstance(down, EndpointDown) and "connection refused" in str(down)
    with pytest.raises(EndpointDown, match="connection refused"):
        other.check("openai at http://x")  # the other process reads it from the run's directory
    other.check("openai at http://y")  # still closed
    later_run = CircuitBreaker(tmp_path / "next-run", threshold=2)
    later_run.check("openai at http://x")  # a new run tries again
