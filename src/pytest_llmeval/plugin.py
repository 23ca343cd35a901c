"""The pytest11 entry point: options, ini keys and markers declared, the run's plugins wired. Nothing else.

The run itself lives in run/ (state, collection, loop, session, fixtures), the built-in checks, providers and
reporters in their packages, each registered here through the same hooks a third party uses (hookspecs.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmeval.config.options import GROUP, OPTIONS
from pytest_llmeval.core import astguard

# Before any thread of a run can format a traceback: CPython's AST converters are not thread-safe (astguard.py).
astguard.install()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_llmeval import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every option and ini key, from the one table (config/options.py) that also resolves and documents them."""
    group = parser.getgroup(*GROUP)
    for option in OPTIONS:
        if option.flag:
            group.addoption(option.flag, **option.addoption_kwargs())
        if option.ini:
            parser.addini(option.ini, **option.addini_kwargs())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llmeval: an item graded by pytest-llmeval (added automatically)")
    config.addinivalue_line(
        "markers",
        "llm_case(suite=None, tags=(), split='dev'): count this hand-written test in the llmeval aggregates under "
        "`suite` (default: the module name); split='test' puts it in the holdout (runs only with --llm-split test)",
    )
    config.addinivalue_line("markers", "slow: a slow evaluation (added automatically to items with vision checks; "
                            "deselect with -m 'not slow')")
    config.addinivalue_line("markers", "vision: an item that asks a vision model about an image (added automatically)")
    config.addinivalue_line(
        "markers",
        "vision_judge(question, expect='yes', file=None, min_size=16, min_detail=0.002, reference=None, "
        "max_distance=10, model=None): a yes/no question the `vision_judge` fixture asks a vision model about an "
        "image (repeat the marker for several questions); marks the test slow and vision",
    )
    config.addinivalue_line("markers", "robustness: a case's perturbed variants graded for consistency (added "
                            "automatically to the `<id>:robust` items of cases with a robustness block)")
    if getattr(config.option, "help", False) or getattr(config.option, "version", False):
        return  # `pytest --help` needs the options (declared above), not the run state: keep it fast
    from pytest_llmeval.checks import builtin as builtin_checks
    from pytest_llmeval.providers import builtin as builtin_providers
    from pytest_llmeval.report import builtin as builtin_reporters
    from pytest_llmeval.run import fixtures
    from pytest_llmeval.run.collection import CollectionPlugin
    from pytest_llmeval.run.loop import RunLoopPlugin
    from pytest_llmeval.run.session import ResultsPlugin
    from pytest_llmeval.run.state import STATE, RunState
    from pytest_llmeval.targets import builtin as builtin_targets

    pm = config.pluginmanager
    # The built-in backends register through the same hooks as a conftest's or a plugin's (hookspecs.py).
    pm.register(builtin_checks, "llmeval-builtin-checks")
    pm.register(builtin_reporters, "llmeval-builtin-reporters")
    pm.register(builtin_providers, "llmeval-builtin-providers")
    pm.register(builtin_targets, "llmeval-builtin-targets")
    state = RunState(config)
    config.stash[STATE] = state
    collection = CollectionPlugin(state)
    for name, plugin in (("llmeval-fixtures", fixtures), ("llmeval-collection", collection),
                         ("llmeval-loop", RunLoopPlugin(state)), ("llmeval-session", ResultsPlugin(state, collection))):
        pm.register(plugin, name)
    if pm.hasplugin("xdist") and not hasattr(config, "workerinput"):
        pm.register(_XdistController(state), "llmeval-xdist")
    # --llm-batch (run/batch.py): the batch phase before the run, its recording pass, or the workers' refusals
    from pytest_llmeval.run.batch import install as install_batch

    batch = install_batch(state)
    if batch is not None:
        pm.register(batch, "llmeval-batch")


_RUN_PLUGINS = ("llmeval-fixtures", "llmeval-collection", "llmeval-loop", "llmeval-session", "llmeval-xdist",
                "llmeval-batch")


class _XdistController:
    """xdist-only hooks (registered only when xdist is present), pytest-randomly style: the controller decides
    the run id once and hands it to every worker through workerinput, with the address of the call server that
    makes the workers' litellm calls."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        if not self.state.config.option.collectonly:
            node.workerinput["llmeval_run"] = self.state.run
            # The workers' litellm calls are made here, once imported (providers/callserver.py); where no Unix
            # socket can be made (Windows), each worker calls litellm itself, as before.
            try:
                node.workerinput["llmeval_calls"] = self.state.serve_calls()
            except (OSError, ValueError):  # ValueError: no AF_UNIX family on this platform
                pass

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """With --llm-shard: the workers collected; their fingerprint of the whole selection goes to results.json."""
        collected = getattr(node, "workeroutput", {}).get("llmeval_collected")
        plugin = self.state.config.pluginmanager.get_plugin("llmeval-collection")
        if collected is not None and plugin is not None and plugin.collected is None:
            plugin.collected = collected


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's plugin objects go (a long-lived process, pytester or an IDE, configures many runs)."""
    from pytest_llmeval.run.state import STATE

    if config.stash.get(STATE, None) is not None:
        for name in _RUN_PLUGINS:
            if config.pluginmanager.has_plugin(name):
                config.pluginmanager.unregister(name=name)
        del config.stash[STATE]
