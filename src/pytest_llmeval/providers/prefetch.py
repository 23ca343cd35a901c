"""In-process concurrency: issue the model calls of upcoming items ahead of time, in a bounded thread pool.

Waiting on a provider is I/O, so processes are the wrong unit of concurrency: one process can keep many
requests in flight while it grades answers in order. When an item starts, the prefetcher makes sure the calls
of the next items (in the order this process will run them: ``session.items``, or an xdist worker's queue)
are submitted, up to twice ``--llm-concurrency`` calls waiting or in flight; the pool runs at most
``--llm-concurrency`` of them at once. The item then takes its own answers (waiting if they are not back yet),
so outcomes, ids and output order are exactly those of a serial run.

Only plain model calls are prefetched: not calibration items (no model call), not retrieval items (the index
is searched on the main thread), not offline models other than ``local/`` ones (CPU-bound: threads would take
turns). The ``local/`` calls that the pool's threads make at once are generated as one batch
(local_generate.Batcher), far faster per answer than one at a time; while they run, the model's load and a long
batch's progress are reported through pytest's terminal reporter (not in xdist workers, nor under ``-qq``). Identical
requests in flight are issued once. Deselected items are never in the order, so they never cause a request;
after ``-x``/``--maxfail`` stops the run, queued calls are cancelled and no new ones are issued.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

#: How often the main thread, waiting for an answer, writes the progress lines the pool's threads queued.
PROGRESS_POLL_S = 0.5


def _key(call: dict[str, Any]) -> str:
    return json.dumps(call, sort_keys=True, default=str)


class Prefetcher:
    def __init__(self, complete: Any, concurrency: int, before_start: Callable[[], None] | None = None) -> None:
        self._complete = complete
        self._before_start = before_start  # run on the calling (main) thread before the pool's first thread
        self.concurrency = concurrency
        # Calls waiting or running (not the ones done and not yet taken: while the main thread waits for the oldest
        # call, the answers of later items pile up, and counting them would leave the pool idle behind it).
        self.window = 2 * concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._items: dict[str, list[Future[Any]]] = {}
        self._inflight: dict[str, Future[Any]] = {}
        self._not_prefetchable: set[str] = set()
        # Re-entrant: a future that is already done runs its done-callback (_forget) at once, in this thread,
        # while fill() still holds the lock.
        self._lock = threading.RLock()
        self.stopped = False
        self._reporting: tuple[Any, ...] | None = None  # (the previous progress reporter,) once installed
        self._terminal: tuple[Any, Any] | None = None  # (terminal reporter, capture manager) when lines are shown
        self._messages: queue.SimpleQueue[str] = queue.SimpleQueue()

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            from pytest_llmeval.core import astguard

            astguard.install()  # already done by the plugin; also for a pool used outside pytest
            if self._before_start is not None:
                self._before_start()
            self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="llmeval-call")
        return self._pool

    def exclude(self, nodeids: Iterable[str]) -> None:
        """Never prefetch these items (their answers are already at hand)."""
        self._not_prefetchable.update(nodeids)

    def fill(self, upcoming: Iterable[Any]) -> None:
        """Submit the calls of ``upcoming`` items (in run order) until the window is full."""
        if self.stopped:
            return
        for item in upcoming:
            if self._reporting is None:
                self._report_progress(getattr(item, "config", None))
            if len(self._inflight) >= self.window:  # _inflight: the calls not done yet
                break
            nodeid = item.nodeid
            if nodeid in self._items or nodeid in self._not_prefetchable:
                continue
            plan = item.plan_calls()
            if plan is None:
                self._not_prefetchable.add(nodeid)
                continue
            futures = []
            with self._lock:
                for call in plan:
                    key = _key(call)
                    future = self._inflight.get(key)
                    if future is None or future.cancelled():
                        future = self._get_pool().submit(self._complete, **call)
                        self._inflight[key] = future
                        future.add_done_callback(functools.partial(self._forget, key))
                    futures.append(future)
            self._items[nodeid] = futures

    def _report_progress(self, config: Any) -> None:
        """Show the local model's progress lines (its load, a long batch) while this pool runs: not from an xdist
        worker (its output is not the user's terminal), not under -qq. The pool's threads only queue them; the
        main thread writes them while it waits for an answer (take), with pytest's capture suspended, as pdb does:
        a line written from another thread would land in the running test's captured output."""
        from pytest_llmeval.providers import local_generate

        reporter = None
        terminal = None if config is None else config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None and not hasattr(config, "workerinput") and config.get_verbosity() > -2:
            self._terminal = (terminal, config.pluginmanager.get_plugin("capturemanager"))
            reporter = self._messages.put
        self._reporting = (local_generate.set_reporter(reporter),)

    def _show_progress(self) -> None:
        """Write the queued progress lines (main thread only)."""
        if self._terminal is None or self._messages.empty():
            return
        terminal, capture = self._terminal
        lines = []
        while not self._messages.empty():
            lines.append(self._messages.get_nowait())
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if getattr(getattr(terminal, "_tw", None), "width_of_current_line", 0):
                terminal.write("\n")  # after -q's progress dots: write_line() starts a line only after a file name
            for line in lines:
                terminal.write_line(f"llmeval: {line}")

    def _forget(self, key: str, future: Future[Any]) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    def take(self, item: Any) -> list[Any] | None:
        """The item's answers (waiting for them), or None when it was not prefetched (the caller calls itself).
        A failed call raises its exception here, in the item's own setup."""
        futures = self._items.pop(item.nodeid, None)
        if futures is None:
            return None
        if any(f.cancelled() for f in futures):
            return None
        if self._terminal is not None:  # wait in steps, showing the progress the pool's threads queued meanwhile
            while wait(futures, timeout=PROGRESS_POLL_S).not_done:
                self._show_progress()
            self._show_progress()
        return [f.result() for f in futures]

    def stop(self) -> None:
        """No new calls; queued ones are cancelled (the ones already running finish)."""
        self.stopped = True
        with self._lock:
            queued = list(self._inflight.values())
        for future in queued:  # a cancelled future runs its callback (_forget) at once
            future.cancel()

    def close(self) -> None:
        """Cancel what is queued and wait for the calls already running (at most ``concurrency``, each bounded
        by the call timeout): no thread of this run may outlive its session (an in-process pytest run, an IDE)."""
        self.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._reporting is not None:
            from pytest_llmeval.providers import local_generate

            local_generate.set_reporter(self._reporting[0])
            self._reporting = None
            self._terminal = None
