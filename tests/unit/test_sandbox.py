"""Attacks on the sandbox, each bounded in time and memory; containment is checked from the host side.

Containment matrix (``x`` contained, ``-`` not claimed; the tests assert exactly this, and docs/sandbox.md's
"The attack matrix" carries the same table). Host memory is read from /proc/meminfo, disk and inodes from statvfs;
the storage bound is ``disk_mb`` (64 MiB in these tests).

| attack                                                    | bwrap (root + uid drop)       | unshare (root + uid drop)   |
|-----------------------------------------------------------|-------------------------------|-----------------------------|
| write outside the work dir (/etc, project)                | x                             | x (permissions)             |
| write to /tmp, /var/tmp, /run/lock, /dev/shm              | x (private, sized)            | x (private, sized)          |
| read /etc/shadow, list /root                              | x                             | x (permissions)             |
| read a hidden project directory                           | x (not mounted)               | - (only if world-readable)  |
| read another run's work dir or /tmp                       | x (private storage)           | x (private storage)         |
| see the parent's API keys (env, /proc)                    | x                             | x                           |
| TCP / UDP / abstract unix socket to the host              | x (no network)                | x (no network)              |
| IPv6, netlink, packet, vsock, AF_ALG, AF_KEY sockets      | x (seccomp: no socket())      | x (seccomp)                 |
| pathname unix socket of a host service (0777)             | x (seccomp: no socket())      | x (seccomp)                 |
| io_uring (sockets without socket())                       | x (seccomp)                   | x (seccomp)                 |
| i386 socketcall (int 0x80), x32 socket()                  | x (seccomp: other arch, x32)  | x (seccomp)                 |
| fork bomb (RLIMIT_NPROC per sandbox uid)                  | x                             | x                           |
| allocate 4 GB                                             | x (RLIMIT_AS)                 | x                           |
| fill /tmp beyond disk_mb                                  | x (sized tmpfs)               | x (sized tmpfs)             |
| fill the work directory beyond disk_mb                    | x (sized tmpfs, no host disk) | x (sized tmpfs)             |
| fill /dev/shm                                             | x (sized tmpfs)               | x (sized tmpfs)             |
| /tmp and work directory each up to disk_mb                | x (one size for both)         | x                           |
| 200,000 empty files (inodes)                              | x (64 inodes per MiB)         | x                           |
| 8 GiB sparse file, 1 GiB fallocate, mmap of a tmp file    | x (RLIMIT_FSIZE, sized tmpfs) | x                           |
| 40 memfds of 15 MiB                                       | x (seccomp)                   | x (seccomp)                 |
| SysV shared memory, message queues                        | x (seccomp)                   | x (seccomp)                 |
| user namespace with a tmpfs of its own                    | x (seccomp)                   | x (seccomp)                 |
| unshare, setns, mount, chroot                             | x (seccomp, no capabilities)  | x (seccomp)                 |
| ptrace of a sibling                                       | x (seccomp)                   | x (seccomp)                 |
| kernel keyring (add_key)                                  | x (seccomp)                   | x (seccomp)                 |
| write /proc/sys, /proc/sysrq-trigger                      | x (read-only, permissions)    | x (permissions)             |
| setuid binaries (mount, umount, newgrp, gpasswd, chsh)    | x (no new privileges)         | x (no new privileges)       |
| infinite loop                                             | x (CPU + wall timeout)        | x                           |
| kill its parent / pid 1 / the test process                | x (pid namespace)             | x (pid namespace)           |
| background daemons left behind                            | x (pid namespace dies)        | x (--kill-child)            |
| C ``#include "/etc/shadow"``                              | x (compiled inside)           | x (compiled inside)         |
| stdout flood                                              | x (file size + cap)           | x                           |
| symlink to a secret collected as an artifact              | x                             | x                           |
| linked dir, FIFO, hard link under a collected name        | x (no link followed)          | x                           |
| hard links to host files                                  | x (another file system)       | x                           |
| links planted for the host's next write into the work dir | x (no link followed)          | x                           |
| work directory swapped for a link between two runs        | x (parent not writable)       | x                           |
| leftovers in the temporary directory after runs           | x (nothing on the host)       | x (nothing on the host)     |
| processes, files, memory left after SIGKILL of the parent | x (helper exits on EOF)       | x (death signal after drop) |
| the fork server or a later run (signals, files, /tmp)     | x (fresh process, uid, ns)    | x (nothing shared)          |
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pytest_llmeval.sandbox.isolation import UID_BASE, UID_RANGE, Limits, Sandbox, SandboxUnavailable, _UidPool

# "bwrap": the bwrap level with its fork server (as root, the default); "bwrap-per-run": without it (one bwrap per
# run, as with LLMEVAL_SANDBOX_FORK_SERVER=0 or when the server cannot start).
LEVELS = ["bwrap", "bwrap-per-run", "unshare"]
SHORT = Limits(timeout_s=8, cpu_s=5)
ROOT = os.geteuid() == 0


@pytest.fixture(params=LEVELS)
def sandbox(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    secret_dir = tmp_path_factory.mktemp("project")
    (secret_dir / ".env").write_text("OPENAI_API_KEY=sk-project-secret-123456\n")
    os.chmod(secret_dir / ".env", 0o644)
    try:
        sb = Sandbox(request.param.removesuffix("-per-run"), hide=[secret_dir],
                     fork_server=request.param == "bwrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"{request.param} is not usable here: {exc}")
    if request.param == "bwrap" and ROOT:
        assert sb.fork_server() is not None, "the fork server did not start: the attacks would test the other path"
    sb.secret_dir = secret_dir  # type: ignore[attr-defined]
    return sb


def sandbox_processes(marker: str) -> list[str]:
    """Processes still running under a sandbox uid whose command line carries ``marker`` (there must be none
    after a run). The marker keeps out other tests' runs: uids are leased machine-wide and reused. ``-ww``: ps
    cuts lines at 80 columns when writing to a pipe, which would cut the marker off."""
    out = subprocess.run(["ps", "-e", "-ww", "-o", "uid=,pid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
    return [" ".join(r) for r in rows
            if len(r) == 3 and UID_BASE <= int(r[0]) < UID_BASE + UID_RANGE and marker in r[2]]


def shadow_first_line() -> str:
    return Path("/etc/shadow").read_text().splitlines()[0]


# ------------------------------------------------------------------------------------------- sanity


def test_normal_program_stdin_and_files(sandbox: Sandbox) -> None:
    code = "import sys\nname = sys.stdin.read().strip()\nopen('out.txt', 'w').write(name * 2)\nprint('hi', name)"
    result = sandbox.run_python(code, stdin="ab", collect=["out.txt", "missing.txt"], limits=SHORT)
    assert result.ok, result
    assert result.stdout == "hi ab\n" and result.level == sandbox.level
    assert result.files["out.txt"].read_text() == "abab" and "missing.txt" not in result.files


def test_compile_then_run_c_in_one_workdir(sandbox: Sandbox) -> None:
    with sandbox.workdir() as wd:
        wd.write("main.c", '#include <stdio.h>\nint main(void) { printf("%d\\n", 6 * 7); return 0; }\n')
        compiled = wd.run(["gcc", "-o", "prog", "main.c"], limits=SHORT)
        assert compiled.ok, compiled.stderr
        ran = wd.run(["./prog"], limits=SHORT)
    assert ran.ok and ran.stdout == "42\n"


# ------------------------------------------------------------------------------------------ attacks


def test_cannot_write_outside_the_workdir(sandbox: Sandbox, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    targets = [f"/etc/llmeval-{tag}", f"/work/llmeval-{tag}", f"/root/llmeval-{tag}", str(tmp_path / tag)]
    world_writable = [f"/tmp/llmeval-{tag}", f"/var/tmp/llmeval-{tag}", f"/run/lock/llmeval-{tag}",
                      f"/dev/shm/llmeval-{tag}"]
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').write('x')\n"
            "    except OSError:\n        pass\n")
    with sandbox.workdir() as wd:
        wd.write("main.py", code)
        wd.run([sandbox.python, "-I", "main.py", *targets, *world_writable], limits=SHORT)
    for target in targets + world_writable:  # the world-writable ones are private tmpfs at both levels
        assert not Path(target).exists(), target


@pytest.mark.skipif(not ROOT, reason="the uid drop (and /etc/shadow) needs root")
def test_cannot_read_secrets(sandbox: Sandbox) -> None:
    secret_dir: Path = sandbox.secret_dir  # type: ignore[attr-defined]
    code = (
        "import os, sys\n"
        "for p in ['/etc/shadow', sys.argv[1]]:\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n        print('denied', p)\n"
        "try:\n    print(os.listdir('/root'))\nexcept OSError:\n    print('denied /root')\n"
    )
    result = sandbox.run([sandbox.python, "-I", "main.py", str(secret_dir / ".env")], {"main.py": code},
                         limits=SHORT)
    assert shadow_first_line() not in result.stdout
    assert "denied /etc/shadow" in result.stdout
    assert "'.pyenv'" not in result.stdout or sandbox.level == "bwrap"  # bwrap shows only what it binds back
    if sandbox.level == "bwrap":
        assert "sk-project-secret" not in result.stdout  # the hidden project dir is not even mounted


def test_cannot_see_the_parents_api_keys(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for p in ['/proc/1/environ', '/proc/self/environ', f'/proc/{os.getppid()}/environ',"
        f" '/proc/{os.getpid()}/environ']:\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        pass\n"
    )
    result = sandbox.run_python(code, limits=SHORT)
    assert result.ok, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    assert "OPENAI_API_KEY" not in result.stdout


def test_no_network_to_host_listeners(sandbox: Sandbox) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    abstract = "\0llmeval-test-" + uuid.uuid4().hex
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(abstract)
    unix.listen(8)
    unix.settimeout(0.2)
    code = (
        "import socket, sys\n"
        "tcp_port, udp_port, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]\n"
        "for kind, attempt in [('tcp', lambda: socket.create_connection(('127.0.0.1', tcp_port), timeout=1)),\n"
        "                       ('unix', lambda: socket.socket(socket.AF_UNIX).connect('\\0' + name))]:\n"
        "    try:\n        attempt()\n        print('connected', kind)\n    except OSError as e:\n"
        "        print('blocked', kind, e)\n"
        "try:\n    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', udp_port))\n"
        "except OSError as e:\n    print('blocked udp', e)\n"
    )
    try:
        result = sandbox.run([sandbox.python, "-I", "main.py", str(tcp.getsockname()[1]),
                              str(udp.getsockname()[1]), abstract[1:]], {"main.py": code}, limits=SHORT)
        assert "connected" not in result.stdout, result.stdout
        for accept in (tcp.accept, lambda: udp.recvfrom(16), unix.accept):
            with pytest.raises((TimeoutError, socket.timeout, BlockingIOError)):
                accept()
    finally:
        for s in (tcp, udp, unix):
            s.close()


@pytest.mark.skipif(not ROOT, reason="RLIMIT_NPROC holds only with a real uid drop")
def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    marker = uuid.uuid4().hex
    start = time.monotonic()
    result = sandbox.run([sandbox.python, "-I", "main.py", marker], {"main.py": code},
                         limits=Limits(timeout_s=3, cpu_s=2, max_processes=32))
    assert time.monotonic() - start < 15
    assert not result.ok
    assert sandbox_processes(marker) == []


def test_memory_limit(sandbox: Sandbox) -> None:
    result = sandbox.run_python("x = bytearray(4 * 1024 ** 3)\nprint(len(x))", limits=SHORT)
    assert not result.ok and result.reason == "killed: memory limit 1 GiB"


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    result = sandbox.run_python("while True:\n    pass", limits=Limits(timeout_s=2, cpu_s=1))
    assert not result.ok and result.duration_s < 10
    assert result.reason in ("timed out: CPU limit 1 s", "timed out after 2 s")
    sleeping = sandbox.run_python("import time\ntime.sleep(60)", limits=Limits(timeout_s=1))
    assert sleeping.timed_out and sleeping.reason == "timed out after 1 s" and sleeping.duration_s < 10


def test_cannot_kill_its_parent(sandbox: Sandbox) -> None:
    code = (
        "import os, signal, sys\n"
        "for pid in [os.getppid(), 1, int(sys.argv[1])]:\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('sent', pid)\n"
        "    except OSError as e:\n        print('refused', pid, e.errno)\n"
    )
    marker = uuid.uuid4().hex
    result = sandbox.run([sandbox.python, "-I", "main.py", str(os.getpid()), marker], {"main.py": code},
                         limits=SHORT)
    assert result.exit_code is not None  # the run came back; and so did we, to assert this
    assert sandbox_processes(marker) == []


def test_background_daemons_do_not_survive(sandbox: Sandbox) -> None:
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        for _ in range(300):\n            print('still here', flush=True)\n            time.sleep(0.1)\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    marker = uuid.uuid4().hex
    start = time.monotonic()
    result = sandbox.run([sandbox.python, "-I", "main.py", marker], {"main.py": code}, limits=Limits(timeout_s=8))
    assert time.monotonic() - start < 8, "a daemon held the run open"
    assert "parent done" in result.stdout
    time.sleep(0.2)
    assert sandbox_processes(marker) == []


@pytest.mark.skipif(not ROOT, reason="/etc/shadow is unreadable anyway without root")
def test_c_include_of_a_secret_is_compiled_inside(sandbox: Sandbox) -> None:
    source = '#include "/etc/shadow"\nint main(void) { return 0; }\n'
    with sandbox.workdir() as wd:
        wd.write("main.c", source)
        result = wd.run(["gcc", "-o", "prog", "main.c"], limits=SHORT)
    assert not result.ok
    secret = shadow_first_line()
    assert secret not in result.stdout and secret not in result.stderr
    assert secret.split(":")[0] + ":" not in result.stderr


def test_stdout_flood_is_capped(sandbox: Sandbox) -> None:
    result = sandbox.run_python("while True:\n    print('x' * 1000)",
                                limits=Limits(timeout_s=5, max_output_bytes=10_000, max_file_mb=1))
    assert not result.ok and result.duration_s < 10
    assert len(result.stdout) < 11_000 and result.stdout.endswith("[... output truncated]")


@pytest.mark.skipif(not ROOT, reason="/etc/shadow is unreadable anyway without root")
def test_symlink_to_a_secret_is_not_collected(sandbox: Sandbox) -> None:
    result = sandbox.run_python("import os\nos.symlink('/etc/shadow', 'link')\nos.symlink('/etc/hostname', 'h')",
                                collect=["link", "h"], limits=SHORT)
    assert result.ok, result.stderr
    assert result.files == {}


def test_parallel_runs_use_distinct_uids(sandbox: Sandbox) -> None:
    uids: list[str] = []

    def one() -> None:
        uids.append(sandbox.run_python("import os, time\ntime.sleep(0.3)\nprint(os.getuid())",
                                       limits=SHORT).stdout.strip())

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if ROOT:
        assert len(set(uids)) == 3, uids


HOLD_LEASE = """
import sys
from pathlib import Path
from pytest_llmeval.sandbox.isolation import _UidPool
with _UidPool(base=%d, size=%d, lock_dir=Path(sys.argv[1])).take() as uid:
    print(uid, flush=True)
    sys.stdin.read()
"""


def test_uid_leases_are_exclusive_across_processes(tmp_path: Path) -> None:
    """Two pytest sessions on one machine (a pytester run inside a test run, say) never share a uid: the
    reaper of one would kill the other's programs."""
    base = UID_BASE + UID_RANGE + 100  # a range no real run uses, so nothing gets reaped
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE % (base, 2), str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())  # type: ignore[union-attr]
        pool = _UidPool(base=base, size=2, lock_dir=tmp_path)
        with pool.take() as mine:
            assert mine != held and {mine, held} == {base, base + 1}
            with pytest.raises(SandboxUnavailable, match="all 2 sandbox uids"), pool.take():
                pass
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(10)
    with _UidPool(base=base, size=1, lock_dir=tmp_path).take() as again:
        assert again == base  # a lease ends with its holder; a crashed process frees its uids too


CRASHED_HOLDER = """
import subprocess, sys
from pathlib import Path
from pytest_llmeval.sandbox.isolation import _UidPool
with _UidPool(base=%d, size=1, lock_dir=Path(sys.argv[1])).take() as uid:
    straggler = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "60"],
                                 start_new_session=True)
    print(straggler.pid, flush=True)
    sys.stdin.read()
"""


@pytest.mark.skipif(not ROOT, reason="uids are leased for real only as root")
def test_a_uid_a_dead_holder_left_running_is_reaped_at_its_next_lease(tmp_path: Path) -> None:
    """A lease released normally leaves nothing running (every run reaps its processes), so the next lease does not
    scan /proc; a holder that died mid-lease may have left processes under the uid, and the next lease kills them."""
    base = UID_BASE + UID_RANGE + 200  # a range no real run uses
    with _UidPool(base=base, size=1, lock_dir=tmp_path).take():
        pass
    assert (tmp_path / f"{base}.lock").read_bytes() == b""  # released cleanly
    holder = subprocess.Popen([sys.executable, "-c", CRASHED_HOLDER % base, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    straggler = int(holder.stdout.readline())  # type: ignore[union-attr]
    holder.kill()
    holder.wait(10)

    def running() -> bool:
        try:
            state = Path(f"/proc/{straggler}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    assert running()
    with _UidPool(base=base, size=1, lock_dir=tmp_path).take() as uid:
        assert uid == base and not running()


def test_none_level_is_never_automatic() -> None:
    assert Sandbox("auto").level in ("bwrap", "unshare")
    assert Sandbox("none").level == "none"
    with pytest.raises(ValueError, match="unknown sandbox level"):
        Sandbox("docker")


# ----------------------------------------------------------------- storage, kernel surface, leftovers
#
# Host memory is read from /proc/meminfo (Shmem: tmpfs, /dev/shm, memfd and SysV pages), host disk from
# statvfs of the file system holding the temporary directory. Other processes on the machine move both a
# little, so every bound below keeps a margin of 96 MiB against attacks that try 360 MiB and more; and the
# tests that measure take a machine-wide lock, so that two of them under xdist do not count each other's runs.

DISK_MB = 64
BOXED = Limits(timeout_s=8, cpu_s=5, disk_mb=DISK_MB)
MARGIN_MB = 96  # noise from the rest of the machine, and the sandbox's own few MiB


def shmem_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Shmem in /proc/meminfo")


def disk_used_mb(path: str = tempfile.gettempdir()) -> float:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


def inodes_used(path: str = tempfile.gettempdir()) -> int:
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


@contextmanager
def measuring_alone() -> Iterator[None]:
    """One measuring test at a time on this machine (xdist workers, other sessions)."""
    fd = os.open(Path(tempfile.gettempdir()) / "pytest-llmeval-hostwatch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class HostWatch:
    """Samples the host's shared memory and disk use while a run goes on (peaks above the starting point)."""

    def __init__(self) -> None:
        self.shmem_peak, self.disk_peak = 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._alone = measuring_alone()

    def _sample(self) -> None:
        while True:
            self.shmem_peak = max(self.shmem_peak, shmem_mb() - self.shmem0)
            self.disk_peak = max(self.disk_peak, disk_used_mb() - self.disk0)
            if self._stop.wait(0.01):
                return

    def __enter__(self) -> HostWatch:
        self._alone.__enter__()
        self.shmem0, self.disk0 = shmem_mb(), disk_used_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()
        self._alone.__exit__(None, None, None)

    def _sample_once(self) -> None:
        self.shmem_peak = max(self.shmem_peak, shmem_mb() - self.shmem0)
        self.disk_peak = max(self.disk_peak, disk_used_mb() - self.disk0)

    def assert_bounded(self, mb: float) -> None:
        assert self.shmem_peak < mb + MARGIN_MB, f"host shared memory grew by {self.shmem_peak:.0f} MiB"
        assert self.disk_peak < mb + MARGIN_MB, f"host disk use grew by {self.disk_peak:.0f} MiB"


FILL = """
import os, sys, time
where, total_mb = sys.argv[1], int(sys.argv[2])
chunk = b'x' * (1 << 20)
written = 0
try:
    for i in range(total_mb // 8):  # 8 MiB files: under the per-file limit, so only the place's size stops it
        with open(os.path.join(where, f'fill{i}'), 'wb') as f:
            for _ in range(8):
                f.write(chunk)
                written += 1
except OSError as e:
    print('stopped', e.errno, flush=True)
print('written', written, flush=True)
time.sleep(0.3)  # hold it while the host looks
"""


def written_mb(stdout: str) -> int:
    return int(stdout.split("written")[1].split()[0])


def test_tmp_is_bounded_by_disk_mb(sandbox: Sandbox) -> None:
    with HostWatch() as host:
        result = sandbox.run([sandbox.python, "-I", "main.py", "/tmp", "512"], {"main.py": FILL}, limits=BOXED)
    assert "stopped" in result.stdout and written_mb(result.stdout) <= DISK_MB, result.stdout + result.stderr
    host.assert_bounded(DISK_MB)


def test_workdir_is_bounded_by_disk_mb(sandbox: Sandbox) -> None:
    with HostWatch() as host, sandbox.workdir(BOXED) as wd:
        wd.write("main.py", FILL)
        wd.write("more.py", "open('more', 'wb').write(b'x' * (1 << 20))\n")  # not caught: the reason says why
        result = wd.run([sandbox.python, "-I", "main.py", ".", "512"], limits=BOXED)
        host._sample_once()  # what the work directory still holds, before it is removed
        more = wd.run([sandbox.python, "-I", "more.py"], limits=BOXED)
    assert "stopped" in result.stdout and written_mb(result.stdout) <= DISK_MB, result.stdout + result.stderr
    assert more.reason == f"disk limit {DISK_MB} MiB reached (exit status 1)", (more.reason, more.stderr)
    host.assert_bounded(DISK_MB)


def test_dev_shm_is_bounded(sandbox: Sandbox) -> None:
    with HostWatch() as host:
        result = sandbox.run([sandbox.python, "-I", "main.py", "/dev/shm", "512"], {"main.py": FILL},
                             limits=BOXED)
    assert "stopped" in result.stdout and written_mb(result.stdout) <= DISK_MB, result.stdout + result.stderr
    host.assert_bounded(DISK_MB)


def test_tmp_and_workdir_share_one_bound(sandbox: Sandbox) -> None:
    # every other file in /tmp: one size for the two places together, not one each
    loop = "for i in range(total_mb // 8):"
    code = FILL.replace(loop, loop + "\n        where = '/tmp' if i % 2 else '.'")
    with HostWatch() as host:
        result = sandbox.run([sandbox.python, "-I", "main.py", ".", "512"], {"main.py": code}, limits=BOXED)
    assert "stopped" in result.stdout and written_mb(result.stdout) <= DISK_MB, result.stdout + result.stderr
    host.assert_bounded(DISK_MB)


def test_many_empty_files_are_bounded(sandbox: Sandbox) -> None:
    code = (
        "import os, time\nn = 0\ndeadline = time.monotonic() + 3\n"
        "try:\n    while n < 200_000 and time.monotonic() < deadline:\n"
        "        os.close(os.open(f'f{n}', os.O_CREAT | os.O_WRONLY))\n        n += 1\n"
        "except OSError as e:\n    print('stopped', e.errno)\nprint('created', n)\n"
    )
    inodes0 = inodes_used()
    with sandbox.workdir(BOXED) as wd:
        wd.write("main.py", code)
        result = wd.run([sandbox.python, "-I", "main.py"], limits=BOXED)
        host_inodes = inodes_used() - inodes0
    created = int(result.stdout.split("created")[1])
    assert "stopped" in result.stdout and created <= 64 * DISK_MB, result.stdout
    assert host_inodes < 5_000, f"{host_inodes} inodes used on the host's disk"


def test_huge_sparse_and_preallocated_files_are_refused(sandbox: Sandbox) -> None:
    code = (
        "import mmap, os\nfor name, how in [('sparse', lambda fd: os.ftruncate(fd, 8 << 30)),\n"
        "                  ('prealloc', lambda fd: os.posix_fallocate(fd, 0, 1 << 30))]:\n"
        "    fd = os.open(name, os.O_CREAT | os.O_RDWR)\n"
        "    try:\n        how(fd)\n        print('grew', name, os.fstat(fd).st_size)\n"
        "    except OSError as e:\n        print('refused', name, e.errno)\n"
        "fd = os.open('/tmp/map', os.O_CREAT | os.O_RDWR)\ntry:\n    os.ftruncate(fd, 15 << 20)\n"
        "    m = mmap.mmap(fd, 15 << 20)\n    for i in range(0, 15 << 20, 4096):\n        m[i] = 1\n"
        "    print('mapped')\nexcept (OSError, ValueError) as e:\n    print('refused map', e)\n"
    )
    import signal as _signal
    with HostWatch() as host:
        result = sandbox.run([sandbox.python, "-I", "main.py"], {"main.py": code},
                             limits=Limits(timeout_s=8, cpu_s=5, disk_mb=DISK_MB, max_file_mb=16))
    assert "grew" not in result.stdout, result.stdout
    assert result.exit_code in (0, -_signal.SIGXFSZ, 128 + _signal.SIGXFSZ), result
    host.assert_bounded(DISK_MB)


def test_memfd_cannot_grow_host_memory(sandbox: Sandbox) -> None:
    code = (
        "import os, time\nfds = []\ntry:\n    for i in range(24):\n"
        "        fd = os.memfd_create(f'm{i}')\n        os.write(fd, b'x' * (15 << 20))\n        fds.append(fd)\n"
        "except OSError as e:\n    print('refused', e.errno)\nprint('held', len(fds), flush=True)\ntime.sleep(0.5)\n"
    )
    with HostWatch() as host:
        result = sandbox.run_python(code, limits=BOXED)
    assert "held" in result.stdout, result.stderr
    host.assert_bounded(DISK_MB)


SYSV = """
import ctypes, ctypes.util, time
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_PRIVATE = 0o1000, 0
made = 0
for i in range(12):  # each segment is attached, filled and detached: the address-space limit never sees it
    sid = libc.shmget(IPC_PRIVATE, 48 << 20, IPC_CREAT | 0o600)
    if sid < 0:
        print('refused shmget', ctypes.get_errno())
        break
    addr = libc.shmat(sid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print('refused shmat', ctypes.get_errno())
        break
    ctypes.memset(addr, 1, 48 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    made += 1
q = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
print('msgget', q, ctypes.get_errno() if q < 0 else 0)
print('segments', made, flush=True)
time.sleep(0.5)
"""


def test_sysv_shared_memory_cannot_grow_host_memory(sandbox: Sandbox) -> None:
    with HostWatch() as host:
        result = sandbox.run_python(SYSV, limits=BOXED)
    assert "segments" in result.stdout, result.stderr
    assert "msgget -1" in result.stdout, result.stdout  # message queues: up to 32000 x 16 KiB otherwise
    host.assert_bounded(DISK_MB)


def test_user_namespace_with_its_own_tmpfs_is_refused(sandbox: Sandbox) -> None:
    script = ("mount -t tmpfs none /tmp && echo mounted && "
              "dd if=/dev/zero of=/tmp/fill bs=1M count=400 2>/dev/null; sleep 0.3")
    code = ("import subprocess\nr = subprocess.run(['unshare', '--user', '--map-root-user', '--mount', 'sh', '-c', "
            f"{script!r}], capture_output=True, text=True)\nprint(r.returncode, r.stdout, r.stderr)\n")
    with HostWatch() as host:
        result = sandbox.run_python(code, limits=BOXED)
    assert "mounted" not in result.stdout, result.stdout
    host.assert_bounded(DISK_MB)


NAMESPACE_CALLS = """
import ctypes, ctypes.util, os
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x10000000, 0x40000000
for name, call in [('unshare-user', lambda: libc.unshare(CLONE_NEWUSER)),
                   ('unshare-net', lambda: libc.unshare(CLONE_NEWNET)),
                   ('unshare-mount', lambda: libc.unshare(CLONE_NEWNS)),
                   ('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)),
                   ('setns', lambda: libc.setns(os.open('/proc/self/ns/net', os.O_RDONLY), 0)),
                   ('chroot', lambda: libc.chroot(b'/tmp'))]:
    print('ok' if call() == 0 else 'refused', name, ctypes.get_errno(), flush=True)
"""


def test_namespace_and_mount_calls_are_refused(sandbox: Sandbox) -> None:
    mounts0 = Path("/proc/self/mountinfo").read_text()
    result = sandbox.run_python(NAMESPACE_CALLS, limits=BOXED)
    assert result.ok, result.stderr
    assert "ok " not in result.stdout and result.stdout.count("refused") == 6, result.stdout
    assert Path("/proc/self/mountinfo").read_text() == mounts0  # nothing reached the host's mount table


@pytest.fixture
def host_unix_listener() -> Iterator[tuple[str, socket.socket]]:
    """A 0777 pathname socket a root service listens on, outside every hidden directory."""
    base = Path("/var/cache") if ROOT else Path.home()
    folder = base / f"llmeval-test-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o755)
    path = str(folder / "service.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(8)
    listener.settimeout(0.2)
    try:
        yield path, listener
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
        folder.rmdir()


def test_pathname_unix_socket_to_a_host_listener(sandbox: Sandbox,
                                                 host_unix_listener: tuple[str, socket.socket]) -> None:
    path, listener = host_unix_listener
    code = ("import socket, sys\nfor kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):\n"
            "    try:\n        s = socket.socket(socket.AF_UNIX, kind)\n        s.connect(sys.argv[1])\n"
            "        s.send(b'hello from the sandbox')\n        print('connected', kind)\n"
            "    except OSError as e:\n        print('blocked', kind, e.errno)\n")
    result = sandbox.run([sandbox.python, "-I", "main.py", path], {"main.py": code}, limits=SHORT)
    assert "connected" not in result.stdout, result.stdout
    with pytest.raises((TimeoutError, socket.timeout, BlockingIOError)):
        listener.accept()


ARCH_BYPASS_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* i386's socketcall through int 0x80 from a 64-bit process: the filter sees AUDIT_ARCH_I386. */
static long socketcall32(long call, unsigned int *args) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(102L), "b"(call), "c"(args) : "memory", "r8", "r9", "r10", "r11");
    return r;
}

int main(int argc, char **argv) {
    unsigned int *mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    struct sockaddr_un *addr = (struct sockaddr_un *)(mem + 64);
    addr->sun_family = AF_UNIX;
    strncpy(addr->sun_path, argc > 1 ? argv[1] : "/nonexistent", sizeof addr->sun_path - 1);
    mem[0] = AF_UNIX; mem[1] = SOCK_STREAM; mem[2] = 0;
    long fd = socketcall32(1, mem);
    printf("i386 socket %ld\n", fd);
    if (fd >= 0) {
        mem[0] = (unsigned int)fd; mem[1] = (unsigned int)(unsigned long)addr; mem[2] = sizeof *addr;
        printf("i386 connect %ld\n", socketcall32(3, mem));
    }
    long x = syscall(0x40000000L | 41, AF_UNIX, SOCK_STREAM, 0);
    printf("x32 socket %ld\n", x);
    if (x >= 0) printf("x32 connect %ld\n", syscall(0x40000000L | 42, x, addr, sizeof *addr));
    return 0;
}
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 system calls from a 64-bit process: x86_64 only")
def test_i386_socketcall_and_x32_cannot_bypass_the_filter(sandbox: Sandbox,
                                                          host_unix_listener: tuple[str, socket.socket]) -> None:
    """A filter keyed on x86_64 numbers alone would let i386's socketcall (int 0x80) or the x32 ABI through."""
    path, listener = host_unix_listener
    with sandbox.workdir() as wd:
        wd.write("arch.c", ARCH_BYPASS_C)
        compiled = wd.run(["gcc", "-O1", "-o", "arch", "arch.c"], limits=SHORT)
        assert compiled.ok, compiled.stderr
        result = wd.run(["./arch", path], limits=SHORT)
    assert result.ok, result.stderr
    assert "i386 socket -38" in result.stdout and "connect" not in result.stdout, result.stdout
    with pytest.raises((TimeoutError, socket.timeout, BlockingIOError)):
        listener.accept()


def test_socketpair_pipes_and_multiprocessing_still_work(sandbox: Sandbox) -> None:
    code = (
        "import multiprocessing as mp, socket\n"
        "a, b = socket.socketpair()\na.send(b'ping')\nprint(b.recv(4).decode())\n"
        "if __name__ == '__main__':\n"
        "    r, w = mp.Pipe()\n    w.send(41)\n    print(r.recv() + 1)\n"
        "    with mp.Pool(2) as pool:\n        print(sum(pool.map(abs, [-1, -2, -3])))\n"
        "    print(mp.Queue().empty())\n"
    )
    before = set(os.listdir("/dev/shm"))
    result = sandbox.run_python(code, limits=SHORT)
    assert result.ok, result.stderr
    assert result.stdout.split() == ["ping", "42", "6", "True"]
    assert set(os.listdir("/dev/shm")) - before == set()  # no semaphore files left in the host's /dev/shm


def test_no_socket_family_can_be_created(sandbox: Sandbox) -> None:
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        v6.bind(("::1", 0))
    except OSError:
        v6.close()
        v6 = None  # type: ignore[assignment]
    code = (
        "import socket, sys\nfams = {'inet': 2, 'inet6': 10, 'netlink': 16, 'packet': 17, 'unix': 1, 'vsock': 40,\n"
        "        'alg': 38, 'bluetooth': 31, 'key': 15}\n"
        "for name, fam in fams.items():\n"
        "    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):\n"
        "        try:\n            socket.socket(fam, kind).close()\n            print('created', name, kind)\n"
        "        except OSError:\n            pass\n"
        "if len(sys.argv) > 1:\n    try:\n        socket.create_connection(('::1', int(sys.argv[1])), timeout=1)\n"
        "        print('connected v6')\n    except OSError:\n        pass\nprint('done')\n"
    )
    try:
        if v6 is not None:
            v6.listen(4)
            v6.settimeout(0.2)
        args = [str(v6.getsockname()[1])] if v6 is not None else []
        result = sandbox.run([sandbox.python, "-I", "main.py", *args], {"main.py": code}, limits=SHORT)
        assert "done" in result.stdout, result.stderr
        assert "created" not in result.stdout and "connected" not in result.stdout, result.stdout
        if v6 is not None:
            with pytest.raises((TimeoutError, socket.timeout, BlockingIOError)):
                v6.accept()
    finally:
        if v6 is not None:
            v6.close()


def syscall_probe(nr_x86: int, nr_arm: int, args: str = "0, 0, 0, 0") -> str:
    nr = nr_x86 if os.uname().machine == "x86_64" else nr_arm
    return ("import ctypes, ctypes.util\nlibc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"
            f"r = libc.syscall({nr}, {args})\nprint('ok' if r >= 0 else 'refused', ctypes.get_errno())\n")


def test_io_uring_is_refused(sandbox: Sandbox) -> None:
    """io_uring can open and connect sockets without the socket() system call (IORING_OP_SOCKET)."""
    code = syscall_probe(425, 425, "8, ctypes.create_string_buffer(120), 0, 0")  # io_uring_setup
    result = sandbox.run_python(code, limits=SHORT)
    assert result.ok and result.stdout.startswith("refused"), result.stdout + result.stderr


def test_ptrace_of_a_sibling_is_refused(sandbox: Sandbox) -> None:
    code = (
        "import ctypes, ctypes.util, os, time\nlibc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"
        "pid = os.fork()\nif pid == 0:\n    time.sleep(3)\n    os._exit(0)\n"
        "r = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH\n"
        "print('attached' if r == 0 else 'refused', ctypes.get_errno())\nos.kill(pid, 9)\n"
    )
    result = sandbox.run_python(code, limits=SHORT)
    assert result.ok and result.stdout.startswith("refused"), result.stdout + result.stderr


def test_kernel_keyring_is_refused(sandbox: Sandbox) -> None:
    """Keyrings are not namespaced: a key added under the sandbox uid would outlive the run."""
    marker = "llmeval-" + uuid.uuid4().hex[:8]
    code = (
        "import ctypes, ctypes.util, sys\nlibc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)\n"
        "nr = 248 if __import__('os').uname().machine == 'x86_64' else 217  # add_key\n"
        "r = libc.syscall(nr, b'user', sys.argv[1].encode(), b'secret', 6, -4)  # KEY_SPEC_USER_KEYRING\n"
        "print('added' if r >= 0 else 'refused', ctypes.get_errno())\n"
    )
    result = sandbox.run([sandbox.python, "-I", "main.py", marker], {"main.py": code}, limits=SHORT)
    assert result.ok and result.stdout.startswith("refused"), result.stdout + result.stderr
    assert marker not in Path("/proc/keys").read_text()


def test_proc_sys_and_sysrq_writes_are_refused(sandbox: Sandbox) -> None:
    knobs = ["/proc/sys/kernel/shmmax", "/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/hostname",
             "/proc/sys/fs/file-max"]
    before = {k: Path(k).read_text() for k in knobs}
    code = ("import sys\nfor p in sys.argv[1:] + ['/proc/sysrq-trigger']:\n"
            "    try:\n        open(p, 'w').write('1\\n')\n        print('wrote', p)\n"
            "    except OSError as e:\n        print('refused', p, e.errno)\n")
    result = sandbox.run([sandbox.python, "-I", "main.py", *knobs], {"main.py": code}, limits=SHORT)
    assert "wrote" not in result.stdout, result.stdout
    assert {k: Path(k).read_text() for k in knobs} == before


@pytest.mark.skipif(not ROOT, reason="the uid drop needs root")
def test_setuid_binaries_do_not_give_root(sandbox: Sandbox) -> None:
    mounts0 = Path("/proc/self/mountinfo").read_text()
    code = (
        "import os, subprocess\n"
        "for cmd in (['mount', '-t', 'tmpfs', 'none', '/tmp'], ['umount', '-l', '/tmp'], ['newgrp', 'root'],\n"
        "            ['gpasswd', '-a', 'nobody', 'root'], ['chsh', '-s', '/bin/sh', 'root']):\n"
        "    try:\n        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3, input='')\n"
        "        print(cmd[0], r.returncode)\n    except (OSError, subprocess.TimeoutExpired) as e:\n"
        "        print(cmd[0], 'failed', e)\n"
        "print('euid', os.geteuid())\n"
    )
    shadow0 = Path("/etc/shadow").read_text()
    group0 = Path("/etc/group").read_text()
    result = sandbox.run_python(code, limits=SHORT)
    assert "euid 0" not in result.stdout and "euid" in result.stdout, result.stdout + result.stderr
    assert Path("/etc/shadow").read_text() == shadow0 and Path("/etc/group").read_text() == group0
    assert Path("/proc/self/mountinfo").read_text() == mounts0


def test_cannot_read_another_runs_files(sandbox: Sandbox) -> None:
    secret = "sk-other-run-" + uuid.uuid4().hex
    code = (
        "import os, sys\nfor root in sys.argv[1:] + ['/tmp']:\n"
        "    for dirpath, _, names in os.walk(root):\n"
        "        for n in names:\n            try:\n                print(open(os.path.join(dirpath, n)).read())\n"
        "            except OSError:\n                pass\n"
    )
    with sandbox.workdir() as other:
        other.write("secret.txt", secret)
        other.run(["/bin/sh", "-c", f"echo {secret} > /tmp/secret.txt"], limits=SHORT)
        result = sandbox.run([sandbox.python, "-I", "main.py", str(other.path)], {"main.py": code},
                             limits=SHORT)
    assert secret not in result.stdout


@pytest.mark.skipif(not ROOT, reason="a host file only root can write")
def test_symlinks_planted_for_a_later_host_write(sandbox: Sandbox) -> None:
    tag = uuid.uuid4().hex
    target = Path(f"/etc/llmeval-{tag}")
    code = (f"import os\nos.symlink({str(target)!r}, 'main2.py')\nos.symlink('/etc', 'sub')\n"
            f"os.symlink({str(target)!r}, '/tmp/t')\n")
    try:
        with sandbox.workdir() as wd:
            wd.write("main.py", code)
            assert wd.run([sandbox.python, "-I", "main.py"], limits=SHORT).ok
            for name in ("main2.py", f"sub/llmeval-{tag}"):
                with pytest.raises((ValueError, OSError)):
                    wd.write(name, "owned")
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.skipif(not ROOT, reason="/etc/shadow is unreadable anyway without root")
def test_collect_follows_no_links_and_reads_no_fifos(sandbox: Sandbox) -> None:
    code = ("import os\nos.symlink('/etc', 'd')\nos.mkfifo('fifo')\nos.mkdir('real')\n"
            "os.symlink('/etc/shadow', 'real/inner')\n"
            "try:\n    os.link('/etc/shadow', 'hard')\nexcept OSError as e:\n    print('no hard link', e.errno)\n")
    start = time.monotonic()
    result = sandbox.run_python(code, collect=["d/shadow", "fifo", "real/inner", "hard", "real"], limits=SHORT)
    assert time.monotonic() - start < 8
    assert result.ok, result.stderr
    assert result.files == {}


@pytest.mark.skipif(not ROOT, reason="protected hard links matter for another uid's files")
def test_hard_links_to_host_files_are_refused(sandbox: Sandbox) -> None:
    nlink0 = os.stat("/etc/passwd").st_nlink
    code = ("import os\nfor src in ('/etc/passwd', '/etc/shadow', '/usr/bin/passwd'):\n"
            "    try:\n        os.link(src, os.path.basename(src) + '.lnk')\n        print('linked', src)\n"
            "    except OSError as e:\n        print('refused', src, e.errno)\n")
    result = sandbox.run_python(code, limits=SHORT, collect=["passwd.lnk", "shadow.lnk"])
    assert "linked" not in result.stdout, result.stdout
    assert os.stat("/etc/passwd").st_nlink == nlink0 and result.files == {}


def test_runs_leave_nothing_in_the_temporary_directory(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = Sandbox(sandbox.level, base_dir=tmp_path, fork_server=sandbox.uses_fork_server)
    code = ("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)\n"
            "open('/tmp/t', 'w').write('x')\nprint('out')\nimport sys\nprint('err', file=sys.stderr)\n")
    for _ in range(2):
        result = sb.run_python(code, limits=SHORT)
        assert result.ok and result.stdout == "out\n", result.stderr
    with sb.workdir() as wd:
        wd.write("x.c", "int main(void) { return 0; }\n")
        assert wd.run(["gcc", "-o", "x", "x.c"], limits=SHORT).ok
        assert wd.run(["./x"], limits=SHORT).ok
    assert list(tmp_path.iterdir()) == []


KILLED_PARENT = """
import sys, threading, time
from pathlib import Path
from pytest_llmeval.sandbox.isolation import Limits, Sandbox
sb = Sandbox(sys.argv[1], base_dir=Path(sys.argv[2]))
code = ("import sys, time\\nfor i in range(10):\\n    open(f'/tmp/fill{i}', 'wb').write(b'x' * (15 << 20))\\n"
        "open('fill', 'wb').write(b'x' * (15 << 20))\\nprint('filled', flush=True)\\ntime.sleep(60)\\n")
threading.Thread(target=sb.run, args=([sb.python, "-I", "main.py", sys.argv[3]], {"main.py": code}),
                 kwargs={"limits": Limits(timeout_s=60, cpu_s=60)}, daemon=True).start()
time.sleep(60)
"""


def test_nothing_is_left_after_the_parent_is_killed(sandbox: Sandbox, tmp_path: Path) -> None:
    """A session killed mid-run (165 MiB written) leaves no process, no file and no memory behind."""
    marker = uuid.uuid4().hex
    base = tmp_path / "base"
    base.mkdir()
    with measuring_alone():
        shmem0 = shmem_mb()
        env = dict(os.environ, LLMEVAL_SANDBOX_FORK_SERVER="1" if sandbox.uses_fork_server else "0")
        parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, sandbox.level, str(base), marker], env=env)
        try:
            deadline = time.monotonic() + 15
            while not sandbox_processes(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sandbox_processes(marker), "the run did not start"
            time.sleep(1)  # its files written
        finally:
            parent.kill()
            parent.wait(10)
        deadline = time.monotonic() + 5
        while sandbox_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandbox_processes(marker) == []
        if not ROOT:  # a host directory then, which the next session sweeps (as root there is none)
            Sandbox(sandbox.level, base_dir=base)
        assert list(base.iterdir()) == []
        time.sleep(0.2)  # the helper reads its end of file and exits
        assert shmem_mb() - shmem0 < MARGIN_MB


def test_disk_mb_in_a_suites_limits(tmp_path: Path) -> None:
    """``limits: {disk_mb: N}`` is validated when the case file loads and reaches the sandbox run."""
    from pytest_llmeval.cases.loader import load_file
    from pytest_llmeval.checks.builtin import builtin_registry
    from pytest_llmeval.checks.code import CodeContext

    suite = ("suite: s\nkind: code\nlimits: {disk_mb: %s}\ncases:\n"
             "  - {id: a, language: python, prompt: p, expect: [{runs: true}]}\n")
    (tmp_path / "bad.yaml").write_text(suite % 4)
    (tmp_path / "good.yaml").write_text(suite % 24)
    bad = load_file(tmp_path / "bad.yaml", builtin_registry())
    assert bad.cases == [] and any("disk_mb" in (e.field or "") + e.message for e in bad.errors), bad.errors
    good = load_file(tmp_path / "good.yaml", builtin_registry())
    assert good.errors == [] and good.cases[0].limits == {"disk_mb": 24}
    code = FILL.replace("where, total_mb = sys.argv[1], int(sys.argv[2])", "where, total_mb = '/tmp', 256")
    sandbox = Sandbox("auto")
    with HostWatch() as host, CodeContext(code, "python", sandbox, Limits(**good.cases[0].limits)) as ctx:
        result = ctx.run()
    assert result is not None and "stopped" in result.stdout and written_mb(result.stdout) <= 24
    host.assert_bounded(24)


@pytest.mark.skipif(not ROOT, reason="a host directory only root can write")
def test_work_directory_swapped_for_a_link_between_runs(sandbox: Sandbox) -> None:
    """The next run binds (bwrap) or enters the work directory by path: the code must not be able to replace
    it with a link to a host directory, which the next run would then get writable."""
    tag = uuid.uuid4().hex
    code = ("import os, shutil, sys\nw = os.getcwd()\nos.chdir('/')\n"
            "for step in (lambda: shutil.rmtree(w), lambda: os.rename(w, w + '.old'),\n"
            "             lambda: os.symlink('/etc', w)):\n"
            "    try:\n        step()\n        print('done')\n    except OSError as e:\n        print('refused', e.errno)\n")
    with sandbox.workdir(BOXED) as wd:
        wd.write("main.py", code)
        first = wd.run([sandbox.python, "-I", "main.py"], limits=BOXED)
        second = wd.run(["/bin/sh", "-c", f"echo owned > llmeval-{tag}"], limits=BOXED)
    assert not Path(f"/etc/llmeval-{tag}").exists(), (first.stdout, second.stderr)
    assert first.stdout.count("refused") >= 2, first.stdout


def test_attack_matrix_is_the_documented_one() -> None:
    """The documented matrix (docs/sandbox.md) and this file's are one table."""
    def matrix(text: str) -> list[str]:
        lines = text[text.index("| attack "):].splitlines()
        return lines[:next(i for i, line in enumerate(lines + [""]) if not line.startswith("|"))]

    documented = Path(__file__).parents[2] / "docs" / "sandbox.md"
    assert __doc__ is not None and matrix(__doc__) == matrix(documented.read_text())
    assert len(matrix(__doc__)) - 2 >= 35


@pytest.mark.skipif(not ROOT, reason="root stands in for a normal user here (bwrap's user namespace)")
def test_unprivileged_bwrap_sizes_tmp_and_shm_and_leaves_nothing(tmp_path: Path) -> None:
    """The path of a session without root: no uid drop and no private storage, but /tmp and /dev/shm are bwrap
    tmpfs mounts of disk_mb, /dev is read-only, and the host work directory goes when the run ends (docs/sandbox.md
    says what is not contained there: the work directory is bounded per file only)."""
    try:
        sb = Sandbox("bwrap", base_dir=tmp_path)
    except SandboxUnavailable as exc:
        pytest.skip(f"bwrap is not usable here: {exc}")
    sb.is_root = False
    for where in ("/tmp", "/dev/shm", "/dev"):  # /dev: bwrap's own tmpfs, without a size, so read-only
        with HostWatch() as host:
            result = sb.run([sb.python, "-I", "main.py", where, "512"], {"main.py": FILL}, limits=BOXED)
        assert "stopped" in result.stdout and written_mb(result.stdout) <= DISK_MB, result.stdout + result.stderr
        host.assert_bounded(DISK_MB)
    assert "written 0" in result.stdout
    assert list(tmp_path.iterdir()) == []
