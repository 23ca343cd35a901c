"""A sandbox work directory and its runs: the command line each level builds, the fork server's runs, the limits,
the deadline and what a run leaves behind."""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pytest_llmeval.sandbox.limits import SAFE_PATH, Limits, RunResult, SandboxLike, SandboxUnavailable, _reason
from pytest_llmeval.sandbox.seccomp import SECCOMP_TRAMPOLINE, seccomp_program
from pytest_llmeval.sandbox.storage import _collect, _open_beneath, _Storage
from pytest_llmeval.sandbox.uids import _kill_uid, _reap_uid


class WorkDir:
    """A sandbox work directory: write files into it and run commands in it.

    ``path`` is the directory as the sandboxed code sees it (its working directory and ``HOME``).
    """

    def __init__(self, sandbox: SandboxLike, storage: _Storage, uid: int) -> None:
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
        code = None
        try:
            code, timed_out = zygote.wait(status_r, stdin_w, stdin.encode() if stdin is not None else b"",
                                          limits.timeout_s, lambda: _kill_uid(self.uid))
        finally:
            if code is None:  # interrupted, or the server died (its namespaces go, not necessarily at once)
                _reap_uid(self.uid)  # nothing of the run may outlive it: the uid's next lease does not look
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


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... output truncated]" if len(data) > limit else "")
