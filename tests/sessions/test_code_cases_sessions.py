"""Code cases end to end: answers from the scripted server, code extracted, run in the real sandbox."""

from __future__ import annotations

import pytest

from conftest import Project

PY = """\
suite: py
kind: code
limits: {timeout_s: 5}
cases:
  - id: add
    language: python
    prompt: Write add(a, b).
    expect:
      - compiles: true
      - tests: "assert add(1, 2) == 3"
  - id: hello
    language: python
    prompt: Print hello.
    expect:
      - runs: true
      - stdout: {equals: hello}
  - id: humaneval-shape
    language: python
    prompt: Write incr(x).
    expect:
      - tests: {code: "def check(candidate):\\n    assert candidate(1) == 2\\n", entry_point: incr}
  - id: loops
    language: python
    prompt: Loop forever.
    limits: {timeout_s: 1, cpu_s: 1}
    expect: [{runs: true}]
  - id: picture
    language: python
    prompt: Write out.txt.
    expect:
      - files: [out.txt]
"""

C = """\
suite: c
kind: code
cases:
  - id: good
    language: c
    prompt: Print 42 in C.
    expect: [{compiles: true}, {stdout: {contains: "42"}}]
  - id: broken
    language: c
    prompt: Broken C please.
    expect: [{compiles: true}, {runs: true}]
  - id: crashes
    language: c
    prompt: Crash in C.
    expect: [{compiles: true}, {runs: true}]
"""


def fence(lang: str, code: str) -> str:
    return f"Here you go:\n\n```{lang}\n{code}\n```\nHope it helps."


@pytest.fixture
def scripted(project: Project) -> Project:
    s = project.server
    s.answer("Write add", fence("python", "def add(a, b):\n    return a + b"))
    s.answer("Print hello", "print('hello')")  # unfenced, plainly code
    s.answer("Write incr", fence("python", "def incr(x):\n    return x + 1"))
    s.answer("Loop forever", fence("python", "while True:\n    pass"))
    s.answer("Write out.txt", fence("python", "open('out.txt', 'w').write('made in the sandbox')"))
    s.answer("Print 42 in C", fence("c", '#include <stdio.h>\nint main(void) { printf("42\\n"); return 0; }'))
    s.answer("Broken C", fence("c", "int main(void) { return 0 }"))
    s.answer("Crash in C", fence("c", "int main(void) { int *p = 0; return *p; }"))
    return project


def test_code_cases_graded_in_the_sandbox(scripted: Project) -> None:
    scripted.write("cases/py.yaml", PY)
    scripted.write("cases/c.yaml", C)
    result = scripted.run()
    result.assert_outcomes(passed=5, failed=3)
    doc = scripted.results()
    cases = {(c["suite"], c["case_id"]): c for c in doc["cases"]}
    add = cases[("py", "add")]
    assert add["code"] == "def add(a, b):\n    return a + b\n" and add["sandbox"] in ("bwrap", "unshare")
    assert cases[("py", "hello")]["outcome"] == "passed"
    assert cases[("py", "humaneval-shape")]["outcome"] == "passed"
    loops = cases[("py", "loops")]
    assert loops["outcome"] == "failed" and "timed out" in loops["checks"][0]["reason"]
    picture = cases[("py", "picture")]
    assert picture["outcome"] == "passed"
    saved = picture["artifacts"]["out.txt"]
    assert (scripted.pytester.path / saved).read_text() == "made in the sandbox"
    assert ".llmeval/artifacts/py/picture/" in saved
    broken, crashes = cases[("c", "broken")], cases[("c", "crashes")]
    assert broken["detail"] == "NO_COMPILE" and "error" in broken["checks"][0]["reason"]
    assert crashes["detail"] is None and crashes["checks"][0]["passed"] is True
    assert "SIGSEGV" in crashes["checks"][1]["reason"] or "exit status" in crashes["checks"][1]["reason"]
    c_row = next(r for r in doc["suites"] if r["suite"] == "c")
    assert c_row["no_compile"] == 1 and c_row["pass_at_k"] == {"1": 0.333333}
    result.stdout.fnmatch_lines(["*case broken*failed*", "*detail: NO_COMPILE*"])


def test_prose_answer_has_no_code(project: Project) -> None:
    project.write("cases/py.yaml", PY.split("  - id: hello")[0])
    project.server.answer("Write add", "I would rather not write code today.")
    result = project.run()
    result.assert_outcomes(failed=1)
    case = project.results()["cases"][0]
    assert case["detail"] == "NO_CODE" and case["code"] is None
    assert case["checks"][0]["reason"] == "no code found in the answer"


def test_pass_at_k_with_samples(project: Project) -> None:
    project.write("cases/py.yaml", PY.split("  - id: hello")[0])
    good = fence("python", "def add(a, b):\n    return a + b")
    bad = fence("python", "def add(a, b):\n    return a - b")
    project.server.answer("Write add", [good, bad, bad, good, bad])
    result = project.run("--llm-samples=5", "--llm-concurrency=1")  # scripted replies cycle in arrival order
    result.assert_outcomes(passed=1)
    assert len(project.server.requests) == 5
    case = project.results()["cases"][0]
    assert [s["passed"] for s in case["samples"]] == [True, False, False, True, False]
    # pass@1 is the share of passing samples; the score is the mean check score over samples (a wrong
    # add still compiles: 0.5 on compiles+tests).
    assert case["pass_at_k"]["1"] == pytest.approx(0.4) and case["score"] == pytest.approx(0.7)
    assert case["repeats"]["pass_fraction"] == 0.4 and case["flaky"] is True
    assert case["pass_at_k"]["5"] == 1.0
    # The samples are cached in their own slots: a rerun asks nothing and gets the same samples.
    project.run("--llm-samples=5").assert_outcomes(passed=1)
    assert len(project.server.requests) == 5


def test_sandbox_none_must_be_explicit_and_is_recorded(scripted: Project) -> None:
    scripted.write("cases/py.yaml", PY.split("  - id: hello")[0])
    scripted.run("--llm-sandbox=none").assert_outcomes(passed=1)
    assert scripted.results()["cases"][0]["sandbox"] == "none"


def test_sandbox_fixture_for_hand_written_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_llmeval.sandbox.isolation import Limits

        def test_generated_code(sandbox):
            result = sandbox.run_python("import os\\nprint(os.getuid() != 0, 'OPENAI_API_KEY' in os.environ)",
                                        limits=Limits(timeout_s=5))
            assert result.ok and result.stdout.split() == ["True", "False"], result
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_no_isolation_available_refuses_clearly(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path) -> None:
    """Without bwrap/unshare on PATH, generated code is not run: one usage error naming the fix."""
    from pytest_llmeval.sandbox import isolation as sandbox_mod

    monkeypatch.setattr(sandbox_mod, "_PROBES", {})
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap, unshare, prlimit
    project.write("cases/py.yaml", PY.split("  - id: hello")[0])
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llm-sandbox=auto: cannot isolate generated code (bwrap: bwrap is not "
                                 "installed; unshare: unshare is not installed). Install bubblewrap*"])
    assert project.server.requests == []
