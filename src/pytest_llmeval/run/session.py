"""The session's results: every item's outcome becomes a CaseResult on its report; on the controller (or a plain
run) the results are aggregated, the holdout and the gate evaluated, the exit status decided, and the reporters
called.

The code path is the same with and without xdist: per-case data rides on the test report, which xdist
serialises to the controller.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator
from typing import Any

import pytest

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.core.version import package_version
from pytest_llmeval.providers.runner import ModelCallError, total_latency
from pytest_llmeval.report.base import ReporterRegistry, RunReport
from pytest_llmeval.results.aggregate import CaseResult
from pytest_llmeval.results.stream import ResultCollector
from pytest_llmeval.run.calls import CALLS, VISION, VISION_CALLS, vision_summary
from pytest_llmeval.run.collection import CollectionPlugin, item_model
from pytest_llmeval.run.items import NO_VISION_MODEL_ID, CaseItem, InvalidCaseItem, ModelUnusable
from pytest_llmeval.run.state import RunState

# What a report keeps of its case once every plugin has seen it: its outcome (pytest_report_teststatus reads it
# again for the short summary). One dict per outcome, shared by the reports: do not modify.
_SLIM = {o: {"outcome": o} for o in ("passed", "failed", "unscored", "error", "skipped")}


def release(item: CaseItem) -> None:
    """Drop what an item holds only while it runs (its answers, graded draws and check outcomes): its CaseResult
    is made and its reports written (repr_failure has used them), and pytest keeps every item to the end."""
    item.completion = None
    item.completions = []
    item.outcomes = []
    item.samples = []
    item.retrieved = []
    item.judge_env = None
    item.robustness = None
    # Its properties were copied into its teardown report (junitxml reads them there): the item's own list is dead.
    if item.user_properties:
        item.user_properties[:] = [p for p in item.user_properties if not str(p[0]).startswith("llmeval_")]


def slim_sent(report: pytest.TestReport) -> None:
    """In an xdist worker, empty what a case item's report holds for other plugins once every plugin of the worker
    has seen it: the report has gone to the controller, and the worker's terminal keeps it only to count it. Its
    keywords (the item's, one dict per report) and user properties were ~0.5 KiB of each case's memory there."""
    report.keywords.clear()  # type: ignore[attr-defined]  # a dict made for this report (TestReport.from_item_and_call)
    report.user_properties.clear()


class ResultsPlugin:
    """Turns reports into CaseResults, and the CaseResults of the run into results, a gate verdict and reports."""

    def __init__(self, state: RunState, collection: CollectionPlugin) -> None:
        self.state = state
        self.collection = collection
        self.config = state.config
        self.settings = state.settings
        self.reporters = ReporterRegistry()
        self.config.hook.pytest_llmeval_register_reporters(register=self.reporters.register)
        # The last report's data, its CaseResult and JSON text.
        self._made: tuple[dict[str, Any], CaseResult, str | None] | None = None
        # Under xdist: id(report) -> the JSON text of its case, to send in the worker (see pytest_report_to_serializable)
        # and to reuse for results.json in the controller.
        self._wire: dict[int, str] = {}
        # The run's cases, on disk as they arrive (results/stream.py): the controller's, or a plain run's. An xdist
        # worker keeps none: its cases go to the controller.
        self.results = ResultCollector()
        self.invalid: list[dict[str, Any]] = []
        self.other_failures = 0  # failed reports that are not graded case failures (errors, plain tests)
        self.report: RunReport | None = None

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
        if report.when == "teardown" and isinstance(item, CaseItem):
            release(item)
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
            text = self.state.journal_append(data)  # at once, by the process that ran it: a kill loses no finished case
            # Handed to pytest_runtest_logreport of this report in this process (not through xdist), with the JSON
            # text results.json reuses, unless to_dict shortened the answer: then the CaseResult is rebuilt from the
            # data there, as on the controller.
            self._made = (data, result, text) if data["answer"] is result.answer else None
            if text is not None and self.state.is_worker:
                self._wire[id(report)] = text
            intern = sys.intern  # one string per suite, model and outcome, not one per case
            props = [("llmeval_suite", intern(result.suite)), ("llmeval_case", result.case_id),
                     ("llmeval_model", intern(result.model)), ("llmeval_outcome", intern(result.outcome)),
                     ("llmeval_score", "" if result.score is None else f"{result.score:.4f}"),
                     ("llmeval_latency_s", "" if result.latency_s is None else f"{result.latency_s:.3f}"),
                     ("llmeval_cached", str(bool(result.cached)).lower())]
            item.user_properties.extend(props)
            report.user_properties.extend(props)
        return report

    def _result_for(self, item: pytest.Item, report: pytest.TestReport,
                    call: pytest.CallInfo[None]) -> CaseResult | None:
        excinfo = call.excinfo
        # A failure of the machinery (provider, sandbox, embedding model, index), not of the model: an error.
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
        return hand_written_result(item, outcome, message, self.settings.models)

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

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        data = getattr(report, "llmeval", None)
        if report.failed and not (data and data.get("outcome") == "failed"):
            self.other_failures += 1
        if data:
            made, self._made = self._made, None
            if self.state.is_worker:
                pass  # the controller collects the worker's cases
            elif made is not None and made[0] is data:
                self.results.add(made[1], made[2])
            else:
                result = CaseResult.from_dict(data)
                text = self._wire.pop(id(report), None) if self._wire else None
                # the text of exactly this case is reused as is
                self.results.add(result, text if text is not None and result.to_dict() == data else None)
        invalid = getattr(report, "llmeval_invalid", None)
        if invalid:
            self.invalid.extend(invalid)
        try:
            return (yield)
        finally:
            if data:
                # Every plugin has seen the report: what pytest keeps of it to the end (the terminal's stats) keeps
                # only the outcome of the case (pytest_report_teststatus), not the whole case, once per case.
                outcome = data.get("outcome")
                report.__dict__["llmeval"] = _SLIM.get(outcome) or {"outcome": outcome}
            if self.state.is_worker and "llmeval" in report.keywords:  # a case item's (the marker's keyword)
                slim_sent(report)

    # Under xdist a report crosses to the controller through execnet's serializer, in pure Python: a case's dict of
    # ~50 fields costs ~50 us to dump in the worker and ~55 us to load in the controller, where every report of the
    # run passes through one process. Its JSON text (the journal line, made anyway) travels as one string (~2 us)
    # and is parsed back with the C parser (~8 us); the controller's report carries the same ``llmeval`` dict.

    @pytest.hookimpl(wrapper=True)
    def pytest_report_to_serializable(self, config: pytest.Config, report: Any) -> Generator[None, Any, Any]:
        text = self._wire.pop(id(report), None) if self._wire else None
        data = report.__dict__.get("llmeval") if text is not None else None
        if data is None:
            return (yield)
        del report.__dict__["llmeval"]
        report.__dict__["llmeval_json"] = text
        try:
            return (yield)  # pytest's serializer copies the report's __dict__
        finally:
            del report.__dict__["llmeval_json"]
            report.__dict__["llmeval"] = data

    @pytest.hookimpl(wrapper=True)
    def pytest_report_from_serializable(self, config: pytest.Config, data: Any) -> Generator[None, Any, Any]:
        report = yield
        text = getattr(report, "llmeval_json", None)
        if isinstance(text, str):
            del report.__dict__["llmeval_json"]
            report.__dict__["llmeval"] = json.loads(text)
            self._wire[id(report)] = text  # taken back in pytest_runtest_logreport, right after
        return report

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        state, settings = self.state, self.settings
        budget_state = state.runner.budget.state()
        semantic_verify = state.runner.semantic_verify_state()  # --llm-semantic-verify=judge: lookups, verdicts
        batch = getattr(state.runner.batch, "summary", None)  # --llm-batch (run/batch.py): its batches, its counts
        state.close()
        resumed = 0
        if not state.is_worker and settings.resume:
            ran = self.results.nodeids()
            for nodeid, data in state.finished_before().items():
                if nodeid not in ran:
                    self.results.add(CaseResult.from_dict(data))
                    resumed += 1
        collected = self.collection.collected  # with --llm-shard: the whole selection, before the slice
        if not state.is_worker and collected and collected["items"] and \
                session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # an empty slice (more shards than items) is not an error
        # A shard always writes its results, even empty: `llmeval merge` would call it missing otherwise.
        if state.is_worker or not (len(self.results) or self.invalid or collected):
            return
        workers = getattr(self.config.option, "numprocesses", None) or 0
        doc = self.results.document(models=list(settings.models), cache_mode=settings.cache_mode,
                                    exit_status=int(exitstatus), invalid=self.invalid, workers=int(workers),
                                    version=package_version(),
                                    shard="/".join(map(str, settings.shard)) if settings.shard else None,
                                    # the checks' own row entries (labels...): results sits below checks, so they
                                    # are passed in
                                    check_aggregates=state.registry.aggregates())
        run = state.run_decided
        if run is not None:
            doc["run"].update(run_id=run["run_id"], resumed_from=run["resumed_from"], resumed_cases=resumed)
        if self.collection.collected is not None:  # with --llm-shard: what the whole selection was (llmeval merge)
            doc["run"]["collected"] = self.collection.collected
        if budget_state:
            doc["run"]["budget"] = budget_state
        if semantic_verify:
            doc["run"]["semantic_verify"] = semantic_verify
        if batch:
            doc["run"]["batch"] = batch
        report = RunReport(doc, settings, checks=state.registry, held_out=self.collection.held_out, resumed=resumed,
                           resumed_from=run["resumed_from"][0] if run and run["resumed_from"] else None)
        if settings.split != "dev" and not self.config.option.collectonly:
            from pytest_llmeval.cases import holdout

            ledger = settings.results_path.parent / holdout.LEDGER_NAME
            report.holdout = holdout.evaluations([r for r in self.results.results() if r.split == "test"], ledger)
            holdout.record(ledger, report.holdout, run["run_id"] if run else None, settings.split)
            doc["run"]["holdout"] = [{**e.entry(None, settings.split), "changed_since": e.changed_since}
                                     for e in report.holdout]
        doc["run"]["split"] = settings.split
        if settings.gate_configured:
            self._gate(session, report)
        elif settings.update_baseline and not settings.strict and self.other_failures == 0 \
                and session.exitstatus == pytest.ExitCode.TESTS_FAILED:
            # Recording a baseline measures the model: its failed cases are what the baseline records, not a
            # broken build (errors and failing plain tests still fail the run; --llm-strict keeps pytest's meaning).
            session.exitstatus = pytest.ExitCode.OK
            doc["run"]["exit_status"] = int(session.exitstatus)
        for reporter in self.reporters:
            reporter.finish(report)
        self.report = report

    def _gate(self, session: pytest.Session, report: RunReport) -> None:
        from pytest_llmeval.results.gate import Gate, gate_failed, load_baseline

        settings, doc = self.settings, report.doc
        gate = Gate(list(settings.gate_rules), alpha=settings.gate_alpha)
        baseline = load_baseline(settings.baseline) if settings.baseline and not settings.update_baseline else None
        report.verdicts = gate.evaluate(doc, baseline)
        from pytest_llmeval.run.redraw import decide_by_redraws  # --llm-gate-redraws: settle inconclusive suites

        rule = gate.drop_rule("pass_rate")
        redraws = decide_by_redraws(self.config, settings.gate_redraws, settings.gate_alpha, doc, baseline,
                                    report.verdicts, rule.max_drop if rule else None)
        failed = gate_failed(report.verdicts)
        doc["gate"] = {"baseline": str(settings.baseline) if baseline is not None else None,
                       "rules": [r.describe() for r in settings.gate_rules], "alpha": settings.gate_alpha,
                       "failed": failed, "suites": [v.to_dict() for v in report.verdicts],
                       **({"redraws": redraws} if redraws is not None else {})}
        # With a gate, failed cases are measurements: the gate (and errors) decide the exit status.
        if not settings.strict and session.exitstatus == pytest.ExitCode.TESTS_FAILED and self.other_failures == 0:
            session.exitstatus = pytest.ExitCode.OK
        if failed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        doc["run"]["exit_status"] = int(session.exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.state.is_worker or self.report is None:
            return
        for reporter in self.reporters:
            reporter.terminal_summary(self.report, terminalreporter)


def hand_written_result(item: pytest.Item, outcome: str, message: str | None,
                        models: tuple[str, ...]) -> CaseResult | None:
    """A CaseResult for a plain test that uses the `llm` fixture or carries the `llm_case` marker."""
    marker = item.get_closest_marker("llm_case")
    model = item_model(item, models)
    vision = item.stash.get(VISION, [])
    if marker is None and model is None and not vision:
        return None
    if model is None and vision:
        model = next((str(r["model"]) for r in vision if r.get("model")), NO_VISION_MODEL_ID)
    calls = item.stash.get(CALLS, [])
    suite = marker.kwargs.get("suite") if marker else None
    if not suite:
        module = getattr(item, "module", None)
        suite = module.__name__.rpartition(".")[2] if module else item.path.stem
    tags = list(marker.kwargs.get("tags", [])) if marker else []
    name = item.name.split("[", 1)[0]
    last = calls[-1] if calls else None
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    return CaseResult(
        suite=str(suite), case_id=name, model=model or (last.model if last else models[0]), outcome=outcome,
        kind="test", nodeid=item.nodeid, file=str(item.path.relative_to(item.config.rootpath))
        if item.path.is_relative_to(item.config.rootpath) else str(item.path),
        line=(item.reportinfo()[1] or 0) + 1, resolved_model=last.resolved_model if last else None,
        score=(1.0 if outcome == "passed" else 0.0) if outcome in ("passed", "failed") else None,
        answer=last.text if last else None, latency_s=total_latency(calls),
        prompt_tokens=sum(c.prompt_tokens or 0 for c in calls) if calls else None,
        completion_tokens=sum(c.completion_tokens or 0 for c in calls) if calls else None,
        cost_usd=sum(costs) if costs else None, cached=all(c.cached for c in calls) if calls else None,
        calls=len(calls), tags=tags, message=message, vision=list(vision),
        vision_judge=vision_summary(item.stash.get(VISION_CALLS, [])),
    )
