"""The run state: the services one process of a run shares, kept in ``config.stash[STATE]``.

Items (run/items.py), fixtures (run/fixtures.py) and the run's plugins (collection, loop, session) reach the
settings, the check registry, the model runner, the prefetcher, the sandbox and the retrieval indexes through
it. It holds no pytest hooks: those live in the plugin objects that plugin.py registers, each owning one step.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from pytest_llmeval.config import settings as settings_mod
from pytest_llmeval.core.checks import CheckRegistry
from pytest_llmeval.core.memory import gc_thaw
from pytest_llmeval.core.targets import TargetEnv, TargetRegistry, TargetSpec
from pytest_llmeval.providers.base import ProviderRegistry
from pytest_llmeval.providers.runner import Completion, ModelRunner


class RunState:
    """This process's share of the run: settings resolved once, registries filled once, services made lazily."""

    def __init__(self, config: pytest.Config) -> None:
        gc_thaw()  # an earlier session in this process (pytester, an IDE) froze its objects: collectable again
        self.config = config
        self.settings = settings_mod.resolve(config)
        self.registry = CheckRegistry()
        config.hook.pytest_llmeval_register_checks(register=self.registry.register)
        self.providers = ProviderRegistry()
        config.hook.pytest_llmeval_register_providers(register=self.providers.register)
        self.targets = TargetRegistry()
        config.hook.pytest_llmeval_register_targets(register=self.targets.register)
        self.default_target = self._default_target()
        self.is_worker = hasattr(config, "workerinput")
        workerinput = getattr(config, "workerinput", {})
        self.journal_dir = self.settings.results_path.parent / "journal"
        self._run: dict[str, Any] | None = workerinput.get("llmeval_run")
        self.runner = ModelRunner(self.settings, providers=self.providers,
                                  workers=int(workerinput.get("workercount", 1) or 1))
        if self._run is not None:
            self._use_run(self._run)
        from pytest_llmeval.providers.callserver import CallClient, ServerAddress

        address = ServerAddress.from_dict(workerinput.get("llmeval_calls"))
        if address is not None:  # an xdist worker: litellm's calls go through the controller (callserver.py)
            self.runner.remote = CallClient(address)
        self._call_server: Any = None
        self.prefetcher: Any = None
        if self.settings.concurrency > 1:
            from pytest_llmeval.providers.prefetch import Prefetcher

            # The pool's threads import what their calls need as they go: core/astguard.py makes pytest's assertion
            # rewriting safe in threads. Importing every module up front, as before, cost each xdist worker
            # ~0.25 s of CPU at start-up, eight times over on `-n 8`.
            self.prefetcher = Prefetcher(self.call, self.settings.concurrency)
        from pytest_llmeval.targets.runner import TargetRunner

        self.target_runner = TargetRunner(self.runner.cache, self.settings.cache_mode)
        self._journal: Any = None
        self._done: dict[str, dict[str, Any]] | None = None
        self.answers: dict[str, list[Completion]] = {}  # nodeid -> its answers, found in the cache at collection
        self.unusable: dict[str, str] = {}  # model -> why it cannot be used (xdist workers)
        self.order: list[pytest.Item] = []  # this process's run order (set when the loop starts)
        self.position: dict[str, int] = {}
        self.session: pytest.Session | None = None
        self._sandbox: Any = None
        self._sandbox_error: Exception | None = None
        self._indexes: dict[tuple[Any, ...], Any] = {}
        self.tool_defs: dict[Any, Any] = {}  # an agent suite's tools, made once (run/agent.py)
        self.agent_items: dict[str, Any] = {}  # nodeid -> agent or conversation item whose draws the prefetcher plans
        from pytest_llmeval.robustness import context

        context.HYPOTHESIS_DIR[:] = [self.hypothesis_dir]  # where llm_settings' database goes (read at first use)
        context.EXPLORE[:] = [self.settings.explore]  # whether llm_settings draws fresh examples and saves failures

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

            shard = self.settings.shard  # each shard resumes its own run, whoever else shares the directory
            self._run = start_run(self.journal_dir, self.settings.resume,
                                  f"latest-shard-{shard[0]}of{shard[1]}" if shard else "latest")
            self._use_run(self._run)
        return self._run

    @property
    def run_decided(self) -> dict[str, Any] | None:
        """The run id and resumed runs if decided (None before, and in a --collect-only run)."""
        return self._run

    def _use_run(self, run: dict[str, Any]) -> None:
        self.runner.use_run_dir(self.settings.results_path.parent / "run" / str(run["run_id"]))

    def finished_before(self) -> dict[str, dict[str, Any]]:
        """With --llm-resume: nodeid -> result of the cases the resumed runs finished."""
        if self._done is None:
            from pytest_llmeval.results.journal import finished

            self._done = finished(self.journal_dir, list(self.run["resumed_from"])) if self.settings.resume else {}
        return self._done

    def journal_append(self, data: dict[str, Any]) -> str | None:
        """Journal a finished case; its JSON text (None with --collect-only)."""
        if self.config.option.collectonly:
            return None
        if self._journal is None:
            from pytest_llmeval.results.journal import Journal

            writer = str(getattr(self.config, "workerinput", {}).get("workerid", "main"))
            self._journal = Journal(self.journal_dir, str(self.run["run_id"]), writer)
        return str(self._journal.append(data))

    def serve_calls(self) -> dict[str, str]:
        """In the xdist controller: start the call server that makes the workers' litellm calls (once), and say
        where it is, for ``workerinput``."""
        if self._call_server is None:
            from pytest_llmeval.providers.callserver import CallServer

            self._call_server = CallServer(self.runner)
            if self._calls_expected():
                import threading

                threading.Thread(target=self._warm_models, name="llmeval-warm", daemon=True).start()
        return dict(self._call_server.address.to_dict())

    def _calls_expected(self) -> bool:
        """Whether this run will surely call a model: its cache is off or refreshed, or holds nothing yet. Then
        the controller gets litellm ready while the workers start, instead of on their first request (with all of
        them waiting ~3 s); a rerun that may be answered from the cache does not pay for the import."""
        if self.settings.cache_mode in ("off", "refresh"):
            return True
        return not (self.settings.cache_dir / "cache.db").exists()

    def _warm_models(self) -> None:
        """In the controller, in a thread: check the run's litellm models now (which imports litellm), so the
        workers' first requests find it ready."""
        for model in (*self.settings.models, self.settings.judge_model):
            try:
                if model and not self.runner.is_offline(model):
                    self.runner.check_model(model)
            except Exception:  # noqa: BLE001 - the workers' own requests report any problem, as before
                return

    def close(self) -> None:
        """The end of this process's run: no more calls, the journal flushed, the runner's resources freed."""
        if self._call_server is not None:
            self._call_server.close()
        if self.prefetcher is not None:
            self.prefetcher.close()
        if self._journal is not None:
            self._journal.close()
        self.target_runner.close()
        self.runner.close()

    # ------------------------------------------------------------------------------------ targets

    def _default_target(self) -> TargetSpec | None:
        """``--llm-target`` validated (None: the --llm model answers the suites that name no target)."""
        value = self.settings.target
        if not value:
            return None
        from pytest_llmeval.cases.targets import parse_target

        spec, problems = parse_target(value, (), self.targets, lambda loc: None, None)
        if problems:
            raise pytest.UsageError(f"--llm-target={value}: {problems[0][1]}")
        return None if spec is None or spec.is_model else spec

    def target_env(self, suite_path: Path, fixture: Any = None, has_fixture: Any = None) -> TargetEnv:
        """What a target of the suite at ``suite_path`` is built (or checked) with."""
        worker = str(getattr(self.config, "workerinput", {}).get("workerid", "main"))
        return TargetEnv(rootdir=Path(self.config.rootpath), suite_dir=suite_path.parent,
                         state_dir=self.settings.results_path.parent, worker=worker, fixture=fixture,
                         has_fixture=has_fixture, complete=self.runner.complete)

    def call(self, **call: Any) -> Any:
        """One planned call of the prefetch pool: an application target's (``target`` and ``request``), else a
        model's (runner.complete's arguments)."""
        if "target" in call:
            return self.target_runner.planned(call["target"], call["request"])
        if "agent" in call:  # one draw's whole agent run (run/agent.py)
            return self.agent_items[call["agent"]].agent_draw(self, call["sample"])
        if "conversation" in call:  # one draw's whole conversation (run/conversation.py)
            return self.agent_items[call["conversation"]].conversation_draw(self, call["sample"])
        return self.runner.complete(**call)

    # ------------------------------------------------------------------------------------ answers and prefetch

    def answered(self, item: pytest.Item) -> list[Completion] | None:
        """The item's answers, looked up in the exact cache at collection (once: they are handed over)."""
        return self.answers.pop(item.nodeid, None) if self.answers else None

    def prefetch_from(self, item: pytest.Item) -> None:
        """Make sure the calls of ``item`` and of the items after it (in this process's run order) are issued."""
        session = self.session
        if self.prefetcher is None or (session is not None and (session.shouldfail or session.shouldstop)):
            return
        self.prefetcher.fill([item, *self._upcoming(item)])

    def _upcoming(self, item: pytest.Item) -> list[pytest.Item]:
        lookahead = 2 * self.prefetcher.window + 8
        interactor = self._interactor
        if interactor is not None:  # an xdist worker: the items it has been sent and not yet run
            items = self.session.items if self.session is not None else []
            with interactor.torun.lock() as queue:
                indices = [interactor.nextitem_index, *list(queue)[:lookahead]]
            return [items[i] for i in indices if isinstance(i, int) and 0 <= i < len(items)]
        position = self.position.get(item.nodeid)
        if position is None:
            return []
        # Only items that plan model calls (case items); the prefetcher skips the others anyway.
        return [i for i in self.order[position + 1:position + 1 + lookahead] if hasattr(i, "plan_calls")]

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

    # ------------------------------------------------------------------------------------ services

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


STATE: pytest.StashKey[RunState] = pytest.StashKey()


def get_state(config: pytest.Config) -> RunState:
    """This process's run state (set in ``pytest_configure``)."""
    return config.stash[STATE]
