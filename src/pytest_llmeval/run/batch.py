"""``--llm-batch``: the selected cases' uncached model calls sent to the providers' batch APIs before the run grades.

How (docs/batch.md): before anything runs (``pytest_sessionstart``, in the controller under xdist, before its
workers start), rounds of

1. a **recording pass**: the same pytest command in a subprocess (run/child.py: ``-n 0``, its own results and files,
   its output kept out of sight), whose runner (providers/batch.py's BatchHook) records every batchable request
   the exact cache lacks and answers it with a placeholder; a request that needs a placeholder (a judge's call on
   an answer not back yet, a conversation's next turn) waits for a later round;
2. the new requests (neither cached nor in a batch still running, this run's or another's) counted in the run's
   budget (one call each; those past it are not submitted, and their cases meet the spent budget while grading),
   then submitted as one batch per provider, model and endpoint (providers/batch.py's BatchClient; for
   ``anthropic/`` models providers/anthropic_batch.py's AnthropicBatchClient), split within the provider's limits,
   their ids saved in ``.llmeval/batches.json`` (run/batch_store.py: locked, shared by concurrent runs) at once;
3. polling until every batch the run waits for is finished (progress on the terminal), its answers put in the exact
   cache under the very keys a plain call would use (their latency unknown, their batch price added to the spend),
   its failed lines kept as the ``error`` outcomes of their cases;

until a recording pass finds nothing new, or nothing waited for the round's answers (or :data:`MAX_ROUNDS`). Then
the run grades as usual, from the cache (models without a batch API were called in the recording pass, their answers
cached). A killed run's batches are in the file: the next ``--llm-batch`` run that needs their requests polls them
again instead of submitting them anew, as a run does with a concurrent run's batches. API keys are never written:
the file holds batch ids, models, endpoints and cache keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.anthropic_batch import AnthropicBatchClient
from pytest_llmeval.providers.batch import DEFERRED, BatchClient, BatchHook, BatchInfo, completion_of, line_error
from pytest_llmeval.run.batch_store import BatchStore, new_token
from pytest_llmeval.run.child import run_child
from pytest_llmeval.run.state import RunState

__all__ = ["MAX_ROUNDS", "BatchPhase", "BatchStore", "install"]

RECORD_ENV = "LLMEVAL_BATCH_RECORD"  # set in the recording pass: the folder it reads and writes
MAX_ROUNDS = 8  # recording passes of one run (answers, judges, later turns...)
MAX_EXPIRED = 1  # an expired request is resubmitted this many times, then its case is an error
STORE = "batches.json"
REFUSED = "batch_refused.json"  # in the run's directory: the requests the workers refuse (their cases' errors)


def store_path(state: RunState) -> Path:
    return state.settings.results_path.parent / STORE


def run_dir(state: RunState) -> Path:
    """The run's own directory (its budget, breakers... and the batch phase's refusals for the workers)."""
    return state.settings.results_path.parent / "run" / str(state.run["run_id"])


# ------------------------------------------------------------------------------------------------ the plugins


def install(state: RunState) -> object | None:
    """Called by plugin.py in every process: the plugin object of this process's part in --llm-batch, or None."""
    record = os.environ.get(RECORD_ENV)
    if record:
        # Nothing of the recording pass is a result: no CaseResults, results.json, journal, baseline or gate.
        if state.config.pluginmanager.has_plugin("llmeval-session"):
            state.config.pluginmanager.unregister(name="llmeval-session")
        return RecordPlugin(state, Path(record))
    if not state.settings.batch or state.config.option.collectonly:
        return None
    if state.settings.cache_mode not in ("on", "semantic"):
        raise pytest.UsageError(f"--llm-batch puts the batches' answers in the exact cache: it cannot run with "
                                f"--llm-cache={state.settings.cache_mode}; use --llm-cache=on")
    if state.is_worker:  # the controller ran the batches before starting this worker: refuse what failed
        refused: dict[str, str] = {}
        if state.run_decided is not None and (run_dir(state) / REFUSED).exists():
            refused = json.loads((run_dir(state) / REFUSED).read_text(encoding="utf-8"))
        state.runner.batch = BatchHook(record=False, refused=refused)
        return None
    return BatchPlugin(state)


class RecordPlugin:
    """The recording pass (a subprocess of the run): defer, record, write the requests; grade nothing."""

    def __init__(self, state: RunState, folder: Path) -> None:
        self.state = state
        self.folder = folder
        refused = json.loads((folder / "refused.json").read_text(encoding="utf-8"))
        self.hook = BatchHook(record=True, refused=refused)
        state.runner.batch = self.hook

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self) -> None:
        # The calls this pass makes (models without a batch API) count in the run's budget, not in a budget of
        # this process's own: after the run loop's sessionstart, which points the runner at this pass's run.
        budget = self.folder / "budget_dir"
        if budget.exists():
            self.state.runner.budget.directory = Path(budget.read_text(encoding="utf-8"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        # An item whose answers are placeholders has nothing to grade yet (its judges' calls come next round).
        if any(DEFERRED in c.text for c in getattr(item, "completions", None) or []):
            judge_models = getattr(item, "judge_models", None)
            if judge_models is None or judge_models() or getattr(item, "stage", None) == "robust":
                self.hook.waiting += 1  # its grading calls models: another round will find them
            pytest.skip("--llm-batch: answers deferred to a batch")
        return (yield)

    def pytest_sessionfinish(self) -> None:
        with open(self.folder / "requests.jsonl", "w", encoding="utf-8") as out:
            for request in self.hook.requests.values():
                out.write(json.dumps(request) + "\n")
        (self.folder / "unbatched.json").write_text(json.dumps({"unbatched": self.hook.unbatched,
                                                                "waiting": self.hook.waiting}), encoding="utf-8")


class BatchPlugin:
    """The run's process (the xdist controller, or a plain run): the batch phase before anything runs."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.summary: dict[str, Any] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        state = self.state
        folder = run_dir(state)  # decides the run id first: the budget is the run's from here on
        phase = BatchPhase(state)
        refused = phase.run()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / REFUSED).write_text(json.dumps(refused), encoding="utf-8")  # for the xdist workers
        hook = state.runner.batch = BatchHook(record=False, refused=refused)
        hook.summary = self.summary = phase.summary

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Under the llmeval summary: the batches' turnaround, and why batched answers show no latency."""
        batches = self.summary.get("batches") or []
        times = sorted(b["turnaround_s"] for b in batches if b.get("turnaround_s") is not None)
        if not times:
            return
        answered = sum(int(b.get("completed", 0)) for b in batches)
        span = f"{times[0]:.1f} s" if times[0] == times[-1] else f"{times[0]:.1f}-{times[-1]:.1f} s"
        terminalreporter.write_line(f"batches: {len(times)} finished, turnaround {span}, {answered} answer(s); a "
                                    "batched answer has no latency of its own: p50 s / p95 s are over the others")


# ------------------------------------------------------------------------------------------------ the phase


class BatchPhase:
    """Rounds of recording, submitting and polling (module docstring); :meth:`run` returns the refused requests.

    Its own state is this run's: the requests refused in it (failed in a batch, timed out, ...), the batches it
    waits for (its own and those of another run that hold requests it needs) and what it counted in the budget.
    The batches themselves are in the shared store, read and written under its lock."""

    def __init__(self, state: RunState, sleep: Any = time.sleep) -> None:
        self.state = state
        self.settings = state.settings
        self.store = BatchStore(store_path(state))
        self.sleep = sleep
        self.token = new_token()
        config = state.config
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        self._terminal = terminal if config.get_verbosity() > -2 else None
        self._clients: dict[tuple[str, str | None], BatchClient | AnthropicBatchClient] = {}
        self._last_progress: tuple[Any, ...] | None = None
        self.rounds = 0  # recording passes made
        self.resubmit = False  # a request expired in this round: the next round resubmits it
        self.summary: dict[str, Any] = {}
        self.refused: dict[str, str] = {}  # cache key -> the message of its case's error, in this run
        self.awaited: dict[str, dict[str, Any]] = {}  # batch id -> the batch as last seen, for every batch waited for
        self.absorbed: set[str] = set()  # awaited batches whose outcome this run has taken
        self.counted: set[str] = set()  # requests this run counted in the budget (an expired one is not counted twice)
        self.over_budget: set[str] = set()  # requests not submitted: past --llm-max-calls / --llm-max-cost
        self._told: set[str] = set()  # the models without a batch API, named on the terminal once

    def say(self, line: str) -> None:
        if self._terminal is not None:
            self._terminal.write_line(f"llmeval: {line}")

    def client(self, provider: str, api_base: str | None) -> BatchClient | AnthropicBatchClient:
        if (provider, api_base) not in self._clients:
            self._clients[(provider, api_base)] = (
                AnthropicBatchClient(api_base, self.settings.timeout) if provider == AnthropicBatchClient.provider
                else BatchClient(provider, api_base, self.settings.timeout))
        return self._clients[(provider, api_base)]

    def run(self) -> dict[str, str]:
        with self.store.locked() as store:
            store.start_run(self.token)
        try:
            self._rounds()
        finally:
            with self.store.locked() as store:
                store.end_run(self.token)
        done = [b for b in self.awaited.values() if b.get("collected")]
        answered = sum(int(b["counts"].get("completed", 0)) for b in done)
        self.summary = {
            "rounds": self.rounds, "unbatched": sorted(self._told), "refused": len(self.refused),
            "over_budget": len(self.over_budget),
            "batches": [{"id": b["id"], "model": b["model"], "round": b["round"], "status": b["status"],
                         **b["counts"], "turnaround_s": _turnaround(b), "cost_usd": b.get("cost_usd"),
                         **({} if b.get("run") == self.token else {"submitted_by": "another run"})}
                        for b in self.awaited.values()]}
        over = f", {len(self.over_budget)} not submitted (budget)" if self.over_budget else ""
        self.say(f"--llm-batch: {answered} answer(s) from {len(done)} batch(es) in the cache, {len(self.refused)} "
                 f"request(s) failed{over}; grading")
        return dict(self.refused)

    def _rounds(self) -> None:
        start = time.monotonic()
        for round_no in range(1, MAX_ROUNDS + 1):
            self.rounds = round_no
            requests, unbatched, waiting = self.record(round_no)
            for model, why in sorted(unbatched.items()):
                if model not in self._told:
                    self._told.add(model)
                    self.say(f"--llm-batch: {model} has no batch API ({why}): its calls are made one by one "
                             "(their answers cached as usual)")
            with self.store.locked() as store:
                # Under the lock: a request another run submitted a moment ago is waited for, not submitted again.
                pending = store.pending_keys()
                joined = {pending[r["key"]] for r in requests if r["key"] in pending} - set(self.awaited)
                for batch_id in sorted(joined):
                    batch = store.find(batch_id)
                    assert batch is not None
                    if not store.alive(batch.get("run")):  # a killed run's batch: this run resumes it, and pays
                        batch["run"] = self.token
                    self.awaited[batch_id] = dict(batch)
                new = [r for r in requests if r["key"] not in pending and r["key"] not in self.refused
                       and r["key"] not in self.over_budget]
                submitted = self.submit(store, new, round_no) if new else 0
            if joined:
                self.say(f"--llm-batch: resuming {len(joined)} batch(es) of an earlier run or a concurrent one "
                         "(their requests are not submitted again)")
            if not submitted and not joined:
                break
            self.resubmit = False
            if not self.wait(start):
                break
            if not waiting and not self.resubmit:  # nothing waits for this round's answers: no new request to find
                break

    # ---- recording

    def record(self, round_no: int) -> tuple[list[dict[str, Any]], dict[str, str], int]:
        """One recording pass in a subprocess: the batchable requests the cache lacks, the models without a batch
        API, and how many calls or graders waited for a placeholder's answer (0: no later round is needed)."""
        folder = Path(tempfile.mkdtemp(prefix="llmeval-batch-"))
        try:
            # A request in a batch still running (this run's, an earlier or a concurrent run's) is recorded as any
            # other: the round then waits for that batch instead of submitting it again.
            (folder / "refused.json").write_text(json.dumps(self.refused), encoding="utf-8")
            (folder / "budget_dir").write_text(str(self.state.runner.budget.directory), encoding="utf-8")
            self.say(f"--llm-batch round {round_no}: finding the uncached model calls")
            child = run_child(self.state.config, folder, ["-q"], env={RECORD_ENV: str(folder)})
            if child.returncode not in (0, 1, 5):  # 1: some cases "failed" on placeholders; 5: nothing selected
                raise pytest.UsageError(f"--llm-batch: the recording pass failed (exit status {child.returncode}):\n"
                                        f"{child.tail()}")
            requests_file = folder / "requests.jsonl"
            requests = [json.loads(x) for x in requests_file.read_text(encoding="utf-8").splitlines() if x.strip()] \
                if requests_file.exists() else []
            unbatched_file = folder / "unbatched.json"
            found = json.loads(unbatched_file.read_text(encoding="utf-8")) if unbatched_file.exists() else {}
            return requests, found.get("unbatched", {}), int(found.get("waiting", 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- submitting

    def submit(self, store: BatchStore, requests: list[dict[str, Any]], round_no: int) -> int:
        """Submit ``requests`` (holding the store's lock), each counted in the budget first (a request past it is
        not submitted: its case's call meets the spent budget while grading, and is skipped); how many went."""
        budget = self.state.runner.budget
        fresh = [r for r in requests if r["key"] not in self.counted]
        granted = {r["key"] for r in fresh[:budget.reserve_batch(len(fresh))]}
        self.counted |= granted
        over = [r for r in fresh if r["key"] not in granted]
        if over:
            self.over_budget.update(r["key"] for r in over)
            limit = (f"--llm-max-calls {budget.max_calls}" if budget.max_calls is not None else "") + \
                (" / " if budget.max_calls is not None and budget.max_cost is not None else "") + \
                (f"--llm-max-cost ${budget.max_cost:g}" if budget.max_cost is not None else "")
            self.say(f"--llm-batch round {round_no}: {len(over)} request(s) not submitted: {limit} reached")
        requests = [r for r in requests if r["key"] not in self.over_budget]
        groups: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
        for r in requests:
            groups.setdefault((r["provider"], r["api_base"], r["resolved"]), []).append(r)
        submitted = 0
        for (provider, api_base, resolved), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][2])):
            client = self.client(provider, api_base)
            by_key = {r["key"]: r for r in group}
            try:  # one batch per chunk, within the provider's limits
                chunks = client.split([{"custom_id": r["key"], "method": "POST", "url": "/v1/chat/completions",
                                        "body": r["body"]} for r in group])
            except InfrastructureError as exc:
                self._refuse(group, exc)
                continue
            for lines in chunks:
                chunk = [by_key[line["custom_id"]] for line in lines]
                try:
                    batch_id = client.submit(lines, {"source": "pytest-llmeval", "round": str(round_no)})
                except InfrastructureError as exc:
                    self._refuse(chunk, exc)
                    continue
                batch = {"id": batch_id, "provider": provider, "api_base": api_base, "model": resolved,
                         "round": round_no, "run": self.token, "submitted_at": time.time(), "status": "validating",
                         "counts": {"total": len(chunk), "completed": 0, "failed": 0},
                         "keys": {r["key"]: bool(r.get("tools")) for r in chunk}}
                store.batches.append(batch)
                store.save()  # at once: a run killed from here on resumes this batch instead of resubmitting
                self.awaited[batch_id] = dict(batch)
                submitted += len(chunk)
                self.say(f"--llm-batch round {round_no}: {len(chunk)} request(s) submitted to {resolved} "
                         f"(batch {batch_id})")
        return submitted

    def _refuse(self, requests: list[dict[str, Any]], exc: InfrastructureError) -> None:
        """Requests that could not be submitted: their cases are errors with the reason."""
        for r in requests:
            self.refused[r["key"]] = str(exc)
        self.say(f"--llm-batch: {exc}")

    # ---- polling and collecting

    def wait(self, start: float) -> bool:
        """Poll the awaited batches until each is finished and its outcome taken (True), or until
        --llm-batch-timeout (False: the requests still running are refused in this run). A batch another run
        collected first is not collected again: its outcome is read from the store."""
        while True:
            todo = [i for i in self.awaited if i not in self.absorbed]
            infos: dict[str, BatchInfo] = {}
            for batch_id in todo:  # outside the lock: the other runs go on meanwhile
                seen = self.awaited[batch_id]
                if seen.get("collected"):
                    continue
                try:
                    infos[batch_id] = self.client(seen["provider"], seen["api_base"]).retrieve(batch_id)
                except InfrastructureError as exc:
                    self.say(f"--llm-batch: {exc}")
            with self.store.locked() as store:
                for batch_id in todo:
                    batch = store.find(batch_id)
                    if batch is None:  # collected by another run and forgotten: its answers are in the cache
                        self.absorbed.add(batch_id)
                        continue
                    info = infos.get(batch_id)
                    if not batch.get("collected") and info is not None:
                        batch["status"] = info.status
                        batch["counts"] = {"total": info.total or len(batch["keys"]), "completed": info.completed,
                                           "failed": info.failed}
                        if info.done:
                            self.collect(store, batch, info)
                    self.awaited[batch_id] = dict(batch)
                    if batch.get("collected"):
                        self.absorb(batch)
            self.progress()
            pending = [b for i, b in self.awaited.items() if i not in self.absorbed]
            if not pending:
                return True
            if time.monotonic() - start >= self.settings.batch_timeout:
                for batch in pending:
                    message = (f"batch {batch['id']} was still {batch['status']} when --llm-batch-timeout "
                               f"({self.settings.batch_timeout:g} s) ran out; rerun with --llm-batch to resume polling")
                    for key in batch["keys"]:
                        self.refused.setdefault(key, message)
                self.say(f"--llm-batch: {len(pending)} batch(es) still running after --llm-batch-timeout: their "
                         "cases are errors in this run; the next --llm-batch run resumes polling them")
                return False
            self.sleep(self.settings.batch_poll)

    def absorb(self, batch: dict[str, Any]) -> None:
        """A collected batch's outcome for this run: its failures refused, its expired requests for the next round,
        its cost in the budget when this run submitted (or resumed) it."""
        self.absorbed.add(batch["id"])
        self.refused.update(batch.get("failed") or {})
        if batch.get("expired"):
            self.resubmit = True  # by the next round
        if batch.get("run") == self.token:
            self.state.runner.budget.spend(batch.get("cost_usd"))

    def progress(self) -> None:
        batches = list(self.awaited.values())
        if not batches:
            return
        statuses: dict[str, int] = {}
        for b in batches:
            statuses[b["status"]] = statuses.get(b["status"], 0) + 1
        submitted = sum(int(b["counts"].get("total", 0)) for b in batches)
        completed = sum(int(b["counts"].get("completed", 0)) for b in batches)
        failed = sum(int(b["counts"].get("failed", 0)) for b in batches)
        shown = (tuple(sorted(statuses.items())), submitted, completed, failed)
        if shown != self._last_progress:
            self._last_progress = shown
            self.say(f"batches: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}; requests: "
                     f"{submitted} submitted, {completed} completed, {failed} failed")

    def collect(self, store: BatchStore, batch: dict[str, Any], info: BatchInfo) -> None:
        """A finished batch (holding the store's lock): its answers into the exact cache; in the store, its failed
        lines (``failed``: key -> message), its expired ones (``expired``: resubmitted by the next round, at most
        MAX_EXPIRED times, then failed) and its batch-priced cost (``cost_usd``)."""
        from pytest_llmeval.providers.base import MalformedResponse

        runner = self.state.runner
        client = self.client(batch["provider"], batch["api_base"])
        keys: dict[str, bool] = batch["keys"]
        where = f"batch {batch['id']} ({batch['model']})"
        failed: dict[str, str] = {}
        expired: list[str] = []
        cost: float | None = None
        seen: set[str] = set()
        for line in [*client.lines(info.output_file_id), *client.lines(info.error_file_id)]:
            key = line.get("custom_id")
            if key not in keys or key in seen:
                continue
            seen.add(key)
            problem = line_error(line)
            if problem is None:
                try:
                    completion = completion_of(line, batch["model"], batch["model"], keys[key])
                except MalformedResponse as exc:
                    failed[key] = f"{where}: {exc}"
                    continue
                runner.store(key, completion)
                if completion.cost_usd is not None:
                    cost = (cost or 0.0) + completion.cost_usd
            elif "batch_expired" in problem:
                self._expired(store, key, where, failed, expired)
            else:
                failed[key] = f"{where}: the request failed in the batch: {problem}"
        for key in keys:
            if key in seen:
                continue
            if info.status == "expired":
                self._expired(store, key, where, failed, expired)
            elif info.status in ("failed", "cancelled"):
                reason = "; ".join(info.errors) or "no reason given"
                failed[key] = f"{where} {info.status}: {reason}"
            else:
                failed[key] = f"{where}: no result for this request in the batch's output"
        batch.update(collected=True, finished_at=time.time(), failed=failed, expired=expired, cost_usd=cost)

    @staticmethod
    def _expired(store: BatchStore, key: str, where: str, failed: dict[str, str], expired: list[str]) -> None:
        store.expired[key] = store.expired.get(key, 0) + 1
        if store.expired[key] > MAX_EXPIRED:
            failed[key] = f"{where}: expired before answering this request ({store.expired[key]} batches in a row)"
        else:
            expired.append(key)


def _turnaround(batch: dict[str, Any]) -> float | None:
    """Seconds from a batch's submission to its results seen (None: not finished in this run)."""
    if batch.get("finished_at") is None or batch.get("submitted_at") is None:
        return None
    return round(float(batch["finished_at"]) - float(batch["submitted_at"]), 3)
