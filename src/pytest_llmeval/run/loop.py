"""The run loop around pytest's: the run id decided first, garbage collection batched, prefetch stopped on -x."""

from __future__ import annotations

import gc
from collections.abc import Generator

import pytest

from pytest_llmeval.core.memory import gc_freeze, gc_thaw
from pytest_llmeval.run.items import CaseItem, InvalidCaseItem
from pytest_llmeval.run.state import RunState

GC_BATCH = 500  # items between the explicit garbage collections of a run of case items only


class RunLoopPlugin:
    """Hooks around the run loop of one process."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._gc_batched = False  # collecting garbage every GC_BATCH items instead of automatically (see the loop)
        self._gc_pending = 0

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        state = self.state
        state.session = session
        if not state.is_worker and not state.config.option.collectonly:
            _ = state.run  # decide the run id (and the journal) before anything runs

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        state = self.state
        state.order = list(session.items)
        state.position = {item.nodeid: i for i, item in enumerate(state.order)}
        gc_freeze()  # what collection built lives through the run: full collections need not walk it again
        # A run of case items only (no test code of the user's, no fixtures) whose answers were all found in the
        # cache: instead of the interpreter's automatic collections, whose full ones walk everything the run has made
        # so far (two to four of them, 0.1-0.4 s in all, for 5000 cases), one explicit collection every GC_BATCH
        # items, of only what was made since the last. Not while model calls are in flight: one long collection
        # would stall every one of them, where the automatic ones come in small steps.
        batched = gc.isenabled() and bool(state.order) and all(
            isinstance(i, InvalidCaseItem) or isinstance(i, CaseItem) and i.nodeid in state.answers
            for i in state.order)
        if batched:
            gc.disable()
        self._gc_batched, self._gc_pending = batched, 0
        try:
            return (yield)
        finally:
            if batched:
                self._gc_batched = False
                gc.enable()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._gc_batched and report.when == "teardown":
            self._gc_pending += 1
            if self._gc_pending >= GC_BATCH:  # after an item's teardown: nothing of it is left alive but its reports
                self._gc_pending = 0
                gc.collect()  # finds the garbage among what was made since the last batch (the rest is frozen)
                gc_freeze()
        state = self.state
        session = state.session
        if state.prefetcher is not None and session is not None and (session.shouldfail or session.shouldstop):
            state.prefetcher.stop()  # -x / --maxfail: no new calls for items that will not run

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # One full collection of everything, while pytest still watches for exceptions raised by finalizers (its
        # own cleanup collects again, after this), then the survivors are frozen: the interpreter's collections
        # at exit would otherwise walk them all again, several times (~0.5 s after a 5000-case run).
        gc_thaw()
        gc.collect()
        gc_freeze()
