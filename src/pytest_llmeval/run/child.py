"""A child ``python -m pytest`` process of a run, with the run's own arguments: the recording passes of
``--llm-batch`` (run/batch.py) and the gate's redraw looks (run/redraw.py) both start theirs here.

The child repeats the run's selection and options (``-k``, ``-m``, the model, the cache, ``--llm-split``,
shards...) but never what would make it a second run in the first one's place:

* xdist: ``-n``/``--numprocesses`` (``-n 2``, ``-n2``, ``-nauto``), ``--dist``, ``--maxprocesses``, ``--tx``,
  ``--max-worker-restart`` and looponfail's ``-f`` are left out, and ``-n0`` is added when xdist is installed (it
  also overrides an ini file's ``addopts = -n 2``, which ``-p no:xdist`` would turn into a usage error);
* the run's own files: ``--junitxml``, ``--basetemp``, ``--llm-results`` (and ``--result-log``) are left out and
  set to files in the child's folder (an ini file's ``--junitxml`` too), ``--llm-resume`` is left out;
* the same filter applies to ``PYTEST_ADDOPTS``; ``GITHUB_STEP_SUMMARY``, ``GITHUB_ACTIONS`` and the
  ``PYTEST_XDIST_*`` variables of an xdist worker are removed from its environment;
* ``-x``/``--maxfail`` would stop it early: every selected item must run, so ``--maxfail`` is set out of reach.

Its output goes to ``output.txt`` in its folder, never to the run's terminal.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["ChildResult", "child_command", "child_env", "kept_args", "run_child"]

#: Options (with a value) a child never repeats: xdist's (it runs alone) and the files it would overwrite.
DROP_WITH_VALUE = ("-n", "--numprocesses", "--dist", "--maxprocesses", "--tx", "--max-worker-restart", "--basetemp",
                   "--junitxml", "--junit-xml", "--llm-results", "--result-log")
#: Flags a child never repeats.
DROP_FLAGS = ("--llm-resume", "-f", "--looponfail")
#: Environment variables a child never sees (by name, or by prefix for those ending in ``*``).
DROP_ENV = ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS", "PYTEST_XDIST_*")
NO_MAXFAIL = "--maxfail=2000000000"


def kept_args(args: Iterable[str], drop: Iterable[str] = ()) -> list[str]:
    """``args`` without the options a child must not repeat (:data:`DROP_WITH_VALUE`, :data:`DROP_FLAGS`, and
    ``drop``: more options with a value, such as ``--llm-repeat`` for a child that sets its own)."""
    with_value = (*DROP_WITH_VALUE, *drop)
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in with_value:
            skip = "=" not in a  # "--dist load": the value is the next argument; "--dist=load": it is not
            continue
        if name in DROP_FLAGS or a.startswith("-n") and not a.startswith("--") and a[2:].isalnum():
            continue  # -n2, -nauto
        out.append(a)
    return out


def child_env(extra: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment for a child: without :data:`DROP_ENV`, ``PYTEST_ADDOPTS`` filtered as the
    arguments are, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _dropped_env(k)}
    if env.get("PYTEST_ADDOPTS"):
        env["PYTEST_ADDOPTS"] = shlex.join(kept_args(shlex.split(env["PYTEST_ADDOPTS"]), drop))
    env.update(extra or {})
    return env


def _dropped_env(name: str) -> bool:
    return any(name.startswith(d[:-1]) if d.endswith("*") else name == d for d in DROP_ENV)


def child_command(config: pytest.Config, folder: Path, extra: Iterable[str] = (), drop: Iterable[str] = ()
                  ) -> list[str]:
    """``python -m pytest`` with the run's arguments kept, its own results, basetemp (and junit XML when the run
    writes one) in ``folder``, xdist off, then ``extra``."""
    args = [sys.executable, "-m", "pytest", *kept_args(config.invocation_params.args, drop)]
    if config.pluginmanager.hasplugin("xdist"):
        args.append("-n0")
    args += [f"--llm-results={folder / 'results.json'}", f"--basetemp={folder / 'basetemp'}", NO_MAXFAIL]
    if getattr(config.option, "xmlpath", None):  # maybe from the ini file's addopts: overridden, not repeated
        args.append(f"--junitxml={folder / 'junit.xml'}")
    return [*args, *extra]


@dataclass(frozen=True)
class ChildResult:
    """A finished child: its exit status and where its output is."""

    returncode: int
    output: Path

    def tail(self, chars: int = 2000) -> str:
        """The end of its output (stdout and stderr together)."""
        try:
            return self.output.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def last_line(self) -> str:
        lines = self.tail().strip().splitlines()
        return lines[-1] if lines else "no output"


def run_child(config: pytest.Config, folder: Path, extra: Iterable[str] = (), env: Mapping[str, str] | None = None,
              drop: Iterable[str] = ()) -> ChildResult:
    """Run the child (:func:`child_command`) in the run's invocation directory, with ``env`` added to its
    environment (:func:`child_env`), its output in ``folder / "output.txt"``; wait for it."""
    drop = tuple(drop)
    output = folder / "output.txt"
    with open(output, "wb") as log:
        rc = subprocess.call(child_command(config, folder, extra, drop), cwd=config.invocation_params.dir,
                             env=child_env(env, drop), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return ChildResult(rc, output)
