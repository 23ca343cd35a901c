"""One frozen Settings object, resolved once per process from the option table (config.options).

Precedence (command line > environment > ini > default), parsing and validation live in
:mod:`pytest_llmeval.config.options`; this module holds the Settings every layer reads and derives the few fields
that combine several options (the gate's rules, the baseline path, the directories beside the results file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.config import options
from pytest_llmeval.config.options import CACHE_MODES, DEFAULT_MODEL, SPLIT_CHOICES
from pytest_llmeval.config.parsers import Limit

__all__ = ["CACHE_MODES", "DEFAULT_MODEL", "SPLIT_CHOICES", "Settings", "resolve"]


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
    target: str | None = None  # --llm-target: the target of suites that name none (None: the --llm model)
    vision_model: str | None = None
    index_dir: Path = Path(".llmeval/index")
    rag_docs: Path | None = None  # the `rag` fixture's default docs folder (ini llmeval_rag_docs)
    embedding_model: str | None = None  # default embedding model (ini llmeval_embedding_model)
    semantic_threshold: float = 0.75
    semantic_verify: str = "off"  # off | judge: the semantic cache's candidates confirmed by the judge model
    baseline: Path | None = None
    update_baseline: bool = False
    gate_rules: tuple[Any, ...] = ()
    gate_alpha: float = 0.05
    gate_redraws: int = 0  # answers the gate may draw again to decide unsettled suites (0: off)
    strict: bool = False
    shard: tuple[int, int] | None = None  # (index, count), 1-based index
    concurrency: int = 8
    max_cost: float | None = None
    max_calls: int | None = None
    resume: bool = False
    router: Path | None = None
    rate_limits: dict[str, Limit] = field(default_factory=dict)  # client-side limits per model
    stream: bool = False
    batch: bool = False  # --llm-batch: the uncached calls go to the providers' batch APIs first (run/batch.py)
    batch_poll: float = 30.0
    batch_timeout: float = 86400.0
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


def resolve(config: pytest.Config) -> Settings:
    """Resolve every setting once (cli > env > ini > default), validate it and derive the combined fields."""
    values = options.resolve(config)
    direct = {name: resolved.value for name, resolved in values.items() if name not in options.FEEDS}

    # The baseline: --llm-update-baseline writes it (to the default path unless one is given); else it must exist.
    baseline = values["baseline"]
    if baseline.value is None and direct["update_baseline"]:
        direct["baseline"] = Path(config.rootpath) / options.DEFAULT_BASELINE
    elif baseline.value is not None and not direct["update_baseline"] and not baseline.value.exists():
        raise pytest.UsageError(f"Invalid baseline from {baseline.source} {baseline.raw}: no such file; write one with "
                          "--llm-update-baseline")

    from pytest_llmeval.results.gate import DropRule

    max_drop = values["max_drop"].value
    rules = [*([DropRule("pass_rate", max_drop)] if max_drop is not None else []),
             *(values["fail_under"].value or ()), *(values["gate"].value or ())]
    # Shards (--llm-shard) sharing a directory must not overwrite each other's results (the last writer would win
    # and a shard would be lost without a word): each writes its own file, and none the baseline. Only a path given
    # on the command line is taken as is (it is the job's own); the default, an ini key or an environment variable
    # are shared by every shard, so the shard's name is added to them.
    shard = direct["shard"]
    if shard is not None:
        from pytest_llmeval.results.shards import shard_label, shard_results_path

        if not (values["results_path"].source or "").startswith("command line"):
            direct["results_path"] = shard_results_path(direct["results_path"], shard)
        if direct["update_baseline"]:
            raise pytest.UsageError(
                f"--llm-update-baseline with --llm-shard {shard_label(shard)}: a shard holds part of the run, and "
                "shards would overwrite each other's baseline; merge the shards' results and write the baseline "
                "once: llmeval merge <shard results> --baseline .llmeval/baseline.json")
    results_dir = direct["results_path"].parent
    return Settings(**direct, gate_rules=tuple(rules), artifacts_dir=results_dir / "artifacts",
                    index_dir=results_dir / "index")
