"""Benchmark: what a sandboxed run costs, and how much of the host a hostile one can take.

Run with ``python bench/bench_sandbox.py [--levels bwrap,bwrap-per-run,unshare] [--runs 40]`` (as root, for the
uid drop and the private storage; ``bwrap`` is the level's fork server, ``bwrap-per-run`` one bwrap per run, the
path taken without it). For each level it prints:

* the CPU time (``getrusage(RUSAGE_CHILDREN)``: the sandbox's waited-for processes, plus this process) and
  the median wall time of a sandboxed ``print(1)``: CPU time is the steadier number on a loaded machine;
* the host's growth in shared memory (``/proc/meminfo`` Shmem: tmpfs, /dev/shm, memfd and SysV pages) and
  in disk use (``statvfs`` of the temporary directory) while a program tries to write 1 GiB into /tmp, its
  work directory or /dev/shm, to hold 40 memfds of 15 MiB, or 12 detached SysV segments of 48 MiB, with the
  default limits.

Only the public ``Sandbox`` API is used, so the same script measures an older checkout:
``git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old/src python bench/bench_sandbox.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

from pytest_llmeval.sandbox.isolation import Limits, Sandbox

FILL = """
import os, sys, time
where, total_mb = sys.argv[1], int(sys.argv[2])
chunk = b'x' * (1 << 20)
written = 0
try:
    for i in range(total_mb // 8):  # 8 MiB files: under the per-file limit
        with open(os.path.join(where, f'fill{os.getpid()}-{i}'), 'wb') as f:
            for _ in range(8):
                f.write(chunk)
                written += 1
except OSError as e:
    print('stopped', e.strerror, flush=True)
print('written', written, flush=True)
time.sleep(0.3)
"""

MEMFD = """
import os, time
fds = []
try:
    for i in range(40):
        fd = os.memfd_create(f'm{i}')
        os.write(fd, b'x' * (15 << 20))
        fds.append(fd)
except OSError as e:
    print('stopped', e.strerror)
print('held', len(fds) * 15, flush=True)
time.sleep(0.3)
"""

SYSV = """
import ctypes, ctypes.util, os, time
libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
made = 0
for i in range(12):
    sid = libc.shmget(0, 48 << 20, 0o1000 | 0o600)
    if sid < 0:
        print('stopped', os.strerror(ctypes.get_errno()))
        break
    addr = libc.shmat(sid, None, 0)
    ctypes.memset(addr, 1, 48 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    made += 1
print('held', made * 48, flush=True)
time.sleep(0.3)
"""


def shmem_mb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("Shmem:"):
            return int(line.split()[1]) / 1024
    return 0.0


def disk_mb() -> float:
    st = os.statvfs(tempfile.gettempdir())
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


def peak_growth(fn: Callable[[], str]) -> tuple[str, float, float]:
    """Run ``fn`` while sampling the host every 10 ms: (its answer, peak shared-memory and disk growth)."""
    shmem0, disk0 = shmem_mb(), disk_mb()
    peaks = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks[0] = max(peaks[0], shmem_mb() - shmem0)
            peaks[1] = max(peaks[1], disk_mb() - disk0)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answer = fn()
    finally:
        done.set()
        sampler.join()
    return answer, peaks[0], peaks[1]


def cpu_s() -> float:
    children, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="bwrap,bwrap-per-run,unshare")
    parser.add_argument("--runs", type=int, default=40)
    opts = parser.parse_args()
    limits = Limits(timeout_s=30, cpu_s=20)
    for level in opts.levels.split(","):
        sandbox = Sandbox(level.removesuffix("-per-run"), fork_server=not level.endswith("-per-run"))
        sandbox.run_python("print(1)")  # warm: probes, imports
        walls = []
        cpu0 = cpu_s()
        for _ in range(opts.runs):
            start = time.perf_counter()
            sandbox.run_python("print(1)")
            walls.append(time.perf_counter() - start)
        cpu = (cpu_s() - cpu0) / opts.runs
        # The fork server's runs are not our children (they are the server's, reaped by the kernel): their CPU
        # time is not counted by RUSAGE_CHILDREN, so only the wall time compares there.
        cpu_text = "n/a (not our children)" if sandbox.uses_fork_server else f"{cpu * 1000:.1f} ms"
        print(f"{level}: print(1) CPU {cpu_text}, {statistics.median(walls) * 1000:.1f} ms wall (median of "
              f"{opts.runs}; load average {os.getloadavg()[0]:.1f})")
        attacks: list[tuple[str, list[str], str]] = [
            ("write 1 GiB into /tmp", ["/tmp", "1024"], FILL),
            ("write 1 GiB into the work directory", [".", "1024"], FILL),
            ("write 1 GiB into /dev/shm", ["/dev/shm", "1024"], FILL),
            ("40 memfds of 15 MiB", [], MEMFD),
            ("12 detached SysV segments of 48 MiB", [], SYSV),
        ]
        for name, args, code in attacks:
            def attack(args: list[str] = args, code: str = code, sandbox: Sandbox = sandbox) -> str:
                result = sandbox.run([sandbox.python, "-I", "main.py", *args], {"main.py": code}, limits=limits)
                return " ".join(line for line in result.stdout.splitlines() if line) or result.stderr[-80:]

            answer, shmem, disk = peak_growth(attack)
            print(f"  {name:38} host shared memory {shmem:+6.0f} MiB, disk {disk:+6.0f} MiB   [{answer}]")


if __name__ == "__main__":
    main()
