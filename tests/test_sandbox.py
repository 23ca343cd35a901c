"""Attacks on the sandbox, each bounded in time and memory; containment is checked from the host side.

Containment matrix (``x`` contained, ``-`` not claimed; the tests assert exactly this):

| attack                                         | bwrap (root + uid drop) | unshare (root + uid drop) |
|------------------------------------------------|-------------------------|---------------------------|
| write outside the work dir (/etc, project)     | x                       | x (permissions)           |
| write to world-writable /tmp, /var/tmp          | x (private tmpfs)       | -                         |
| read /etc/shadow, list /root                    | x                       | x (permissions)           |
| read a hidden project directory                 | x (not mounted)         | - (only if world-readable)|
| see the parent's API keys (env, /proc)          | x                       | x                         |
| TCP / UDP / abstract unix socket to the host    | x (no network)          | x (no network)            |
| fork bomb (RLIMIT_NPROC per sandbox uid)        | x                       | x                         |
| allocate 4 GB                                   | x (RLIMIT_AS)           | x                         |
| infinite loop                                   | x (CPU + wall timeout)  | x                         |
| kill its parent / pid 1 / the test process      | x (pid namespace)       | x (pid namespace)         |
| background daemons left behind                  | x (pid namespace dies)  | x (--kill-child)          |
| C ``#include "/etc/shadow"``                    | x (compiled inside)     | x (compiled inside)       |
| stdout flood                                    | x (file size + cap)     | x                         |
| symlink to a secret collected as an artifact    | x                       | x                         |
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pytest_llmeval.sandbox import UID_BASE, UID_RANGE, Limits, Sandbox, SandboxUnavailable, _UidPool

LEVELS = ["bwrap", "unshare"]
SHORT = Limits(timeout_s=8, cpu_s=5)
ROOT = os.geteuid() == 0


@pytest.fixture(params=LEVELS)
def sandbox(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    secret_dir = tmp_path_factory.mktemp("project")
    (secret_dir / ".env").write_text("OPENAI_API_KEY=sk-project-secret-123456\n")
    os.chmod(secret_dir / ".env", 0o644)
    try:
        sb = Sandbox(request.param, hide=[secret_dir])
    except SandboxUnavailable as exc:
        pytest.skip(f"{request.param} is not usable here: {exc}")
    sb.secret_dir = secret_dir  # type: ignore[attr-defined]
    return sb


def sandbox_processes(marker: str) -> list[str]:
    """Processes still running under a sandbox uid whose command line carries ``marker`` (there must be none
    after a run). The marker keeps out other tests' runs: uids are leased machine-wide and reused."""
    out = subprocess.run(["ps", "-e", "-o", "uid=,pid=,args="], capture_output=True, text=True).stdout
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
    world_writable = [f"/tmp/llmeval-{tag}", f"/var/tmp/llmeval-{tag}"]
    code = ("import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'w').write('x')\n"
            "    except OSError:\n        pass\n")
    with sandbox.workdir() as wd:
        wd.write("main.py", code)
        wd.run([sandbox.python, "-I", "main.py", *targets, *world_writable], limits=SHORT)
    for target in targets:
        assert not Path(target).exists(), target
    if sandbox.level == "bwrap":  # a private /tmp; unshare shares the host's world-writable dirs
        for target in world_writable:
            assert not Path(target).exists(), target
    for target in world_writable:
        Path(target).unlink(missing_ok=True)


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
from pytest_llmeval.sandbox import _UidPool
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


def test_none_level_is_never_automatic() -> None:
    assert Sandbox("auto").level in ("bwrap", "unshare")
    assert Sandbox("none").level == "none"
    with pytest.raises(ValueError, match="unknown sandbox level"):
        Sandbox("docker")
