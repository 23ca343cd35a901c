"""Isolated execution of generated code.

Levels, strongest first (``--llm-sandbox``; ``auto`` picks the strongest that works here):

``bwrap``
    bubblewrap: a read-only view of the root filesystem with the project directory, home directories and
    ``/tmp`` hidden, a private writable work directory, new pid/net/ipc/uts namespaces (no network at all,
    not even loopback or abstract unix sockets), ``--die-with-parent``. Run as root, the code additionally
    drops to an unprivileged uid of its own (``setpriv``) so that file permissions and ``RLIMIT_NPROC``
    apply; run as a normal user, bwrap uses a user namespace instead (``--unshare-user --disable-userns``).
``unshare``
    util-linux ``unshare`` (net + pid namespaces) plus the uid drop, when bwrap is missing: the file system is
    visible read-only through permissions only.
``none``
    no isolation, only resource limits; never chosen automatically, only by an explicit
    ``--llm-sandbox=none``.

Every level applies resource limits in the child (address space, CPU seconds, processes, file size, open
files, no core dumps), runs in a new session with a minimal environment (no API keys or other secrets),
writes output to files rather than pipes (so a daemonised grandchild cannot hold the run open), and is
killed at a wall-clock timeout. The level used is recorded in each result.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LEVELS = ("auto", "bwrap", "unshare", "none")
UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_RANGE - 1, each leased to one run at a time
UID_RANGE = 2048
UIDS_PER_PROCESS = 64  # where a worker starts looking for a free uid
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailable(Exception):
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
    """

    def __init__(self, level: str = "auto", *, python: str | None = None, hide: Sequence[Path] = (),
                 base_dir: Path | None = None) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown sandbox level {level!r}; expected one of {', '.join(LEVELS)}")
        self.python = python or sys.executable
        self.hide = list(hide)
        self.base_dir = base_dir
        self.level = self._choose(level)
        self.is_root = os.geteuid() == 0
        self._bwrap_mounts: list[str] | None = None

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

    def bwrap_mounts(self) -> list[str]:
        """The file-system view (computed once): / read-only, private dirs hidden, interpreter bound back."""
        if self._bwrap_mounts is None:
            hidden = _hidden_dirs(self.hide)
            args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
            for h in hidden:
                args += ["--perms", "1777" if h == Path("/tmp") else "0755", "--tmpfs", str(h)]
            interpreter_dirs = (sys.prefix, sys.base_prefix, Path(self.python).resolve().parent.parent)
            for needed in dict.fromkeys(Path(p).resolve() for p in interpreter_dirs):
                if any(needed.is_relative_to(h) for h in hidden):
                    args += _mkdirs(needed) + ["--ro-bind", str(needed), str(needed)]
            self._bwrap_mounts = args
        return self._bwrap_mounts

    # ------------------------------------------------------------------------------------------ runs

    @contextmanager
    def workdir(self) -> Iterator[WorkDir]:
        """A private work directory for several runs (compile, then run); removed afterwards."""
        root = Path(tempfile.mkdtemp(prefix="llmeval-sbx-", dir=self.base_dir))
        work = root / "work"
        work.mkdir()
        try:
            with _UIDS.take() as uid:
                yield WorkDir(self, work, uid)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def run(self, cmd: Sequence[str], files: dict[str, str | bytes] | None = None, *,
            limits: Limits | None = None, stdin: str | None = None,
            collect: Sequence[str] = ()) -> RunResult:
        """One command in a fresh work directory holding ``files``; ``collect`` names files to keep."""
        with self.workdir() as wd:
            for name, content in (files or {}).items():
                wd.write(name, content)
            return wd.run(cmd, limits=limits, stdin=stdin, collect=collect)

    def run_python(self, code: str, *, limits: Limits | None = None, stdin: str | None = None,
                   collect: Sequence[str] = ()) -> RunResult:
        return self.run([self.python, "-I", "main.py"], {"main.py": code}, limits=limits, stdin=stdin,
                        collect=collect)


class WorkDir:
    """A sandbox work directory: write files into it and run commands in it."""

    def __init__(self, sandbox: Sandbox, path: Path, uid: int) -> None:
        self.sandbox = sandbox
        self.path = path
        self.uid = uid
        self.out_dir = Path(tempfile.mkdtemp(prefix="llmeval-out-", dir=sandbox.base_dir))
        self._runs = 0
        if sandbox.is_root and sandbox.level != "none":
            os.chown(path, uid, uid)
            os.chmod(path.parent, 0o711)

    def write(self, name: str, content: str | bytes) -> Path:
        target = (self.path / name).resolve()
        if not target.is_relative_to(self.path):
            raise ValueError(f"file name {name!r} leaves the work directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        if self.sandbox.is_root and self.sandbox.level != "none":
            os.chown(target, self.uid, self.uid)
        return target

    def _command(self, cmd: Sequence[str]) -> list[str]:
        sb, w, uid = self.sandbox, str(self.path), str(self.uid)
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--inh-caps=-all", "--bounding-set=-all", "--"]
        if sb.level == "none":
            return list(cmd)
        if sb.level == "unshare":
            base = ["unshare", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
            # Unprivileged, the namespaces need a user namespace of their own.
            return base + (drop if sb.is_root else ["--user", "--map-root-user"]) + list(cmd)
        args = ["bwrap", *sb.bwrap_mounts()]
        args += _mkdirs(self.path) + ["--bind", w, w, "--chdir", w,
                                      "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                                      "--die-with-parent", "--new-session"]
        if sb.is_root:
            return args + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--"] + drop + list(cmd)
        return args + ["--unshare-user", "--disable-userns", "--"] + list(cmd)

    def run(self, cmd: Sequence[str], *, limits: Limits | None = None, stdin: str | None = None,
            collect: Sequence[str] = ()) -> RunResult:
        limits = limits or Limits()
        self._runs += 1
        out_path = self.out_dir / f"{self._runs}.out"
        err_path = self.out_dir / f"{self._runs}.err"
        env = {"PATH": SAFE_PATH, "HOME": str(self.path), "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
        drop_uid = self.sandbox.is_root and self.sandbox.level != "none"

        # Limits are set by util-linux prlimit just before the sandbox starts, instead of a preexec_fn: with
        # no Python code between fork and exec, subprocess can use vfork, which stays fast in a big process.
        soft_cpu = max(1, int(limits.cpu_s))
        rlimits = ["prlimit", f"--as={limits.memory_mb << 20}", f"--cpu={soft_cpu}:{soft_cpu + 1}",
                   f"--fsize={limits.max_file_mb << 20}", f"--nofile={limits.max_open_files}", "--core=0"]
        if drop_uid:  # per uid: only meaningful once the code runs as its own uid
            rlimits.append(f"--nproc={limits.max_processes}")
        command = [*rlimits, "--", *self._command(cmd)]

        start = time.perf_counter()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(  # noqa: S603 - the command is ours; the code it runs is contained
                command, cwd=self.path, env=env, stdout=out, stderr=err,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )
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
        duration = time.perf_counter() - start
        stdout = _read(out_path, limits.max_output_bytes)
        stderr = _read(err_path, limits.max_output_bytes)
        code = proc.returncode
        reason = _reason(code, timed_out, stderr, limits)
        files = {}
        for name in collect:
            src = (self.path / name).resolve()
            if src.is_relative_to(self.path) and src.is_file() and not src.is_symlink():
                dst = self.out_dir / "files" / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                files[name] = dst
        return RunResult(exit_code=None if timed_out else code, stdout=stdout, stderr=stderr,
                         duration_s=duration, level=self.sandbox.level, timed_out=timed_out, reason=reason,
                         files=files)


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


def _reap_uid(uid: int, wait_s: float = 3.0) -> None:
    """Make sure nothing of the sandbox uid outlives its run.

    A pid namespace is torn down asynchronously after its init dies, and processes that are being killed (or
    are zombies) still count against RLIMIT_NPROC for the next run with this uid: kill what is left and wait.
    """
    deadline = time.monotonic() + wait_s
    while pids := _uid_pids(uid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
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
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr or "std::bad_alloc" in stderr:
        return f"killed: memory limit {limits.describe_memory()}"
    if sig == signal.SIGXFSZ:
        return f"killed: file size limit {limits.max_file_mb} MiB"
    if sig is not None:
        return f"killed by signal {signal.Signals(sig).name}"
    return f"exit status {code}"


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
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    sandbox = Sandbox.__new__(Sandbox)
    sandbox.python, sandbox.hide, sandbox.base_dir = sys.executable, [], None
    sandbox.level, sandbox.is_root, sandbox._bwrap_mounts = level, os.geteuid() == 0, None
    try:
        with sandbox.workdir() as wd:
            result = wd.run(["/bin/sh", "-c", "echo ok"], limits=Limits(timeout_s=10))
    except OSError as exc:
        return str(exc)
    if result.stdout.strip() != "ok":
        return (result.stderr.strip() or result.reason or "probe failed").splitlines()[-1]
    return None
