"""Issue 18's reporting side: the agent entries of a suite row (tool-call accuracy, mean steps), the summary line,
the gate's tool rules and paired tool-accuracy drop, the baseline's tool accuracy, and the HTML drill-down of a
trajectory, each through the real aggregate, gate and report code."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.checks.tools import CHECKS, TRAJECTORY_CHECKS, aggregate_tools, tool_summary_lines
from pytest_llmeval.core.tools import Step, ToolCall, Trajectory
from pytest_llmeval.report.html import render
from pytest_llmeval.report.terminal import summary_lines
from pytest_llmeval.results.aggregate import CaseResult, aggregate, build_results
from pytest_llmeval.results.gate import (
    DropRule,
    Gate,
    GateError,
    LimitRule,
    baseline_document,
    format_verdicts,
    load_baseline,
    parse_rule,
    write_baseline,
)

AGGREGATES = {"tool_called": aggregate_tools}


def trajectory(*steps: tuple[str, dict[str, Any], Any, str | None], final: str | None = "done",
               ended: str = "answer", mode: str = "native") -> dict[str, Any]:
    """A results.json trajectory: (tool, arguments, result, error) per step, as the agent loop records it."""
    t = Trajectory([Step(i, ToolCall(name, args, f"call_{i}"), result, error, 0.0123)
                    for i, (name, args, result, error) in enumerate(steps)], final, ended)
    return {"mode": mode, **t.to_dict()}


def case(cid: str, *, suite: str = "assistant", model: str = "gpt-4o-mini", outcome: str = "passed",
         traj: dict[str, Any] | None = None, acc: float | None = None, score: float | None = 1.0) -> CaseResult:
    return CaseResult(suite, cid, model, outcome, score=score, trajectory=traj, tool_accuracy=acc,
                      prompt=f"prompt of {cid}", answer="done", latency_s=0.2)


CALC = ("calculator", {"expression": "17 * 23"}, 391, None)
SEARCH = ("search_docs", {"query": "install"}, [{"source": "docs/install.md"}], None)
UNKNOWN = ("delete_everything", {}, None, "unknown tool 'delete_everything'; the tools are: calculator")


def agent_rows() -> list[CaseResult]:
    """Six agent cases (one stopped at max_steps, two steps answered with an error) and one plain case."""
    return [
        case("a", traj=trajectory(CALC), acc=1.0),
        case("b", traj=trajectory(CALC, SEARCH), acc=1.0),
        case("c", traj=trajectory(UNKNOWN, CALC), acc=0.5, outcome="failed", score=0.5),
        case("d", traj=trajectory(SEARCH, SEARCH, SEARCH, SEARCH, final=None, ended="max_steps"), acc=0.0,
             outcome="failed", score=0.0),
        case("e", traj=trajectory(), acc=1.0),  # answered without a tool, as it should
        case("f", traj=trajectory(UNKNOWN, CALC), acc=1.0),
        case("plain", traj=None, acc=None),  # no tools: not an agent case
    ]


# ------------------------------------------------------------------------------------------------ the suite row


def test_the_row_has_tool_accuracy_mean_steps_and_the_agent_block() -> None:
    (row,) = aggregate(agent_rows(), AGGREGATES)
    assert row["tool_accuracy"] == pytest.approx(4.5 / 6)
    assert row["mean_steps"] == pytest.approx((1 + 2 + 2 + 4 + 0 + 2) / 6)
    assert row["agent"] == {"cases": 6, "scored": 6, "tool_accuracy": row["tool_accuracy"],
                            "mean_steps": row["mean_steps"], "tool_errors": 2, "stopped_at_limit": 1}
    assert row["cases"] == 7 and row["passed"] == 5  # the usual counts are untouched


def test_a_row_without_agent_cases_has_none_of_the_keys() -> None:
    (row,) = aggregate([case("x"), case("y", outcome="failed", score=0.0)], AGGREGATES)
    assert not {"tool_accuracy", "mean_steps", "agent"} & row.keys()


def test_accuracy_and_steps_each_over_the_cases_that_have_them() -> None:
    # An application case with tool checks whose answer carried no tool calls: its accuracy (0) counts, its
    # steps do not (unknown, not zero); an agent case without trajectory checks: its steps count, no accuracy.
    rows = [case("app", traj=None, acc=0.0), case("run", traj=trajectory(CALC, CALC, CALC), acc=None)]
    (row,) = aggregate(rows, AGGREGATES)
    assert row["tool_accuracy"] == 0.0 and row["mean_steps"] == 3.0
    assert row["agent"]["cases"] == 2 and row["agent"]["scored"] == 1
    (row,) = aggregate([case("run", traj=trajectory(CALC), acc=None)], AGGREGATES)
    assert row["tool_accuracy"] is None and row["mean_steps"] == 1.0


def test_rows_are_per_suite_and_model() -> None:
    rows = aggregate([case("a", traj=trajectory(CALC), acc=1.0),
                      case("a", model="local/smollm2", traj=trajectory(UNKNOWN, UNKNOWN), acc=0.0),
                      case("q", suite="geo")], AGGREGATES)
    by = {(r["suite"], r["model"]): r for r in rows}
    assert by[("assistant", "gpt-4o-mini")]["tool_accuracy"] == 1.0
    assert by[("assistant", "local/smollm2")]["agent"]["tool_errors"] == 2
    assert "agent" not in by[("geo", "gpt-4o-mini")]


def test_trajectory_checks_are_the_five_and_tool_called_carries_the_reporting() -> None:
    assert TRAJECTORY_CHECKS == {"tool_called", "tool_sequence", "tool_not_called", "max_steps", "tool_f1"}
    owners = [c.name for c in CHECKS if c.aggregate is not None or c.summary_lines is not None]
    assert owners == ["tool_called"]  # once, or each row would get the entries and lines several times


# ------------------------------------------------------------------------------------------------ the summary


def test_summary_line_per_agent_row() -> None:
    doc = build_results(agent_rows() + [case("q", suite="geo")], models=["gpt-4o-mini"], cache_mode="on",
                        exit_status=0, invalid=[], workers=0, version="0", check_aggregates=AGGREGATES)
    lines = summary_lines(doc, CHECKS)  # the terminal summary, through the checks' summary_lines
    agent_lines = [line for line in lines if "tool-call accuracy" in line]
    assert agent_lines == ["assistant [gpt-4o-mini]: tool-call accuracy 75% over 6 cases, mean 1.8 steps, "
                           "2 tool errors, 1 stopped at max_steps"]


def test_summary_line_singulars_and_no_trajectory_checks() -> None:
    row = {"agent": {"cases": 1, "scored": 1, "tool_accuracy": 1.0, "mean_steps": 1.0, "tool_errors": 1,
                     "stopped_at_limit": 0}}
    assert tool_summary_lines(row, "s [m]") == ["s [m]: tool-call accuracy 100% over 1 case, mean 1.0 steps, "
                                                "1 tool error, 0 stopped at max_steps"]
    row = {"agent": {"cases": 2, "scored": 0, "tool_accuracy": None, "mean_steps": 2.5, "tool_errors": 0,
                     "stopped_at_limit": 0}}
    assert tool_summary_lines(row, "s [m]") == ["s [m]: no trajectory checks (2 agent cases), mean 2.5 steps, "
                                                "0 tool errors, 0 stopped at max_steps"]
    assert tool_summary_lines({"pass_rate": 1.0}, "s [m]") == []


# ------------------------------------------------------------------------------------------------ the gate


@pytest.mark.parametrize(("text", "rule"), [
    ("tool_accuracy>=0.9", LimitRule("tool_accuracy", ">=", 0.9)),
    ("tool_accuracy>=90%", LimitRule("tool_accuracy", ">=", 0.9)),
    ("tool_accuracy>=90", LimitRule("tool_accuracy", ">=", 0.9)),
    ("assistant:tool_accuracy>=0.9", LimitRule("tool_accuracy", ">=", 0.9, "assistant")),
    ("mean_steps<=3", LimitRule("mean_steps", "<=", 3.0)),
    ("mean_steps<=2.5", LimitRule("mean_steps", "<=", 2.5)),
    ("tool_accuracy:-0.05", DropRule("tool_accuracy", 0.05)),
    ("tool_accuracy:-5%", DropRule("tool_accuracy", 0.05)),
    ("tool_accuracy: -5", DropRule("tool_accuracy", 0.05)),
])
def test_tool_rules_parse(text: str, rule: object) -> None:
    assert parse_rule(text) == rule
    assert parse_rule(rule.describe()) == rule  # type: ignore[attr-defined]  # what results.json records reads back


def test_bad_tool_rules_say_what_exists() -> None:
    with pytest.raises(GateError, match="mean_steps is a number of steps, not a percentage"):
        parse_rule("mean_steps<=30%")
    with pytest.raises(GateError, match=r"'tool_accuracy:-0\.05'.*'tool_accuracy>=0\.9', 'mean_steps<=3'"):
        parse_rule("tool_accuracy < 3")


def results_doc(rows: list[CaseResult]) -> dict[str, Any]:
    return build_results(rows, models=["gpt-4o-mini"], cache_mode="on", exit_status=0, invalid=[], workers=0,
                         version="0", check_aggregates=AGGREGATES)


def test_tool_limits_judge_agent_rows_only() -> None:
    doc = results_doc(agent_rows() + [case("q", suite="geo")])
    verdicts = {v.suite: v for v in Gate([parse_rule("tool_accuracy>=0.9")]).evaluate(doc, None)}
    assert verdicts["assistant"].verdict == "below_floor"
    assert verdicts["assistant"].reasons == ["tool_accuracy 0.75 breaks tool_accuracy>=0.9"]
    assert verdicts["geo"].verdict == "ok"  # no agent cases: nothing to hold against the rule
    assert Gate([parse_rule("tool_accuracy>=70%")]).evaluate(doc, None)[0].verdict == "ok"
    v = Gate([parse_rule("mean_steps<=1.5")]).evaluate(doc, None)[0]
    assert v.verdict == "over_budget" and v.reasons == ["mean_steps 1.833 breaks mean_steps<=1.5"]
    assert Gate([parse_rule("mean_steps<=2")]).evaluate(doc, None)[0].verdict == "ok"
    assert Gate([parse_rule("geo:mean_steps<=1")]).evaluate(doc, None)[0].verdict == "ok"  # another suite's


def agent_run(accuracies: list[float], outcomes: list[str] | None = None) -> dict[str, Any]:
    outcomes = outcomes or ["passed"] * len(accuracies)
    return results_doc([case(f"c{i}", traj=trajectory(CALC), acc=a, outcome=o, score=1.0 if o == "passed" else 0.0)
                        for i, (a, o) in enumerate(zip(accuracies, outcomes, strict=True))])


def baseline_from(doc: dict[str, Any], tmp_path: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    path = tmp_path / "baseline.json"
    write_baseline(path, doc)  # what --llm-update-baseline writes, read back as the gate reads it
    return load_baseline(path)


def test_a_confirmed_tool_accuracy_drop_is_a_regression(tmp_path: Path) -> None:
    baseline = baseline_from(agent_run([1.0] * 12), tmp_path)
    now = agent_run([1.0] * 4 + [0.5] * 8)  # every case still passes: only the tool calls got worse
    gate = Gate([DropRule("pass_rate", 5.0), parse_rule("tool_accuracy:-0.05")])
    v = gate.evaluate(now, baseline)[0]
    assert v.verdict == "regression" and v.delta_points == 0.0
    assert v.tool_paired == 12 and v.base_tool_accuracy == 1.0 and v.tool_accuracy == pytest.approx(2 / 3)
    assert v.tool_accuracy_delta == pytest.approx(-1 / 3)
    assert v.tool_accuracy_interval is not None and v.tool_accuracy_interval[1] < 0
    assert v.reasons[0].startswith("tool-call accuracy fell 0.333 (> 0.05) over 12 paired agent case(s); 95% interval")
    d = v.to_dict()
    assert isinstance(d["tool_accuracy_interval"], list) and json.dumps(d)  # results.json's gate entry
    # Without a tool_accuracy rule the same drop is reported, not judged.
    v = Gate([DropRule("pass_rate", 5.0)]).evaluate(now, baseline)[0]
    assert v.verdict == "ok" and v.tool_accuracy_delta == pytest.approx(-1 / 3)
    shown = [line for line in format_verdicts([v]) if "tool-call accuracy" in line]
    assert shown == [f"  assistant [gpt-4o-mini]: tool-call accuracy 100.0% -> 66.7% (-33.3 pts, 95% interval "
                     f"[{100 * v.tool_accuracy_interval[0]:+.1f}, {100 * v.tool_accuracy_interval[1]:+.1f}]) "  # type: ignore[index]
                     f"over 12 paired agent case(s)"]


def test_drops_within_the_rule_or_not_confirmed_pass(tmp_path: Path) -> None:
    baseline = baseline_from(agent_run([1.0] * 12), tmp_path)
    gate = Gate([parse_rule("tool_accuracy:-5%")])
    small = gate.evaluate(agent_run([1.0] * 11 + [0.5]), baseline)[0]  # -0.042: within 0.05
    assert small.verdict == "ok" and small.tool_accuracy_delta == pytest.approx(-0.5 / 12)
    baseline = baseline_from(agent_run([1.0, 0.0] * 6), tmp_path)
    mixed = gate.evaluate(agent_run([0.0, 1.0] * 5 + [0.0, 0.0]), baseline)[0]  # as many up as down, and one down
    assert mixed.tool_accuracy_delta == pytest.approx(-1 / 12)
    assert mixed.tool_accuracy_interval[0] < 0 < mixed.tool_accuracy_interval[1]  # type: ignore[index]
    assert mixed.verdict == "ok"  # beyond the rule, but the interval includes 0: not confirmed


def test_the_tool_drop_is_paired_on_cases_with_accuracy_in_both(tmp_path: Path) -> None:
    before = results_doc([case("kept", traj=trajectory(CALC), acc=1.0), case("gone", traj=trajectory(CALC), acc=1.0),
                          case("plain", acc=None)])
    now = results_doc([case("kept", traj=trajectory(CALC), acc=1.0), case("new", traj=trajectory(CALC), acc=0.0),
                       case("plain", traj=trajectory(UNKNOWN), acc=0.0)])  # plain had no accuracy before
    v = Gate([parse_rule("tool_accuracy:-0.05")]).evaluate(now, baseline_from(before, tmp_path))[0]
    assert v.tool_paired == 1 and v.tool_accuracy_delta == 0.0 and v.verdict == "ok"
    assert v.added == ["new"] and v.removed == ["gone"]


def test_a_tool_drop_counts_when_nothing_was_graded_in_both(tmp_path: Path) -> None:
    # Every case unscored now (a judge could not score them): no pass-rate pairs, the tool calls still compare.
    baseline = baseline_from(agent_run([1.0] * 10), tmp_path)
    now = agent_run([0.0] * 10, ["unscored"] * 10)
    v = Gate([parse_rule("tool_accuracy:-0.05")]).evaluate(now, baseline)[0]
    assert v.paired == 0 and v.tool_paired == 10 and v.verdict == "regression"


def test_a_failing_limit_stays_the_verdict(tmp_path: Path) -> None:
    baseline = baseline_from(agent_run([1.0] * 10), tmp_path)
    v = Gate([parse_rule("tool_accuracy:-0.05"), parse_rule("tool_accuracy>=0.9")]).evaluate(
        agent_run([0.0] * 10), baseline)[0]
    assert v.verdict == "below_floor" and v.tool_accuracy_delta == -1.0  # still measured, the floor decides


# ------------------------------------------------------------------------------------------------ the baseline


def test_the_baseline_keeps_tool_accuracy_of_agent_cases_only(tmp_path: Path) -> None:
    doc = results_doc([case("a", traj=trajectory(CALC), acc=2 / 3), case("plain", acc=None)])
    slim = baseline_document(doc)
    assert slim["cases"] == [
        {"suite": "assistant", "model": "gpt-4o-mini", "case": "a", "outcome": "passed", "score": 1.0,
         "tool_accuracy": 0.666667},
        {"suite": "assistant", "model": "gpt-4o-mini", "case": "plain", "outcome": "passed", "score": 1.0},
    ]
    loaded = baseline_from(doc, tmp_path)
    assert loaded[("assistant", "gpt-4o-mini", "a")] == {"outcome": "passed", "score": 1.0, "tool_accuracy": 0.666667}
    assert loaded[("assistant", "gpt-4o-mini", "plain")] == {"outcome": "passed", "score": 1.0}
    # A results.json serves as a baseline too, with its cases' tool accuracy.
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_baseline(path)[("assistant", "gpt-4o-mini", "a")]["tool_accuracy"] == pytest.approx(2 / 3)


def test_a_baseline_without_agent_cases_is_byte_identical_to_before(tmp_path: Path) -> None:
    doc = results_doc([case("x", score=0.25), case("y", outcome="failed", score=None)])
    path = tmp_path / "baseline.json"
    write_baseline(path, doc)
    # The slim baseline as it was written before agents existed: these keys, in this order.
    old = {"baseline_version": 1, "tool": doc["tool"], "created_at": doc["created_at"],
           "cases": [{"suite": "assistant", "model": "gpt-4o-mini", "case": "x", "outcome": "passed", "score": 0.25},
                     {"suite": "assistant", "model": "gpt-4o-mini", "case": "y", "outcome": "failed", "score": None}]}
    assert path.read_text(encoding="utf-8") == json.dumps(old, indent=1, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ the HTML report


class Tables(HTMLParser):
    """The text of each cell, per row, of the tables with a given class (and the classes of each row)."""

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls, self.depth = cls, 0
        self.rows: list[tuple[str, list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and (self.depth or self.cls in classes):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append((" ".join(classes), []))
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1][1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table(text: str, cls: str) -> list[tuple[str, list[str]]]:
    parser = Tables(cls)
    parser.feed(text)
    return parser.rows


def agent_report(tmp_path: Path) -> str:
    base = [case("a", traj=trajectory(CALC), acc=1.0), case("c", traj=trajectory(CALC), acc=1.0)]
    rows = [
        case("a", traj=trajectory(("calculator", {"expression": "<script>alert(1)</script>"}, "<b>391</b>", None),
                                  final="It is <b>391</b>."), acc=1.0),
        case("c", traj=trajectory(UNKNOWN, SEARCH, SEARCH, final=None, ended="max_steps", mode="prompt"), acc=0.0,
             outcome="failed", score=0.0),
        case("q", suite="geo"),
    ]
    doc = results_doc(rows)
    verdicts = Gate([parse_rule("tool_accuracy:-0.05")]).evaluate(doc, baseline_from(results_doc(base), tmp_path))
    doc["gate"] = {"baseline": "b.json", "rules": ["tool_accuracy:-0.05"], "alpha": 0.05, "failed": False,
                   "suites": [v.to_dict() for v in verdicts]}
    return render(json.loads(json.dumps(doc)), tmp_path)  # as `llmeval report` reads it back from the file


def test_the_drill_down_shows_each_step(tmp_path: Path) -> None:
    text = agent_report(tmp_path)
    steps = table(text, "trajectory")
    assert steps == [
        ("", ["step", "tool", "arguments", "result or error", "latency s"]),
        ("step", ["1", "calculator", '{"expression": "<script>alert(1)</script>"}', "<b>391</b>", "0.012"]),
        ("", ["step", "tool", "arguments", "result or error", "latency s"]),
        ("step tool-error", ["1", "delete_everything", "{}",
                             "error: unknown tool 'delete_everything'; the tools are: calculator", "0.012"]),
        ("step", ["2", "search_docs", '{"query": "install"}', '[{"source": "docs/install.md"}]', "0.012"]),
        ("step", ["3", "search_docs", '{"query": "install"}', '[{"source": "docs/install.md"}]', "0.012"]),
    ]
    assert '<td class="tool-error">error: unknown tool' in text  # highlighted
    # Escaped: what a model or a tool wrote is never markup.
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>391</b>" not in text and "It is &lt;b&gt;391&lt;/b&gt;." in text
    # How each run ended, and its final answer.
    assert "ended with a final answer</span>; the final answer:</p><pre class=\"final\">It is &lt;b&gt;391" in text
    assert "stopped at the agent loop&#39;s max_steps</span></p>" in text
    assert "prompt · 3 step(s) · 1 tool error(s) · tool-call accuracy 0%" in text
    assert text.count('class="trajectory"') == 2  # the plain case has none


def test_the_suite_table_shows_tool_accuracy_and_steps(tmp_path: Path) -> None:
    text = agent_report(tmp_path)
    header = text.split('<table id="suites">')[1].split("</tr>")[0]
    assert "<th>tool-call accuracy</th><th>mean steps</th>" in header
    row = {r[1][0]: r[1] for r in _suite_rows(text)}
    assert row["assistant"][9:11] == ["50.0% (-50.0 pts)", "2.0"]  # vs the baseline's 100%: the gate's delta
    assert row["geo"][9:11] == ["-", "-"]
    assert "<b>assistant [gpt-4o-mini]</b>: 2 agent case(s), tool-call accuracy 50.0% over 2, mean 2.0 steps, " \
           "1 tool error(s), 1 stopped at max_steps" in text


def _suite_rows(text: str) -> list[tuple[str, list[str]]]:
    class Suites(Tables):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "table" and dict(attrs).get("id") == "suites":
                self.depth += 1
                return
            super().handle_starttag(tag, attrs)

    parser = Suites("-")
    parser.feed(text)
    return [r for r in parser.rows if r[0] == "suite-row"]


def test_a_report_without_agents_has_no_tool_columns(tmp_path: Path) -> None:
    text = render(json.loads(json.dumps(results_doc([case("q", suite="geo")]))), tmp_path)
    assert "tool-call accuracy" not in text and 'class="trajectory"' not in text
    assert len(_suite_rows(text)[0][1]) == 14  # the table as it was


def test_the_github_summary_has_an_agent_table_with_the_baseline_change(tmp_path: Path) -> None:
    from pytest_llmeval.report.github import github_summary

    baseline = baseline_from(agent_run([1.0] * 12), tmp_path)
    now = agent_run([1.0] * 4 + [0.5] * 8)
    now["gate"] = {"failed": True, "suites": [v.to_dict() for v in Gate([parse_rule("tool_accuracy:-0.05")])
                                                .evaluate(now, baseline)]}
    text = github_summary(now)
    row = next(line for line in text.splitlines() if line.startswith("| assistant | gpt-4o-mini | 12 |") and
               "pts" in line and "%" in line.split("|")[4])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["66.7%", "-33.3 pts", "1.0", "0", "0"]
    assert "tool-call accuracy fell 0.333" in text  # the verdict's reason
    assert "tool-call accuracy" not in github_summary(results_doc([case("q", suite="geo")]))
