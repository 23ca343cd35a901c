"""The gate's redraws in a run (``--llm-gate-redraws ANSWERS``): decide the suites whose pass-rate verdict is not
settled by drawing the candidate's answers again, look after look (results/sequential.py has the statistics).

Where: on the controller, after every item ran (plain run or xdist), in the gate's own step. Each look is one
``python -m pytest`` process with the run's own arguments, xdist off, the redraw_child plugin and a request naming
the node ids of the open suites' paired cases: they draw from cache slots past the run's and earlier looks' (real
samples: a rerun with the cache on replays the same redraws, so the same verdict), and write their draws back. The
run's results, baseline and reports are written once, by this process, with the decision and its cost.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.results.gate import DEFAULT_MAX_DROP, SuiteVerdict
from pytest_llmeval.results.sequential import AutoRepeat, Design, Look, decide
from pytest_llmeval.run.child import kept_args, run_child
from pytest_llmeval.run.redraw_child import ENV, draws_of, why_not_redrawn
from pytest_llmeval.run.state import get_state

# Options of the run that the redraw process must not repeat besides run/child.py's: it sets its own repeat.
_DROP_WITH_VALUE = ("--llm-repeat",)


@dataclass
class _Suite:
    verdict: SuiteVerdict
    nodeids: list[str]
    base: list[float]
    draws: list[list[int]]
    first: int
    base_draws: int
    looks: list[Look] = field(default_factory=list)
    redraws: int = 0
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None  # why it stopped without a decision
    fixed: dict[str, int] = field(default_factory=dict)  # why cases cannot be drawn again -> how many

    @property
    def n(self) -> int:
        return len(self.nodeids)


def decide_by_redraws(config: pytest.Config, budget: int, alpha: float, doc: dict[str, Any],
                      baseline: dict[tuple[str, str, str], dict[str, Any]] | None,
                      verdicts: list[SuiteVerdict], max_drop: float | None = None) -> dict[str, Any] | None:
    """Redraw and re-decide the unsettled suites within ``budget`` answers; update their verdicts in place and return
    the ``gate.redraws`` entry of results.json (None when redraws are off or there is no baseline)."""
    if budget <= 0 or baseline is None:
        return None
    design = Design(alpha=alpha, max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop)
    slot0 = max([1, *(len(draws_of(c)) for c in doc["cases"])])
    # --llm-repeat auto stops a case's draws by their outcomes: only each case's first draw is an unbiased sample.
    curtailed = isinstance(get_state(config).settings.repeat, AutoRepeat)
    suites = [s for v in verdicts if (s := _suite(v, doc, baseline, curtailed)) is not None]
    left, rounds, used = budget, 0, 0
    open_: list[_Suite] = []
    for s in suites:
        if sum(s.fixed.values()) > s.n // 10:  # redraws cannot settle it: the run's ordinary verdict stands
            if s.verdict.verdict == "inconclusive":
                s.verdict.reasons.append(f"not redrawn: {_fixed_reason(s)}")
            continue
        if left < s.n * design.schedule[0]:
            continue  # not affordable: the run's ordinary verdict stands (decided before this suite's data is seen)
        s.looks.append(decide(design, s.base, s.draws, 1, first=s.first, base_draws=s.base_draws))
        if s.looks[-1].decision == "continue":
            open_.append(s)
            left -= s.n * design.schedule[0]  # its first redraw look is paid for now: it will have it
    cum = 0
    for j, extra in enumerate(design.schedule):
        todo = []
        for s in open_:
            if j == 0:
                todo.append(s)
            elif left >= s.n * extra:
                todo.append(s)
                left -= s.n * extra
            else:
                s.stopped = "the redraw budget is spent"
        if not todo:
            break
        rounds += 1
        got, problem = _draw(config, [n for s in todo for n in s.nodeids], extra, slot0 + cum)
        cum += extra
        open_ = []
        for s in todo:
            s.redraws += s.n * extra
            used += s.n * extra
            fresh = [got.get(n) for n in s.nodeids]
            missing = sum(1 for f in fresh if not f or not f["draws"])
            if problem or missing > s.n // 10:
                whys = sorted({f["why"] for f in fresh if f and f.get("why")})
                s.stopped = problem or (f"{missing} of {s.n} cases could not be drawn again ("
                                        + ("; ".join(whys) or "they errored or were not run") + ")")
                continue
            for draws, f in zip(s.draws, fresh, strict=True):
                if f and f["draws"]:
                    draws.extend(f["draws"])
                if f:
                    s.calls += int(f["calls"])
                    s.cached += int(f["calls"]) if f["cached"] else 0
                    s.prompt_tokens += int(f["prompt_tokens"])
                    s.completion_tokens += int(f["completion_tokens"])
                    s.cost_usd += float(f["cost_usd"] or 0.0)
            s.looks.append(decide(design, s.base, s.draws, j + 2, first=s.first, base_draws=s.base_draws))
            if s.looks[-1].decision == "continue":
                open_.append(s)
    for s in suites:
        if s.looks:
            _settle(s, design)
    decided = [s for s in suites if s.looks]
    return {"budget": budget, "used": used, "looks": rounds, "suites": len(decided),
            "calls": sum(s.calls for s in decided), "cached_calls": sum(s.cached for s in decided),
            "prompt_tokens": sum(s.prompt_tokens for s in decided),
            "completion_tokens": sum(s.completion_tokens for s in decided),
            "cost_usd": round(sum(s.cost_usd for s in decided), 6),
            "design": {"spending": design.spending, "schedule": list(design.schedule), "reopen": design.reopen,
                       "nominal": [round(x, 6) for x in design.nominal()]}}


def _suite(v: SuiteVerdict, doc: dict[str, Any], baseline: dict[tuple[str, str, str], dict[str, Any]],
           curtailed: bool = False) -> _Suite | None:
    """The paired cases of a suite whose verdict rests on its pass rate (ok, inconclusive, or a pass-rate
    regression; not one decided by a score or tool-accuracy rule, a floor, a budget or errors)."""
    if v.verdict not in ("ok", "inconclusive", "regression") or not v.paired:
        return None
    if any(not r.startswith("pass rate fell") for r in v.reasons):
        return None
    nodeids, base, draws, base_draws = [], [], [], 1
    fixed: dict[str, int] = {}
    for c in doc["cases"]:
        if c["suite"] != v.suite or c["model"] != v.model:
            continue
        b = baseline.get((v.suite, v.model, str(c["case_id"])))
        if b is None or b.get("outcome") not in ("passed", "failed") or c["outcome"] not in ("passed", "failed"):
            continue
        mine = draws_of(c)[:1] if curtailed else draws_of(c)
        if not mine or not c.get("nodeid"):
            continue
        if (why := why_not_redrawn(c.get("kind"), c.get("stage"))) is not None:
            fixed[why] = fixed.get(why, 0) + 1
        frac = b.get("pass_fraction")
        base.append(float(frac) if frac is not None else 1.0 if b["outcome"] == "passed" else 0.0)
        base_draws = max(base_draws, int(b.get("draws") or 1))
        nodeids.append(str(c["nodeid"]))
        draws.append(list(mine))
    if not nodeids:
        return None
    return _Suite(v, nodeids, base, draws, min(len(d) for d in draws), base_draws, fixed=fixed)


def _fixed_reason(s: _Suite) -> str:
    """Why a suite's cases cannot be drawn again (calibration, robustness items...), with how many of each."""
    return "; ".join(f"{k} of {s.n} cases cannot be drawn again: {why}" for why, k in sorted(s.fixed.items()))


def _draw(config: pytest.Config, nodeids: list[str], extra: int, first_slot: int
          ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """One look: ``extra`` more answers for each node id, from cache slot ``first_slot`` on, in a pytest process
    (run/child.py: the run's arguments, xdist off, its own results and temporary files)."""
    with tempfile.TemporaryDirectory(prefix="llmeval-redraw-") as tmp:
        folder = Path(tmp)
        request, output = folder / "request.json", folder / "draws.json"
        request.write_text(json.dumps({"nodeids": nodeids, "first_slot": first_slot, "output": str(output)}),
                           encoding="utf-8")
        child = run_child(config, folder, ["-p", "pytest_llmeval.run.redraw_child", f"--llm-repeat={extra}", "-q",
                                           "--no-header"], env={ENV: str(request)}, drop=_DROP_WITH_VALUE)
        if not output.exists():
            return {}, f"the redraw process failed (exit {child.returncode}): {child.last_line()}"
        rows = json.loads(output.read_text(encoding="utf-8"))
    return {r["nodeid"]: r for r in rows}, None


def _kept(args: list[str]) -> list[str]:
    """The run's arguments a redraw process repeats (run/child.py's filter; the redraws set their own repeat)."""
    return kept_args(args, _DROP_WITH_VALUE)


def _settle(s: _Suite, design: Design) -> None:
    """The suite's verdict and reasons from its last look; its redraws and their cost in ``sequential``."""
    v, last = s.verdict, s.looks[-1]
    decision = {"continue": "inconclusive"}.get(last.decision, last.decision)
    if len(s.looks) > 1 or decision == "inconclusive":
        v.reasons = [r for r in v.reasons if not r.startswith("pass rate fell")]
    looks = len(s.looks) - 1
    if not looks and decision != "inconclusive":  # decided by the run's own look: its reasons stand
        pass
    elif decision == "regression":
        v.reasons.insert(0, f"pass rate fell {last.drop:.1f} points (> {design.max_drop:g}) over {last.draws} "
                            f"draw(s) per case, {s.redraws} answers redrawn in {looks} look(s): p = {last.p_value:.3g}"
                            f" < {last.nominal:.3g} (look {last.look}'s share of alpha {design.alpha:g})")
    elif decision == "inconclusive":
        why = s.stopped or f"the design's {len(design.schedule)} redraw looks are done"
        v.reasons.insert(0, f"pass rate fell {last.drop:.1f} points, not settled after {s.redraws} answers redrawn "
                            f"in {looks} look(s) (p = {last.p_value:.3g}, look {last.look} needs < {last.nominal:.3g}):"
                            f" {why}")
    else:
        v.reasons.insert(0, f"pass rate change {-last.drop:+.1f} points over {last.draws} draw(s) per case after "
                            f"{s.redraws} answers redrawn in {looks} look(s): within the allowed {design.max_drop:g}")
    v.verdict = decision
    v.sequential = {"looks": [x.to_dict() for x in s.looks], "redraws": s.redraws, "calls": s.calls,
                    "cached_calls": s.cached, "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens, "cost_usd": round(s.cost_usd, 6),
                    "stopped": s.stopped}
