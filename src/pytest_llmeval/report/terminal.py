"""The terminal summary table (one row per suite x model)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pytest_llmeval.core.checks import CheckDef
from pytest_llmeval.report.base import Reporter, RunReport

COLUMNS = [
    ("suite", "suite", "<"), ("model", "model", "<"), ("cases", "cases", ">"), ("passed", "pass", ">"),
    ("failed", "fail", ">"), ("unscored", "unsc", ">"), ("error", "err", ">"), ("skipped", "skip", ">"),
    ("pass_rate", "rate [95% CI]", ">"),
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
        ci = row.get("pass_rate_ci")
        return f"{value:.1%}" + (f" [{ci[0]:.0%}-{ci[1]:.0%}]" if ci else "")
    if key == "mean_score":
        return f"{value:.3f}"
    if key.startswith("latency"):
        return f"{value:.2f}"
    if key == "cost_usd":
        return f"{value:.4f}"
    return str(value)


def summary_lines(doc: dict[str, Any], checks: Iterable[CheckDef] | None = None) -> list[str]:
    """The summary table of a results document, the lines under it (each row's details, then what each check's
    ``summary_lines`` says about the row: the labels' report...), and one line per invalid case file entry.

    ``checks``: the run's registered checks (default: the built-in ones, for a document read back from a file)."""
    if checks is None:
        from pytest_llmeval.checks.builtin import BUILTIN_CHECKS

        checks = BUILTIN_CHECKS
    check_lines = [c.summary_lines for c in checks if c.summary_lines is not None]
    rows = [[_cell(key, r) for key, _, _ in COLUMNS] for r in doc["suites"]]
    header = [title for _, title, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w)
                         for c, w, (_, _, a) in zip(cells, widths, COLUMNS, strict=True)).rstrip()

    lines = [fmt(header)] + [fmt(r) for r in rows] if rows else []
    lines += stage_lines(doc["suites"])
    for row in doc["suites"]:
        lines += _details(row)
        name = f"{row['suite']} [{row['model']}]"
        for check_summary in check_lines:
            lines += check_summary(row, name)
    if doc.get("invalid"):
        lines.append(f"{len(doc['invalid'])} problem(s) in case files (shown as errors above)")
    return lines


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _rate(row: dict[str, Any]) -> str:
    graded = row["passed"] + row["failed"]
    return f"{_pct(row.get('pass_rate'))} ({row['passed']}/{graded})" if graded else "- (none graded)"


ERROR_SHARE_WARN = 0.10  # above this share of errored cases the summary says so in red


# The message of a case that was not sent because its endpoint's circuit breaker was open (resilience.EndpointDown).
_ENDPOINT_DOWN = re.compile(r"endpoint (?P<endpoint>.+?) is down: (?P<cause>.+?) \((?P<n>\d+) consecutive connection "
                            r"failures")


def error_lines(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """Provider failures (``error`` outcomes) are excluded from pass rates: say so, loudly past 10%. A model that
    cannot be used and an endpoint that is down are each said once, with how many cases they cost."""
    cases = doc.get("cases") or []
    rows = doc.get("suites") or []
    if rows and not any(r.get("error") for r in rows) and sum(r.get("cases", 0) for r in rows) == len(cases):
        return []  # the rows count every case and no error: no need to read the cases (from disk in a run)
    errors = [c for c in cases if c.get("outcome") == "error"]
    if not errors:
        return []
    out: list[tuple[str, bool]] = []
    unusable: Counter[str] = Counter()
    down: dict[str, list[Any]] = {}  # endpoint -> [cause, cases]
    others: list[str] = []
    for c in errors:
        message = c.get("message") or ""
        if message.startswith("--llm="):  # a model found unusable before any call (missing key, unknown provider)
            unusable[message] += 1
        elif m := _ENDPOINT_DOWN.search(message):
            down.setdefault(m["endpoint"], [m["cause"], 0])[1] += 1
        elif message:
            others.append(message)
    for message, n in unusable.items():
        out.append((f"ERROR: {n} case(s) could not run: {message}", True))
    for endpoint, (cause, n) in down.items():
        out.append((f"ERROR: endpoint {endpoint} is down: {cause}. Calls to it stopped (circuit breaker, "
                    f"--llm-breaker); {n} case(s) errored without an answer.", True))
    share = len(errors) / len(cases)
    text = (f"{len(errors)} of {len(cases)} case(s) ({share:.0%}) errored (provider or infrastructure failures, "
            f"excluded from pass rates and gates)")
    if others:
        text += f"; first: {others[0].splitlines()[0][:200]}"
    if len(errors) == len(cases):
        return [*out, (f"ERROR: {text}. No case was graded: this run has no pass rates.", True)]
    if share > ERROR_SHARE_WARN:
        return [*out, (f"ERROR: {text}. The pass rates above rest on the remaining {len(cases) - len(errors)} "
                       "case(s) only.", True)]
    return [*out, (f"WARNING: {text}", False)]


def budget_lines(doc: dict[str, Any]) -> list[str]:
    budget = (doc.get("run") or {}).get("budget")
    if not budget:
        return []
    parts = [f"{budget['calls']} model call(s)" + (f" of {budget['max_calls']}" if budget.get("max_calls") is not None
                                                  else ""),
             f"${budget['spend_usd']:.4f} spent" + (f" of ${budget['max_cost_usd']:g}"
                                                    if budget.get("max_cost_usd") is not None else "")]
    skipped = sum(1 for c in doc.get("cases") or [] if c.get("outcome") == "skipped"
                  and "reached: no more model calls" in (c.get("message") or ""))
    if skipped:
        parts.append(f"{skipped} case(s) skipped by the budget")
    return ["budget: " + ", ".join(parts)]


def stage_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Suites with vision checks: the "runs" pass rate (fast evaluation: the program runs and writes a sound
    image) next to the "judged" one (the vision model agrees too), as seed 000 reported them."""
    by_key = {(r["suite"], r["model"]): r for r in rows}
    out = []
    for row in rows:
        if row.get("stage") != "runs":
            continue
        judged = by_key.get((f"{row['suite']}:judged", row["model"]))
        line = f"{row['suite']} [{row['model']}]: runs {_rate(row)}"
        if judged is None:
            line += "; judged: not run (those items are marked slow: run without -m 'not slow')"
        else:
            line += f"; judged {_rate(judged)}"
            notes = [f"{judged[k]} {k}" for k in ("unscored", "skipped", "error") if judged.get(k)]
            if notes:
                line += f", {', '.join(notes)}"
        out.append(line)
    return out


def _details(row: dict[str, Any]) -> list[str]:
    """Lines under the table for what only some suites have: judges, repeats, flaky cases, retrieval, vision..."""
    name = f"{row['suite']} [{row['model']}]"
    out: list[str] = []
    judge = row.get("judge")
    if judge and judge.get("self_judging"):
        out.append(f"WARNING {name}: judged by the model under test itself (self-judging is weak); "
                   "set --llm-judge to a stronger model")
    if row.get("unscored_checks"):
        out.append(f"{name}: {row['unscored_checks']} judge check(s) unscored (unparseable judge output); "
                   f"{row.get('unscored', 0)} case(s) left unscored")
    rob = row.get("robustness")
    if rob:  # a "<suite>:robust" row: consistency, not accuracy
        out.append(f"{name}: consistency {_pct(rob['consistency'])} over {rob['variants']} variant(s) "
                   f"({', '.join(rob['perturb'])}); {rob['cases_consistent']} of {rob['cases']} case(s) consistent "
                   "enough")
    elif "accuracy" in row and row.get("accuracy") is not None:
        ci = row.get("accuracy_ci") or [None, None]
        out.append(f"{name}: accuracy {_pct(row['accuracy'])} (95% CI {_pct(ci[0])}-{_pct(ci[1])}, "
                   f"n={row['passed'] + row['failed']})")
    rep = row.get("repeats")
    if rep:
        k = rep["n"]
        pass_at = (row.get("pass_at_k") or {}).get(str(k))
        out.append(f"{name}: x{k} repeats: pass fraction {_pct(rep['pass_fraction'])}, pass^{k} {_pct(rep['pass_all'])}"
                   f", pass@{k} {_pct(pass_at if pass_at is not None else rep['pass_any'])}")
        if row.get("flaky"):
            out.append(f"{name}: flaky ({len(row['flaky'])}): {', '.join(row['flaky'])}")
    metrics = row.get("metrics")
    if metrics:
        out.append(f"{name}: reference metrics " + ", ".join(f"{m} {v:.3f}" for m, v in metrics.items()
                                                             if v is not None))
    ret = row.get("retrieval")
    if ret:
        out.append(f"{name}: retrieval over {ret['cases']} case(s) with expected sources: recall@{ret['k']} "
                   f"{_pct(ret['recall_at_k'])}, MRR {ret['mrr']:.3f}")
    if row.get("semantic_hits"):
        out.append(f"{name}: {row['semantic_hits']} answer(s) served by the semantic cache")
    app = row.get("app_calls")
    if app and app.get("calls") is None:
        out.append(f"{name}: target {app['target']} answered {app['cases']} case(s); its own model calls are not "
                   "measured (another process: give the target a usage: path to its reply's usage)")
    elif app:
        cost = f", ${app['cost_usd']:.4f}" if app.get("cost_usd") is not None else ""
        cached = f" ({app['cached']} answer(s) from the cache)" if app.get("cached") else ""
        out.append(f"{name}: target {app['target']} made {app['calls']} model call(s) of its own for {app['cases']} "
                   f"case(s){cached}: {app['prompt_tokens']}+{app['completion_tokens']} tokens{cost}, "
                   f"{app['latency_s'] or 0:.2f} s")
    vision = row.get("vision")
    if vision:
        models = ", ".join(vision["models"]) or "no vision model"
        out.append(f"{name}: vision ({models}): {vision['questions']} question(s), {vision['answered']} answered, "
                   f"{vision['agreed']} as expected; {vision['precheck_failed']} failed a pixel pre-check, "
                   f"{vision['unscored']} unscored, {vision['skipped']} skipped")
    cal = row.get("calibration")
    if cal:
        ci = cal.get("agreement_ci") or [None, None]
        kappa = "-" if cal["kappa"] is None else f"{cal['kappa']:.2f}"
        mae = "-" if cal["mean_abs_error"] is None else f"{cal['mean_abs_error']:.2f}"
        out.append(f"{name}: judge calibration on {cal['examples']} example(s): agreement {_pct(cal['agreement'])} "
                   f"(95% CI {_pct(ci[0])}-{_pct(ci[1])}), mean abs error {mae}, verdict accuracy "
                   f"{_pct(cal['verdict_accuracy'])}, Cohen's kappa {kappa}, unscored {cal['unscored']}")
    return out


class TerminalReporter(Reporter):
    """The ``llmeval summary`` section of pytest's terminal summary: the table, errors, budget, holdout, gate."""

    name = "terminal"

    def terminal_summary(self, report: RunReport, terminalreporter: Any) -> None:
        from pytest_llmeval.cases.holdout import warning_lines
        from pytest_llmeval.results.gate import format_verdicts

        tr, doc, settings = terminalreporter, report.doc, report.settings
        tr.write_sep("=", "llmeval summary")
        for line in summary_lines(doc, report.checks):
            tr.write_line(line)
        for line, red in error_lines(doc):
            tr.write_line(line, red=red, yellow=not red)
        for line in budget_lines(doc):
            tr.write_line(line)
        for line, loud in warning_lines(report.holdout):
            tr.write_line(line, red=loud, bold=loud)
        if report.held_out and settings.split == "dev":
            tr.write_line(f"holdout: {report.held_out} test-split item(s) not run (the holdout runs only with "
                          "--llm-split test)")
        if report.resumed:
            tr.write_line(f"resumed run {report.resumed_from or '?'}: {report.resumed} case(s) finished there are in "
                          "these results")
        if report.verdicts is not None:
            tr.write_sep("-", "llmeval gate")
            for line in format_verdicts(report.verdicts):
                tr.write_line(line)
            if doc["gate"]["failed"]:
                tr.write_line("ERROR: llmeval gate failed: " + "; ".join(
                    f"{v.suite} [{v.model}] {v.verdict}" for v in report.verdicts
                    if v.verdict in ("regression", "below_floor", "over_budget", "errors")), red=True)
            else:
                tr.write_line("llmeval gate passed" + (" (failed cases are reported above; the gate decides the "
                                                       "exit status)" if not settings.strict else ""), green=True)
        if settings.update_baseline and settings.baseline is not None:
            tr.write_line(f"baseline written: {settings.baseline}")
