"""GitHub Actions: the step summary (Markdown) and error annotations on the regressed cases' lines."""

from __future__ import annotations

import os
from typing import Any

from pytest_llmeval.report.base import Reporter, RunReport
from pytest_llmeval.report.terminal import error_lines


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def github_summary(doc: dict[str, Any]) -> str:
    """Markdown for ``$GITHUB_STEP_SUMMARY``: per suite x model, pass rates with intervals, deltas and
    verdicts against the baseline, then the flipped cases of failing suites."""
    gate = doc.get("gate") or {}
    verdicts = {(v["suite"], v["model"]): v for v in gate.get("suites", [])}
    title = "## pytest-llmeval"
    if gate:
        title += " — gate " + ("**failed** :x:" if gate.get("failed") else "passed :white_check_mark:")
    lines = [title, "", "| suite | model | cases | passed | failed | unscored | errors | pass rate (95% CI) | Δ vs baseline "
             "| verdict |", "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in doc["suites"]:
        v = verdicts.get((row["suite"], row["model"]), {})
        ci = row.get("pass_rate_ci")
        rate = "-" if row.get("pass_rate") is None else f"{row['pass_rate']:.1%}" + (
            f" ({ci[0]:.0%}–{ci[1]:.0%})" if ci else "")
        delta = "-" if v.get("delta_points") is None else f"{v['delta_points']:+.1f} pts"
        lines.append(f"| {_md_cell(row['suite'])} | {_md_cell(row['model'])} | {row['cases']} | {row['passed']} | "
                     f"{row['failed']} | {row.get('unscored', 0)} | {row['error']} | {rate} | {delta} | "
                     f"{v.get('verdict', '-')} |")
    lines += _agent_lines(doc["suites"], verdicts)
    errors = error_lines(doc)  # a down endpoint, an unusable model, the share of errors: once each
    if errors:
        lines.append("")
        lines += [f"- {_md_cell(text)}" for text, _ in errors]
    for v in gate.get("suites", []):
        if v.get("reasons"):
            lines += ["", f"**{_md_cell(v['suite'])} [{_md_cell(v['model'])}]**: " + "; ".join(map(_md_cell, v["reasons"]))]
        if v.get("flipped") and v.get("verdict") in ("regression", "inconclusive"):
            lines += ["", f"<details><summary>passed before, failed now ({len(v['flipped'])})</summary>", ""]
            lines += [f"- `{f['case_id']}` ({f.get('file')}:{f.get('line')})" for f in v["flipped"][:50]]
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _agent_lines(rows: list[dict[str, Any]], verdicts: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """A table of the agent rows (issue 18): tool-call accuracy (and its change against the baseline), mean steps,
    tool errors and runs stopped at max_steps; nothing without agent cases."""
    agents = [r for r in rows if isinstance(r.get("agent"), dict)]
    if not agents:
        return []
    out = ["", "| suite | model | agent cases | tool-call accuracy | Δ vs baseline | mean steps | tool errors "
               "| stopped at max_steps |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in agents:
        agent, v = row["agent"], verdicts.get((row["suite"], row["model"]), {})
        accuracy = "-" if agent.get("tool_accuracy") is None else f"{agent['tool_accuracy']:.1%}"
        delta = "-" if v.get("tool_accuracy_delta") is None else f"{100 * v['tool_accuracy_delta']:+.1f} pts"
        steps = "-" if agent.get("mean_steps") is None else f"{agent['mean_steps']:.1f}"
        out.append(f"| {_md_cell(row['suite'])} | {_md_cell(row['model'])} | {agent.get('cases', 0)} | {accuracy} | "
                   f"{delta} | {steps} | {agent.get('tool_errors', 0)} | {agent.get('stopped_at_limit', 0)} |")
    return out


def github_annotations(doc: dict[str, Any]) -> list[str]:
    """Workflow commands that put an error on the case's line in its YAML file, for each flipped case of a
    regressed suite, and one for each failing verdict."""
    out = []
    for v in (doc.get("gate") or {}).get("suites", []):
        name = f"{v['suite']} [{v['model']}]"
        if v.get("verdict") == "regression":
            for f in v.get("flipped", []):
                where = f"file={f['file']},line={f['line']}," if f.get("file") and f.get("line") else ""
                out.append(f"::error {where}title=llmeval regression::{f['case_id']} passed in the baseline and "
                           f"fails now ({name})")
        if v.get("verdict") in ("regression", "below_floor", "over_budget", "errors"):
            reasons = "; ".join(v.get("reasons", [])).replace("\n", " ")
            out.append(f"::error title=llmeval gate::{name}: {v['verdict']}: {reasons}")
    return out


class GitHubReporter(Reporter):
    """On GitHub Actions: appends the step summary to ``$GITHUB_STEP_SUMMARY`` and prints the annotations."""

    name = "github"

    def terminal_summary(self, report: RunReport, terminalreporter: Any) -> None:
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            try:
                with open(summary_path, "a", encoding="utf-8") as fh:
                    fh.write(github_summary(report.doc))
            except OSError as exc:
                terminalreporter.write_line(f"llmeval: cannot write the GitHub step summary {summary_path}: {exc}",
                                            yellow=True)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for line in github_annotations(report.doc):
                terminalreporter.write_line(line)
