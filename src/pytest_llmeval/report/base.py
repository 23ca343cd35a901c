"""What a reporter is and what it receives.

Reporters register through the ``pytest_llmeval_register_reporters`` hook (hookspecs.py), the built-in ones
(terminal, GitHub, results.json, HTML) exactly as a third party's. On the controller of a run (or a plain run)
each one is called twice: :meth:`Reporter.finish` once the results are final (aggregated, gated, the exit status
decided), and :meth:`Reporter.terminal_summary` when pytest writes its summary. xdist workers call neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.core.registry import Registry

if TYPE_CHECKING:
    from pytest_llmeval.config.settings import Settings
    from pytest_llmeval.core.checks import CheckDef


@dataclass
class RunReport:
    """A finished run, as reporters see it.

    ``doc`` is the results.json document (schema in docs/reports.md), except that ``doc["cases"]`` is a read-only
    sequence read from disk as it is iterated (len, indexing, slices, repeated iteration), not a list: a 100,000-case
    run never holds every case in memory; ``list(doc["cases"])`` makes one. ``verdicts`` the gate's verdicts (None
    without a gate); ``holdout`` the holdout evaluations of the test-split suites this run evaluated;
    ``held_out`` how many test-split items a dev run deselected; ``resumed`` how many cases came from the runs
    ``--llm-resume`` continued (``resumed_from``: the first of them)."""

    doc: dict[str, Any]
    settings: Settings
    checks: Iterable[CheckDef] | None = None  # the run's registered checks (their summary_lines); None: built-in
    verdicts: list[Any] | None = None
    holdout: list[Any] = field(default_factory=list)
    held_out: int = 0
    resumed: int = 0
    resumed_from: str | None = None

    @property
    def results_path(self) -> Path:
        return self.settings.results_path


class Reporter:
    """Base class of reporters: override what you need; ``name`` identifies it (a later registration under the
    same name replaces an earlier one, so a conftest can replace a built-in reporter)."""

    name = "reporter"

    def finish(self, report: RunReport) -> None:
        """The run's results are final: write files here."""

    def terminal_summary(self, report: RunReport, terminalreporter: Any) -> None:
        """Write lines to pytest's terminal summary (``terminalreporter.write_line``)."""

    def render(self, doc: dict[str, Any], root: Path) -> str | None:
        """A whole document for a results file (the ``llmeval report`` command); None if this reporter makes none."""
        return None


class ReporterRegistry(Registry[Reporter]):
    """The reporters of this run, in registration order, filled by ``pytest_llmeval_register_reporters``."""
