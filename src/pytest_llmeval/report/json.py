"""results.json (and, with --llm-update-baseline, the baseline) as a reporter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_llmeval.report.base import Reporter, RunReport
from pytest_llmeval.results.aggregate import write_results


class JsonReporter(Reporter):
    """Writes the results document where ``--llm-results`` says (atomically), and the baseline when asked."""

    name = "json"

    def finish(self, report: RunReport) -> None:
        settings = report.settings
        write_results(settings.results_path, report.doc)
        if settings.update_baseline and settings.baseline is not None:
            from pytest_llmeval.results.gate import write_baseline

            write_baseline(settings.baseline, report.doc)

    def terminal_summary(self, report: RunReport, terminalreporter: Any) -> None:
        try:
            shown = report.results_path.relative_to(Path(os.getcwd()))
        except ValueError:
            shown = report.results_path
        terminalreporter.write_line(f"results: {shown}")
