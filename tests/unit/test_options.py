"""The option table (config/options.py) drives everything about options: addoption and addini, the lookup with its
precedence (command line > environment > ini > default), validation with the source named, the Settings fields,
--help texts and the docs' options page."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval import plugin
from pytest_llmeval.config import options, parsers, reference, settings
from pytest_llmeval.config.options import BY_NAME, OPTIONS

ROOT = Path(__file__).resolve().parents[2]


class FakeConfig:
    """What the resolver reads of a pytest.Config: parsed options, ini values and the rootdir."""

    def __init__(self, root: Path, cli: dict[str, Any] | None = None, ini: dict[str, Any] | None = None) -> None:
        self.rootpath = root
        self.cli = cli or {}
        self.ini = ini or {}

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.cli.get(name, default)

    def getini(self, name: str) -> Any:
        option = next(o for o in OPTIONS if o.ini == name)  # an unknown key raises, as pytest's getini does
        return self.ini.get(name, option.addini_kwargs()["default"])


def cli(**values: Any) -> dict[str, Any]:
    """Command-line values by option name, keyed by their argparse dest."""
    return {BY_NAME[name].dest: value for name, value in values.items()}


@pytest.fixture(autouse=True)
def _no_llmeval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS:
        if option.env:
            monkeypatch.delenv(option.env, raising=False)


def resolve(tmp_path: Path, cli: dict[str, Any] | None = None, ini: dict[str, Any] | None = None) -> Any:
    return settings.resolve(FakeConfig(tmp_path, cli, ini))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the table itself


def test_the_table_is_consistent() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    for option in OPTIONS:
        assert option.flag or option.ini, option.name
        assert option.flag is None or option.flag.startswith("--llm")
        assert option.ini is None or option.ini.startswith("llmeval_")
        assert option.env is None or option.env.startswith("LLMEVAL_")
        assert not (option.no_ini and option.ini), option.name
        for choice in option.choices:  # every allowed value is explained in the help
            assert f"`{choice}`" in option.help, (option.name, choice)
    flags = [o.flag for o in OPTIONS if o.flag]
    inis = [o.ini for o in OPTIONS if o.ini]
    envs = [o.env for o in OPTIONS if o.env]
    assert len(flags) == len(set(flags)) and len(inis) == len(set(inis)) and len(envs) == len(set(envs))


def test_every_settings_field_has_an_option_or_is_documented_as_derived() -> None:
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    direct = {o.name for o in OPTIONS if o.name not in options.FEEDS}
    assert direct <= fields
    assert fields == direct | set(options.DERIVED)
    assert set(options.FEEDS.values()) <= set(options.DERIVED)
    assert set(options.FEEDS) <= {o.name for o in OPTIONS}


def test_settings_defaults_are_the_tables(tmp_path: Path) -> None:
    """Settings() (what code builds without a config) and a run with nothing set agree, field by field."""
    resolved = resolve(tmp_path)
    bare = settings.Settings()
    for field in dataclasses.fields(settings.Settings):
        got, default = getattr(resolved, field.name), getattr(bare, field.name)
        if isinstance(default, Path):
            assert got == tmp_path / default, field.name
        elif isinstance(default, tuple) and default and isinstance(default[0], Path):
            assert got == tuple(tmp_path / p for p in default), field.name
        else:
            assert got == default, field.name


# ------------------------------------------------------------------------------------------ addoption and addini


class RecordingParser:
    def __init__(self) -> None:
        self.groups: list[tuple[str, ...]] = []
        self.options: list[tuple[str, dict[str, Any]]] = []
        self.inis: list[tuple[str, dict[str, Any]]] = []

    def getgroup(self, *args: str) -> RecordingParser:
        self.groups.append(args)
        return self

    def addoption(self, flag: str, **kwargs: Any) -> None:
        self.options.append((flag, kwargs))

    def addini(self, name: str, **kwargs: Any) -> None:
        self.inis.append((name, kwargs))


def test_pytest_addoption_declares_every_flag_and_ini_key_of_the_table() -> None:
    parser = RecordingParser()
    plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    assert parser.groups == [options.GROUP]
    assert [flag for flag, _ in parser.options] == [o.flag for o in OPTIONS if o.flag]
    assert [name for name, _ in parser.inis] == [o.ini for o in OPTIONS if o.ini]
    declared = dict(parser.options)
    assert declared["--llm"]["dest"] == "llm_models" and declared["--llm"]["action"] == "append"
    assert declared["--llm-cache"] == {"dest": "llm_cache", "action": "store", "metavar": "MODE", "default": None,
                                       "help": BY_NAME["cache_mode"].help_text}
    assert declared["--llm-stream"]["action"] == "store_true" and declared["--llm-stream"]["default"] is False
    assert "-5%%" in declared["--llm-gate"]["help"]  # argparse %-formats help texts
    inis = dict(parser.inis)
    assert inis["llmeval_models"]["type"] == "linelist" and inis["llmeval_timeout"]["type"] == "string"
    assert inis["llmeval_gate"]["help"] == BY_NAME["gate"].help_text  # the same text as the option (one constant)


def test_help_text_names_the_environment_variable_and_the_default() -> None:
    assert BY_NAME["timeout"].help_text.endswith("Env LLMEVAL_TIMEOUT. Default: 120.")
    assert "Env LLMEVAL_MODELS (comma separated). Default: local/smollm2." in BY_NAME["models"].help_text
    assert BY_NAME["stream"].help_text.endswith("Env LLMEVAL_STREAM=1.")
    assert "Command line or env LLMEVAL_SPLIT only: never the ini" in BY_NAME["split"].help_text
    assert "Relative to the rootdir." in BY_NAME["cache_dir"].help_text
    assert "`" not in "".join(o.help_text for o in OPTIONS)  # code spans read as 'quoted' values in a terminal


# ------------------------------------------------------------------------------------------ precedence


def test_precedence_command_line_then_environment_then_ini_then_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ini = {"llmeval_timeout": "30", "llmeval_models": ["ini-a", "ini-b, ini-c"], "llmeval_cache": "off"}
    assert resolve(tmp_path).timeout == 120.0
    assert resolve(tmp_path, ini=ini).timeout == 30.0
    monkeypatch.setenv("LLMEVAL_TIMEOUT", "20")
    monkeypatch.setenv("LLMEVAL_MODELS", "env-a, env-b,env-a")
    got = resolve(tmp_path, ini=ini)
    assert (got.timeout, got.models, got.cache_mode) == (20.0, ("env-a", "env-b"), "off")
    got = resolve(tmp_path, cli=cli(timeout="10", models=["cli-a", "cli-b,cli-a"]), ini=ini)
    assert (got.timeout, got.models) == (10.0, ("cli-a", "cli-b"))
    monkeypatch.delenv("LLMEVAL_MODELS")
    assert resolve(tmp_path, ini=ini).models == ("ini-a", "ini-b", "ini-c")


def test_empty_values_are_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMEVAL_TIMEOUT", "")
    assert resolve(tmp_path, cli=cli(timeout=""), ini={"llmeval_timeout": "30"}).timeout == 30.0


def test_lookup_lists_every_source_in_order_of_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMEVAL_SHARD", "2/3")
    config = FakeConfig(tmp_path, cli(shard="1/3"), {"llmeval_shard": "3/3"})
    assert options.lookup(BY_NAME["shard"], config) == [  # type: ignore[arg-type]
        ("1/3", "command line --llm-shard"), ("2/3", "environment variable LLMEVAL_SHARD"),
        ("3/3", "ini key llmeval_shard")]


def test_gate_rules_of_the_command_line_and_the_ini_add_up(tmp_path: Path) -> None:
    from pytest_llmeval.results.gate import DropRule, LimitRule

    got = resolve(tmp_path, cli=cli(max_drop="2", fail_under="0.5", gate=["score:-0.05"]),
                  ini={"llmeval_gate": ["geo:cost<=1"], "llmeval_fail_under": ["geo: 90"]})
    assert got.gate_rules == (DropRule("pass_rate", 2.0), LimitRule("pass_rate", ">=", 0.5, None),
                              DropRule("score", 0.05), LimitRule("cost", "<=", 1.0, "geo"))
    ini_only = resolve(tmp_path, ini={"llmeval_fail_under": ["geo: 90", "0.5"]}).gate_rules
    assert ini_only == (LimitRule("pass_rate", ">=", 0.9, "geo"), LimitRule("pass_rate", ">=", 0.5, None))


def test_switches_come_from_the_command_line_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve(tmp_path, cli=cli(stream=True, strict=True)).stream is True
    monkeypatch.setenv("LLMEVAL_EXPLORE", "yes")
    monkeypatch.setenv("LLMEVAL_STREAM", "0")
    got = resolve(tmp_path)
    assert (got.explore, got.stream, got.strict) == (True, False, False)


def test_paths_are_relative_to_the_rootdir(tmp_path: Path) -> None:
    router = tmp_path / "router.yaml"
    router.write_text("model_list: []\n")
    got = resolve(tmp_path, cli=cli(results_path="out/r.json", cache_dir="/abs/cache", router="router.yaml"),
                  ini={"llmeval_cases": ["cases", "evals"], "llmeval_rag_docs": "docs"})
    assert got.results_path == tmp_path / "out/r.json" and got.artifacts_dir == tmp_path / "out/artifacts"
    assert got.index_dir == tmp_path / "out/index" and got.cache_dir == Path("/abs/cache")
    assert got.router == router and got.rag_docs == tmp_path / "docs"
    assert got.case_dirs == (tmp_path / "cases", tmp_path / "evals")


def test_baseline_default_and_aliases_and_rate_limits(tmp_path: Path) -> None:
    got = resolve(tmp_path, cli=cli(update_baseline=True), ini={
        "llmeval_aliases": ["small = openai/gpt-4o-mini", "# a comment"],
        "llmeval_rate_limits": ["openai/gpt-4o-mini = 500 rpm, 200000 tpm"]})
    assert got.baseline == tmp_path / options.DEFAULT_BASELINE
    assert got.resolve_model("small") == "openai/gpt-4o-mini"
    assert got.rate_limits == {"openai/gpt-4o-mini": parsers.Limit(500, 200000)}


def test_rate_limit_parser_lives_in_config_and_resilience_reexports_it() -> None:
    from pytest_llmeval.providers import resilience

    assert resilience.parse_limits is parsers.parse_limits and resilience.Limit is parsers.Limit


# ------------------------------------------------------------------------------------------ errors name their source


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("cli", "Invalid concurrency 'x' from command line --llm-concurrency: expected a whole number >= 1."),
        ("env", "Invalid concurrency 'x' from environment variable LLMEVAL_CONCURRENCY: expected a whole number >= 1."),
        ("ini", "Invalid concurrency 'x' from ini key llmeval_concurrency: expected a whole number >= 1."),
    ],
)
def test_an_invalid_value_names_its_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           where: str, message: str) -> None:
    if where == "env":
        monkeypatch.setenv("LLMEVAL_CONCURRENCY", "x")
    with pytest.raises(pytest.UsageError) as info:
        resolve(tmp_path, cli=cli(concurrency="x") if where == "cli" else None,
                ini={"llmeval_concurrency": "x"} if where == "ini" else None)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("cli_values", "ini", "message"),
    [
        ({"concurrency": "0"}, {}, "Invalid concurrency '0' from command line --llm-concurrency: expected a number >= 1."),
        ({"cache_mode": "sometimes"}, {}, "Invalid --llm-cache 'sometimes' from command line --llm-cache: expected one "
         "of on, off, refresh, replay, semantic."),
        ({"timeout": "soon"}, {}, "Invalid timeout 'soon' from command line --llm-timeout: expected a number of seconds."),
        ({"semantic_threshold": "1.5"}, {}, "Invalid semantic threshold '1.5' from command line "
         "--llm-semantic-threshold: expected a number in (0, 1]."),
        ({"shard": "5/4"}, {}, "Invalid --llm-shard '5/4' from command line --llm-shard: expected I/N with "
         "1 <= I <= N, e.g. 2/4."),
        ({"router": "nope.yaml"}, {}, "Invalid --llm-router 'nope.yaml' from command line --llm-router: no such file."),
        ({"baseline": "nope.json"}, {}, "Invalid baseline from command line --llm-baseline nope.json: no such file; "
         "write one with --llm-update-baseline"),
        ({"gate": ["pass_rate<3"]}, {}, "Invalid --llm-gate: cannot read gate rule 'pass_rate<3'*(from command line "
         "--llm-gate)."),
        ({}, {"llmeval_gate": ["nonsense"]}, "Invalid --llm-gate: cannot read gate rule 'nonsense'*(from ini key "
         "llmeval_gate)."),
        ({}, {"llmeval_fail_under": ["geo: 0.9", "x: y"]}, "Invalid fail-under 'x: y' from ini key "
         "llmeval_fail_under: expected a pass rate such as 0.8 (or 80)."),
        ({}, {"llmeval_rate_limits": ["m = lots"]}, "Invalid llmeval_rate_limits line 'm = lots' from ini key "
         "llmeval_rate_limits: cannot read 'lots'; expected e.g. '500 rpm' or '200000 tpm'."),
        ({}, {"llmeval_aliases": ["nonsense"]}, "Invalid llmeval_aliases line 'nonsense' from ini key "
         "llmeval_aliases: expected 'name = litellm-model'."),
        ({"models": [" , "]}, {}, "Invalid model list [' , '] from command line --llm: expected model names."),
    ],
)
def test_invalid_values(tmp_path: Path, cli_values: dict[str, Any], ini: dict[str, Any], message: str) -> None:
    from fnmatch import fnmatchcase

    with pytest.raises(pytest.UsageError) as info:
        resolve(tmp_path, cli=cli(**cli_values), ini=ini)
    pattern = message.replace("[", "[[]")
    assert fnmatchcase(str(info.value), pattern), str(info.value)


def test_a_switch_in_the_environment_must_say_yes_or_no(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMEVAL_STREAM", "maybe")
    with pytest.raises(pytest.UsageError, match=r"Invalid --llm-stream 'maybe' from environment variable "
                                                r"LLMEVAL_STREAM: expected 1 or 0"):
        resolve(tmp_path)


# ------------------------------------------------------------------------------------------ the docs' options page


def test_the_options_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs/options.md").read_text(encoding="utf-8")
    assert reference.render(page) == page, f"docs/options.md is stale: run {reference.COMMAND}"
    for option in OPTIONS:
        assert f"`{option.flag or option.ini}" in page, option.name
        if option.env:
            assert f"`{option.env_text}`" in page, option.name


def test_the_options_page_renders_defaults_and_escapes_markdown() -> None:
    table = reference.options_table()
    row = next(line for line in table.splitlines() if line.startswith("| `--llm-semantic-threshold "))
    assert "| `0.75` |" in row
    row = next(line for line in table.splitlines() if line.startswith("| `--llm MODEL` (repeatable) "))
    assert "`local/<path to .gguf or HF model dir>`" in row  # inside a code span: no escaping
    assert reference._md("a <b> | `c|d`") == "a &lt;b&gt; \\| `c|d`"
    with pytest.raises(ValueError, match="no generated block"):
        reference.render("# Options\n")
