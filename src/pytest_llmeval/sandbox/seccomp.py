"""The seccomp filter of the sandbox: a classic-BPF program that bwrap installs (``--seccomp``), or that a small
trampoline installs before exec at the ``unshare`` level.

It refuses what the isolation levels cannot otherwise stop: new sockets (no network, no host unix socket),
io_uring, memfd, SysV shared memory, new namespaces, mounts, keyrings, ptrace (isolation.py's docstring has the
whole picture).
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from functools import cache
from typing import Any

#
# A classic-BPF program for bwrap's --seccomp: it sees each system call's number, architecture and arguments
# (struct seccomp_data: nr u32 at 0, arch u32 at 4, instruction pointer u64 at 8, args u64[6] at 16) and
# answers ALLOW or ERRNO(e). An error, not a kill, so that programs get a clean failure they can handle.
# Argument checks read the low 32 bits of a u64 argument, which is all socketpair's family and clone's
# namespace flags use.

_BPF_LD_W_ABS, _BPF_JEQ, _BPF_JSET, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x45, 0x35, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_X32_SYSCALL_BIT = 0x40000000
_CLONE_NEW_NAMESPACES = (0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000  # time ns mnt cgroup uts ipc
                         | 0x10000000 | 0x20000000 | 0x40000000)  # user pid net
_AF_UNIX = 1

# Per architecture: its AUDIT_ARCH and the numbers of the calls below (x86_64: asm/unistd_64.h; aarch64: the
# generic table, asm-generic/unistd.h).
_SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 101, "keyctl": 250, "add_key": 248,
        "request_key": 249, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "shmget": 29, "msgget": 68, "memfd_create": 319,
        "memfd_secret": 447, "userfaultfd": 323, "perf_event_open": 298, "bpf": 321}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 117, "keyctl": 219, "add_key": 217,
        "request_key": 218, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "shmget": 194, "msgget": 186, "memfd_create": 279,
        "memfd_secret": 447, "userfaultfd": 282, "perf_event_open": 241, "bpf": 280}),
}
# ENOSYS ("not implemented"): callers fall back. clone3's flags sit in a struct the filter cannot read, so it
# goes and glibc uses clone, whose flags it can (what flatpak does); io_uring could make and connect sockets
# without socket() (IORING_OP_SOCKET); memfd and SysV segments are shared memory outside the tmpfs's size and
# (once unmapped) the address-space limit.
_DENY_ENOSYS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register", "memfd_create", "memfd_secret",
                "shmget", "msgget")
# EPERM: namespaces and mounts (an unprivileged user namespace could mount a tmpfs of any size), the kernel
# keyring (not namespaced: a key would outlive the run), tracing a sibling, and kernel interfaces a test
# program has no use for.
_DENY_EPERM = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
               "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key",
               "ptrace", "userfaultfd", "perf_event_open", "bpf")


# Installs the filter in argv[1] (hex) and executes argv[2:]: prctl(PR_SET_NO_NEW_PRIVS) (already set after the
# uid drop; needed unprivileged), then prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &sock_fprog).
SECCOMP_TRAMPOLINE = """\
import ctypes, os, sys
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
code = ctypes.create_string_buffer(bytes.fromhex(sys.argv[1]), len(sys.argv[1]) // 2)
libc = ctypes.CDLL(None, use_errno=True)
prog = Prog(len(sys.argv[1]) // 16, ctypes.addressof(code))
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
    sys.exit("sandbox: cannot install the seccomp filter: " + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _assemble(program: list[tuple[Any, ...]]) -> bytes:
    """Encode ("label", name), ("ld", offset), ("jeq"/"jset"/"jge", k, if_true, if_false) and ("ret", value)
    into sock_filter structs; a jump target is a label, or None for the next instruction."""
    labels: dict[str, int] = {}
    index = 0
    for op in program:
        if op[0] == "label":
            labels[op[1]] = index
        else:
            index += 1
    out, index = [], 0
    for op in program:
        kind = op[0]
        if kind == "label":
            continue
        if kind == "ld":
            out.append(struct.pack("=HBBI", _BPF_LD_W_ABS, 0, 0, int(op[1])))
        elif kind == "ret":
            out.append(struct.pack("=HBBI", _BPF_RET, 0, 0, int(op[1])))
        else:
            code = {"jeq": _BPF_JEQ, "jset": _BPF_JSET, "jge": _BPF_JGE}[kind]
            jt, jf = ((labels[t] - index - 1) if t is not None else 0 for t in (op[2], op[3]))
            assert 0 <= jt < 256 and 0 <= jf < 256
            out.append(struct.pack("=HBBI", code, jt, jf, int(op[1])))
        index += 1
    return b"".join(out)


@cache
def seccomp_program() -> bytes | None:
    """The filter for this machine's architecture (None on one we have no table for: bwrap then runs the code
    without a filter, and the isolation the attack tests check for sockets and namespaces is not there)."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        return None
    arch, nr = _SYSCALLS[machine]
    arg0 = 16 if sys.byteorder == "little" else 20  # the low 32 bits of args[0]
    program: list[tuple[Any, ...]] = [
        # Another architecture's calls (i386's int 0x80 on x86_64, with socketcall, which carries socket()
        # inside it) would be numbered differently: refuse them all.
        ("ld", 4), ("jeq", arch, None, "enosys"),
        ("ld", 0),
    ]
    if machine == "x86_64":  # the x32 ABI: x86_64 numbers with bit 30 set, a second table
        program.append(("jge", _X32_SYSCALL_BIT, "enosys", None))
    program += [
        ("jeq", nr["socket"], "eafnosupport", None),  # no new sockets at all: no network, no host unix socket
        ("jeq", nr["socketpair"], "socketpair", None),  # connected pairs cannot reach anything else
        ("jeq", nr["clone"], "clone", None),
        *(("jeq", nr[name], "enosys", None) for name in _DENY_ENOSYS),
        *(("jeq", nr[name], "eperm", None) for name in _DENY_EPERM),
        ("ret", _RET_ALLOW),
        ("label", "socketpair"), ("ld", arg0), ("jeq", _AF_UNIX, "allow", "eafnosupport"),
        ("label", "clone"), ("ld", arg0), ("jset", _CLONE_NEW_NAMESPACES, "eperm", "allow"),
        ("label", "allow"), ("ret", _RET_ALLOW),
        ("label", "eafnosupport"), ("ret", _RET_ERRNO | errno.EAFNOSUPPORT),
        ("label", "enosys"), ("ret", _RET_ERRNO | errno.ENOSYS),
        ("label", "eperm"), ("ret", _RET_ERRNO | errno.EPERM),
    ]
    return _assemble(program)
