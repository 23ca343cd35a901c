"""A work directory's private storage, and the host's side of its files: written and collected without ever
following a link the sandboxed code planted, swept when a killed process left them behind."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from functools import cache
from pathlib import Path, PurePosixPath

from pytest_llmeval.sandbox.limits import ZYGOTE_WORK, Limits, SandboxLike, SandboxUnavailable


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

    def __init__(self, sandbox: SandboxLike, uid: int, limits: Limits) -> None:
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

    def _start_helper(self, sandbox: SandboxLike, uid: int, disk_mb: int, max_file_mb: int) -> None:
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
