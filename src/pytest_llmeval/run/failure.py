"""The failure report of a case item (pytest's longrepr for a CaseFailed): what the case asked, what came back, and
why each check decided as it did."""

from __future__ import annotations

import textwrap
from typing import Any

from pytest_llmeval.run.agent import indent_reason

SHOW_CHARS = 1200  # of prompt and answer in a failure report


def format_failure(item: Any, where: str) -> str:
    """The report of a failed case item: its prompt and answer (or conversation), what it did (code, tool calls,
    draws, calibration, robustness) and every check's verdict, a reason of several lines indented under its check."""
    def block(text: str) -> str:
        text = text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + f"… [{len(text)} chars]"
        return textwrap.indent(text or "(empty)", "    ")

    # Show the first draw that failed (with repeats, the first one may have passed).
    index = next((i for i, s in enumerate(item.samples) if s["status"] == "failed"), 0)
    shown = item.samples[index] if item.samples else {}
    answer = item.completions[index].text if item.completions else str(item.case.fields.get("answer", ""))
    judged = " (judge)" if item.case.kind == "calibration" else ""
    lines = [f"case {item.case.id} ({where}) failed on {item.model}{judged}"]
    if item.case.system:
        lines += ["  system:", block(item.case.system)]
    lines += item.transcript_lines(index, shown.get("outcomes", item.outcomes)) if item.case.is_conversation \
        else ["  prompt:", block(item.case.prompt), "  answer:", block(answer)]
    steps = item.trajectory_lines(index)
    lines += steps
    if item.case.kind == "code":
        code = shown.get("code")
        lines += ["  extracted code:" if code else "  extracted code: none found", *([block(code)] if code else [])]
        if shown.get("detail"):
            lines.append(f"  detail: {shown['detail']}")
    if len(item.samples) > 1:
        passed = sum(1 for s in item.samples if s["status"] == "passed")
        lines.append(f"  draws: {passed} of {len(item.samples)} passed (pass_if: {item.pass_if}); "
                     f"draw {index}'s checks:")
    if item.calibration:
        cal = item.calibration
        human = f"score {cal['human_score']:g}" if cal.get("human_score") is not None else cal["human_verdict"]
        if cal.get("judge_score") is None:  # a labelled image
            lines.append(f"  calibration: asked {cal.get('question')!r} about {cal.get('image')}, the vision "
                         f"pipeline said {cal['judge_verdict']}, the human label is {cal['human_verdict']}"
                         + (f" (pre-check: {cal['precheck']})" if cal.get("precheck") else ""))
        else:
            lines.append(f"  calibration: the judge said {cal['judge_score']:g}/10 ({cal['judge_verdict']}), "
                         f"the human label is {human} (tolerance {cal['tolerance']:g})")
    if item.robustness is not None:
        from pytest_llmeval.robustness.runner import failure_lines

        lines += failure_lines(item.robustness)
    lines.append("  checks:")
    for o in shown.get("outcomes", item.outcomes):
        mark = "ok  " if o.passed else "??  " if o.unscored else "FAIL"
        score = "unscored" if o.score is None else f"score {o.score:.2f}"
        lines.append(indent_reason(o, f"    {mark} {o.name} ({score})", trajectory_shown=bool(steps)))
    return "\n".join(lines)
