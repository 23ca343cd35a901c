"""Isolated execution of generated code.

Levels, strongest first (``--llm-sandbox``; ``auto`` picks the strongest that works here):

``bwrap``
    bubblewrap: a read-only view of the root filesystem with the project directory, home directories, ``/tmp``
    and ``/run`` hidden, the run's private storage as its work directory, ``/tmp`` and ``/dev/shm``, new
    pid/net/ipc/uts namespaces (no network at all, not even loopback or abstract unix sockets), a seccomp
    filter (no ``socket()``, io_uring, memfd, SysV shared memory, namespaces, mounts, keyrings or ptrace),
    ``--die-with-parent``. Run as root, the code additionally drops to an unprivileged uid of its own
    (``setpriv``) so that file permissions and ``RLIMIT_NPROC`` apply; run as a normal user, bwrap uses a user
    namespace instead (``--unshare-user --disable-userns``).
``unshare``
    util-linux ``unshare`` (net, pid, ipc, uts namespaces) plus the uid drop and the same seccomp filter, when
    bwrap is missing: the private storage covers ``/tmp``, ``/var/tmp``, ``/run/lock`` and ``/dev/shm``; the rest
    of the file system is visible read-only through permissions only.
``none``
    no isolation, only resource limits; never chosen automatically, only by an explicit
    ``--llm-sandbox=none``.

Every level applies resource limits in the child (address space, CPU seconds, processes, file size, open
files, no core dumps), runs in a new session with a minimal environment (no API keys or other secrets),
writes output to files rather than pipes (so a daemonised grandchild cannot hold the run open), and is
killed at a wall-clock timeout. As root, a work directory's storage is a tmpfs of ``Limits.disk_mb`` in a
mount namespace of its own that dies with this process (see :class:`_Storage`): nothing is written to the
host's disk or left behind. The level used is recorded in each result. The seccomp filter is in seccomp.py.

The security boundary is spread over a few modules, to be read side by side when reviewing an escape: this one
(the levels and the file-system view), workdir.py (the command line each level builds, the fork server's runs, the
deadline), storage.py (the private storage; the work directory's file handling, where no link is ever followed out
of it), uids.py (the uid lease and the reaping of every process a run left behind), limits.py, seccomp.py, and the
fork server (zygote.py, zygote_server.py). Every public name is importable from here, as before.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmeval.sandbox.limits import (
    HIDDEN_TMPFS_BYTES,
    LEVELS,
    SAFE_PATH,
    ZYGOTE_WORK,
    Limits,
    RunResult,
    SandboxUnavailable,
)
from pytest_llmeval.sandbox.seccomp import seccomp_program
from pytest_llmeval.sandbox.storage import _Storage, _sweep, discard_files
from pytest_llmeval.sandbox.uids import _UIDS, UID_BASE, UID_RANGE, UIDS_PER_PROCESS
from pytest_llmeval.sandbox.uids import _UidPool as _UidPool  # re-exported: the tests lease from pools of their own
from pytest_llmeval.sandbox.workdir import WorkDir, _mkdirs

if TYPE_CHECKING:
    from pytest_llmeval.sandbox.zygote import Zygote

# The names this module has always offered (its parts now live in limits, uids, storage and workdir).
__all__ = ["HIDDEN_TMPFS_BYTES", "LEVELS", "SAFE_PATH", "UIDS_PER_PROCESS", "UID_BASE", "UID_RANGE", "ZYGOTE_WORK",
           "Limits", "RunResult", "Sandbox", "SandboxUnavailable", "WorkDir", "discard_files"]

_PROBES: dict[str, str | None] = {}
_PROBE_LOCK = threading.Lock()


def _hidden_dirs(extra: Sequence[Path]) -> list[Path]:
    """Directories whose contents the code must not see (they may hold keys, .env files, other work)."""
    out = [Path("/root"), Path("/home"), Path("/tmp"), Path("/var/tmp"), Path("/run"), *extra]
    return [p for p in dict.fromkeys(p.resolve() for p in out) if p.exists()]


class Sandbox:
    """Runs commands on files in a private work directory, isolated at ``level``.

    ``python`` is the interpreter for Python code (default: the running one, so generated code sees the
    same installed packages, read-only). ``hide`` adds directories to hide (the pytest rootdir, say).
    ``fork_server``: at the bwrap level as root, run everything in one bwrap with a fork server in it (zygote.py),
    started on first use; None (the default): unless the environment has ``LLMEVAL_SANDBOX_FORK_SERVER=0``.
    """

    def __init__(self, level: str = "auto", *, python: str | None = None, hide: Sequence[Path] = (),
                 base_dir: Path | None = None, fork_server: bool | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown sandbox level {level!r}; expected one of {', '.join(LEVELS)}")
        self.python = python or sys.executable
        self.hide = list(hide)
        self.base_dir = base_dir
        self.level = self._choose(level)
        self.is_root = os.geteuid() == 0
        self._bwrap_mounts: tuple[list[Path], list[Path]] | None = None
        if fork_server is None:
            fork_server = os.environ.get("LLMEVAL_SANDBOX_FORK_SERVER", "1") != "0"
        # The server's storage lives under /run, which bwrap hides behind a tmpfs of its own.
        self._use_zygote = fork_server and self.level == "bwrap" and self.is_root and os.path.isdir("/run")
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        _sweep(base_dir)
        _sweep(None)  # collected files always go to the default temporary directory

    # ---------------------------------------------------------------------------------------- levels

    def _choose(self, level: str) -> str:
        if level == "none":
            return "none"
        wanted = ["bwrap", "unshare"] if level == "auto" else [level]
        problems = []
        for candidate in wanted:
            problem = _probe(candidate)
            if problem is None:
                return candidate
            problems.append(f"{candidate}: {problem}")
        raise SandboxUnavailable(
            "cannot isolate generated code (" + "; ".join(problems) + "). Install bubblewrap "
            "(apt-get install bubblewrap), or accept the risk explicitly with --llm-sandbox=none.")

    def bwrap_mounts(self, tmp: Sequence[str] = ("--perms", "1777", "--tmpfs", "/tmp")) -> list[str]:
        """The file-system view: / read-only, private dirs hidden, interpreter bound back; ``tmp`` mounts /tmp.

        The hidden directories get small tmpfs mounts (only mount points for what is bound back go there, and
        they are not writable by the sandbox uid): an unsized tmpfs could take half the host's memory.
        """
        if self._bwrap_mounts is None:
            hidden = _hidden_dirs(self.hide)
            interpreter_dirs = (sys.prefix, sys.base_prefix, Path(self.python).resolve().parent.parent)
            back = [p for p in dict.fromkeys(Path(p).resolve() for p in interpreter_dirs)
                    if any(p.is_relative_to(h) for h in hidden)]
            self._bwrap_mounts = (hidden, back)
        hidden, back = self._bwrap_mounts
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for h in hidden:
            args += list(tmp) if h == Path("/tmp") else ["--perms", "0755", "--size", str(HIDDEN_TMPFS_BYTES),
                                                          "--tmpfs", str(h)]
        for needed in back:
            args += _mkdirs(needed) + ["--ro-bind", str(needed), str(needed)]
        return args

    @property
    def uses_fork_server(self) -> bool:
        """Whether runs go through the fork server (as root at the bwrap level, unless turned off)."""
        return bool(getattr(self, "_use_zygote", False))

    def fork_server(self) -> Zygote | None:
        """This sandbox's fork server, started on first use (None: runs take the one-bwrap-per-run path)."""
        if not getattr(self, "_use_zygote", False):  # _probe's sandboxes have no __init__
            return None
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                from pytest_llmeval.sandbox.zygote import ZygoteGone, start

                args = [*self.bwrap_mounts(("--perms", "0755", "--size", "65536", "--tmpfs", "/tmp")),
                        "--remount-ro", "/dev", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                        "--die-with-parent", "--new-session", "--cap-add", "ALL"]
                try:
                    self._zygote = start(self.python, args, seccomp_program())
                except ZygoteGone:
                    self._use_zygote = False  # the classic path, which isolates as well, only slower
                    return None
                weakref.finalize(self, self._zygote.close)
            return self._zygote

    # ------------------------------------------------------------------------------------------ runs

    @contextmanager
    def workdir(self, limits: Limits | None = None) -> Iterator[WorkDir]:
        """A private work directory for several runs (compile, then run); removed afterwards.

        Its storage (work directory, ``/tmp`` and ``/dev/shm`` together) holds at most ``limits.disk_mb``
        (default :class:`Limits`), and the output files two files of ``limits.max_file_mb``: fixed here for all
        its runs.
        """
        with _UIDS.take() as uid:
            storage = _Storage(self, uid, limits or Limits())
            try:
                yield WorkDir(self, storage, uid)
            finally:
                storage.close()

    def run(self, cmd: Sequence[str], files: dict[str, str | bytes] | None = None, *,
            limits: Limits | None = None, stdin: str | None = None,
            collect: Sequence[str] = ()) -> RunResult:
        """One command in a fresh work directory holding ``files``; ``collect`` names files to keep."""
        with self.workdir(limits) as wd:
            for name, content in (files or {}).items():
                wd.write(name, content)
            return wd.run(cmd, limits=limits, stdin=stdin, collect=collect)

    def run_python(self, code: str, *, limits: Limits | None = None, stdin: str | None = None,
                   collect: Sequence[str] = ()) -> RunResult:
        return self.run([self.python, "-I", "main.py"], {"main.py": code}, limits=limits, stdin=stdin,
                        collect=collect)


def _probe(level: str) -> str | None:
    """Why ``level`` does not work here (None: it works). Cached per process."""
    with _PROBE_LOCK:
        if level not in _PROBES:
            _PROBES[level] = _probe_uncached(level)
        return _PROBES[level]


def _probe_uncached(level: str) -> str | None:
    tool = "bwrap" if level == "bwrap" else "unshare"
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    if shutil.which("prlimit") is None:
        return "prlimit (util-linux) is not installed"
    if os.geteuid() == 0:  # the uid drop, and the private storage's namespace
        for needed in ("setpriv", "unshare", "nsenter", "mount"):
            if shutil.which(needed) is None:
                return f"{needed} (util-linux) is not installed"
    sandbox = Sandbox.__new__(Sandbox)
    sandbox.python, sandbox.hide, sandbox.base_dir = sys.executable, [], None
    sandbox.level, sandbox.is_root, sandbox._bwrap_mounts = level, os.geteuid() == 0, None
    try:
        with sandbox.workdir() as wd:
            result = wd.run(["/bin/sh", "-c", "echo ok"], limits=Limits(timeout_s=10))
    except (OSError, SandboxUnavailable) as exc:
        return str(exc)
    if result.stdout.strip() != "ok":
        return (result.stderr.strip() or result.reason or "probe failed").splitlines()[-1]
    return None
