"""The item's side of agent cases (``tools:``; cases/tools.py, cases/agent.py): tools loaded at collection, the agent
loop of each draw run in setup (targets/agent.py), and the trajectories the checks grade and the results keep.

- **Tools** are made once per run and suite (``module:function`` imported with the rootdir and the suite's folder
  first on sys.path): one that cannot be imported or described is an error at its ``tools:`` entry, found at
  collection, while the other suites still run.
- **The loop** talks to the model through the run's ModelRunner, one call per step: the caches (each step is an
  exact-cache entry keyed by the whole history and the tools offered, so a rerun replays the run without a call),
  retries, rate limits, the budget and the breaker are those of every other call. Each draw has its own cache
  slot, taken by every step of its trajectory (past the run's own in the gate's redraws: run/redraw_child.py).
  ``mode: auto`` uses native function calling, or prompt-and-parse for a model whose provider has none (``local/``).
- **Trajectories**: a draw's Completion carries its trajectory (``{"mode", "steps", "final", "ended"}``), the
  model's and the tools' latency, and every step's tokens and cost added up. An application target's answer may
  carry its agent's tool calls instead (``Answer.tool_calls``, mode ``app``); the same checks grade both.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmeval.cases.schema import CaseError
from pytest_llmeval.cases.tools import TRAJECTORY_CHECKS
from pytest_llmeval.core.tools import Trajectory
from pytest_llmeval.run.redraw_child import draw_slots

if TYPE_CHECKING:
    import pytest

    from pytest_llmeval.cases.schema import CaseSpec
    from pytest_llmeval.core.checks import CheckOutcome
    from pytest_llmeval.providers.runner import Completion
    from pytest_llmeval.run.state import RunState
    from pytest_llmeval.targets.tools import ToolDef

SHOW_STEPS = 12  # steps of a trajectory shown in a failure report


def tool_defs(state: RunState, case: CaseSpec) -> list[ToolDef]:
    """The case's tools, made once per run for each suite folder and tool list (ToolLoadError: see
    :func:`tool_problems`)."""
    from pytest_llmeval.targets.tools import load_tools

    key = (case.path.parent, tuple((t.name, t.python, t.builtin, t.description, repr(t.parameters))
                                   for t in case.tools), tuple(sorted(case.limits.items())))
    cache: dict[Any, Any] = state.tool_defs
    if key not in cache:
        try:
            cache[key] = load_tools(case.tools, [Path(state.config.rootpath), case.path.parent],
                                    builtins=builtin_tools(state, case.limits))
        except Exception as exc:  # ToolLoadError; kept, so that every case of the suite reports it the same way
            cache[key] = exc
    found = cache[key]
    if isinstance(found, Exception):
        raise found
    return list(found)


def builtin_tools(state: RunState, limits: dict[str, Any]) -> dict[str, Any]:
    """The functions of the built-in tools (cases/tools.py BUILTIN_TOOLS), bound to this run: ``run_python`` runs
    the model's program in the run's sandbox under the suite's ``limits``."""

    def run_python(code: str) -> dict[str, Any]:
        """Run a Python program in an isolated sandbox (no network, no access to the host's files) and return its
        exit code, standard output and standard error.

        Args:
            code: the whole program, as a file; print what you want to see.
        """
        from pytest_llmeval.sandbox.isolation import Limits

        sandbox = state.get_sandbox()  # -u: what it printed before a timeout or a kill is kept
        result = sandbox.run([sandbox.python, "-I", "-u", "main.py"], {"main.py": code}, limits=Limits(**limits))
        out: dict[str, Any] = {"exit_code": result.exit_code, "stdout": result.stdout[-4000:],
                               "stderr": result.stderr[-2000:]}
        if result.reason:
            out["error"] = result.reason
        return out

    return {"run_python": run_python}


def tool_problems(state: RunState, case: CaseSpec) -> list[CaseError]:
    """Why the case's tools cannot be made (a function that cannot be imported or described as a tool), as
    CaseErrors at each tool's line; [] when they can."""
    from pytest_llmeval.targets.tools import ToolLoadError

    try:
        tool_defs(state, case)
    except ToolLoadError as exc:
        listed = {t.name: t for t in case.tools}
        return [CaseError(case.path, getattr(listed.get(name), "line", None) or case.line,
                          getattr(listed.get(name), "where", None) or "tools", f"tool {name!r}: {message}", case.id)
                for name, message in exc.problems]
    return []


class AgentCalls:
    """Mixed into CaseItem: the agent runs of an agent case's draws, and the trajectories of every draw."""

    # Set by CaseItem
    case: CaseSpec
    model: str
    nodeid: str
    config: pytest.Config
    completions: list[Completion]
    samples: list[dict[str, Any]]

    def agent_answers(self, state: RunState, draws: int) -> list[Completion]:
        """Run the agent loop of every draw against the ``--llm`` model (in the prefetch pool when it ran them
        ahead); each draw's Completion is its final answer, with its trajectory and what every step cost."""
        if any(t.builtin == "run_python" for t in self.case.tools):
            state.get_sandbox()  # no isolation on this machine: an error before any model call
        if state.prefetcher is not None:
            state.prefetch_from(self)  # type: ignore[arg-type]
            prefetched = state.prefetcher.take(self)
            if prefetched is not None:
                return list(prefetched)
        return [self.agent_draw(state, slot) for slot in draw_slots(self.config, draws)]

    def agent_plan(self, state: RunState, draws: int) -> list[dict[str, Any]]:
        """The prefetcher's plan for this item: one whole agent run per draw (``state.call(agent=..., sample=slot)``
        runs it in a pool thread; the steps of one run stay in order)."""
        state.agent_items[self.nodeid] = self
        return [{"agent": self.nodeid, "sample": slot} for slot in draw_slots(self.config, draws)]

    def agent_draw(self, state: RunState, sample: int) -> Completion:
        """One draw's agent run, every step from cache slot ``sample`` (safe in a pool thread: the runner is
        thread-safe, each run has its own runtime)."""
        from pytest_llmeval.targets.agent import run_agent, tool_params
        from pytest_llmeval.targets.tools import ToolRuntime, to_openai

        case = self.case
        options = dict(case.agent or {})
        tools = tool_defs(state, case)
        runtime = ToolRuntime(tools, case.returns)
        mode = self.agent_mode(state)
        calls: list[Completion] = []

        def complete(messages: list[dict[str, Any]], offered: Any, choice: Any, parallel: bool | None
                     ) -> dict[str, Any]:
            params = tool_params(case.params, offered, choice, parallel)
            # Every step is its own exact-cache entry (the history and the tools are in the key); never the
            # semantic cache: a near-duplicate question may need other arguments.
            completion = state.runner.complete(self.model, messages, params, sample=sample, semantic=False)
            calls.append(completion)
            return {"content": completion.text, "tool_calls": list(completion.tool_calls or []),
                    "usage": {"prompt_tokens": completion.prompt_tokens,
                              "completion_tokens": completion.completion_tokens}}

        trajectory = run_agent(complete, case.messages(), to_openai(tools), runtime.run, check=runtime.validate,
                               max_steps=int(options.get("max_steps") or 8), tool_choice=options.get("tool_choice"),
                               parallel_tool_calls=options.get("parallel_tool_calls"), mode=mode,
                               examples=options.get("examples") if mode == "prompt" else None)
        return _summed(calls, self.model, trajectory, mode)

    def agent_mode(self, state: RunState) -> str:
        """``native`` or ``prompt``: the case's ``agent.mode``; ``auto`` is native function calling where the
        model's provider has it (Provider.tools), else prompt-and-parse."""
        mode = str((self.case.agent or {}).get("mode") or "auto")
        if mode == "auto":
            return "native" if state.runner.supports_tools(self.model) else "prompt"
        return mode

    def first_steps(self, state: RunState, draws: int) -> list[dict[str, Any]] | None:
        """The first model call of each draw's agent loop (runner.complete's arguments), for the collection-time
        check that a rerun is served from the cache (without importing litellm); None in prompt mode, whose first
        request the loop builds itself."""
        from pytest_llmeval.targets.agent import tool_params
        from pytest_llmeval.targets.tools import to_openai

        options = dict(self.case.agent or {})
        if self.agent_mode(state) != "native":
            return None
        try:
            offered = to_openai(tool_defs(state, self.case))
        except Exception:  # reported by the item
            return None
        params = tool_params(self.case.params, offered, options.get("tool_choice"),
                             options.get("parallel_tool_calls"))
        return [{"model": self.model, "messages": self.case.messages(), "params": params, "sample": slot}
                for slot in draw_slots(self.config, draws)]

    def trajectory_of(self, index: int) -> Trajectory | None:
        """The trajectory of draw ``index``: its agent run's, or the tool calls an application's answer carried."""
        if index >= len(self.completions) or not self.completions[index].trajectory:
            return None
        return Trajectory.from_dict(self.completions[index].trajectory or {})

    def agent_fields(self) -> dict[str, Any]:
        """The CaseResult fields: the first draw's trajectory and the mean score of the trajectory checks over
        every draw (with repeats, each sample's trajectory joins its entry in ``samples``)."""
        out: dict[str, Any] = {}
        if self.completions and self.completions[0].trajectory:
            out["trajectory"] = self.completions[0].trajectory
        scores = [o.score for s in self.samples for o in s["outcomes"]
                  if o.name in TRAJECTORY_CHECKS and o.score is not None and not o.unscored]
        if scores:
            out["tool_accuracy"] = round(sum(scores) / len(scores), 6)
        return out

    def sample_trajectory(self, index: int) -> dict[str, Any]:
        """``{"trajectory": ...}`` for draw ``index``'s entry of ``samples`` ({} without one)."""
        if index < len(self.completions) and self.completions[index].trajectory:
            return {"trajectory": self.completions[index].trajectory}
        return {}

    def trajectory_lines(self, index: int) -> list[str]:
        """The failure report's compact trajectory of draw ``index``: step, tool, arguments, result or error."""
        trajectory = self.trajectory_of(index)
        if trajectory is None:
            return []
        raw = self.completions[index].trajectory or {}
        head = f"  tool calls ({raw.get('mode', 'native')}, {len(trajectory.steps)} step(s), ended: {trajectory.ended}):"
        return [head, textwrap.indent(trajectory.excerpt(SHOW_STEPS), "    ")]


EXCERPT = "; trajectory:\n"  # how a trajectory check's reason appends the excerpt (checks/tools.py explain())


def indent_reason(outcome: CheckOutcome, first: str, trajectory_shown: bool = False) -> str:
    """A check's line in the failure report; a reason of several lines indented under it. With the trajectory
    shown above the checks, a trajectory check's copy of its excerpt is left out (results.json keeps it)."""
    reason = outcome.reason or ""
    if trajectory_shown and EXCERPT in reason:
        reason = reason[:reason.index(EXCERPT)]
    head, _, rest = reason.partition("\n")
    line = first + (f": {head}" if head else "")
    return line + ("\n" + textwrap.indent(rest, " " * 10) if rest else "")


def _summed(calls: list[Completion], model: str, trajectory: Trajectory, mode: str) -> Completion:
    """A draw's Completion: the final answer, with the trajectory, every step's tokens, cost, retries and the
    model's and tools' latency added up."""
    from pytest_llmeval.providers.runner import Completion, total_latency

    record = {"mode": mode, **trajectory.to_dict()}
    tools_s = sum(s.latency_s or 0.0 for s in trajectory.steps)
    if not calls:  # cannot happen (the loop calls the model at least once); kept total
        return Completion(text=trajectory.final or "", model=model, resolved_model=model, latency_s=tools_s,
                          trajectory=record)

    def total(name: str) -> Any:
        values = [getattr(c, name) for c in calls if getattr(c, name) is not None]
        return sum(values) if values else None

    return dataclasses.replace(calls[-1], text=trajectory.final or "", latency_s=None if (model_s := total_latency(
                               calls)) is None else model_s + tools_s, prompt_tokens=total("prompt_tokens"),
                               completion_tokens=total("completion_tokens"), cost_usd=total("cost_usd"),
                               cached=all(c.cached for c in calls), attempts=1 + sum(c.attempts - 1 for c in calls),
                               semantic=None, ttft_s=None, tool_calls=None, trajectory=record)
