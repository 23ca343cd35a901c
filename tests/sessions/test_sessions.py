"""Whole pytest sessions of the plugin against the scripted OpenAI-compatible server, through litellm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import API_KEY, GEO, SIQA, Project, script_geo


def test_cases_graded_and_aggregated(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    project.write("cases/siqa.yaml", SIQA)
    script_geo(project.server)
    result = project.run("-rA")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines([
        "*llmeval summary*",
        "suite*model*cases*pass*fail*rate*score*",
        "geography*openai/test-model*3*2*1*0*0*66.7%*",
        "social*openai/test-model*2*1*1*0*0*50.0%*",
        "results: .llmeval/results.json",
    ])
    doc = project.results()
    assert doc["schema_version"] == 2
    rows = {r["suite"]: r for r in doc["suites"]}
    assert rows["geography"]["passed"] == 2 and rows["geography"]["failed"] == 1
    assert rows["geography"]["prompt_tokens"] > 0 and rows["geography"]["completion_tokens"] > 0
    cases = {c["case_id"]: c for c in doc["cases"]}
    assert cases["capital-jp"]["outcome"] == "failed"
    assert cases["capital-jp"]["answer"] == "The capital of Japan is Kyoto."
    assert cases["capital-jp"]["checks"] == [
        {"check": "contains", "passed": False, "score": 0.0, "reason": "missing 'Tokyo'"}]
    assert cases["capital-fr"]["file"] == "cases/geo.yaml" and cases["capital-fr"]["line"] == 7
    assert cases["tracy"]["outcome"] == "passed" and cases["sydney"]["outcome"] == "failed"
    assert cases["ocean"]["score"] == 1.0 and cases["ocean"]["cached"] is False
    # The system prompt and sampling params reached the provider.
    fr = next(r for r in project.server.requests if "France" in r["messages"][-1]["content"])
    assert fr["messages"][0] == {"role": "system", "content": "Answer in one short sentence."}
    assert fr["temperature"] == 0 and fr["max_tokens"] == 32


def test_failure_report_shows_case_not_traceback(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    result = project.run("-k", "capital-jp")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines([
        "*case capital-jp (geo.yaml:11) failed on openai/test-model",
        "*prompt:", "*What is the capital of Japan?",
        "*answer:", "*The capital of Japan is Kyoto.",
        "*FAIL contains (score 0.00): missing 'Tokyo'",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "pytest_llmeval" not in result.stdout.str()


def test_second_run_is_served_from_cache(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.run().assert_outcomes(passed=2, failed=1)
    first = project.results()
    calls = len(project.server.requests)
    assert calls == 3
    project.server.answer("capital of Japan", "Tokyo!")  # would flip the outcome if it were asked
    project.run().assert_outcomes(passed=2, failed=1)
    assert len(project.server.requests) == calls
    second = project.results()
    assert [r["cache_hits"] for r in second["suites"]] == [3]
    assert all(c["cached"] for c in second["cases"])
    # The original latency is kept, so aggregates are identical apart from the cache counter.
    for a, b in zip(first["suites"], second["suites"], strict=True):
        assert {**a, "cache_hits": 0} == {**b, "cache_hits": 0}


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_a_partly_cached_run_asks_only_for_what_is_missing(project: Project, concurrency: str) -> None:
    """Cached answers are found at collection (in batches) and handed to their items; the rest are asked, in order."""
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.run(f"--llm-concurrency={concurrency}").assert_outcomes(passed=2, failed=1)
    calls = len(project.server.requests)
    extra = "  - id: river\n    question: What is the longest river?\n    expect:\n      - contains: Nile\n"
    project.write("cases/geo.yaml", GEO + extra)
    project.server.answer("longest river", "The Nile.")
    project.server.answer("capital of Japan", "Tokyo!")  # would flip the outcome if it were asked
    result = project.run(f"--llm-concurrency={concurrency}", "-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*capital-fr*PASSED*", "*capital-jp*FAILED*", "*ocean*PASSED*", "*river*PASSED*"])
    assert [r["messages"][-1]["content"] for r in project.server.requests[calls:]] == ["What is the longest river?"]
    cases = {c["case_id"]: c for c in project.results()["cases"]}
    assert cases["river"]["cache"] is None and cases["river"]["cached"] is False
    assert all(cases[c]["cache"] == "exact" and cases[c]["cached"] for c in ("capital-fr", "capital-jp", "ocean"))


@pytest.mark.parametrize("mode", ["off", "refresh"])
def test_cache_off_and_refresh_call_the_model(project: Project, mode: str) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.run().assert_outcomes(passed=2, failed=1)
    project.server.reset()
    project.server.answer("capital", "Paris and Tokyo")
    project.server.answer("ocean", "Pacific")
    project.run(f"--llm-cache={mode}").assert_outcomes(passed=3)
    assert len(project.server.requests) == 3
    # refresh overwrote the cache; off left it alone
    project.run("--llm-cache=replay").assert_outcomes(passed=3 if mode == "refresh" else 2,
                                                      failed=0 if mode == "refresh" else 1)
    assert len(project.server.requests) == 3


def test_replay_miss_is_an_error_not_a_failure(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    result = project.run("--llm-cache=replay")
    result.assert_outcomes(errors=3)
    assert project.server.requests == []
    result.stdout.fnmatch_lines(["*--llm-cache=replay: no cached answer*"])
    assert {c["outcome"] for c in project.results()["cases"]} == {"error"}


def test_provider_failure_is_an_error_outcome(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.server.fail("capital of France", 500, message="upstream exploded")
    project.server.fail("capital of Japan", 429)
    project.server.malformed("ocean")
    result = project.run()
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*model call failed for case capital-fr*", "*upstream exploded*"])
    doc = project.results()
    row = doc["suites"][0]
    assert (row["error"], row["failed"], row["passed"], row["pass_rate"]) == (3, 0, 0, None)
    fr = next(c for c in doc["cases"] if c["case_id"] == "capital-fr")
    assert "upstream exploded" in fr["message"] and "InternalServerError" in fr["message"]
    jp = next(c for c in doc["cases"] if c["case_id"] == "capital-jp")
    assert "RateLimitError" in jp["message"]


def test_transient_fault_is_retried(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.server.fail("capital of France", 500, times=1)
    result = project.pytester.runpytest(*project.args()[:-1], "--llm-retries=2")
    result.assert_outcomes(passed=2, failed=1)


def test_missing_api_key_is_one_usage_error(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    project.write("cases/geo.yaml", GEO)
    result = project.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llm=openai/test-model: OPENAI_API_KEY is not set; export it*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert project.server.requests == []


def test_unknown_provider_is_one_usage_error(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    result = project.run(model="nosuchprovider/model-x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llm=nosuchprovider/model-x: unknown provider*"])


def test_plain_tests_do_not_need_a_key(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    project.pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    project.run().assert_outcomes(passed=1)


def test_several_models_and_aliases(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    project.pytester.makeini("[pytest]\nllmeval_aliases =\n    small = openai/small-model-2024\n")
    project.server.answer("capital", "Paris, Tokyo", model="small-model-2024")
    project.server.answer("ocean", "Pacific", model="small-model-2024")
    script_geo(project.server)
    result = project.pytester.runpytest(f"--llm-api-base={project.server.url}", "--llm=openai/test-model",
                                        "--llm=small", "-v")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["cases/geo.yaml::capital-fr?openai/test-model? PASSED*",
                                 "cases/geo.yaml::capital-fr?small? PASSED*"])
    assert {r["model"] for r in project.server.requests} == {"test-model", "small-model-2024"}
    doc = project.results()
    assert [(r["model"], r["passed"]) for r in doc["suites"]] == [("openai/test-model", 2), ("small", 3)]
    assert {c["resolved_model"] for c in doc["cases"] if c["model"] == "small"} == {"openai/small-model-2024"}


def test_selection_k_deselect_and_last_failed(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    result = project.run("--deselect", "cases/geo.yaml::ocean[openai/test-model]", "-k", "capital")
    result.assert_outcomes(passed=1, failed=1, deselected=1)
    result = project.run("--lf", "-v")
    result.assert_outcomes(failed=1)  # the other cases are filtered out at collection
    result.stdout.fnmatch_lines(["cases/geo.yaml::capital-jp?openai/test-model? FAILED*"])
    # tags and suite names are keywords too
    project.run("-k", "smoke and not ocean").assert_outcomes(passed=1, failed=1, deselected=1)


def test_results_path_option_and_junit_properties(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.run("--llm-results=out/r.json", "--junitxml=junit.xml")
    assert project.results("out/r.json")["suites"][0]["cases"] == 3
    junit = (project.pytester.path / "junit.xml").read_text()
    assert '<property name="llmeval_outcome" value="failed"' in junit
    assert '<property name="llmeval_model" value="openai/test-model"' in junit
    assert '<property name="llmeval_case" value="capital-jp"' in junit


def test_results_json_has_one_line_per_case(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.run().assert_outcomes(passed=2, failed=1)
    text = (project.pytester.path / ".llmeval/results.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    case_lines = [line for line in text.splitlines() if line.startswith('    {"suite": ')]
    assert [json.loads(line.rstrip(",")) for line in case_lines] == doc["cases"]
    assert text.startswith('{\n  "schema_version": 2,\n') and '\n  "suites": [\n    {\n      "suite": ' in text


def test_cyclic_garbage_is_reclaimed_by_the_end_of_the_session(project: Project) -> None:
    """Objects built before the tests start are exempt from collections during the run (gc.freeze), not forever."""
    import gc

    marks = project.pytester.path / "collected"
    project.pytester.makepyfile(test_cycles=f"""
        import pathlib

        class Cycle:
            def __init__(self, name):
                self.name, self.me = name, self

            def __del__(self):
                with open({str(marks)!r}, "a") as fh:
                    fh.write(self.name + "\\n")

        HOLDER = [Cycle("made at collection")]

        def test_drops_garbage():
            HOLDER.clear()  # garbage now, made before the tests started
            Cycle("made in a test")
    """)
    project.pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert sorted(marks.read_text().splitlines()) == ["made at collection", "made in a test"]
    assert gc.isenabled()


@pytest.mark.parametrize("batch", [2, 500])
def test_a_case_only_run_collects_its_garbage_in_batches(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                          batch: int) -> None:
    """A run of case items only, all answered from the cache, collects garbage every GC_BATCH items (automatic
    collection is off meanwhile): a check's cyclic garbage is reclaimed by the next batch, all of it by the end."""
    import gc

    import pytest_llmeval.run.loop as session_module

    monkeypatch.setattr(session_module, "GC_BATCH", batch)
    marks = project.pytester.path / "collected"
    project.write("conftest.py", f"""
import gc
from pytest_llmeval import CheckDef, CheckOutcome, CheckParams

class Cycle:
    def __init__(self, name):
        self.name, self.me = name, self
    def __del__(self):
        with open({str(marks)!r}, "a") as fh:
            fh.write(f"{{self.name}} gc-enabled={{gc.isenabled()}}\\n")

class LeakyParams(CheckParams):
    value: str = ""

def grade_leaky(answer, case, params):
    Cycle(case.id)
    return CheckOutcome("leaky", True, 1.0)

def pytest_llmeval_register_checks(register):
    register(CheckDef("leaky", LeakyParams, grade_leaky, shorthand="value"))
""")
    cases = "".join(f"  - {{id: c{i}, question: 'Question {i}?', expect: [{{leaky: x}}]}}\n" for i in range(6))
    project.write("cases/leaky.yaml", "suite: leaky\ncases:\n" + cases)
    project.server.default = "ok"
    project.run().assert_outcomes(passed=6)  # the model is called: automatic collection as usual
    assert sorted(marks.read_text().split()[::2]) == [f"c{i}" for i in range(6)]
    marks.unlink()
    project.run().assert_outcomes(passed=6)  # every answer from the cache: collected in batches
    lines = marks.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == [f"c{i}" for i in range(6)]
    if batch == 2:  # reclaimed by the batches, during the run (automatic collection off)
        assert all(line.endswith("gc-enabled=False") for line in lines)
    assert gc.isenabled()


def test_api_key_never_reaches_cache_or_results(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    project.server.fail("ocean", 401, message=f"bad key {API_KEY}")
    project.run()
    for path in (project.pytester.path / ".llmeval").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    doc = json.dumps(project.results())
    assert "ocean" in doc and API_KEY not in doc and "***" in doc


def test_hand_written_tests_with_llm_fixture(project: Project) -> None:
    project.server.answer("2+2", "4")
    project.pytester.makepyfile(test_hand="""
        import pytest

        def test_math(llm):
            assert llm("What is 2+2?").strip() == "4"

        @pytest.mark.llm_case(suite="hand", tags=["math"])
        def test_wrong(llm):
            assert llm("What is 2+2? Answer in words.", temperature=0) == "four"

        def test_not_counted():
            pass
    """)
    result = project.pytester.runpytest(f"--llm-api-base={project.server.url}", "--llm=openai/test-model",
                                        "--llm=openai/other", "-v")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*test_math?openai/test-model? PASSED*", "*test_math?openai/other? PASSED*"])
    doc = project.results()
    rows = {(r["suite"], r["model"]): r for r in doc["suites"]}
    assert rows[("test_hand", "openai/test-model")]["passed"] == 1
    assert rows[("hand", "openai/other")]["failed"] == 1
    wrong = next(c for c in doc["cases"] if c["case_id"] == "test_wrong" and c["model"] == "openai/other")
    assert wrong["answer"] == "4" and wrong["calls"] == 1 and wrong["tags"] == ["math"]


def test_xdist_gives_the_same_aggregates(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    project.write("cases/siqa.yaml", SIQA)
    script_geo(project.server)
    project.run("-p", "no:randomly").assert_outcomes(passed=3, failed=2)
    serial = project.results()
    (project.pytester.path / ".llmeval/results.json").unlink()
    result = project.run("-n", "2")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*llmeval summary*", "geography*openai/test-model*3*2*1*"])
    parallel = project.results()
    assert parallel["run"]["workers"] == 2

    def strip(doc: dict) -> list:
        return [{k: v for k, v in r.items() if k not in ("cache_hits",)} for r in doc["suites"]]

    assert strip(serial) == strip(parallel)
    assert [c["case_id"] for c in serial["cases"]] == [c["case_id"] for c in parallel["cases"]]


def test_xdist_fresh_run_and_missing_key(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("cases/geo.yaml", GEO)
    script_geo(project.server)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=2, failed=1)
    assert len(project.server.requests) == 3
    monkeypatch.delenv("OPENAI_API_KEY")
    result = project.run("-n", "2", "--llm-cache=off")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["ERROR: 3 case(s) could not run: --llm=openai/test-model: OPENAI_API_KEY*"])
    assert len(project.server.requests) == 3


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--llm-cache=sometimes"], {}, "Invalid --llm-cache 'sometimes' from command line --llm-cache*"),
        ([], {"LLMEVAL_CACHE": "bogus"}, "Invalid --llm-cache 'bogus' from environment variable LLMEVAL_CACHE*"),
        (["--llm-timeout=soon"], {}, "Invalid timeout 'soon' from command line --llm-timeout*"),
    ],
)
def test_bad_settings_name_their_source(project: Project, monkeypatch: pytest.MonkeyPatch,
                                        args: list[str], env: dict[str, str], message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    project.write("cases/geo.yaml", GEO)
    result = project.run(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_models_from_env_and_ini(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.write("cases/geo.yaml", GEO)
    project.pytester.makeini(f"[pytest]\nllmeval_models = openai/from-ini\nllmeval_api_base = {project.server.url}\n")
    result = project.pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(["cases/geo.yaml::capital-fr[[]openai/from-ini[]]"])
    monkeypatch.setenv("LLMEVAL_MODELS", "openai/a, openai/b")
    result = project.pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(["cases/geo.yaml::capital-fr[[]openai/a[]]", "cases/geo.yaml::capital-fr[[]openai/b[]]"])
    result = project.pytester.runpytest("--co", "-q", "--llm=openai/cli")
    assert "openai/a" not in result.stdout.str() and "capital-fr[openai/cli]" in result.stdout.str()


def test_only_case_dirs_are_collected(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    project.write(".github/workflows/ci.yaml", "on: push\njobs: {}\n")
    project.write("config/settings.yml", "a: 1\n")
    result = project.pytester.runpytest("--co", "-q")
    assert "ci.yaml" not in result.stdout.str() and "settings.yml" not in result.stdout.str()
    result.stdout.fnmatch_lines(["3 tests collected*"])
    # the case directories are an ini key
    project.pytester.makeini("[pytest]\nllmeval_cases = evals\n")
    project.write("evals/geo.yaml", GEO)
    result = project.pytester.runpytest("--co", "-q")
    result.stdout.fnmatch_lines(["evals/geo.yaml::capital-fr*", "3 tests collected*"])


def test_root_level_results_written_only_with_llm_items(project: Project) -> None:
    project.pytester.makepyfile("def test_plain():\n    pass\n")
    project.run().assert_outcomes(passed=1)
    assert not Path(project.pytester.path / ".llmeval/results.json").exists()


def test_slow_provider_times_out_as_an_error(project: Project) -> None:
    project.write("cases/geo.yaml", GEO)
    project.server.answer("largest ocean", "Pacific", delay=3.0)  # first matching rule wins
    script_geo(project.server)
    result = project.run("--llm-timeout=0.5")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    ocean = next(c for c in project.results()["cases"] if c["case_id"] == "ocean")
    assert ocean["outcome"] == "error" and ocean["message"].startswith("timed out after 0.5 s")


def test_user_parametrized_llm_model_is_respected(project: Project) -> None:
    project.server.answer("hi", "hello")
    project.pytester.makepyfile(test_p="""
        import pytest

        @pytest.mark.parametrize("llm_model", ["openai/only-this"], indirect=True)
        def test_one(llm):
            assert llm("hi") == "hello"
    """)
    result = project.run("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_one?openai/only-this? PASSED*"])
    assert [r["model"] for r in project.server.requests] == ["only-this"]


def test_collect_only_needs_no_key(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    project.write("cases/geo.yaml", GEO)
    result = project.run("--co", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["3 tests collected*"])


def test_repository_examples_same_aggregates_with_n4(project: Project) -> None:
    """The shipped example suites, graded through litellm against the scripted server: -n 0 and -n 4
    (fresh calls each time, separate caches) give identical aggregates apart from timing."""
    import shutil

    # The suites only (and the flywheel's spec files, which collection must skip): not the hand-written example, nor
    # the docs bot's suites (an application beside the checkout: tests/sessions/test_docs_bot_example.py runs them),
    # nor the assistant's offline suite (its tools live in examples/assistant: test_assistant_realmodel.py runs it).
    shutil.copytree(Path(__file__).parents[2] / "cases", project.pytester.path / "cases",
                    ignore=shutil.ignore_patterns("test_*.py", "docs_bot_app.yaml", "docs_bot_chat.yaml",
                                                  "assistant_offline.yaml"))
    server = project.server
    server.answer("Answer to grade", '{"score": 8, "reason": "Good."}')  # judge requests (self-judging)
    for question, reply in [("background colour of a scene", "Call Scene.background with an (r, g, b) tuple [3]."),
                            ("render on a server", "Set ORBIT_OFFSCREEN=1 before importing orbit [1]."),
                            ("radius of a sphere", "Pass radii= to orbit.actor.sphere [1]."),
                            ("photosynthesis", "Plants make glucose and oxygen from light, water and CO2."),
                            ("water boil", "Water boils at 100 degrees Celsius at sea level."),
                            ("red planet", "Mars is known as the red planet."),
                            ("s += a[i]", '["DRY"]'), ("86400", '["MC"]'), ("send_email", "SRP"),
                            ("int x = 1 return", "- NO_COMPILE"),
                            ("France", "Paris."), ("Japan", "Kyoto."), ("Italy", "Rome."),
                            ("ocean", "The Pacific."), ("South America", "Brazil."), ("2 + 3", "5"),
                            ("10 times 2", "20"), ("Tracy", "C"), ("Sydney", "The answer is (A)."),
                            ("Sasha", "B) get petitions signed"), ("Jordan", "A"), ("Kendall", "C"),
                            ("Python program that prints Hello", "```python\nprint('Hello, World!')\n```"),
                            ("add(a, b)", "```python\ndef add(a, b):\n    return a + b\n```"),
                            ("squares", "```python\nfor i in range(1, 6):\n    print(i * i)\n```"),
                            ("C program that prints Hello",
                             '```c\n#include <stdio.h>\nint main(void) { puts("Hello, World!"); return 0; }\n```'),
                            ("sum of the integers",
                             '```c\n#include <stdio.h>\nint main(void) { printf("%d\\n", 55); return 0; }\n```'),
                            ("filled red circle", "```python\nfrom PIL import Image, ImageDraw\nim = Image.new('RGB', "
                             "(200, 200), 'white')\nImageDraw.Draw(im).ellipse((50, 50, 150, 150), fill='red')\n"
                             "im.save('out.png')\n```"),
                            ("filled blue square", "```python\nfrom PIL import Image, ImageDraw\nim = Image.new('RGB', "
                             "(200, 200), 'white')\nImageDraw.Draw(im).rectangle((50, 50, 150, 150), fill='blue')\n"
                             "im.save('out.png')\n```"),
                            ("vertical stripes", "```python\nfrom PIL import Image\nim = Image.new('RGB', (300, 100))\n"
                             "for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):\n"
                             "    im.paste(c, (100 * i, 0, 100 * i + 100, 100))\nim.save('out.png')\n```")]:
        server.answer(question, reply)
    # judge-calibration: the judge says 8 to all: within 2 of 10 and "pass" agree; 1 and 5 do not.
    # render: the fast items pass; without --llm-vision the judged items and vision calibration are skipped.
    # robust_capitals: France passes, Japan fails; both are consistent under their 3 variants each.
    project.run("--llm-cache-dir=c0").assert_outcomes(passed=33, failed=5, skipped=8)
    serial = project.results()
    calls = 17 + 3 + 2 + 4 + 4 + 3 + 1 + 3 + 2 * (1 + 3)
    assert len(server.requests) == calls  # a judged item reuses its fast twin's answer from the cache
    project.run("-n", "4", "--llm-cache-dir=c4").assert_outcomes(passed=33, failed=5, skipped=8)
    parallel = project.results()
    # Under -n 4 the two items of a render or robust case may ask at the same moment on two workers: up to 5 more
    # calls.
    assert calls <= len(server.requests) - calls <= calls + 5
    timing = {"latency_p50_s", "latency_p95_s"}
    racy = {"cache_hits", "calls"}

    def strip(doc: dict) -> list:
        return [{k: v for k, v in r.items()
                 if k not in timing and not (r["suite"].startswith(("render", "robust")) and k in racy)}
                for r in doc["suites"]]

    assert strip(serial) == strip(parallel)
    assert [r["suite"] for r in serial["suites"]] == ["arithmetic", "c-code", "clean-code-labels", "docs-bot", "explain",
                                                      "geography", "judge-calibration", "python-code", "render",
                                                      "render:judged", "robust_capitals", "robust_capitals:robust",
                                                      "social-iqa", "vision-calibration"]
    assert parallel["run"]["workers"] == 4


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    text = result.stdout.str()
    for option in ("--llm=MODEL", "--llm-cache=MODE", "--llm-judge=MODEL", "--llm-repeat=N", "--llm-baseline=PATH",
                   "--llm-gate=RULE", "--llm-shard=I/N", "--llm-semantic-threshold=COSINE", "--llm-strict",
                   "--llm-vision=MODEL"):
        assert option in text, option
    assert "'pass_rate:-5%'" in text and "llmeval_gate" in text


def test_xdist_workers_leave_litellm_to_the_controller(project: Project) -> None:
    """Under -n, the controller makes the workers' litellm calls (providers/callserver.py): no worker imports
    litellm, every case is answered, and a rerun is served from the cache the controller wrote."""
    project.write("cases/geo.yaml", GEO)
    # Who is who by workerinput: PYTEST_XDIST_WORKER is inherited from this test's own worker, if any.
    project.write("conftest.py", "import sys\n\ndef pytest_sessionfinish(session):\n"
                                 "    who = getattr(session.config, 'workerinput', {}).get('workerid', 'controller')\n"
                                 "    open(f'litellm-{who}.txt', 'w').write(str('litellm' in sys.modules))\n")
    script_geo(project.server)
    result = project.run("-n", "2")
    result.assert_outcomes(passed=2, failed=1)  # Japan answered wrong
    seen = {p.stem: p.read_text() for p in project.pytester.path.glob("litellm-*.txt")}
    assert seen == {"litellm-controller": "True", "litellm-gw0": "False", "litellm-gw1": "False"}
    assert len(project.server.requests) == 3
    project.run("-n", "2").assert_outcomes(passed=2, failed=1)
    assert len(project.server.requests) == 3  # the second run: every answer from the cache
