"""The pytest process that draws the gate's redraws (a plugin loaded with ``-p``, only there).

The controller of a run (plain or xdist) starts ``python -m pytest <the run's arguments> -n0 -p
pytest_llmeval.run.redraw_child`` (run/child.py) with ``LLMEVAL_REDRAW`` naming a JSON request: the node ids to
run, the first cache slot of the new draws and the file to write them to. Every other item is deselected; each kept
item draws its answers from the given slot on (new cache slots, real samples, never the semantic cache), is graded
as usual, and its draws (pass or fail each, calls, tokens, cost) go to the output file. This process aggregates, gates and
reports nothing: results, baseline, HTML and step summary stay the run's own.

Every call of a draw takes its slot: a plain model case's answer, each step of an agent's trajectory
(run/agent.py), each turn of a conversation and each of its simulated user's messages (run/conversation.py), and
an application's request (``TargetRequest.sample``: part of its answer's cache key, and the application's to pass
on to its own model calls; run/targets.py). What cannot be drawn again (:func:`why_not_redrawn`) is named in the
output, so the gate can say why a suite stays unsettled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.results.stream import ResultCollector

ENV = "LLMEVAL_REDRAW"
FIRST_SLOT = pytest.StashKey[int]()
_REQUEST = pytest.StashKey[dict[str, Any]]()
_SKIPPED = pytest.StashKey[dict[str, str]]()  # node id -> why it was not drawn again


def first_slot(config: pytest.Config) -> int:
    """The cache slot of an item's first draw: 0, except in a redraw process."""
    return config.stash.get(FIRST_SLOT, 0)


def draw_slots(config: pytest.Config, draws: int) -> range:
    """The cache slots of an item's ``draws`` draws (``sample`` of every call a draw makes)."""
    first = config.stash.get(FIRST_SLOT, 0)
    return range(first, first + draws)


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    request = json.loads(Path(path).read_text(encoding="utf-8"))
    config.stash[_REQUEST] = request
    config.stash[FIRST_SLOT] = int(request["first_slot"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    request = config.stash.get(_REQUEST, None)
    if request is None:
        return
    wanted = set(request["nodeids"])
    keep, skipped = [], {}
    for i in items:
        if i.nodeid in wanted:
            why = why_not_redrawn(getattr(getattr(i, "case", None), "kind", "test"), getattr(i, "stage", None))
            if why is None:
                keep.append(i)
            else:
                skipped[i.nodeid] = why
    config.stash[_SKIPPED] = skipped
    kept = {id(i) for i in keep}
    drop = [i for i in items if id(i) not in kept]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def why_not_redrawn(kind: str | None, stage: str | None) -> str | None:
    """Why a case item (its kind and stage, as results.json has them) cannot be drawn again; None when it can.
    Plain model, retrieval, code, agent, application and conversation cases can: every call of a draw takes its
    cache slot. (Read off plain values: run.items imports this module, and the controller has only results.json.)"""
    if kind == "calibration":
        return "calibration cases grade the judge on the case's own answer: there is no answer to draw again"
    if stage == "robust":
        return "robustness items grade perturbed variants of the case against its outcome, not draws of an answer"
    if kind == "test":
        return "hand-written tests choose their own calls and samples"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    request = session.config.stash.get(_REQUEST, None)
    if request is None:
        return
    plugin = session.config.pluginmanager.get_plugin("llmeval-session")
    results = list(plugin.results.results()) if plugin is not None else []
    out = [{"nodeid": r.nodeid, "suite": r.suite, "case_id": r.case_id, "model": r.model, "outcome": r.outcome,
            "draws": draws_of(r.to_dict()), "calls": r.calls or 0, "cached": bool(r.cached),
            "prompt_tokens": r.prompt_tokens or 0, "completion_tokens": r.completion_tokens or 0,
            "cost_usd": r.cost_usd} for r in results]
    out += [{"nodeid": nodeid, "draws": [], "calls": 0, "cached": False, "prompt_tokens": 0, "completion_tokens": 0,
             "cost_usd": None, "why": why} for nodeid, why in session.config.stash.get(_SKIPPED, {}).items()]
    Path(request["output"]).write_text(json.dumps(out), encoding="utf-8")
    if plugin is not None:  # nothing to aggregate, gate or report here: the run does that
        plugin.results.spool.close()
        plugin.results = ResultCollector()
        plugin.invalid.clear()
    session.exitstatus = pytest.ExitCode.OK


def draws_of(case: dict[str, Any]) -> list[int]:
    """A case's graded draws, 1 passed / 0 failed (each repeat's own outcome; unscored and errored draws left out)."""
    samples = case.get("samples") or []
    if samples:
        return [1 if s.get("passed") else 0 for s in samples if s.get("status") in ("passed", "failed")]
    return {"passed": [1], "failed": [0]}.get(str(case.get("outcome")), [])
