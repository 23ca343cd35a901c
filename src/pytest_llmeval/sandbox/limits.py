"""The sandbox's vocabulary: its levels, resource limits, what a run did, and the error when no level works."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_llmeval.core.errors import InfrastructureError

if TYPE_CHECKING:
    from pytest_llmeval.sandbox.zygote import Zygote

LEVELS = ("auto", "bwrap", "unshare", "none")
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


class SandboxLike(Protocol):
    """What a work directory and its storage use of their :class:`~pytest_llmeval.sandbox.isolation.Sandbox` (a
    protocol, so that workdir.py and storage.py need not import the module that imports them)."""

    python: str
    level: str
    is_root: bool
    base_dir: Path | None

    def bwrap_mounts(self, tmp: Sequence[str] = ...) -> list[str]: ...

    def fork_server(self) -> Zygote | None: ...
