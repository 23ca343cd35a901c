"""Run state: one plugin object per process, registered in ``pytest_configure``.

It resolves the settings, owns the check registry and the model runner, turns every item's outcome into
a CaseResult on its report, and, on the controller (or a plain run), aggregates the results, prints the
summary table and writes results.json. The code path is the same with and without xdist: per-case data
rides on the test report, which xdist serialises to the controller.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.cases.loader import referenced_datasets
from pytest_llmeval.config import settings as settings_mod
from pytest_llmeval.core.checks import CheckRegistry
from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.providers.runner import Completion, ModelCallError, ModelRunner, gc_freeze, gc_thaw, paused_gc
from pytest_llmeval.results.aggregate import CaseResult, build_results, write_results
from pytest_llmeval.run.items import CaseFile, CaseItem, InvalidCaseItem, ModelUnusable

GC_BATCH = 500  # items between the explicit garbage collections of a run of case items only
CALLS = pytest.StashKey[list[Completion]]()  # model calls made through the `llm` fixture, per item
VISION = pytest.StashKey[list[dict[str, Any]]]()  # questions the `vision_judge` fixture asked, per item
VISION_CALLS = pytest.StashKey[list[Completion]]()  # and the vision model calls they made
CASE_SUFFIXES = (".yaml", ".yml", ".jsonl")
FLYWHEEL_SUFFIXES = (".gen.yaml", ".gen.yml", ".review.yaml", ".review.yml")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-llmeval")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


class LLMEvalSession:
    """The plugin object holding this process's run state."""

    def __init__(self, config: pytest.Config) -> None:
        gc_thaw()  # an earlier session in this process (pytester, an IDE) froze its objects: collectable again
        self.config = config
        self.settings = settings_mod.resolve(config)
        self.registry = CheckRegistry()
        config.hook.pytest_llmeval_register_checks(register=self.registry.register)
        self.is_worker = hasattr(config, "workerinput")
        workerinput = getattr(config, "workerinput", {})
        self.journal_dir = self.settings.results_path.parent / "journal"
        self._run: dict[str, Any] | None = workerinput.get("llmeval_run")
        self.runner = ModelRunner(self.settings, workers=int(workerinput.get("workercount", 1) or 1))
        if self._run is not None:
            self._use_run(self._run)
        self.prefetcher: Any = None
        if self.settings.concurrency > 1:
            from pytest_llmeval.providers.prefetch import Prefetcher

            # Every module is imported before the pool's first thread starts (see _import_all_modules): when the
            # pool starts, not at session start, so a run that never calls a model (all answers cached) skips it.
            self.prefetcher = Prefetcher(self.runner.complete, self.settings.concurrency,
                                         before_start=_import_all_modules)
        self._journal: Any = None
        self._answered: dict[str, list[Completion]] = {}  # nodeid -> its answers, found in the cache at collection
        # The last report's data, its CaseResult and JSON text; id(result) -> JSON text of the results kept.
        self._made: tuple[dict[str, Any], CaseResult, str | None] | None = None
        self._encoded: dict[int, str] = {}
        self._gc_batched = False  # collecting garbage every GC_BATCH items instead of automatically (see the loop)
        self._gc_pending = 0
        self._done: dict[str, dict[str, Any]] | None = None
        self._order: list[pytest.Item] = []
        self._position: dict[str, int] = {}
        self._session: pytest.Session | None = None
        self.results: list[CaseResult] = []
        self.invalid: list[dict[str, Any]] = []
        self.unusable: dict[str, str] = {}  # model -> why it cannot be used (xdist workers)
        self._sandbox: Any = None
        self._sandbox_error: Exception | None = None
        self._datasets: set[Path] | None = None
        self._indexes: dict[tuple[Any, ...], Any] = {}
        self.other_failures = 0  # failed reports that are not graded case failures (errors, plain tests)
        self.verdicts: list[Any] | None = None
        self.holdout: list[Any] = []  # holdout.HoldoutEval of the test-split suites this run evaluated
        from pytest_llmeval.run import state as _state

        _state.HYPOTHESIS_DIR[:] = [self.hypothesis_dir]  # where llm_settings' database goes (read at first use)
        _state.EXPLORE[:] = [self.settings.explore]  # whether llm_settings draws fresh examples and saves failures
        self.held_out = 0  # test-split items deselected in a dev run

    @property
    def hypothesis_dir(self) -> Path:
        """The example database of hand-written Hypothesis tests (``llm_settings``)."""
        return self.settings.results_path.parent / "hypothesis" / "tests"

    # ------------------------------------------------------------------------------------ run, journal, resume

    @property
    def run(self) -> dict[str, Any]:
        """This run's id and the runs it resumes: decided once by the controller (or a plain run), handed to
        xdist workers through workerinput."""
        if self._run is None:
            from pytest_llmeval.results.journal import start_run

            self._run = start_run(self.journal_dir, self.settings.resume)
            self._use_run(self._run)
        return self._run

    def _use_run(self, run: dict[str, Any]) -> None:
        self.runner.use_run_dir(self.settings.results_path.parent / "run" / str(run["run_id"]))

    def finished_before(self) -> dict[str, dict[str, Any]]:
        """With --llm-resume: nodeid -> result of the cases the resumed runs finished."""
        if self._done is None:
            from pytest_llmeval.results.journal import finished

            self._done = finished(self.journal_dir, list(self.run["resumed_from"])) if self.settings.resume else {}
        return self._done

    def _journal_append(self, data: dict[str, Any]) -> str | None:
        """Journal a finished case; its JSON text (None with --collect-only)."""
        if self.config.option.collectonly:
            return None
        if self._journal is None:
            from pytest_llmeval.results.journal import Journal

            writer = str(getattr(self.config, "workerinput", {}).get("workerid", "main"))
            self._journal = Journal(self.journal_dir, str(self.run["run_id"]), writer)
        return str(self._journal.append(data))

    # ------------------------------------------------------------------------------------ prefetch

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._session = session
        if not self.is_worker and not self.config.option.collectonly:
            _ = self.run  # decide the run id (and the journal) before anything runs

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        self._order = list(session.items)
        self._position = {item.nodeid: i for i, item in enumerate(self._order)}
        gc_freeze()  # what collection built lives through the run: full collections need not walk it again
        # A run of case items only (no test code of the user's, no fixtures) whose answers were all found in the
        # cache: instead of the interpreter's automatic collections, whose full ones walk everything the run has made
        # so far (two to four of them, 0.1-0.4 s in all, for 5000 cases), one explicit collection every GC_BATCH
        # items, of only what was made since the last. Not while model calls are in flight: one long collection
        # would stall every one of them, where the automatic ones come in small steps.
        batched = gc.isenabled() and bool(self._order) and all(
            isinstance(i, InvalidCaseItem) or isinstance(i, CaseItem) and i.nodeid in self._answered
            for i in self._order)
        if batched:
            gc.disable()
        self._gc_batched, self._gc_pending = batched, 0
        try:
            return (yield)
        finally:
            if batched:
                self._gc_batched = False
                gc.enable()

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # One full collection of everything, while pytest still watches for exceptions raised by finalizers (its
        # own cleanup collects again, after this), then the survivors are frozen: the interpreter's collections
        # at exit would otherwise walk them all again, several times (~0.5 s after a 5000-case run).
        gc_thaw()
        gc.collect()
        gc_freeze()

    def prefetch_from(self, item: pytest.Item) -> None:
        """Make sure the calls of ``item`` and of the items after it (in this process's run order) are issued."""
        session = self._session
        if self.prefetcher is None or (session is not None and (session.shouldfail or session.shouldstop)):
            return
        self.prefetcher.fill([item, *self._upcoming(item)])

    def _upcoming(self, item: pytest.Item) -> list[pytest.Item]:
        lookahead = 2 * self.prefetcher.window + 8
        interactor = self._interactor
        if interactor is not None:  # an xdist worker: the items it has been sent and not yet run
            items = self._session.items if self._session is not None else []
            with interactor.torun.lock() as queue:
                indices = [interactor.nextitem_index, *list(queue)[:lookahead]]
            return [items[i] for i in indices if isinstance(i, int) and 0 <= i < len(items)]
        position = self._position.get(item.nodeid)
        if position is None:
            return []
        return [i for i in self._order[position + 1:position + 1 + lookahead] if isinstance(i, CaseItem)]

    @functools.cached_property
    def _interactor(self) -> Any:
        """xdist's WorkerInteractor in a worker (its queue holds the items this worker runs next), else None;
        looked up once, not at every item."""
        if not self.is_worker:
            return None
        for plugin in self.config.pluginmanager.get_plugins():
            if type(plugin).__name__ == "WorkerInteractor" and hasattr(plugin, "torun"):
                return plugin
        return None

    def get_sandbox(self) -> Any:
        """The sandbox for generated code, chosen once per process (raises SandboxUnavailable)."""
        if self._sandbox is None and self._sandbox_error is None:
            from pytest_llmeval.sandbox.isolation import Sandbox, SandboxUnavailable

            try:
                # The project directory may hold .env files and other secrets: hide it from the code.
                self._sandbox = Sandbox(self.settings.sandbox, hide=[Path(self.config.rootpath)])
            except SandboxUnavailable as exc:
                self._sandbox_error = exc
        if self._sandbox_error is not None:
            raise self._sandbox_error
        return self._sandbox

    def get_index(self, spec: dict[str, Any]) -> Any:
        """The retrieval index a case names (one per folder, model and URI per process)."""
        from pytest_llmeval.rag.index import DocIndex

        # Per session, not per process: a long-lived process (pytester, an IDE) must see edited documents.
        key = (spec["docs"], spec.get("model") or self.settings.embedding_model, spec.get("uri"), spec.get("name"))
        if key not in self._indexes:
            self._indexes[key] = DocIndex(Path(spec["docs"]), model=key[1], uri=key[2], name=key[3],
                                          base_dir=self.settings.index_dir)
        return self._indexes[key]

    # ------------------------------------------------------------------------------------ collection

    def _in_case_dirs(self, path: Path) -> bool:
        return any(path.is_relative_to(d) for d in self.settings.case_dirs)

    def _referenced_datasets(self) -> set[Path]:
        if self._datasets is None:
            suites = [p for d in self.settings.case_dirs if d.is_dir()
                      for p in sorted(d.rglob("*")) if p.suffix in (".yaml", ".yml")]
            self._datasets = referenced_datasets(suites, self.registry)
        return self._datasets

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.suffix not in CASE_SUFFIXES:
            return None
        # Flywheel files hold specs (*.gen.yaml) and candidates (*.review.yaml), not cases; dot files are
        # temporaries of an interrupted write.
        if file_path.name.startswith(".") or file_path.name.endswith(FLYWHEEL_SUFFIXES):
            return None
        if not (self._in_case_dirs(file_path) or parent.session.isinitpath(file_path)):
            return None
        if file_path.suffix == ".jsonl" and file_path.resolve() in self._referenced_datasets():
            return None  # a suite's dataset, collected through that suite
        return CaseFile.from_parent(parent, path=file_path)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # Hand-written tests using the `llm` fixture run once per model under test, like case items.
        user_parametrized = any(
            "llm_model" in (m.args[0] if isinstance(m.args[0], list | tuple) else str(m.args[0]).split(","))
            for m in metafunc.definition.iter_markers("parametrize") if m.args
        )
        if "llm_model" in metafunc.fixturenames and not user_parametrized:
            models = list(self.settings.models)
            metafunc.parametrize("llm_model", models, indirect=True, ids=models)

    @pytest.hookimpl(tryfirst=True)
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        """Hand-written tests with a vision_judge marker are slow vision evals, like case items with vision
        checks (marked before -m deselects anything)."""
        if item.get_closest_marker("vision_judge") is not None:
            item.add_marker("slow")
            item.add_marker("vision")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        """Check once, before anything runs, that every model the selected items need can be used."""
        self._select_split(config, items)
        if self.settings.shard is not None:
            self._select_shard(config, items)
        if self.settings.resume:
            done = self.finished_before()
            kept = [i for i in items if i.nodeid not in done]
            if len(kept) < len(items):
                config.hook.pytest_deselected(items=[i for i in items if i.nodeid in done])
                items[:] = kept
        if config.option.collectonly:
            return  # listing tests needs no key
        item_models = [(i, _item_model(i, self.settings.models)) for i in items]
        needed = sorted({m for _, m in item_models if m}
                        | {m for i, model in item_models if model and isinstance(i, CaseItem) for m in i.judge_models()})
        with paused_gc():  # the answers found live on
            deferred = self._answered_from_cache(item_models, set(needed))
        problems = {m: p for m in needed if m not in deferred and (p := self.runner.check_model(m))}
        if any(isinstance(i, CaseItem) and i.case.kind == "code" and _item_model(i, self.settings.models)
               for i in items):
            from pytest_llmeval.sandbox.isolation import SandboxUnavailable

            try:
                self.get_sandbox()
            except SandboxUnavailable as exc:
                problems["--llm-sandbox"] = f"--llm-sandbox={self.settings.sandbox}: {exc}"
        if not problems:
            return
        if self.is_worker:
            # A worker cannot stop the run cleanly: its items error fast with the message instead.
            self.unusable.update(problems)
            return
        raise pytest.UsageError("\n".join(problems.values()))

    def _answered_from_cache(self, items: list[tuple[pytest.Item, str | None]], needed: set[str]) -> set[str]:
        """Models whose every call in this selection is already in the exact cache: checking them would import
        litellm (~3 s) for nothing. Their check happens at the first call that misses after all.

        The answers looked up on the way are kept (until the first miss of each model): those items take them
        in setup without a second lookup, and the prefetcher leaves them alone (a pool thread per cached answer
        costs more than the lookup, and competes with the main thread for the GIL)."""
        if self.runner.cache is None or self.settings.cache_mode not in ("on", "replay", "semantic"):
            return set()
        verdict: dict[str, bool] = {}
        pending: list[tuple[pytest.Item, str, list[dict[str, Any]]]] = []

        def settle() -> None:
            """Look up the pending items' calls (one batch) and record which models stay all-cached."""
            found = self.runner.cached_many([call for _, _, plan in pending for call in plan])
            at = 0
            for item, model, plan in pending:
                answers, at = found[at:at + len(plan)], at + len(plan)
                if verdict.get(model) is False:
                    continue
                verdict[model] = all(a is not None for a in answers)
                if verdict[model] and answers:
                    self._answered[item.nodeid] = [a for a in answers if a is not None]
            pending.clear()

        batch = 8  # a first small batch: a run that is not cached finds out after a few lookups
        for item, model in items:
            if model is None or verdict.get(model) is False:
                continue
            plan = item.plan_calls() if isinstance(item, CaseItem) and not item.judge_models() else None
            if plan is None:
                verdict[model] = False
                continue
            pending.append((item, model, plan))
            if len(pending) >= batch:
                settle()
                batch = 512
        settle()
        if self._answered and self.prefetcher is not None:
            self.prefetcher.exclude(self._answered)
        return {m for m, ok in verdict.items() if ok and m in needed}

    def answered(self, item: pytest.Item) -> list[Completion] | None:
        """The item's answers, looked up in the exact cache at collection (once: they are handed over)."""
        return self._answered.pop(item.nodeid, None) if self._answered else None

    def _select_split(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Holdout discipline: the test split runs only with --llm-split test (or all); dev only with dev or all.
        Items of the other split are deselected (no model call, counted as deselected)."""
        wanted = self.settings.split
        if wanted == "all":
            return
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            (keep if _item_split(item) in (wanted, None) else drop).append(item)
        self.held_out = sum(1 for i in drop if _item_split(i) == "test")
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def _select_shard(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Keep shard I of N: items whose id hashes to it (stable across machines, runs and item order)."""
        import hashlib

        assert self.settings.shard is not None
        index, count = self.settings.shard
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            digest = int(hashlib.sha256(item.nodeid.encode()).hexdigest()[:12], 16)
            (keep if digest % count == index - 1 else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    # ------------------------------------------------------------------------------------ reporting

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]
                                  ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report: pytest.TestReport = yield
        if report.when == "setup" and report.failed and call.excinfo is not None:
            # pytest renders setup errors as tracebacks without asking the item; ours are explained
            # by a message (provider failure, unusable model, invalid case), so show just that.
            exc = call.excinfo.value
            if isinstance(item, CaseItem | InvalidCaseItem):
                report.longrepr = item.repr_failure(call.excinfo)
            elif isinstance(exc, ModelCallError | ModelUnusable):
                report.longrepr = f"model call failed: {exc}"
        final = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
        if not final:
            return report
        if isinstance(item, InvalidCaseItem):
            root = self.config.rootpath
            report.__dict__["llmeval_invalid"] = [e.to_dict(root) for e in item.errors]
            return report
        result = self._result_for(item, report, call)
        if result is not None:
            data = result.to_dict()
            report.__dict__["llmeval"] = data  # serialised by xdist with the report
            text = self._journal_append(data)  # at once, by the process that ran it: a kill loses no finished case
            # Handed to pytest_runtest_logreport of this report in this process (not through xdist), with the JSON
            # text results.json reuses, unless to_dict shortened the answer: then the CaseResult is rebuilt from the
            # data there, as on the controller.
            self._made = (data, result, text) if data["answer"] is result.answer else None
            props = [("llmeval_suite", result.suite), ("llmeval_case", result.case_id),
                     ("llmeval_model", result.model), ("llmeval_outcome", result.outcome),
                     ("llmeval_score", "" if result.score is None else f"{result.score:.4f}"),
                     ("llmeval_latency_s", "" if result.latency_s is None else f"{result.latency_s:.3f}"),
                     ("llmeval_cached", str(bool(result.cached)).lower())]
            item.user_properties.extend(props)
            report.user_properties.extend(props)
        return report

    def _result_for(self, item: pytest.Item, report: pytest.TestReport,
                    call: pytest.CallInfo[None]) -> CaseResult | None:
        excinfo = call.excinfo
        error = excinfo is not None and isinstance(excinfo.value, InfrastructureError)
        if report.skipped:
            outcome = "skipped"
            message = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else None
        elif report.passed:
            outcome, message = "passed", None
        elif error or report.when == "setup":
            outcome = "error"
            message = str(excinfo.value) if excinfo else None
        else:
            outcome, message = "failed", None
        if isinstance(item, CaseItem):
            if excinfo is not None and isinstance(excinfo.value, ModelCallError):
                item.failed_retries += max(0, excinfo.value.attempts - 1)
            return item.result(outcome, message)
        return _hand_written_result(item, outcome, message, self.settings.models)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config
                                 ) -> tuple[str, str, Any] | None:
        """Unscored cases are their own category ("2 unscored" in the summary line, ``U`` in the progress);
        a provider failure during grading (a judge call) is an error, like one in setup."""
        data = getattr(report, "llmeval", None)
        if not data:
            return None
        if data.get("outcome") == "unscored":
            return "unscored", "U", ("UNSCORED", {"yellow": True})
        if data.get("outcome") == "error" and report.when == "call" and report.failed:
            return "error", "E", ("ERROR", {"red": True})
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._gc_batched and report.when == "teardown":
            self._gc_pending += 1
            if self._gc_pending >= GC_BATCH:  # after an item's teardown: nothing of it is left alive but its reports
                self._gc_pending = 0
                gc.collect()  # finds the garbage among what was made since the last batch (the rest is frozen)
                gc_freeze()
        session = self._session
        if self.prefetcher is not None and session is not None and (session.shouldfail or session.shouldstop):
            self.prefetcher.stop()  # -x / --maxfail: no new calls for items that will not run
        data = getattr(report, "llmeval", None)
        if report.failed and not (data and data.get("outcome") == "failed"):
            self.other_failures += 1
        if data:
            made, self._made = self._made, None
            if made is not None and made[0] is data:
                self.results.append(made[1])
                if made[2] is not None:
                    self._encoded[id(made[1])] = made[2]
            else:
                self.results.append(CaseResult.from_dict(data))
        invalid = getattr(report, "llmeval_invalid", None)
        if invalid:
            self.invalid.extend(invalid)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self._journal is not None:
            self._journal.close()
        self.budget_state = self.runner.budget.state()
        self.runner.close()
        self.resumed = 0
        if not self.is_worker and self.settings.resume:
            ran = {r.nodeid for r in self.results}
            earlier = [CaseResult.from_dict(d) for n, d in self.finished_before().items() if n not in ran]
            self.results.extend(earlier)
            self.resumed = len(earlier)
        if self.is_worker or not (self.results or self.invalid):
            return
        workers = getattr(self.config.option, "numprocesses", None) or 0
        doc = build_results(self.results, models=list(self.settings.models), cache_mode=self.settings.cache_mode,
                            exit_status=int(exitstatus), invalid=self.invalid, workers=int(workers),
                            version=_version(), encoded=self._encoded,
                            shard="/".join(map(str, self.settings.shard)) if self.settings.shard else None)
        if self._run is not None:
            doc["run"].update(run_id=self._run["run_id"], resumed_from=self._run["resumed_from"],
                              resumed_cases=self.resumed)
        if self.budget_state:
            doc["run"]["budget"] = self.budget_state
        if self.settings.split != "dev" and not self.config.option.collectonly:
            from pytest_llmeval.cases import holdout

            ledger = self.settings.results_path.parent / holdout.LEDGER_NAME
            self.holdout = holdout.evaluations(self.results, ledger)
            holdout.record(ledger, self.holdout, self._run["run_id"] if self._run else None, self.settings.split)
            doc["run"]["holdout"] = [{**e.entry(None, self.settings.split), "changed_since": e.changed_since}
                                     for e in self.holdout]
        doc["run"]["split"] = self.settings.split
        settings = self.settings
        if settings.gate_configured:
            from pytest_llmeval.results.gate import Gate, gate_failed, load_baseline

            gate = Gate(list(settings.gate_rules), alpha=settings.gate_alpha)
            baseline = load_baseline(settings.baseline) if settings.baseline and not settings.update_baseline \
                else None
            self.verdicts = gate.evaluate(doc, baseline)
            failed = gate_failed(self.verdicts)
            doc["gate"] = {"baseline": str(settings.baseline) if baseline is not None else None,
                           "rules": [r.describe() for r in settings.gate_rules], "alpha": settings.gate_alpha,
                           "failed": failed, "suites": [v.to_dict() for v in self.verdicts]}
            # With a gate, failed cases are measurements: the gate (and errors) decide the exit status.
            if not settings.strict and session.exitstatus == pytest.ExitCode.TESTS_FAILED \
                    and self.other_failures == 0:
                session.exitstatus = pytest.ExitCode.OK
            if failed:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            doc["run"]["exit_status"] = int(session.exitstatus)
        elif settings.update_baseline and not settings.strict and self.other_failures == 0 \
                and session.exitstatus == pytest.ExitCode.TESTS_FAILED:
            # Recording a baseline measures the model: its failed cases are what the baseline records, not a
            # broken build (errors and failing plain tests still fail the run; --llm-strict keeps pytest's meaning).
            session.exitstatus = pytest.ExitCode.OK
            doc["run"]["exit_status"] = int(session.exitstatus)
        write_results(settings.results_path, doc)
        if settings.update_baseline and settings.baseline is not None:
            from pytest_llmeval.results.gate import write_baseline

            write_baseline(settings.baseline, doc)
        self._written = doc

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        doc = getattr(self, "_written", None)
        if self.is_worker or doc is None:
            return
        from pytest_llmeval.report.terminal import summary_lines

        tr = terminalreporter
        tr.write_sep("=", "llmeval summary")
        for line in summary_lines(doc):
            tr.write_line(line)
        from pytest_llmeval.report.terminal import budget_lines, error_lines

        for line, red in error_lines(doc):
            tr.write_line(line, red=red, yellow=not red)
        for line in budget_lines(doc):
            tr.write_line(line)
        from pytest_llmeval.cases.holdout import warning_lines

        for line, loud in warning_lines(self.holdout):
            tr.write_line(line, red=loud, bold=loud)
        if self.held_out and self.settings.split == "dev":
            tr.write_line(f"holdout: {self.held_out} test-split item(s) not run (the holdout runs only with "
                          "--llm-split test)")
        if self.resumed:
            tr.write_line(f"resumed run {self._run['resumed_from'][0] if self._run else '?'}: {self.resumed} case(s) "
                          "finished there are in these results")
        if self.verdicts is not None:
            from pytest_llmeval.results.gate import format_verdicts

            tr.write_sep("-", "llmeval gate")
            for line in format_verdicts(self.verdicts):
                tr.write_line(line)
            if doc["gate"]["failed"]:
                tr.write_line("ERROR: llmeval gate failed: " + "; ".join(
                    f"{v.suite} [{v.model}] {v.verdict}" for v in self.verdicts
                    if v.verdict in ("regression", "below_floor", "over_budget", "errors")), red=True)
            else:
                tr.write_line("llmeval gate passed" + (" (failed cases are reported above; the gate decides the "
                                                       "exit status)" if not self.settings.strict else ""),
                              green=True)
        if self.settings.update_baseline and self.settings.baseline is not None:
            tr.write_line(f"baseline written: {self.settings.baseline}")
        self._github(tr, doc)

    def _github(self, tr: Any, doc: dict[str, Any]) -> None:
        """On GitHub Actions: the step summary and error annotations on the regressed cases' lines."""
        from pytest_llmeval.report.terminal import github_annotations, github_summary

        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            try:
                with open(summary_path, "a", encoding="utf-8") as fh:
                    fh.write(github_summary(doc))
            except OSError as exc:
                tr.write_line(f"llmeval: cannot write the GitHub step summary {summary_path}: {exc}", yellow=True)
        if os.environ.get("GITHUB_ACTIONS") == "true":
            for line in github_annotations(doc):
                tr.write_line(line)
        try:
            shown = self.settings.results_path.relative_to(Path(os.getcwd()))
        except ValueError:
            shown = self.settings.results_path
        tr.write_line(f"results: {shown}")


def _import_all_modules() -> None:
    """Import every module of this package now, in the main thread, before the prefetch pool starts.

    pytest rewrites the asserts of a plugin's modules when they are first imported, with ``ast.parse``; on
    CPython 3.11 two threads doing that at once could fail with "SystemError: AST constructor recursion depth
    mismatch" (CPython gh-106905). astguard.py now serializes every AST conversion of the process, which is what
    makes that impossible; importing up front still keeps the first calls of the pool from waiting on imports
    (and on each other's import locks). All modules are light at import time (heavy libraries are imported inside
    functions)."""
    import importlib
    import pkgutil

    import pytest_llmeval

    for info in pkgutil.walk_packages(pytest_llmeval.__path__, "pytest_llmeval."):
        # These import hypothesis (slow); they are only ever imported on the main thread.
        if info.name not in ("pytest_llmeval.strategies", "pytest_llmeval.robustness.strategies",
                             "pytest_llmeval.robustness.hypothesis"):
            importlib.import_module(info.name)


def _item_split(item: pytest.Item) -> str | None:
    """dev | test: a case's split, or a hand-written test's (``@pytest.mark.llm_case(split="test")``); None for a
    broken case, whose error shows whatever the split."""
    if isinstance(item, InvalidCaseItem):
        return None
    if isinstance(item, CaseItem):
        return item.case.split
    marker = item.get_closest_marker("llm_case")
    return str(marker.kwargs.get("split", "dev")) if marker else "dev"


def _item_model(item: pytest.Item, models: tuple[str, ...]) -> str | None:
    if isinstance(item, CaseItem):
        from pytest_llmeval.run.items import NO_VISION_MODEL_ID

        pending = any(c.definition and c.definition.grade is None for c in item.checks)
        return None if pending or item.model == NO_VISION_MODEL_ID else item.model
    if "llm_model" in getattr(item, "fixturenames", ()):
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("llm_model", models[0]) if callspec else models[0]
    return None


def _hand_written_result(item: pytest.Item, outcome: str, message: str | None,
                         models: tuple[str, ...]) -> CaseResult | None:
    """A CaseResult for a plain test that uses the `llm` fixture or carries the `llm_case` marker."""
    marker = item.get_closest_marker("llm_case")
    model = _item_model(item, models)
    vision = item.stash.get(VISION, [])
    if marker is None and model is None and not vision:
        return None
    if model is None and vision:
        from pytest_llmeval.run.items import NO_VISION_MODEL_ID

        model = next((str(r["model"]) for r in vision if r.get("model")), NO_VISION_MODEL_ID)
    calls = item.stash.get(CALLS, [])
    suite = marker.kwargs.get("suite") if marker else None
    if not suite:
        module = getattr(item, "module", None)
        suite = module.__name__.rpartition(".")[2] if module else item.path.stem
    tags = list(marker.kwargs.get("tags", [])) if marker else []
    name = item.name.split("[", 1)[0]
    latencies = [c.latency_s for c in calls]
    last = calls[-1] if calls else None
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return CaseResult(
        suite=str(suite), case_id=name, model=model or (last.model if last else models[0]), outcome=outcome,
        kind="test", nodeid=item.nodeid, file=str(item.path.relative_to(item.config.rootpath))
        if item.path.is_relative_to(item.config.rootpath) else str(item.path),
        line=(item.reportinfo()[1] or 0) + 1, resolved_model=last.resolved_model if last else None,
        score=(1.0 if outcome == "passed" else 0.0) if outcome in ("passed", "failed") else None,
        answer=last.text if last else None, latency_s=sum(latencies) if calls else None,
        prompt_tokens=sum(c.prompt_tokens or 0 for c in calls) if calls else None,
        completion_tokens=sum(c.completion_tokens or 0 for c in calls) if calls else None,
        cost_usd=sum(costs) if costs else None, cached=all(c.cached for c in calls) if calls else None,
        calls=len(calls), tags=tags, message=message, vision=list(vision),
        vision_judge=_vision_summary(item.stash.get(VISION_CALLS, [])),
    )


def _vision_summary(calls: list[Completion]) -> dict[str, Any] | None:
    if not calls:
        return None
    costs = [x.cost_usd for x in calls if x.cost_usd is not None]
    return {"model": calls[0].model, "calls": len(calls), "latency_s": round(sum(x.latency_s for x in calls), 4),
            "cost_usd": sum(costs) if costs else None, "cached": all(x.cached for x in calls)}
