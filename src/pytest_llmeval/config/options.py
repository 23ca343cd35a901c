"""Every option, declared once: flag, ini key, environment variable, parser, default and help.

From this table come the command-line options and ini keys (``pytest_addoption`` loops over it), the lookup
with its precedence (command line > environment > ini > default, in :func:`lookup` alone), the validation of
every value with its source named in the error (pytest-timeout style: "Invalid timeout 'soon' from command
line --llm-timeout: expected a number of seconds."), the help texts of ``pytest --help`` and the tables of the
docs' options page (``docs/options.md``, rendered by :mod:`pytest_llmeval.config.reference`).

:mod:`pytest_llmeval.config.settings` turns the resolved values into the frozen ``Settings``; the few fields
that no option sets directly are listed, with what they come from, in :data:`DERIVED`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cache.embeddings import DEFAULT_EMBEDDING_MODEL
from pytest_llmeval.cache.semantic import DEFAULT_THRESHOLD
from pytest_llmeval.cache.verify import VERIFY_MODES
from pytest_llmeval.config import parsers
from pytest_llmeval.results.gate import DEFAULT_ALPHA, DEFAULT_MAX_DROP
from pytest_llmeval.results.sequential import parse_repeat
from pytest_llmeval.sandbox.limits import LEVELS  # not isolation: ~10 ms of every process's start-up

DEFAULT_MODEL = "local/smollm2"
DEFAULT_BASELINE = ".llmeval/baseline.json"  # where --llm-update-baseline writes without --llm-baseline
CACHE_MODES = ("on", "off", "refresh", "replay", "semantic")
SPLIT_CHOICES = ("dev", "test", "all")
GROUP = ("llmeval", "LLM regression testing (pytest-llmeval)")  # the --help section of the options


@dataclass(frozen=True)
class Option:
    """One setting: where it may be given, how its text becomes a value, and what it means."""

    name: str  # the Settings field it sets (or, for the gate's options, the input of a derived field: DERIVED)
    help: str  # what it does, in Markdown with `code` only; help_text adds the rootdir, env and default sentences
    flag: str | None = None  # the command-line option
    metavar: str | None = None  # None with a flag: a switch (store_true)
    repeat: bool = False  # the flag may be given several times (a list)
    env: str | None = None  # the environment variable
    env_note: str = ""  # how the environment variable is written, e.g. " (comma separated)"
    ini: str | None = None  # the ini key
    linelist: bool = False  # the ini key takes one value per line
    choices: tuple[str, ...] = ()  # the allowed values (case-insensitive); sets parse
    parse: parsers.Parser = parsers.text  # text (or a list of lines) -> value; ValueError says what was expected
    default: Any = None  # the value when nothing is set
    default_doc: str | None = None  # the default as --help and the docs state it, in words (else the default value)
    path: bool = False  # a path (or paths) relative to the rootdir
    must_exist: bool = False  # ... naming an existing file
    combine: bool = False  # command-line and ini values add up instead of the first one winning
    no_ini: str = ""  # why there is, on purpose, no ini key
    label: str | None = None  # what error messages call it (default: the flag, else the ini key)
    message: str = "Invalid {label} {value!r} from {source}: {problem}."
    see: str = ""  # a link into the docs, for the options page
    dest: str = ""  # argparse's name for the flag (default: from the flag, --llm-x -> llm_x)

    def __post_init__(self) -> None:
        if self.flag and not self.dest:
            object.__setattr__(self, "dest", self.flag.lstrip("-").replace("-", "_"))
        if self.switch:  # given on the command line: True; in the environment: 1/0, true/false, yes/no, on/off
            object.__setattr__(self, "default", bool(self.default))
            if self.parse is parsers.text:
                object.__setattr__(self, "parse", parsers.flag)
        if self.choices and self.parse is parsers.text:
            object.__setattr__(self, "parse", parsers.choice(self.choices))

    @property
    def switch(self) -> bool:
        return bool(self.flag) and self.metavar is None

    @property
    def default_text(self) -> str | None:
        """The default in words, for --help and the docs; None when there is none worth stating."""
        if self.default_doc is not None:
            return self.default_doc
        value = self.default
        if value is None or isinstance(value, bool) or (isinstance(value, dict | tuple) and not value):
            return None
        if isinstance(value, tuple):
            return ", ".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    @property
    def env_text(self) -> str | None:
        """How the environment variable is set: ``LLMEVAL_STREAM=1`` for a switch."""
        if not self.env:
            return None
        return f"{self.env}=1" if self.switch else self.env

    @property
    def help_text(self) -> str:
        """The full help of the option and of its ini twin (one text, pytest-timeout style), as plain text."""
        parts = [self.help.replace("`", "'")]  # code spans of the docs read as quoted values in a terminal
        if self.path:
            parts.append("Relative to the rootdir.")
        if self.env and self.no_ini:
            parts.append(f"Command line or env {self.env_text}{self.env_note} only: never the ini, {self.no_ini}.")
        elif self.env:
            parts.append(f"Env {self.env_text}{self.env_note}.")
        if self.default_text is not None and not self.switch:
            parts.append(f"Default: {self.default_text.replace('`', '')}.")
        return " ".join(parts)

    def addoption_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``group.addoption(self.flag, ...)``."""
        # argparse %-formats help texts: "pass_rate:-5%" must read "-5%%".
        kwargs: dict[str, Any] = {"dest": self.dest, "help": self.help_text.replace("%", "%%")}
        if self.switch:
            return {**kwargs, "action": "store_true", "default": False}
        return {**kwargs, "action": "append" if self.repeat else "store", "metavar": self.metavar, "default": None}

    def addini_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``parser.addini(self.ini, ...)``: unset reads as "" or [], so a default applies."""
        if self.linelist:
            return {"help": self.help_text, "type": "linelist", "default": []}
        return {"help": self.help_text, "type": "string", "default": ""}

    def error(self, value: Any, source: str, problem: str) -> pytest.UsageError:
        """The usage error of a bad value: what it is called, the value, where it came from, what was expected."""
        label = self.label or self.flag or self.ini
        return pytest.UsageError(self.message.format(label=label, value=value, source=source, problem=problem))


OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------ models and calls
    Option(
        "models", flag="--llm", dest="llm_models", metavar="MODEL", repeat=True,
        env="LLMEVAL_MODELS", env_note=" (comma separated)", ini="llmeval_models", linelist=True,
        parse=parsers.models, default=(DEFAULT_MODEL,), label="model list", see="[Models](models.md)",
        help="Model(s) under test, any litellm model name (e.g. `openai/gpt-4o-mini`, `groq/llama3-70b`) or "
        "`local/smollm2` (the embedded offline model) or `local/<path to .gguf or HF model dir>`. Repeat the option to "
        "run every case once per model.",
    ),
    Option(
        "cache_mode", flag="--llm-cache", metavar="MODE", env="LLMEVAL_CACHE", ini="llmeval_cache",
        choices=CACHE_MODES, default="on", see="[the response cache](cache.md)",
        help="Response cache: `on` (exact cache, read and write), `off` (neither), `refresh` (call the model, "
        "overwrite the cache), `replay` (never call a model: a miss is an error), `semantic` (`on`, plus: on an "
        "exact miss, serve the answer of an earlier request that means the same, same model, params and system "
        "prompt; never for judges or repeats).",
    ),
    Option(
        "semantic_threshold", flag="--llm-semantic-threshold", metavar="COSINE", env="LLMEVAL_SEMANTIC_THRESHOLD",
        ini="llmeval_semantic_threshold", default=DEFAULT_THRESHOLD, label="semantic threshold",
        parse=parsers.number(float, bad="a number in (0, 1]", ok=lambda v: 0 < v <= 1,
                             out_of_range="a number in (0, 1]"),
        see="[the semantic cache](cache.md#the-semantic-cache-llm-cachesemantic)",
        help="Cosine similarity, a number in (0, 1], from which the semantic cache considers an earlier request (a "
        "guard then rejects differences in negation, numbers, names, quoted text, antonyms).",
    ),
    Option(
        "semantic_verify", flag="--llm-semantic-verify", metavar="MODE", env="LLMEVAL_SEMANTIC_VERIFY",
        ini="llmeval_semantic_verify", choices=VERIFY_MODES, default="off", label="semantic verify",
        see="[the semantic cache's verifier](cache.md#verifying-hits-with-the-judge)",
        help="With `--llm-cache=semantic`: `judge` shows each candidate near the threshold (guard passes and soft "
        "refusals alike) to the `--llm-judge` model (else the model under test), which must answer that the two "
        "requests are the same before the cached answer is served; its verdicts are cached. `off`: the guard decides.",
    ),
    Option(
        "cache_dir", flag="--llm-cache-dir", metavar="DIR", env="LLMEVAL_CACHE_DIR", ini="llmeval_cache_dir",
        parse=parsers.path, path=True, default=Path(".llmeval/cache"),
        help="Directory of the response cache (diskcache).",
    ),
    Option(
        "results_path", flag="--llm-results", metavar="PATH", env="LLMEVAL_RESULTS", ini="llmeval_results",
        parse=parsers.path, path=True, default=Path(".llmeval/results.json"), see="[Reports and results](reports.md)",
        help="Where to write the aggregated results JSON; artifacts and indexes go beside it (artifacts/, index/).",
    ),
    Option(
        "api_base", flag="--llm-api-base", metavar="URL", env="LLMEVAL_API_BASE", ini="llmeval_api_base",
        default_doc="the provider's own",
        help="Base URL sent to litellm for every hosted model (an OpenAI-compatible server, a proxy).",
    ),
    Option(
        "timeout", flag="--llm-timeout", metavar="SECONDS", env="LLMEVAL_TIMEOUT", ini="llmeval_timeout",
        parse=parsers.number(float, bad="a number of seconds", ok=lambda v: v > 0, out_of_range="a positive number"),
        default=120.0, label="timeout",
        help="Seconds one model call may take before it is an error outcome.",
    ),
    Option(
        "retries", flag="--llm-retries", metavar="N", env="LLMEVAL_RETRIES", ini="llmeval_retries",
        parse=parsers.whole(0), default=2, label="retries", see="[retries](resilience.md#retries)",
        help="How often a failed model call is retried (429 after its Retry-After, 408, 5xx, connection errors, "
        "timeouts; exponential backoff with jitter) before the case is an error.",
    ),
    Option(
        "breaker", flag="--llm-breaker", metavar="N", env="LLMEVAL_BREAKER", ini="llmeval_breaker",
        parse=parsers.whole(0), default=3, label="breaker",
        see="[the circuit breaker](resilience.md#a-provider-that-is-down-the-circuit-breaker)",
        help="Circuit breaker: after N consecutive connection-level failures of one endpoint (connection refused, "
        "DNS, TLS, HTTP 401/403) no more calls go to it in this run, in any process; its remaining cases error at "
        "once with one message (0: never).",
    ),
    Option(
        "samples", flag="--llm-samples", metavar="N", env="LLMEVAL_SAMPLES", ini="llmeval_samples",
        parse=parsers.whole(1), default=1, label="samples",
        help="Answers drawn per code case (independent cache slots) to estimate pass@k; set a temperature > 0 in "
        "the suite's params for them to differ.",
    ),
    Option(
        "repeat", flag="--llm-repeat", metavar="N", env="LLMEVAL_REPEAT", ini="llmeval_repeat",
        parse=parse_repeat, default=1, label="repeat", see="[repeats](gate.md#repeats-that-stop-when-settled)",
        help="Run every case N times with independent cache slots, so repeats are real samples, not cache hits: "
        "pass fraction, pass^k (all pass), pass@k and flaky cases (both passed and failed) per case and suite. A "
        "repeated case passes by its suite's pass_if: `all` (default), `majority` or `any` (default for code cases). "
        "`auto` (or `auto:MAX`, default 5) draws a case's answers only until its outcome is settled: the outcome of "
        "MAX draws, for fewer calls.",
    ),
    Option(
        "judge_model", flag="--llm-judge", metavar="MODEL", env="LLMEVAL_JUDGE", ini="llmeval_judge",
        parse=parsers.stripped, see="[LLM judges](checks.md#llm-judges)",
        default_doc="the model under test, flagged in the summary (self-judging is weak)",
        help="Model that grades `judge` checks and runs calibration suites (any litellm model or `local/...`).",
    ),
    Option(
        "target", flag="--llm-target", metavar="TARGET", env="LLMEVAL_TARGET", ini="llmeval_target",
        parse=parsers.stripped, see="[targets](targets.md)",
        default_doc="model: the --llm model answers every suite that names no target",
        help="What answers the suites that name no `target:`: `model` (the --llm model), `python:<module:function>` "
        "(your application, importable from the rootdir), `fixture:<name>` (a fixture returning it) or "
        "`http:<url>`. The application still receives the --llm model name, so --llm=a,b compares it across models.",
    ),
    Option(
        "vision_model", flag="--llm-vision", metavar="MODEL", env="LLMEVAL_VISION", ini="llmeval_vision",
        parse=parsers.stripped, see="[vision models](checks.md#vision-models)",
        default_doc="none (vision checks are skipped with this hint; pixel pre-checks still run)",
        help="Vision model that answers `vision` checks (yes/no questions about images a program wrote) and "
        "vision calibration suites: any litellm vision model (`openai/gpt-4o`, `gemini/gemini-1.5-flash`, "
        "`ollama/llava`) or `local-vision/<dir>` (a moondream2, SmolVLM, Qwen2-VL or LLaVA directory on disk, run "
        "with transformers).",
    ),
    # ------------------------------------------------------------------ throughput, budgets, resilience
    Option(
        "concurrency", flag="--llm-concurrency", metavar="N", env="LLMEVAL_CONCURRENCY", ini="llmeval_concurrency",
        parse=parsers.whole(1), default=8, label="concurrency",
        see="[concurrency](resilience.md#concurrency-in-one-process)",
        help="Model calls kept in flight per process: the calls of upcoming items are issued ahead, in a bounded "
        "thread pool, while earlier items are graded in order (1: one call at a time). Composes with -n: each "
        "worker prefetches the items it will run.",
    ),
    Option(
        "max_calls", flag="--llm-max-calls", metavar="N", env="LLMEVAL_MAX_CALLS", ini="llmeval_max_calls",
        parse=parsers.whole(0), label="max calls", see="[budgets](resilience.md#budgets)",
        help="Stop issuing new model calls after this many (cache hits are free); the remaining cases are skipped "
        "with that reason.",
    ),
    Option(
        "max_cost", flag="--llm-max-cost", metavar="USD", env="LLMEVAL_MAX_COST", ini="llmeval_max_cost",
        parse=parsers.number(float, bad="US dollars, e.g. 2.50", ok=lambda v: v >= 0, out_of_range="a number >= 0",
                             strip="$"),
        label="max cost", see="[budgets](resilience.md#budgets)",
        help="Stop issuing new model calls once the run has spent this many US dollars (as litellm prices them); "
        "the remaining cases are skipped with that reason.",
    ),
    Option(
        "resume", flag="--llm-resume", see="[the journal](resilience.md#nothing-lost-the-journal-and-llm-resume)",
        help="Run only the cases missing from the last run's journal (.llmeval/journal: every finished case is "
        "appended as it completes, so a killed run loses nothing), then write the complete results.",
    ),
    Option(
        "router", flag="--llm-router", metavar="FILE", env="LLMEVAL_ROUTER", ini="llmeval_router",
        parse=parsers.path, path=True, must_exist=True,
        see="[several deployments](resilience.md#several-deployments-or-keys-for-one-model)",
        help="A YAML or JSON file with a litellm Router configuration (model_list with several deployments or keys "
        "per model name, rpm/tpm per deployment, routing_strategy): calls to those model names are balanced by the "
        "Router.",
    ),
    Option(
        "stream", flag="--llm-stream", env="LLMEVAL_STREAM",
        see="[latency detail](resilience.md#latency-detail)",
        help="Stream answers from hosted models to record the time to first token (ttft_s) as well as the total "
        "latency.",
    ),
    # ------------------------------------------------------------------ provider batch APIs (run/batch.py)
    Option(
        "batch", flag="--llm-batch", env="LLMEVAL_BATCH", see="[batch runs](batch.md)",
        help="Send the selected cases' uncached model calls to the providers' batch APIs (half the price, results "
        "within hours), in rounds (answers, then judges and later turns), fill the cache from the results, then "
        "grade as usual. A killed run resumes polling its batches (kept in `.llmeval/batches.json`).",
    ),
    Option(
        "batch_poll", flag="--llm-batch-poll", metavar="SECONDS", env="LLMEVAL_BATCH_POLL", ini="llmeval_batch_poll",
        parse=parsers.number(float, bad="a number of seconds", ok=lambda v: v > 0, out_of_range="a positive number"),
        default=30.0, label="batch poll", see="[batch runs](batch.md)",
        help="Seconds between two looks at the running batches of `--llm-batch`.",
    ),
    Option(
        "batch_timeout", flag="--llm-batch-timeout", metavar="SECONDS", env="LLMEVAL_BATCH_TIMEOUT",
        ini="llmeval_batch_timeout",
        parse=parsers.number(float, bad="a number of seconds", ok=lambda v: v > 0, out_of_range="a positive number"),
        default=86400.0, label="batch timeout", see="[batch runs](batch.md)",
        help="How long `--llm-batch` waits for its batches; the cases of the requests still running then are "
        "errors in this run, and the next `--llm-batch` run resumes polling them.",
    ),
    Option(
        "sandbox", flag="--llm-sandbox", metavar="LEVEL", env="LLMEVAL_SANDBOX", ini="llmeval_sandbox",
        choices=LEVELS, default="auto", see="[the sandbox](sandbox.md)",
        help="Isolation of generated code: `auto` (the strongest that works: bwrap, else unshare), `bwrap`, `unshare`, "
        "or `none` (no isolation: only for code you trust).",
    ),
    # ------------------------------------------------------------------ which cases run
    Option(
        "split", flag="--llm-split", metavar="SPLIT", env="LLMEVAL_SPLIT", choices=SPLIT_CHOICES, default="dev",
        no_ini="so the test split is not run by accident",
        see="[holdout discipline](flywheel.md#holdout-discipline-split-dev-test)",
        help="Which split of the cases runs: `dev`, `test` (the holdout: run rarely, never tuned on; every "
        "evaluation is recorded in .llmeval/holdout.jsonl and the summary warns when the prompts changed since the "
        "last one) or `all`. Cases carry `split: dev|test` (default dev).",
    ),
    Option(
        "explore", flag="--llm-explore", env="LLMEVAL_EXPLORE",
        no_ini="so a committed configuration cannot make every run explore",
        see="[verdicts that reproduce](robustness.md#verdicts-that-reproduce)",
        help="Explore for new robustness flips: `robustness:` items and `llm_settings` tests draw new variants with "
        "a fresh seed (recorded in the results) and save each new minimal flip in the example database under "
        ".llmeval/hypothesis, to be committed. Without it, a run draws the seeded variants, replays the saved flips "
        "and writes nothing, so the same answers give the same verdict.",
    ),
    Option(
        "shard", flag="--llm-shard", metavar="I/N", env="LLMEVAL_SHARD", ini="llmeval_shard", parse=parsers.shard,
        see="[sharding](gate.md#sharding)",
        help="Run only shard I of N (e.g. 2/4): a deterministic slice of the items by a hash of their ids, the same "
        "on every machine. Each shard writes its own results file (`results-shard-2of4.json` beside the "
        "`results.json` it would write, unless `--llm-results` on the command line names it); merge them with "
        "`llmeval merge` and gate once.",
    ),
    # ------------------------------------------------------------------ the gate
    Option(
        "baseline", flag="--llm-baseline", metavar="PATH", env="LLMEVAL_BASELINE", ini="llmeval_baseline",
        parse=parsers.path, path=True, see="[CI: baselines and the gate](gate.md)",
        help="Compare this run with a committed baseline (a results.json or a baseline file written by "
        "--llm-update-baseline) and gate on it: a suite fails on a significant pass-rate drop. With a gate, failed "
        "cases no longer fail the run by themselves (see --llm-strict).",
    ),
    Option(
        "update_baseline", flag="--llm-update-baseline", see="[the baseline file](gate.md#the-baseline-file)",
        help=f"Write this run's per-case outcomes and scores to the --llm-baseline path (or {DEFAULT_BASELINE}); "
        "no gate then.",
    ),
    Option(
        "max_drop", flag="--llm-max-drop", metavar="POINTS", env="LLMEVAL_MAX_DROP", ini="llmeval_max_drop",
        parse=parsers.number(float, bad="a number of points, e.g. 5"), default_doc=f"{DEFAULT_MAX_DROP:g}",
        label="max drop",
        help="Largest pass-rate drop, in points, that the gate accepts (a larger one fails the gate when it is "
        "significant).",
    ),
    Option(
        "fail_under", flag="--llm-fail-under", metavar="RATE", env="LLMEVAL_FAIL_UNDER", ini="llmeval_fail_under",
        linelist=True, parse=parsers.fail_under, label="fail-under",
        help="Absolute floor on every suite's pass rate, e.g. `0.8` (or `80`) (a gate of its own). In the ini, "
        "lines such as `geography: 0.9` set per-suite floors.",
    ),
    Option(
        "gate", flag="--llm-gate", metavar="RULE", repeat=True, ini="llmeval_gate", linelist=True,
        parse=parsers.gate_rules, combine=True, message="Invalid {label}: {problem} (from {source}).",
        see="[gate options](gate.md#gate-options)",
        help="A gate rule (repeatable): `pass_rate:-5%`, `score:-0.05`, `tool_accuracy:-0.05`, `pass_rate>=0.8`, "
        "`latency_p95<=2.5`, `latency_p50<=1`, `cost<=1.00`, `errors<=10%`, `tool_accuracy>=0.9`, `mean_steps<=3`, "
        "or `suite:rule` for one suite. The rules of the command line and of the ini add up.",
    ),
    Option(
        "gate_alpha", flag="--llm-gate-alpha", metavar="ALPHA", env="LLMEVAL_GATE_ALPHA", ini="llmeval_gate_alpha",
        parse=parsers.number(float, bad="e.g. 0.05", ok=lambda v: 0 < v < 1, out_of_range="a number in (0, 1)"),
        default=DEFAULT_ALPHA, label="gate alpha",
        help="Significance level of the gate's tests.",
    ),
    Option(
        "gate_redraws", flag="--llm-gate-redraws", metavar="ANSWERS", env="LLMEVAL_GATE_REDRAWS",
        ini="llmeval_gate_redraws", parse=parsers.whole(0), default=0, default_doc="0 (off)", label="gate redraws",
        see="[a gate that decides](gate.md#a-gate-that-decides-redraws)",
        help="Answers the gate may draw again, in all, to decide a suite whose pass-rate verdict is not settled: "
        "each look draws every paired case of the suite again (new cache slots, as repeats) and a group-sequential "
        "test keeps the false-alarm rate at the gate's alpha over the looks. The redraws, looks and their cost are "
        "reported.",
    ),
    Option(
        "strict", flag="--llm-strict",
        help="With a gate configured, still fail the run on any failed case (pytest's usual meaning).",
    ),
    # ------------------------------------------------------------------ ini keys without an option
    Option(
        "case_dirs", ini="llmeval_cases", linelist=True, parse=parsers.paths, path=True, default=(Path("cases"),),
        see="[case files](case-files.md)",
        help="Directories whose `.yaml`/`.yml`/`.jsonl` files are collected as case suites.",
    ),
    Option(
        "aliases", ini="llmeval_aliases", linelist=True, parse=parsers.aliases, default={},
        label="llmeval_aliases line",
        help="Model aliases, one per line: `name = litellm-model`, e.g. "
        "`groq/llama3-70b = groq/llama3-70b-8192`. --llm and case files may use the short name; results record both.",
    ),
    Option(
        "rate_limits", ini="llmeval_rate_limits", linelist=True, parse=parsers.parse_limits, default={},
        label="llmeval_rate_limits line", see="[rate limits](resilience.md#rate-limits)",
        help="Client-side limits per model, one per line: `openai/gpt-4o-mini = 500 rpm, 200000 tpm` (or `rps`). "
        "Calls wait for their turn instead of provoking 429s; xdist workers share the limit.",
    ),
    Option(
        "rag_docs", ini="llmeval_rag_docs", parse=parsers.path, path=True, see="[Retrieval (RAG)](rag.md)",
        help="Docs folder of the `rag` fixture's index for hand-written tests.",
    ),
    Option(
        "embedding_model", ini="llmeval_embedding_model", parse=parsers.stripped,
        default_doc=f"`{DEFAULT_EMBEDDING_MODEL}` (all-MiniLM-L6-v2, packaged)",
        help="Embedding model of indexes and the semantic cache: a sentence-transformers model directory or a name "
        "in the local Hugging Face cache.",
    ),
)

BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}

# Settings fields that no option sets directly: what each is made of (config.settings derives them).
DERIVED: Mapping[str, str] = {
    "gate_rules": "the rules of --llm-max-drop, then --llm-fail-under, then --llm-gate (command line and ini)",
    "artifacts_dir": "beside the results file: <directory of --llm-results>/artifacts",
    "index_dir": "beside the results file: <directory of --llm-results>/index",
}
# Options that feed a derived field instead of a Settings field of their own.
FEEDS: Mapping[str, str] = {"max_drop": "gate_rules", "fail_under": "gate_rules", "gate": "gate_rules"}


@dataclass(frozen=True)
class Resolved:
    """An option's value and where it came from (``source`` None: the default)."""

    value: Any
    raw: Any = None
    source: str | None = None


def lookup(option: Option, config: pytest.Config) -> list[tuple[Any, str]]:
    """Every place that sets ``option``, highest precedence first: command line > environment > ini.

    Each is ``(raw value, source)``; an empty value ("", [] or an unset switch) is not a setting.
    """
    found: list[tuple[Any, str]] = []
    if option.flag:
        value = config.getoption(option.dest, None)
        if value not in (None, [], "", False):
            found.append((value, f"command line {option.flag}"))
    if option.env:
        value = os.environ.get(option.env)
        if value:
            found.append((value, f"environment variable {option.env}"))
    if option.ini:
        value = config.getini(option.ini)
        if value not in (None, [], ""):
            found.append((value, f"ini key {option.ini}"))
    return found


def _parse(option: Option, raw: Any, source: str, root: Path) -> Any:
    try:
        value = option.parse(raw)
    except parsers.BadItem as exc:
        raise option.error(exc.item, source, exc.problem) from None
    except ValueError as exc:
        raise option.error(raw, source, str(exc)) from None
    if option.path:
        value = _rooted(value, root)
        if option.must_exist and not value.is_file():
            raise option.error(raw, source, "no such file")
    return value


def _rooted(value: Any, root: Path) -> Any:
    if isinstance(value, tuple):
        return tuple(root / v for v in value)
    return None if value is None else root / value


def resolve_option(option: Option, config: pytest.Config, root: Path | None = None) -> Resolved:
    """One option's value: the first setting in order of precedence, parsed and validated, else the default."""
    root = Path(config.rootpath) if root is None else root
    found = lookup(option, config)
    if not found:
        default = dict(option.default) if isinstance(option.default, dict) else option.default  # not shared
        return Resolved(_rooted(default, root) if option.path else default)
    if option.combine:  # every source adds its items, in order of precedence
        values = [_parse(option, raw, source, root) for raw, source in found]
        return Resolved(tuple(v for value in values for v in value), found[0][0], found[0][1])
    raw, source = found[0]
    return Resolved(_parse(option, raw, source, root), raw, source)


def resolve(config: pytest.Config) -> dict[str, Resolved]:
    """Every option's value, by name; the first invalid one raises a pytest.UsageError that names its source."""
    root = Path(config.rootpath)
    return {option.name: resolve_option(option, config, root) for option in OPTIONS}

