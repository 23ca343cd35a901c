"""The terminal summary table (one row per suite x model)."""

from __future__ import annotations

from typing import Any

COLUMNS = [
    ("suite", "suite", "<"), ("model", "model", "<"), ("cases", "cases", ">"), ("passed", "pass", ">"),
    ("failed", "fail", ">"), ("error", "err", ">"), ("skipped", "skip", ">"), ("pass_rate", "rate", ">"),
    ("mean_score", "score", ">"), ("latency_p50_s", "p50 s", ">"), ("latency_p95_s", "p95 s", ">"),
    ("tokens", "tokens", ">"), ("cost_usd", "cost $", ">"), ("cache_hits", "cached", ">"),
]


def _cell(key: str, row: dict[str, Any]) -> str:
    if key == "tokens":
        return str(row["prompt_tokens"] + row["completion_tokens"])
    value = row.get(key)
    if value is None:
        return "-"
    if key == "pass_rate":
        return f"{value:.1%}"
    if key == "mean_score":
        return f"{value:.3f}"
    if key.startswith("latency"):
        return f"{value:.2f}"
    if key == "cost_usd":
        return f"{value:.4f}"
    return str(value)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The summary table of a results document, plus one line per invalid case file entry."""
    rows = [[_cell(key, r) for key, _, _ in COLUMNS] for r in doc["suites"]]
    header = [title for _, title, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w)
                         for c, w, (_, _, a) in zip(cells, widths, COLUMNS, strict=True)).rstrip()

    lines = [fmt(header)] + [fmt(r) for r in rows] if rows else []
    if doc.get("invalid"):
        lines.append(f"{len(doc['invalid'])} problem(s) in case files (shown as errors above)")
    return lines
