"""Options in whole pytest sessions: `--help` lists every option and ini key of the table, and a bad value in the
ini file, the environment or on the command line stops the run with a usage error that says where it came from."""

from __future__ import annotations

import pytest

from pytest_llmeval.config.options import OPTIONS


@pytest.fixture(autouse=True)
def _no_llmeval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        if option.env:
            monkeypatch.delenv(option.env, raising=False)


def test_help_lists_every_option_and_ini_key_of_the_table(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["LLM regression testing (pytest-llmeval):"])
    lines = result.stdout.lines
    for option in OPTIONS:
        if option.flag:
            shown = f"{option.flag}={option.metavar}" if option.metavar else option.flag
            assert any(line.strip().startswith(shown) for line in lines), shown
        if option.ini:
            kind = "linelist" if option.linelist else "string"
            assert any(line.strip().startswith(f"{option.ini} ({kind}):") for line in lines), option.ini
    text = " ".join(" ".join(lines).split())  # argparse wraps the help texts
    assert "Env LLMEVAL_CONCURRENCY. Default: 8." in text
    assert "'pass_rate:-5%'" in text  # a % in a help text survives argparse's %-formatting


@pytest.mark.parametrize(
    ("ini", "env", "args", "message"),
    [
        ("llmeval_concurrency = many", {}, [],
         "Invalid concurrency 'many' from ini key llmeval_concurrency: expected a whole number >= 1."),
        ("llmeval_concurrency = 2", {"LLMEVAL_CONCURRENCY": "0"}, [],
         "Invalid concurrency '0' from environment variable LLMEVAL_CONCURRENCY: expected a number >= 1."),
        ("llmeval_sandbox = docker", {}, [],
         "Invalid --llm-sandbox 'docker' from ini key llmeval_sandbox: expected one of auto, bwrap, unshare, none."),
        ("llmeval_gate = pass_rate<3", {}, [], "Invalid --llm-gate: cannot read gate rule 'pass_rate<3'*(from ini key "
         "llmeval_gate)."),
        ("", {"LLMEVAL_EXPLORE": "sometimes"}, [],
         "Invalid --llm-explore 'sometimes' from environment variable LLMEVAL_EXPLORE: expected 1 or 0*"),
        ("llmeval_timeout = 5", {"LLMEVAL_TIMEOUT": "6"}, ["--llm-timeout=-1"],
         "Invalid timeout '-1' from command line --llm-timeout: expected a positive number."),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_its_source(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                         ini: str, env: dict[str, str], args: list[str],
                                                         message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing(): pass\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
