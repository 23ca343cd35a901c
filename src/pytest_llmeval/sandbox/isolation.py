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

Why this module is long: it is the security boundary. The command line each level builds, the uid lease, the
private storage, the work directory's file handling (no symlink is ever followed out of it) and the reaping of
every process the code left behind hold one set of guarantees together; reviewing an escape means reading them
side by side, so they stay in one file.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import itertools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.sandbox.seccomp import SECCOMP_TRAMPOLINE, seccomp_program

if TYPE_CHECKING:
    from pytest_llmeval.sandbox.zygote import Zygote

LEVELS = ("auto", "bwrap", "unshare", "none")
UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_RANGE - 1, each leased to one run at a time
UID_RANGE = 2048
UIDS_PER_PROCESS = 64  # where a worker starts looking for a free uid
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
HIDDEN_TMPFS_BYTES = 1 << 20  # the tmpfs over each hidden directory: mount points only
ZYGOTE_WORK = "/run/pytest-llmeval-box/work"  # the work directory inside the fork server (zygote_server.WORK)


class SandboxUnavailable(InfrastructureError):
    """No isolation level that was asked for (or any, for ``auto``) works on this machine."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10  # RLIMIT_CPU soft limit (the hard limit is one second more)
    memory_mb: int = 1024  # RLIMIT_AS
    max_output_bytes: int = 1 << 20  # of stdout and stderr each, as kept
    max_file_mb: int = 16  # RLIMIT_FSIZE: any one file written, stdout included
    max_processes: int = 32  # RLIMIT_NPROC for the sandbox uid (only with a uid drop)
    max_open_files: int = 256
    # The run's writable storage: work directory, /tmp, /dev/shm and the captured output together (a tmpfs,
    # so it is host memory too: a run's worst case is about memory_mb per process plus disk_mb).
    disk_mb: int = 256

    def describe_memory(self) -> str:
        return f"{self.memory_mb / 1024:g} GiB" if self.memory_mb >= 1024 else f"{self.memory_mb} MiB"


@dataclass
class RunResult:
    """What one sandboxed command did."""

    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    level: str
    timed_out: bool = False
    reason: str | None = None  # why it did not exit 0 normally: "timed out after 2 s", "killed: memory ..."
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


class _UidPool:
    """Sandbox uids leased machine-wide: no two concurrent runs share one, whichever process they are in.

    RLIMIT_NPROC counts per uid and the reaper kills every process of its uid after a run, so a uid must be
    exclusive to one run, across threads, xdist workers and separate pytest sessions (a pytester session
    inside a test run, two CI jobs on one machine). Each lease is an exclusive ``flock`` on a file named after
    the uid; the kernel drops it when the process dies, so a crashed run never leaks its uid.
    """

    def __init__(self, base: int = UID_BASE, size: int = UID_RANGE, lock_dir: Path | None = None) -> None:
        self.base, self.size = base, size
        # Root leases real uids: one directory for the whole machine, whatever TMPDIR a session has.
        default = Path("/tmp/pytest-llmeval-uids") if os.geteuid() == 0 else \
            Path(tempfile.gettempdir()) / f"pytest-llmeval-uids-{os.geteuid()}"
        self.lock_dir = lock_dir or default
        self._lock = threading.Lock()
        self._held: set[int] = set()

    @contextmanager
    def take(self) -> Iterator[int]:
        fd, uid = self._acquire()
        try:
            if os.geteuid() == 0:
                _reap_uid(uid)  # whatever a crashed holder of this uid left behind
            yield uid
        finally:
            with self._lock:
                self._held.discard(uid)
            os.close(fd)  # releases the flock

    def _acquire(self) -> tuple[int, int]:
        self.lock_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        start = (UIDS_PER_PROCESS * _worker_index() + os.getpid()) % self.size  # spread the search out
        with self._lock:
            for i in range(self.size):
                uid = self.base + (start + i) % self.size
                if uid in self._held:
                    continue
                fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held.add(uid)
                return fd, uid
        raise SandboxUnavailable(f"all {self.size} sandbox uids ({self.base}..{self.base + self.size - 1}) "
                                 "are in use by concurrent runs on this machine")


_UIDS = _UidPool()
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


class _Storage:
    """Where one work directory's writable places live: ``work``, ``tmp``, ``shm`` and ``out`` (the output files).

    Run as root with a namespace level, they are one tmpfs of ``disk_mb`` (and a proportional number of inodes)
    mounted in a private mount namespace that a helper process holds open: the sandbox's runs enter that
    namespace, the host reaches the files through ``/proc/<helper>/root``, and nothing of it exists in the host's
    file systems. The helper blocks reading a pipe from us and exits when that pipe closes, so when our process
    dies, even by SIGKILL, the kernel closes the pipe, the helper exits and the tmpfs (its pages counted as host
    shared memory until then) is freed: no leftover to sweep. Otherwise (``none``, or bwrap unprivileged, where
    no mount is possible) they are a host directory named after our pid and start time, removed when the work
    directory closes and swept by a later session if we were killed.
    """

    def __init__(self, sandbox: Sandbox, uid: int, limits: Limits) -> None:
        self.helper: subprocess.Popen[bytes] | None = None
        self.zygote = sandbox.fork_server()
        self.box = 0
        if self.zygote is not None:  # a tmpfs in the fork server's mount namespace (zygote_server.open_box)
            try:
                self.box, self.host = self.zygote.open_box(limits.disk_mb, limits.max_file_mb, uid)
            except OSError as exc:
                raise SandboxUnavailable(str(exc)) from None
            self.inside = Path(ZYGOTE_WORK).parent
        elif sandbox.is_root and sandbox.level != "none":
            self._start_helper(sandbox, uid, limits.disk_mb, limits.max_file_mb)
        else:
            self.host = Path(tempfile.mkdtemp(prefix=f"llmeval-sbx-{_process_tag()}-", dir=sandbox.base_dir))
            self.inside = self.host
            for name, mode in (("out", 0o700), ("work", 0o755), ("tmp", 0o1777), ("shm", 0o1777)):
                (self.host / name).mkdir()
                os.chmod(self.host / name, mode)
        self.work = self.inside / "work"

    def _start_helper(self, sandbox: Sandbox, uid: int, disk_mb: int, max_file_mb: int) -> None:
        box = _box_mount_point()
        inodes = max(1024, 64 * disk_mb)  # ~1 KiB of kernel memory each; gcc and Python need a few dozen
        # One mount(8) does both tmpfs mounts from an fstab (each exec costs ~1 ms), handed over in a memfd:
        # libmount refuses a pipe, and a file would be one more thing to clean up. The output files get a tmpfs
        # of their own, room for two files at the file size limit: a program that fills its storage still gets
        # its last words (and its traceback) out.
        tables = [f"pytest-llmeval {box} tmpfs size={disk_mb}m,nr_inodes={inodes},mode=0755 0 0\n"
                  f"pytest-llmeval {box}/out tmpfs size={2 * max_file_mb + 1}m,nr_inodes=16,mode=0700,"
                  "X-mount.mkdir=0700 0 0\n"]
        script = "set -e\nmount -a -T /dev/fd/$1\n"
        if sandbox.level == "unshare":
            # The unshare level has no mount setup of its own: the helper's namespace puts the box's tmp and
            # shm over the host's world-writable directories (those of a usual system), for its runs only.
            over = [d for d in ("/tmp", "/var/tmp", "/run/lock") if os.path.isdir(d) and not box.is_relative_to(d)]
            tables.append("".join(f"{box}/tmp {d} none bind 0 0\n" for d in over) +
                          f"{box}/shm /dev/shm none bind 0 0\n")
            script += 'mkdir -m 1777 "$3/tmp" "$3/shm"\nmount -a -T /dev/fd/$2\n'
        script += "echo ready\nexec cat >/dev/null\n"
        fds = []
        try:
            for table in tables:
                fds.append(os.memfd_create("llmeval-fstab", os.MFD_CLOEXEC))
                os.write(fds[-1], table.encode())
            self.helper = subprocess.Popen(  # noqa: S603 - fixed command
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh",
                 *(str(fd) for fd in fds), *([] if len(fds) > 1 else [""]), str(box)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                close_fds=True, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert self.helper.stdout is not None and self.helper.stderr is not None
        if self.helper.stdout.readline() != b"ready\n":
            why = self.helper.stderr.read().decode(errors="replace").strip()
            self.close()
            raise SandboxUnavailable(f"cannot make the sandbox's private storage: {why or 'helper failed'}")
        self.inside = box
        self.host = Path(f"/proc/{self.helper.pid}/root") / box.relative_to("/")
        for name, mode in (("tmp", 0o1777), ("shm", 0o1777), ("work", 0o700)):
            path = self.host / name
            path.mkdir(exist_ok=name != "work")
            os.chmod(path, mode)  # mkdir's mode goes through the umask
        os.chown(self.host / "work", uid, uid)

    def enter(self) -> list[str]:
        """The command prefix that runs in this storage's mount namespace."""
        return [] if self.helper is None else ["nsenter", f"--mount=/proc/{self.helper.pid}/ns/mnt"]

    def close(self) -> None:
        if self.zygote is not None:
            try:
                self.zygote.close_box(self.box)
            except OSError:
                pass  # the server is gone, and its boxes with it
            return
        if self.helper is None:
            shutil.rmtree(self.host, ignore_errors=True)
            return
        for pipe in (self.helper.stdin, self.helper.stdout, self.helper.stderr):
            if pipe is not None:
                pipe.close()
        try:
            self.helper.wait(5)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()


class WorkDir:
    """A sandbox work directory: write files into it and run commands in it.

    ``path`` is the directory as the sandboxed code sees it (its working directory and ``HOME``).
    """

    def __init__(self, sandbox: Sandbox, storage: _Storage, uid: int) -> None:
        self.sandbox = sandbox
        self.storage = storage
        self.path = storage.work
        self.uid = uid
        self._runs = 0
        self._chown = sandbox.is_root and sandbox.level != "none"
        if self._chown and storage.helper is None and storage.zygote is None:
            os.chown(storage.host / "work", uid, uid)

    def write(self, name: str, content: str | bytes) -> Path:
        """Write a file into the work directory (never through a link the code may have planted there)."""
        data = content.encode() if isinstance(content, str) else content
        try:
            fd = _open_beneath(self.storage.host / "work", name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                               make_dirs_for=self.uid if self._chown else -1)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise ValueError(f"file name {name!r} leaves the work directory (through {exc.strerror})") from None
            raise
        try:
            if self._chown:
                os.fchown(fd, self.uid, self.uid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return self.path / name

    def _command(self, cmd: Sequence[str], limits: Limits, seccomp_fd: int | None) -> list[str]:
        sb, w, uid = self.sandbox, str(self.path), str(self.uid)
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--inh-caps=-all", "--bounding-set=-all", "--"]
        if sb.level == "none":
            return list(cmd)
        enter = self.storage.enter()
        if sb.level == "unshare":
            if enter:
                enter.append(f"--wdns={w}")
            # unshare has no --die-with-parent: the parent-death signal, kept across exec, kills it with us,
            # and --kill-child takes the namespace's processes with it.
            base = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--net", "--pid", "--ipc", "--uts",
                    "--fork", "--kill-child", "--mount-proc"]
            # A uid change clears the parent-death signal that --kill-child gave the namespace's first process;
            # setpriv sets it again after the drop, so that killing us still ends the run.
            drop[-1:] = ["--pdeathsig", "KILL", "--"]
            # The filter goes on before the uid drop: setpriv still has the capabilities to execute what only
            # root may reach (the interpreter in /root/.pyenv, say) and the code then runs under the filter.
            # Unprivileged, the namespaces need a user namespace of their own.
            return enter + base + (self._filtered(drop + list(cmd)) if sb.is_root else
                                   ["--user", "--map-root-user", *self._filtered(cmd)])
        host = self.storage.inside
        if self.storage.helper is not None:
            tmp = ["--bind", str(host / "tmp"), "/tmp"]
            shm = ["--bind", str(host / "shm"), "/dev/shm"]
        else:  # no private storage to bind: sized tmpfs mounts of bwrap's own (the work dir stays on disk)
            size = str(limits.disk_mb << 20)
            tmp = ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
            shm = ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        # bwrap's /dev is a tmpfs without a size that an unprivileged session's code could write to (as root
        # the sandbox uid cannot): read-only, apart from the /dev/shm mounted on it.
        args = ["bwrap", *sb.bwrap_mounts(tmp), *shm, "--remount-ro", "/dev"]
        args += _mkdirs(self.path) + ["--bind", w, w, "--chdir", w,
                                      "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                                      "--die-with-parent", "--new-session"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        if sb.is_root:
            return enter + args + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"] + drop + list(cmd)
        return args + ["--unshare-user", "--disable-userns", "--"] + list(cmd)

    def _filtered(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` under the seccomp filter, installed by a few lines of the sandbox's Python (the unshare level
        has no bwrap to do it); the code runs unfiltered only on an architecture without a table."""
        program = seccomp_program()
        if program is None:
            return list(cmd)
        return [self.sandbox.python, "-I", "-S", "-c", SECCOMP_TRAMPOLINE, program.hex(), *cmd]

    def run(self, cmd: Sequence[str], *, limits: Limits | None = None, stdin: str | None = None,
            collect: Sequence[str] = ()) -> RunResult:
        limits = limits or Limits()
        self._runs += 1
        out_path = self.storage.host / "out" / f"{self._runs}.out"
        err_path = self.storage.host / "out" / f"{self._runs}.err"
        env = {"PATH": SAFE_PATH, "HOME": str(self.path), "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
        drop_uid = self.sandbox.is_root and self.sandbox.level != "none"
        if self.storage.zygote is not None:
            env["PWD"] = str(self.path)  # as bwrap's --chdir sets it
            return self._run_forked(cmd, limits, stdin, collect, env, out_path, err_path)

        # Limits are set by util-linux prlimit just before the sandbox starts, instead of a preexec_fn: with
        # no Python code between fork and exec, subprocess can use vfork, which stays fast in a big process.
        soft_cpu = max(1, int(limits.cpu_s))
        rlimits = ["prlimit", f"--as={limits.memory_mb << 20}", f"--cpu={soft_cpu}:{soft_cpu + 1}",
                   f"--fsize={limits.max_file_mb << 20}", f"--nofile={limits.max_open_files}", "--core=0"]
        if drop_uid:  # per uid: only meaningful once the code runs as its own uid
            rlimits.append(f"--nproc={limits.max_processes}")
        # bwrap reads the seccomp program from a descriptor: a pipe of our own per run (a shared file would
        # share its offset between concurrent runs). Its ~400 bytes fit in any pipe's buffer.
        seccomp = seccomp_program() if self.sandbox.level == "bwrap" else None
        seccomp_fd = None
        if seccomp is not None:
            seccomp_fd, w = os.pipe()
            os.write(w, seccomp)
            os.close(w)
        command = [*rlimits, "--", *self._command(cmd, limits, seccomp_fd)]

        start = time.perf_counter()
        timed_out = False
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(  # noqa: S603 - the command is ours; the code it runs is contained
                    command, cwd="/" if self.storage.helper is not None else self.path, env=env, stdout=out,
                    stderr=err, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    start_new_session=True, close_fds=True, pass_fds=() if seccomp_fd is None else (seccomp_fd,),
                )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        # A timer kills the group at the deadline while we block in wait(): Popen.wait(timeout) would
        # poll with sleeps, which cost more than the whole sandboxed run of a short program.
        expired = threading.Event()

        def on_deadline() -> None:
            expired.set()
            _kill_group(proc)

        timer = threading.Timer(limits.timeout_s, on_deadline)
        timer.daemon = True
        timer.start()
        try:
            if stdin is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(stdin.encode())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            proc.wait()
        finally:
            timer.cancel()
            timed_out = expired.is_set()
            _kill_group(proc)  # a daemon left behind in the (non-namespaced) group dies too
            if drop_uid:
                _reap_uid(self.uid)
        return self._result(proc.returncode, timed_out, time.perf_counter() - start, limits, collect, out_path,
                            err_path)

    def _run_forked(self, cmd: Sequence[str], limits: Limits, stdin: str | None, collect: Sequence[str],
                    env: dict[str, str], out_path: Path, err_path: Path) -> RunResult:
        """One run forked by the fork server: the same limits, uid, namespaces and filter as a bwrap of its own."""
        zygote = self.storage.zygote
        assert zygote is not None
        soft_cpu = max(1, int(limits.cpu_s))
        rlimits = [("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
                   ("RLIMIT_CPU", soft_cpu, soft_cpu + 1),
                   ("RLIMIT_FSIZE", limits.max_file_mb << 20, limits.max_file_mb << 20),
                   ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files), ("RLIMIT_CORE", 0, 0),
                   ("RLIMIT_NPROC", limits.max_processes, limits.max_processes)]
        # ``python -I [-u] script ...`` with the server's own interpreter runs in a fork of it: no start-up.
        flags = list(itertools.takewhile(lambda a: a.startswith("-"), cmd[1:]))
        in_process = (cmd[0] == self.sandbox.python and "-I" in flags and set(flags) <= {"-I", "-u"}
                      and len(cmd) > len(flags) + 1)
        stdin_r, stdin_w = os.pipe() if stdin is not None else (os.open(os.devnull, os.O_RDONLY), -1)
        start = time.perf_counter()
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                status_r = zygote.run(self.storage.box, self.uid, cmd, env, rlimits,
                                      (stdin_r, out.fileno(), err.fileno()), in_process=in_process)
        except OSError as exc:
            if stdin_w >= 0:
                os.close(stdin_w)
            raise SandboxUnavailable(str(exc) if zygote.alive() else f"the sandbox's fork server is gone ({exc})") \
                from None
        finally:
            os.close(stdin_r)
        # The deadline is kept by this thread, polling the status descriptor: no timer thread to start, and none
        # that could still be killing the run's uid after the run (it may be the next run's uid at once).
        code, timed_out = zygote.wait(status_r, stdin_w, stdin.encode() if stdin is not None else b"",
                                      limits.timeout_s, lambda: _kill_uid(self.uid))
        if code is None:
            raise SandboxUnavailable("the sandbox's fork server stopped during a run")
        return self._result(code, timed_out, time.perf_counter() - start, limits, collect, out_path, err_path)

    def _result(self, code: int | None, timed_out: bool, duration: float, limits: Limits, collect: Sequence[str],
                out_path: Path, err_path: Path) -> RunResult:
        stdout = _read(out_path, limits.max_output_bytes)
        stderr = _read(err_path, limits.max_output_bytes)
        out_path.unlink()
        err_path.unlink()
        reason = _reason(code, timed_out, stderr, limits)
        files = {}
        for name in collect:
            kept = _collect(self.storage.host / "work", name)
            if kept is not None:
                files[name] = kept
        return RunResult(exit_code=None if timed_out else code, stdout=stdout, stderr=stderr,
                         duration_s=duration, level=self.sandbox.level, timed_out=timed_out, reason=reason,
                         files=files)


def _open_beneath(root: Path, name: str, flags: int, make_dirs_for: int = -1) -> int:
    """Open ``name`` under the directory ``root`` without following any link on the way, or raise OSError.

    The sandboxed code owns the work directory and may have left links there: a host write or read must not go
    through them (a link's absolute target is resolved from *our* root, even under ``/proc/<pid>/root``).
    ``make_dirs_for``: create missing parent directories, owned by that uid (-1: leave the owner alone).
    """
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("..", ".") for p in parts):
        raise ValueError(f"file name {name!r} leaves the work directory")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if flags & os.O_CREAT:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    if make_dirs_for >= 0:
                        os.chown(part, make_dirs_for, make_dirs_for, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            sub = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
        # O_NONBLOCK: opening a FIFO the code left under a collected name must not hang us.
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644, dir_fd=fd)
    finally:
        os.close(fd)


def _collect(work: Path, name: str) -> Path | None:
    """Copy the regular file ``name`` out of the work directory into this process's files folder."""
    try:
        fd = _open_beneath(work, name, os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        # One link only: a hard link would be some other file that the code could name (never one of the
        # host's in the private storage, which is another file system, but possible in the host-dir case).
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        dst = _files_dir() / uuid.uuid4().hex / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(fd, "rb", closefd=False) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out)  # bounded: the code wrote it under the file size limit
        return dst
    finally:
        os.close(fd)


def _mkdirs(path: Path) -> list[str]:
    """bwrap creates missing mount points as root-only directories; make each one traversable."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if str(parent) != "/":
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _uid_pids(uid: int) -> list[int]:
    """Processes (zombies included) whose real uid is ``uid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                # /proc/<pid> belongs to the process's uid (setpriv set real and effective uid alike).
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_uid(uid: int) -> list[int]:
    """SIGKILL every process of the sandbox uid; returns the pids found."""
    pids = _uid_pids(uid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def _reap_uid(uid: int, wait_s: float = 3.0) -> None:
    """Make sure nothing of the sandbox uid outlives its run.

    A pid namespace is torn down asynchronously after its init dies, and processes that are being killed (or
    are zombies) still count against RLIMIT_NPROC for the next run with this uid: kill what is left and wait.
    """
    deadline = time.monotonic() + wait_s
    while _kill_uid(uid):
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... output truncated]" if len(data) > limit else "")


def _signal_of(code: int | None) -> int | None:
    if code is None:
        return None
    if code < 0:
        return -code
    if code > 128 and code - 128 < signal.NSIG:  # bwrap/unshare report a signalled child as 128 + n
        return code - 128
    return None


def _reason(code: int | None, timed_out: bool, stderr: str, limits: Limits) -> str | None:
    if timed_out:
        return f"timed out after {limits.timeout_s:g} s"
    if code == 0:
        return None
    sig = _signal_of(code)
    if sig in (signal.SIGXCPU, signal.SIGKILL) and sig == signal.SIGXCPU:
        return f"timed out: CPU limit {limits.cpu_s} s"
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return f"disk limit {limits.disk_mb} MiB reached (exit status {code})"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr:
        return f"killed: memory limit {limits.describe_memory()}"
    if sig == signal.SIGXFSZ:
        return f"killed: file size limit {limits.max_file_mb} MiB"
    if sig is not None:
        return f"killed by signal {signal.Signals(sig).name}"
    return f"exit status {code}"


# ------------------------------------------------------------------------------------ private storage


@cache
def _box_mount_point() -> Path:
    """Where the private storage is mounted inside its own mount namespace (the host's directory stays empty).

    Outside /tmp, so that the unshare level can put the storage's tmp over the host's /tmp in that namespace
    and still reach the storage by this path; under /run, which bwrap hides anyway.
    """
    for parent in ("/run", "/var/tmp", "/tmp"):
        if os.path.isdir(parent):
            point = Path(parent) / "pytest-llmeval-box"
            point.mkdir(mode=0o755, exist_ok=True)
            if point.is_symlink() or point.lstat().st_uid != os.geteuid():
                raise SandboxUnavailable(f"{point} is not a directory of ours")
            return point
    raise SandboxUnavailable("no /run, /var/tmp or /tmp to mount the sandbox's private storage on")


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), which tells a live process from a reused pid."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]


@cache
def _tag_of(pid: int) -> str:
    return f"{pid}-{_start_time(pid)}"


def _process_tag() -> str:
    return _tag_of(os.getpid())  # per pid: a forked child gets its own tag


_LEFTOVER = re.compile(r"llmeval-(?:sbx|files)-(\d+)-(\d+)(?:-|$)")
_SWEPT: set[tuple[int, str]] = set()


def _sweep(base_dir: Path | None) -> None:
    """Remove what killed processes left in ``base_dir`` (host directories of the unprivileged levels and
    collected files), once per process and directory. A directory belongs to a live process when its pid is
    running with the same start time."""
    base = str(base_dir) if base_dir is not None else tempfile.gettempdir()
    if (os.getpid(), base) in _SWEPT:
        return
    _SWEPT.add((os.getpid(), base))
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m and _start_time(int(m[1])) != m[2] and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


_FILES: dict[int, Path] = {}


def _files_dir() -> Path:
    """This process's folder for collected files (they outlive their work directory, for the caller to read);
    removed at exit, or swept by a later session if this process is killed."""
    if os.getpid() not in _FILES:
        folder = Path(tempfile.mkdtemp(prefix=f"llmeval-files-{_process_tag()}-"))
        _FILES[os.getpid()] = folder
        atexit.register(shutil.rmtree, folder, True)
    return _FILES[os.getpid()]


def discard_files(files: dict[str, Path]) -> None:
    """Remove collected files (a RunResult's ``files``) once they have been used or saved elsewhere."""
    root = _FILES.get(os.getpid())
    for path in files.values():
        if root is not None and path.is_relative_to(root) and path != root:
            shutil.rmtree(root / path.relative_to(root).parts[0], ignore_errors=True)


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
