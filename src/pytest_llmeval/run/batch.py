"""``--llm-batch``: the selected cases' uncached model calls sent to the providers' batch APIs before the run grades.

How (docs/batch.md): before anything runs (``pytest_sessionstart``, in the controller under xdist, before its
workers start), rounds of

1. a **recording pass**: the same pytest command in a subprocess (``-n 0``, results and temporary files elsewhere,
   its output kept out of sight), whose runner (providers/batch.py's BatchHook) records every batchable request
   the exact cache lacks and answers it with a placeholder; a request that needs a placeholder (a judge's call on
   an answer not back yet, a conversation's next turn) waits for a later round;
2. the new requests submitted as one batch per provider, model and endpoint (providers/batch.py's BatchClient;
   for ``anthropic/`` models providers/anthropic_batch.py's AnthropicBatchClient), split within the provider's
   limits, their ids saved in ``.llmeval/batches.json`` at once;
3. polling until every batch is finished (progress on the terminal), its answers put in the exact cache under the
   very keys a plain call would use, its failed lines kept as the ``error`` outcomes of their cases;

until a recording pass finds nothing new, or nothing waited for the round's answers (or :data:`MAX_ROUNDS`). Then
the run grades as usual, from the cache (models without a batch API were called in the recording pass, their answers
cached). A killed run's batches are in the file: the next ``--llm-batch`` run polls them again instead of submitting
their requests anew. API keys are never written: the file holds batch ids, models, endpoints and cache keys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.anthropic_batch import AnthropicBatchClient
from pytest_llmeval.providers.batch import DEFERRED, BatchClient, BatchHook, BatchInfo, completion_of, line_error
from pytest_llmeval.run.state import RunState

__all__ = ["MAX_ROUNDS", "BatchPhase", "BatchStore", "install"]

RECORD_ENV = "LLMEVAL_BATCH_RECORD"  # set in the recording pass: the folder it reads and writes
MAX_ROUNDS = 8  # recording passes of one run (answers, judges, later turns...)
MAX_EXPIRED = 1  # an expired request is resubmitted this many times, then its case is an error
STORE = "batches.json"


class BatchStore:
    """``.llmeval/batches.json``: the batches submitted (id, provider, endpoint, model, cache keys, status,
    counts), the requests refused in this run (cache key -> message) and how often a request expired."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: list[dict[str, Any]] = []
        self.refused: dict[str, str] = {}
        self.expired: dict[str, int] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.batches = list(data.get("batches", []))
                self.refused = dict(data.get("refused", {}))
                self.expired = dict(data.get("expired", {}))
            except (OSError, ValueError, AttributeError) as exc:
                raise pytest.UsageError(f"--llm-batch: cannot read {path}: {exc}; delete it to start afresh") from None

    def pending(self) -> list[dict[str, Any]]:
        """The batches whose results are not in the cache yet."""
        return [b for b in self.batches if not b.get("collected")]

    def pending_keys(self) -> set[str]:
        return {k for b in self.pending() for k in b["keys"]}

    def start_run(self) -> None:
        """A new run: the finished batches and the last run's refusals are forgotten (those requests are tried
        again); the batches still running are kept, to be polled."""
        self.batches = self.pending()
        self.refused = {}
        if not self.batches:  # nothing to resume: a request that expired in an earlier run gets its tries again
            self.expired = {}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "batches": self.batches, "refused": self.refused,
                                   "expired": self.expired}, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def store_path(state: RunState) -> Path:
    return state.settings.results_path.parent / STORE


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
        state.runner.batch = BatchHook(record=False, refused=BatchStore(store_path(state)).refused)
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

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        phase = BatchPhase(self.state)
        refused = phase.run()
        hook = self.state.runner.batch = BatchHook(record=False, refused=refused)
        hook.summary = phase.summary


# ------------------------------------------------------------------------------------------------ the phase


class BatchPhase:
    """Rounds of recording, submitting and polling (module docstring); :meth:`run` returns the refused requests."""

    def __init__(self, state: RunState, sleep: Any = time.sleep) -> None:
        self.state = state
        self.settings = state.settings
        self.store = BatchStore(store_path(state))
        self.sleep = sleep
        config = state.config
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        self._terminal = terminal if config.get_verbosity() > -2 else None
        self._clients: dict[tuple[str, str | None], BatchClient | AnthropicBatchClient] = {}
        self._last_progress: tuple[Any, ...] | None = None
        self.rounds = 0  # recording passes made
        self.resubmit = False  # a request expired in this round: the next round resubmits it
        self.summary: dict[str, Any] = {}

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
        store = self.store
        store.start_run()
        start = time.monotonic()
        if store.pending():
            self.say(f"--llm-batch: resuming {len(store.pending())} batch(es) of an earlier run")
        finished = self.wait(start)
        told: set[str] = set()
        for round_no in range(1, MAX_ROUNDS + 1):
            if not finished:
                break
            self.rounds = round_no
            requests, unbatched, waiting = self.record(round_no)
            for model, why in sorted(unbatched.items()):
                if model not in told:
                    told.add(model)
                    self.say(f"--llm-batch: {model} has no batch API ({why}): its calls are made one by one "
                             "(their answers cached as usual)")
            pending = store.pending_keys()
            new = [r for r in requests if r["key"] not in pending and r["key"] not in store.refused]
            if not new:
                break
            self.submit(new, round_no)
            self.resubmit = False
            finished = self.wait(start)
            if not waiting and not self.resubmit:  # nothing waits for this round's answers: no new request to find
                break
        done = [b for b in store.batches if b.get("collected")]
        answered = sum(int(b["counts"].get("completed", 0)) for b in done)
        self.summary = {
            "rounds": self.rounds, "unbatched": sorted(told), "refused": len(store.refused),
            "batches": [{"id": b["id"], "model": b["model"], "round": b["round"], "status": b["status"],
                         **b["counts"]} for b in store.batches]}
        self.say(f"--llm-batch: {answered} answer(s) from {len(done)} batch(es) in the cache, {len(store.refused)} "
                 "request(s) failed; grading")
        return dict(store.refused)

    # ---- recording

    def record(self, round_no: int) -> tuple[list[dict[str, Any]], dict[str, str], int]:
        """One recording pass in a subprocess: the batchable requests the cache lacks, the models without a batch
        API, and how many calls or graders waited for a placeholder's answer (0: no later round is needed)."""
        config = self.state.config
        folder = Path(tempfile.mkdtemp(prefix="llmeval-batch-"))
        try:
            (folder / "refused.json").write_text(json.dumps({**self.store.refused, **{
                k: "--llm-batch: in a batch still running" for k in self.store.pending_keys()}}), encoding="utf-8")
            args = [sys.executable, "-m", "pytest", *config.invocation_params.args, "-q", "--maxfail=2000000000",
                    f"--llm-results={folder / 'results.json'}", f"--basetemp={folder / 'basetemp'}"]
            if config.pluginmanager.hasplugin("xdist"):
                args.append("-n0")
            if getattr(config.option, "xmlpath", None):
                args.append(f"--junitxml={folder / 'junit.xml'}")
            env = {**os.environ, RECORD_ENV: str(folder)}
            for name in ("GITHUB_STEP_SUMMARY", "PYTEST_XDIST_WORKER"):
                env.pop(name, None)
            self.say(f"--llm-batch round {round_no}: finding the uncached model calls")
            with open(folder / "output.txt", "wb") as log:
                rc = subprocess.call(args, cwd=config.invocation_params.dir, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if rc not in (0, 1, 5):  # 1: some cases "failed" on placeholders; 5: nothing selected
                tail = (folder / "output.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
                raise pytest.UsageError(f"--llm-batch: the recording pass failed (exit status {rc}):\n{tail}")
            requests_file = folder / "requests.jsonl"
            requests = [json.loads(x) for x in requests_file.read_text(encoding="utf-8").splitlines() if x.strip()] \
                if requests_file.exists() else []
            unbatched_file = folder / "unbatched.json"
            found = json.loads(unbatched_file.read_text(encoding="utf-8")) if unbatched_file.exists() else {}
            return requests, found.get("unbatched", {}), int(found.get("waiting", 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- submitting

    def submit(self, requests: list[dict[str, Any]], round_no: int) -> None:
        groups: dict[tuple[str, str | None, str], list[dict[str, Any]]] = {}
        for r in requests:
            groups.setdefault((r["provider"], r["api_base"], r["resolved"]), []).append(r)
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
                self.store.batches.append({
                    "id": batch_id, "provider": provider, "api_base": api_base, "model": resolved, "round": round_no,
                    "submitted_at": time.time(), "status": "validating",
                    "counts": {"total": len(chunk), "completed": 0, "failed": 0},
                    "keys": {r["key"]: bool(r.get("tools")) for r in chunk}})
                self.store.save()  # at once: a run killed from here on resumes this batch instead of resubmitting
                self.say(f"--llm-batch round {round_no}: {len(chunk)} request(s) submitted to {resolved} "
                         f"(batch {batch_id})")

    def _refuse(self, requests: list[dict[str, Any]], exc: InfrastructureError) -> None:
        """Requests that could not be submitted: their cases are errors with the reason."""
        for r in requests:
            self.store.refused[r["key"]] = str(exc)
        self.store.save()
        self.say(f"--llm-batch: {exc}")

    # ---- polling and collecting

    def wait(self, start: float) -> bool:
        """Poll the pending batches until each is finished and collected (True), or until --llm-batch-timeout
        (False: the requests still running are refused in this run)."""
        while True:
            for batch in self.store.pending():
                try:
                    info = self.client(batch["provider"], batch["api_base"]).retrieve(batch["id"])
                except InfrastructureError as exc:
                    self.say(f"--llm-batch: {exc}")
                    continue
                batch["status"] = info.status
                batch["counts"] = {"total": info.total or len(batch["keys"]), "completed": info.completed,
                                   "failed": info.failed}
                if info.done:
                    self.collect(batch, info)
                self.store.save()
            pending = self.store.pending()
            self.progress()
            if not pending:
                return True
            if time.monotonic() - start >= self.settings.batch_timeout:
                for batch in pending:
                    message = (f"batch {batch['id']} was still {batch['status']} when --llm-batch-timeout "
                               f"({self.settings.batch_timeout:g} s) ran out; rerun with --llm-batch to resume polling")
                    for key in batch["keys"]:
                        self.store.refused[key] = message
                self.store.save()
                self.say(f"--llm-batch: {len(pending)} batch(es) still running after --llm-batch-timeout: their "
                         "cases are errors in this run; the next --llm-batch run resumes polling them")
                return False
            self.sleep(self.settings.batch_poll)

    def progress(self) -> None:
        batches = [b for b in self.store.batches]
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

    def collect(self, batch: dict[str, Any], info: BatchInfo) -> None:
        """A finished batch: its answers into the exact cache, its failures refused (an expired request is
        resubmitted by the next round, at most MAX_EXPIRED times)."""
        from pytest_llmeval.providers.base import MalformedResponse

        runner = self.state.runner
        client = self.client(batch["provider"], batch["api_base"])
        keys: dict[str, bool] = batch["keys"]
        where = f"batch {batch['id']} ({batch['model']})"
        seen: set[str] = set()
        for line in [*client.lines(info.output_file_id), *client.lines(info.error_file_id)]:
            key = line.get("custom_id")
            if key not in keys or key in seen:
                continue
            seen.add(key)
            problem = line_error(line)
            if problem is None:
                try:
                    runner.store(key, completion_of(line, batch["model"], batch["model"], keys[key]))
                except MalformedResponse as exc:
                    self.store.refused[key] = f"{where}: {exc}"
            elif "batch_expired" in problem:
                self._expired(key, where)
            else:
                self.store.refused[key] = f"{where}: the request failed in the batch: {problem}"
        for key in keys:
            if key in seen:
                continue
            if info.status == "expired":
                self._expired(key, where)
            elif info.status in ("failed", "cancelled"):
                reason = "; ".join(info.errors) or "no reason given"
                self.store.refused[key] = f"{where} {info.status}: {reason}"
            else:
                self.store.refused[key] = f"{where}: no result for this request in the batch's output"
        batch["collected"] = True

    def _expired(self, key: str, where: str) -> None:
        self.store.expired[key] = self.store.expired.get(key, 0) + 1
        self.resubmit = True  # by the next round
        if self.store.expired[key] > MAX_EXPIRED:
            self.store.refused[key] = (f"{where}: expired before answering this request "
                                       f"({self.store.expired[key]} batches in a row)")
