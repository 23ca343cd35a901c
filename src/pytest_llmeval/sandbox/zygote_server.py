"""The fork server ("zygote") of the bwrap level as root: one bubblewrap sandbox per Sandbox, a fresh process per run.

Its code runs only inside bwrap (importing this module does nothing): zygote.py hands its source to
``python -I -c`` there (the project directory the package may live in is hidden). bwrap gives it the read-only
root, the hidden directories, new pid, network, ipc and uts namespaces and its capabilities (``--cap-add ALL``);
it never runs generated code itself. It reads requests from a SOCK_SEQPACKET socket (JSON, descriptors by
SCM_RIGHTS) and exits when the host closes it:

``open``  a work directory's storage: a fresh tmpfs of ``disk_mb`` (and 64 inodes per MiB) with ``work``, ``tmp``,
          ``shm`` and an ``out`` tmpfs of its own, under /run/llmeval-boxes/<n>; the host reaches it through
          ``/proc/<pid>/root``. Answer ``{"box": n}``.
``close`` unmounts a box (lazily), when we have nothing else to do; no answer. Meanwhile we also make the next
          box ahead of its ``open``, which then only gives it to the run's uid.
``run``   descriptors [stdin, stdout, stderr, status]: we clone the run's pid 1 (root) into new pid, mount, ipc
          and uts namespaces; it binds the box's ``work``, ``tmp`` and ``shm`` at the work
          directory, /tmp and /dev/shm, covers every box with an empty read-only tmpfs, mounts a fresh /proc (its
          sysctl files read-only) and forks the program: a new session, its three descriptors only, the rlimits,
          no capability in the bounding set, no supplementary groups, the run's uid (all capabilities gone),
          no new privileges, the seccomp filter, then ``execve`` -- or, for ``python -I [-u] script args`` with
          this same interpreter, the script compiled and executed in this already-started interpreter (the
          start-up a run would repeat; its command line is set to the one asked for). pid 1 writes the exit
          status (or 128 + signal) to the status descriptor once it has killed and reaped whatever the program
          left in its pid namespace, and exits: when the host reads the status, nothing of the run is alive.

Nothing a run does reaches us or a later run: it has another uid (no signal, no ptrace, no /proc of ours: its pid
namespace holds only its own processes), its own mount namespace (the boxes of other runs are covered), its own
tmpfs, and a fresh copy of our memory that vanishes with it.
"""

import atexit
import ctypes
import gc
import importlib
import importlib.machinery
import io
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import threading
import types

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.sbrk.restype = ctypes.c_void_p
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID = 0x20000, 0x4000000, 0x8000000, 0x20000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_SET_MM, PR_SET_MM_MAP = 1, 24, 22, 38, 35, 14
BOXES = "/run/llmeval-boxes"
WORK = "/run/pytest-llmeval-box/work"  # the work directory as the code sees it, as at the other levels
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
# Standard-library modules imported before the first run (generated code imports typing, math, random... often; each
# import costs a run milliseconds). An in-process run finds them in sys.modules, as it finds ours. random's state
# is reseeded in every run (a fork would otherwise give every run the same numbers).
PRELOAD = ("typing", "math", "random", "copy", "string", "collections", "re", "hashlib", "itertools", "functools",
           "heapq", "bisect", "operator", "dataclasses", "datetime")


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _MmMap(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start",
        "arg_end", "env_start", "env_end", "auxv")] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


# Set by serve() (importing this module does nothing: run/state.py imports every module of the package).
_FILTER = b""
_FILTER_BUF = None
_PROG = None
_CAP_LAST = 63
_ARGS_BUF = None  # the in-process run's command line, kept alive
_LAYOUT: tuple[int, ...] = (0,) * 8  # our memory layout from /proc/self/stat: code, data, brk start, stack, environment


def _layout() -> tuple[int, ...]:
    with open("/proc/self/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    return tuple(int(stat[n - 3]) for n in (26, 27, 45, 46, 47, 28, 50, 51))  # proc(5)'s field numbers


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), f"mount {dst}")


_boxes = 0
_SPARE: dict[tuple[int, int], int] = {}  # (disk_mb, max_file_mb) -> a box made ahead, while we had nothing to do
_CLOSING: list[int] = []  # boxes to unmount, while we have nothing else to do
MAX_CLOSING = 8  # more than this, and they are unmounted at once (their memory is the host's)


def _make_box(disk_mb: int, max_file_mb: int) -> int:
    global _boxes
    _boxes += 1
    box = f"{BOXES}/{_boxes}"
    os.mkdir(box, 0o700)
    inodes = max(1024, 64 * disk_mb)
    _mount("pytest-llmeval", box, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,nr_inodes={inodes},mode=0755")
    os.mkdir(box + "/out", 0o700)
    _mount("pytest-llmeval", box + "/out", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={2 * max_file_mb + 1}m,nr_inodes=16,mode=0700")
    for name, mode in (("tmp", 0o1777), ("shm", 0o1777), ("work", 0o700)):
        os.mkdir(f"{box}/{name}")
        os.chmod(f"{box}/{name}", mode)
    return _boxes


def open_box(req: dict) -> dict:
    """A fresh box for a work directory, its ``work`` owned by the run's uid: the spare one if it has the size."""
    key = int(req["disk_mb"]), int(req["max_file_mb"])
    n = _SPARE.pop(key, None) or _make_box(*key)
    os.chown(f"{BOXES}/{n}/work", int(req["uid"]), int(req["uid"]))
    _SPARE.setdefault(key, 0)  # the next one is made when we are idle
    return {"box": n}


def close_box(n: int) -> None:
    box = f"{BOXES}/{n}"
    libc.umount2((box + "/out").encode(), MNT_DETACH)
    libc.umount2(box.encode(), MNT_DETACH)
    os.rmdir(box)


def _idle_work(sock: socket.socket) -> None:
    """What the host need not wait for, done between requests: unmount closed boxes, make the spare box."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while _CLOSING or 0 in _SPARE.values():
        if poller.poll(0):
            return  # a request first
        if _CLOSING:
            try:
                close_box(_CLOSING.pop())
            except OSError:
                pass
            continue
        key = next(k for k, v in _SPARE.items() if v == 0)
        try:
            _SPARE[key] = _make_box(*key)
        except OSError:
            del _SPARE[key]  # made when asked for, which reports the error


def _set_command_line(argv: list[str]) -> None:
    """What ps shows for an in-process run: the command asked for, not our source (PR_SET_MM_MAP)."""
    global _ARGS_BUF
    args = b"".join(a.encode() + b"\0" for a in argv)
    _ARGS_BUF = ctypes.create_string_buffer(args, len(args))
    start = ctypes.addressof(_ARGS_BUF)
    code0, code1, data0, data1, brk0, stack, env0, env1 = _LAYOUT  # a fork's layout is its parent's
    mm = _MmMap(code0, code1, data0, data1, brk0, libc.sbrk(0) or 0, stack, start, start + len(args), env0, env1,
                0, 0, 0xFFFFFFFF)
    libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.addressof(mm), ctypes.sizeof(mm), 0)  # cosmetic: no check


def _program(req: dict, fds: list[int]) -> None:
    """pid 2 of the run's namespaces, then the code: never returns."""
    try:
        os.setsid()
        for i, fd in enumerate(fds[:3]):
            os.dup2(fd, i)
        os.closerange(3, 1 << 20)  # our control socket, the status descriptor
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        inproc = bool(req.get("inproc"))
        if inproc:
            _set_command_line(req["argv"])  # before the rlimits: RLIMIT_DATA is checked against the map
        for name, soft, hard in req["rlimits"]:
            resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
        for cap in range(_CAP_LAST + 1):
            _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop the bounding set")
        uid = int(req["uid"])
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to another uid: the permitted and effective capabilities go
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")
        if _FILTER:
            _check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(_PROG), 0, 0),  # type: ignore[arg-type]
                   "install the seccomp filter")
        os.chdir(WORK)
        if not inproc:
            os.execvpe(req["argv"][0], req["argv"], req["env"])  # PATH searched, as setpriv did
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the run must not go on
        try:
            os.write(2, f"sandbox: {exc}\n".encode())
        finally:
            os._exit(127)
    _run_in_process(req)


def _run_in_process(req: dict) -> None:
    """``python -I [-u] script args`` in this interpreter, which runs with the same flags (-I)."""
    argv = req["argv"]
    i = 1
    while argv[i].startswith("-"):
        i += 1
    script = argv[i]
    os.environ.clear()
    os.environ.update(req["env"])
    if "random" in sys.modules:
        sys.modules["random"].seed()  # from os.urandom, as at its import in a fresh interpreter
    if "-u" in argv[1:i]:
        # What -u makes: unbuffered binary layers under write-through text.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=sys.stdout.encoding,
                                      errors=sys.stdout.errors, write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=sys.stderr.encoding,
                                      errors=sys.stderr.errors, write_through=True)
    sys.argv = argv[i:]
    sys.orig_argv = list(argv)
    path = os.path.abspath(script)
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__annotations__ = {}  # as the interpreter's own __main__ has
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    status = 0
    try:
        with open(path, "rb") as f:
            source = f.read()
        exec(compile(source, path, "exec"), main.__dict__)  # noqa: S102 - the sandboxed program itself
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException:  # noqa: BLE001 - reported as the interpreter would
        etype, value, tb = sys.exc_info()
        if value is not None and tb is not None:  # our own frame, the exec above, left out
            value.__traceback__ = tb.tb_next
        sys.excepthook(etype, value, value.__traceback__ if value is not None else tb)  # type: ignore[arg-type]
        status = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads finish, as at a normal exit
        atexit._run_exitfuncs()
    except SystemExit as exc:
        status = _exit_status(exc)
    except BaseException:  # noqa: BLE001, S110 - atexit reports its own errors
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            status = status or 120
    os._exit(status)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _init(req: dict, fds: list[int], status_w: int) -> None:
    """pid 1 of the run's namespaces: its mounts, then the program; reports its status and exits."""
    box = f"{BOXES}/{int(req['box'])}"
    code = 126
    try:
        _mount(box + "/work", WORK, None, MS_BIND)
        _mount(box + "/tmp", "/tmp", None, MS_BIND)
        _mount(box + "/shm", "/dev/shm", None, MS_BIND)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for name in PROC_READ_ONLY:
            path = "/proc/" + name
            if os.path.exists(path):
                _mount(path, path, None, MS_BIND | MS_REC)
                _mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _mount("pytest-llmeval", BOXES, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0755")
        pid = os.fork()
        if pid == 0:
            try:
                os.close(status_w)
                _program(req, fds)
            finally:
                os._exit(127)  # (_program never returns) nothing of the program goes on as its pid 1
        for fd in fds:
            os.close(fd)
        while True:
            got, status = os.waitpid(-1, 0)  # orphans of the program are ours to reap meanwhile
            if got == pid:
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
                break
        _end_namespace()
    except BaseException as exc:  # noqa: BLE001
        _say(fds[2], f"sandbox: {exc}\n".encode())  # (closed if the program was started: then it is not said)
        _end_namespace()
    os.write(status_w, struct.pack("i", code))
    os._exit(0)


def _end_namespace() -> None:
    """Kill and reap every other process of the run's pid namespace (all of them ours: orphans come to pid 1).

    Before the status goes out: once the host has it, nothing of the run is left (not even a zombie counting
    against RLIMIT_NPROC), so the run's uid can go to the next run at once and nobody has to scan for it.
    Waiting for the kernel's own clean-up at our exit would not do: the status descriptor closes before it.
    A fork under way when the signal comes fails (the kernel checks for a fatal signal at the end of fork)."""
    try:
        os.kill(-1, signal.SIGKILL)  # pid 1's -1: every process of its namespace but itself
    except ProcessLookupError:
        return  # no one left
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
_pylibc = ctypes.PyDLL(None)  # keeps the GIL across the call: the child goes on in this very thread
_pylibc.syscall.restype = ctypes.c_long


def _clone_into_new_namespaces() -> int:
    """fork(), but the child is born in new pid, mount, ipc and uts namespaces (pid 1 of its pid namespace): one
    process creation instead of a fork that unshares and forks again. The raw system call skips glibc's and
    Python's at-fork work, which this single-threaded server does not need; the child only mounts, forks the
    program with os.fork() (which sets all of that up afresh for it) and waits."""
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if _SYS_CLONE is None:  # a child that unshares and forks the run's pid 1
        pid = os.fork()
        if pid != 0:
            return pid
        _check(libc.unshare(flags), "unshare")
        if os.fork() != 0:
            os._exit(0)
        return 0
    pid = int(_pylibc.syscall(_SYS_CLONE, flags | signal.SIGCHLD, 0, 0, 0, 0))
    if pid < 0:
        raise OSError(ctypes.get_errno(), "clone into new namespaces")
    return pid


def _say(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _start(req: dict, fds: list[int], sock_fd: int) -> None:
    """Create the run's pid 1, in namespaces of its own."""
    status_w = fds.pop()
    try:
        pid = _clone_into_new_namespaces()
    except OSError as exc:
        _say(fds[2], f"sandbox: {exc}\n".encode())
        _say(status_w, struct.pack("i", 125))
        pid = -1
    if pid == 0:
        try:
            os.close(sock_fd)  # the server's requests are none of the run's business
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _init(req, fds, status_w)
        finally:
            os._exit(125)  # whatever escaped _init (which exits itself): never back into the server's loop
    for fd in (*fds, status_w):
        os.close(fd)


def serve(filter_hex: str, sock_fd: int, ready_fd: int) -> None:
    global _FILTER, _FILTER_BUF, _PROG, _CAP_LAST, _LAYOUT
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _FILTER = bytes.fromhex(filter_hex)
    _FILTER_BUF = ctypes.create_string_buffer(_FILTER, max(1, len(_FILTER)))
    _PROG = _Prog(len(_FILTER) // 8, ctypes.addressof(_FILTER_BUF))
    with open("/proc/sys/kernel/cap_last_cap") as f:
        _CAP_LAST = int(f.read())
    sock = socket.socket(fileno=sock_fd)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # each run's copy of our mounts is then private too
    os.makedirs(BOXES, mode=0o700, exist_ok=True)
    os.makedirs(WORK, mode=0o755, exist_ok=True)
    _mount("pytest-llmeval", BOXES, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0700")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # our run children are reaped by the kernel
    _LAYOUT = _layout()
    for name in PRELOAD:  # a program's usual imports, done once here for every run forked from us
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.freeze()  # what we hold stays out of every collection: fewer copied pages in each forked run
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 8)
        if not msg:
            os._exit(0)  # the host closed its end, or died: nothing of ours outlives it
        req = json.loads(msg)
        if req["op"] == "run":
            _start(req, fds, sock.fileno())
        elif req["op"] == "close":  # unanswered: the host does not wait for the unmount
            _CLOSING.append(int(req["box"]))
            while len(_CLOSING) > MAX_CLOSING:
                try:
                    close_box(_CLOSING.pop(0))
                except OSError:
                    pass
        else:
            try:
                reply = open_box(req)
            except OSError as exc:
                reply = {"error": str(exc)}
            sock.send(json.dumps(reply).encode())
        _idle_work(sock)

if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
