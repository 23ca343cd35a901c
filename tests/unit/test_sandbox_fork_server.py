"""The bwrap level's fork server (sandbox/zygote.py): runs forked in one long-lived bwrap behave like a bwrap of
their own and cannot reach the server or a later run. The attack battery of test_sandbox.py runs against it too
(its ``bwrap`` parameter; ``bwrap-per-run`` is the path without the server)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_llmeval.core.errors import InfrastructureError
from pytest_llmeval.sandbox.isolation import Limits, Sandbox, SandboxUnavailable

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the fork server is the bwrap level's path as root"),
]
SHORT = Limits(timeout_s=8, cpu_s=5)


def sandboxes() -> tuple[Sandbox, Sandbox]:
    try:
        forked, per_run = Sandbox("bwrap", fork_server=True), Sandbox("bwrap", fork_server=False)
    except SandboxUnavailable as exc:
        pytest.skip(f"bwrap is not usable here: {exc}")
    assert forked.fork_server() is not None and per_run.fork_server() is None
    return forked, per_run


PROBE = """\
import atexit, os, sys, threading, time
print(sys.argv, __file__, __name__, sorted(globals()), sys.path, sys.flags.isolated, sys.flags.safe_path)
print(sorted(os.environ.items()), os.getcwd(), sys.stdout.encoding, sys.stdin.read())
print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[1:])
atexit.register(lambda: print('atexit ran'))
threading.Thread(target=lambda: (time.sleep(0.2), print('thread finished', flush=True))).start()
"""

ENDINGS = {
    "return": ("", 0),
    "exit 3": ("sys.exit(3)", 3),
    "exit with a message": ("sys.exit('bad input')", 1),
    "uncaught exception": ("def f():\n    return 1 / 0\nf()", 1),
    "os._exit": ("sys.stdout.flush()\nos._exit(5)", 5),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_in_process_runs_behave_like_a_fresh_interpreter(ending: str) -> None:
    """``python -I main.py`` forked from the server: same argv, globals, path, environment, stdin, exit status,
    traceback, atexit and thread shutdown as the interpreter started afresh in a bwrap of its own."""
    forked, per_run = sandboxes()
    tail, status = ENDINGS[ending]
    code = PROBE + tail + "\n"
    results = [sb.run([sb.python, "-I", "main.py", "arg"], {"main.py": code}, stdin="from stdin", limits=SHORT)
               for sb in (forked, per_run)]
    assert results[0].exit_code == results[1].exit_code == status
    assert results[0].stdout == results[1].stdout
    assert results[0].stderr == results[1].stderr
    if ending == "uncaught exception":
        assert 'File "/run/pytest-llmeval-box/work/main.py", line 9, in <module>' in results[0].stderr
        assert "<string>" not in results[0].stderr  # the server's own frame is not shown
    if ending != "os._exit":
        assert "thread finished" in results[0].stdout and "atexit ran" in results[0].stdout


def test_unbuffered_flag_and_other_commands() -> None:
    forked, _ = sandboxes()
    code = "import sys, time\nprint('before', flush=False)\nsys.stdout.write('partial')\ntime.sleep(30)\n"
    result = forked.run([forked.python, "-I", "-u", "main.py"], {"main.py": code}, limits=Limits(timeout_s=2))
    assert result.timed_out and result.stdout == "before\npartial"  # written as it went, then killed
    shell = forked.run(["sh", "-c", "echo $0 $1; exit 4", "sh", "x"])
    assert (shell.stdout, shell.exit_code) == ("sh x\n", 4)
    other = forked.run([forked.python, "-I", "-S", "-c", "import sys; print(sys.flags.no_site)"])  # executed
    assert other.stdout == "1\n"


ATTACK = """\
import ctypes, os, signal, sys, time
print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
for pid in range(1, 40):
    try:
        os.kill(pid, signal.SIGKILL if pid != os.getpid() else 0)
    except OSError:
        pass
os.X_LEFT_BY_THE_FIRST_RUN = 1
open('/tmp/left', 'w').write('x')
open('/dev/shm/left', 'w').write('x')
print('boxes', os.listdir('/run/llmeval-boxes'), sorted(os.listdir('/run')))
status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
print('caps', status['CapEff'], status['CapBnd'], status['NoNewPrivs'], status['Seccomp'])
sys.stdout.flush()
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
    os._exit(0)
ctypes.string_at(0)  # and die of SIGSEGV
"""

LATER = """\
import os
print(hasattr(os, 'X_LEFT_BY_THE_FIRST_RUN'), os.listdir('/tmp'), os.listdir('/dev/shm'), os.listdir('.'))
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
"""


def test_a_run_cannot_reach_the_server_or_a_later_run() -> None:
    forked, _ = sandboxes()
    server = forked.fork_server()
    assert server is not None
    first = forked.run([forked.python, "-I", "main.py"], {"main.py": ATTACK}, limits=SHORT)
    assert first.reason == "killed by signal SIGSEGV"
    lines = dict(line.split(" ", 1) for line in first.stdout.splitlines())
    assert lines["pids"] == "[1, 2]"  # its pid 1 (root) and itself: no server, no other run
    assert lines["boxes"] == "[] ['llmeval-boxes', 'pytest-llmeval-box']"  # no other run's storage
    assert lines["caps"] == "0000000000000000 0000000000000000 1 2"  # no capability, no new privileges, filtered
    assert forked.fork_server() is server and server.alive()
    later = forked.run([forked.python, "-I", "main.py"], {"main.py": LATER}, limits=SHORT)
    assert later.stdout == "False [] [] ['main.py']\n[1, 2]\n", later.stderr


def test_in_process_runs_get_fresh_limits() -> None:
    forked, _ = sandboxes()
    code = "import resource\nprint([resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in " \
           "('AS', 'CPU', 'FSIZE', 'NOFILE', 'CORE', 'NPROC')])\n"
    limits = Limits(cpu_s=3, memory_mb=512, max_file_mb=4, max_open_files=64, max_processes=8)
    result = forked.run_python(code, limits=limits)
    mib = 1 << 20
    assert result.stdout == f"[{(512 * mib,) * 2}, (3, 4), {(4 * mib,) * 2}, (64, 64), (0, 0), (8, 8)]\n"
    assert forked.run_python("x = bytearray(600 << 20)", limits=limits).reason == "killed: memory limit 512 MiB"


def test_the_server_ends_with_its_sandbox_and_is_replaced_when_gone() -> None:
    forked, _ = sandboxes()
    server = forked.fork_server()
    assert server is not None
    with forked.workdir(SHORT) as wd:
        server.proc.kill()  # the server is gone mid-work-directory: its runs are an infrastructure error
        server.proc.wait(5)
        with pytest.raises(InfrastructureError, match="fork server"):
            wd.run([forked.python, "-I", "-c", "print(1)"], limits=SHORT)
    assert forked.run_python("print(2)", limits=SHORT).stdout == "2\n"  # a new server for the next one
    replacement = forked.fork_server()
    assert replacement is not None and replacement is not server
    proc = replacement.proc
    del forked, replacement, server, wd
    gc.collect()
    assert proc.wait(5) is not None  # the Sandbox collected, its server exits


def test_a_forked_host_process_starts_its_own_server(tmp_path: Path) -> None:
    forked, _ = sandboxes()
    forked.run_python("print(1)", limits=SHORT)
    pid = os.fork()
    if pid == 0:  # a child of a process holding a server (multiprocessing's fork) never uses the parent's
        try:
            ok = forked.run_python("print(3)", limits=SHORT).stdout == "3\n"
            ok = ok and forked.fork_server() is not None and forked.fork_server().owner == os.getpid()  # type: ignore[union-attr]
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert forked.run_python("print(4)", limits=SHORT).stdout == "4\n"  # and the parent's is still there


@pytest.mark.parametrize("how", ["import os; os.abort()", "import signal; signal.raise_signal(signal.SIGTERM)",
                                 "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
def test_a_program_that_signals_itself_dies_of_that_signal(how: str) -> None:
    """The run's pid 1 is created with a raw clone(); the program is a proper fork of it, with the C library's
    view of its own process intact (abort and raise signal the right thread), as with a bwrap of its own."""
    forked, per_run = sandboxes()
    reasons = [sb.run_python(how, limits=SHORT).reason for sb in (forked, per_run)]
    assert reasons[0] == reasons[1] and reasons[0] is not None and reasons[0].startswith("killed by signal SIG")


def test_a_server_outlives_the_thread_that_started_it() -> None:
    """bwrap's --die-with-parent fires when the *thread* that started it ends: a server started by a grading thread
    that then finished was SIGKILLed with the runs of other threads in flight (their output lost)."""
    forked = Sandbox("bwrap", fork_server=True)  # its server not started yet: the first thread below starts it
    started = threading.Event()
    results: list[object] = []

    def slow() -> None:
        started.wait(10)
        results.append(forked.run_python("import time\ntime.sleep(1)\nprint('slow done')", limits=SHORT))

    other = threading.Thread(target=slow)
    other.start()
    def first_run() -> None:  # starts the server, and ends while the slow run is under way
        forked.run_python("print(1)", limits=SHORT)
        started.set()
        time.sleep(0.3)

    first = threading.Thread(target=first_run)
    first.start()
    first.join()
    other.join()
    assert [getattr(r, "stdout", r) for r in results] == ["slow done\n"]


STRESS = """\
import os, sys, threading
from pytest_llmeval.sandbox.isolation import Limits, Sandbox
sb = Sandbox("bwrap", fork_server=True)
problems = []

def worker(t):
    for i in range(int(sys.argv[1]) - 6 * (int(sys.argv[2]) - 1 - t)):  # the first thread, which starts the
                                                                       # server, ends first
        token = f"{os.getpid()}-{t}-{i}"
        try:
            if i % 3 == 0:  # a run killed at its deadline, and at once the next run with the same uid
                r = sb.run_python("while True: pass", limits=Limits(timeout_s=0.2, cpu_s=5))
                if not r.timed_out:
                    problems.append(f"{token}: not timed out: {r}")
                continue
            if i % 3 == 1:
                r = sb.run(["sh", "-c", "read x; echo $x; echo $x >&2"], stdin=token + "\\n",
                           limits=Limits(timeout_s=20))
                want = (token + "\\n", token + "\\n", 0)
            else:
                r = sb.run_python(f"import time\\ntime.sleep(0.02)\\nprint({token!r})", limits=Limits(timeout_s=20))
                want = (token + "\\n", "", 0)
            if (r.stdout, r.stderr, r.exit_code) != want:
                problems.append(f"{token}: {r}")
        except Exception as exc:
            problems.append(f"{token}: {exc!r}")

threads = [threading.Thread(target=worker, args=(t,)) for t in range(int(sys.argv[2]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(problems) or "all good")
"""


def test_many_concurrent_runs_each_get_their_own_output() -> None:
    """Runs from threads of one Sandbox and from two processes at once, a third of them killed at their deadline:
    every run's output is its own and complete, none is killed by another run's end (a deadline's kill reached the
    next run of the same uid; a server died with the thread that started it)."""
    if Sandbox("bwrap", fork_server=True).fork_server() is None:
        pytest.skip("the fork server cannot start here")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    procs = [subprocess.Popen([sys.executable, "-c", STRESS, "36", "4"], stdout=subprocess.PIPE,  # noqa: S603
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [out for out, _err in outputs] == ["all good\n", "all good\n"], outputs


def test_closed_work_directories_are_unmounted_while_the_server_is_idle() -> None:
    """The server unmounts a closed work directory's storage and makes the next one ahead when it has nothing else
    to do: after a burst of runs, only the spare storage is left (their memory is the host's)."""
    forked, _ = sandboxes()
    server = forked.fork_server()
    assert server is not None
    for i in range(20):
        assert forked.run_python(f"open('f', 'w').write('x' * 100000)\nprint({i})", limits=SHORT).stdout == f"{i}\n"
    boxes = Path(f"/proc/{server.pid}/root/run/llmeval-boxes")
    deadline = time.monotonic() + 10
    while len(os.listdir(boxes)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(boxes)) == 1  # the spare
    spare = boxes / os.listdir(boxes)[0]
    assert os.listdir(spare / "work") == [] and os.listdir(spare / "out") == []


def test_runs_get_their_own_random_numbers() -> None:
    """Modules a program usually imports are imported by the server once (a run finds them loaded), and random's state
    is reseeded in each run: two runs forked from one server draw different numbers, as two interpreters do."""
    forked, _ = sandboxes()
    code = "import random, sys\nprint('typing' in sys.modules, random.random(), random.getrandbits(64))"
    draws = [forked.run_python(code, limits=SHORT).stdout.split() for _ in range(3)]
    assert all(d[0] == "True" for d in draws), draws
    assert len({tuple(d[1:]) for d in draws}) == 3, draws
