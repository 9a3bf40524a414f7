"""The runtime directory of a file prefix: ``/var/run/dataplane/<prefix>/``.

The primary process of a prefix holds an exclusive flock on ``<dir>/lock``
(which contains its pid) for its whole life; forked workers share that lock
through the inherited open file description. A second instance with the same
prefix is refused with :class:`RuntimeDirBusy`, unless the owner is on its way
out: an instance that is closing marks its lock file ``<pid> exiting``
(:meth:`RuntimeDir.mark_exiting`), and when the recorded owner is dead the
lock can only be held by its lcore workers, which die with it. In both cases
the newcomer waits for the lock (up to :data:`EXIT_WAIT` seconds), so a
back-end restarted right after ``quit`` with the same prefix starts.

A run that was killed leaves its lock file behind, unlocked. The next start
with the same prefix detects it, logs it and removes the old directory
contents and the hugepage files ``<huge_dir>/<prefix>map_<n>`` of every huge
dir the old run recorded (see :meth:`RuntimeDir.add_huge_dir`).

The parent directory is the environment variable ``DATAPLANE_RUNTIME_DIR``
if set, else ``/var/run/dataplane`` for root and, like DPDK, ``dataplane``
under ``$XDG_RUNTIME_DIR`` (or /tmp) for other users.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time

from dataplane import log as dplog

from . import hugepages
from .errors import RuntimeDirBusy

log = dplog.get_logger("dataplane.memory")

DEFAULT_RUNTIME_PARENT = "/var/run/dataplane"
RUNTIME_DIR_ENV = "DATAPLANE_RUNTIME_DIR"
LOCK_NAME = "lock"
HUGE_DIRS_NAME = "huge_dirs"
EXITING = "exiting"
#: seconds a new instance waits for an owner that is exiting (or dead, its workers dying)
EXIT_WAIT = 30.0

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def runtime_parent() -> str:
    """The directory holding one runtime directory per file prefix."""
    configured = os.environ.get(RUNTIME_DIR_ENV)
    if configured:
        return configured
    if os.geteuid() == 0:
        return DEFAULT_RUNTIME_PARENT
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", "dataplane")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a usable file prefix (letters, digits,
    ``_ . -``; not ``.`` or ``..``), else raise ValueError."""
    if not _PREFIX_RE.match(prefix or "") or prefix in (".", ".."):
        raise ValueError(
            f"invalid file prefix {prefix!r}: use letters, digits, '_', '.' and '-' only"
        )
    return prefix


class RuntimeDir:
    """The runtime directory of one file prefix, owned while acquired.

    ``RuntimeDir(prefix).acquire()`` locks it (raising RuntimeDirBusy if a live
    process holds it) and cleans up after a dead previous owner;
    ``release()`` removes the directory. Also a context manager.
    """

    def __init__(self, prefix: str, parent: str | None = None):
        self.prefix = validate_prefix(prefix)
        self.parent = parent or runtime_parent()
        self.path = os.path.join(self.parent, prefix)
        self.lock_path = os.path.join(self.path, LOCK_NAME)
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None

    @property
    def acquired(self) -> bool:
        """True between acquire() and release() in the acquiring process."""
        return self._lock_fd is not None

    def file(self, name: str) -> str:
        """The path of a file called ``name`` in the runtime directory."""
        return os.path.join(self.path, name)

    def acquire(self) -> "RuntimeDir":
        """Create and lock the directory, writing our pid into the lock file.

        Raises RuntimeDirBusy when another live process holds the lock. If the
        directory holds files of a dead run they are logged and removed, along
        with that run's unused hugepage files.
        """
        if self._lock_fd is not None:
            raise RuntimeError(f"runtime directory {self.path} is already acquired")
        for _ in range(10):  # retry if a releasing owner removes the dir under us
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue
            try:
                self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if os.fstat(fd).st_nlink == 0:  # the owner unlinked it while we opened it
                os.close(fd)
                continue
            break
        else:
            raise RuntimeError(f"cannot create the runtime directory {self.path}")
        self._lock_fd = fd
        self._owner_pid = os.getpid()
        try:
            self._clean_stale()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            self._lock_fd = None
            os.close(fd)
            raise
        log.debug("runtime directory acquired", prefix=self.prefix, path=self.path)
        return self

    def _lock(self, fd: int) -> None:
        """Take the exclusive lock on ``fd``; wait while the owner is exiting or dead."""
        deadline = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            pid, exiting = self._owner()
            leaving = exiting or (pid is not None and not _alive(pid))
            if not leaving:
                raise self._busy_error()
            if deadline is None:
                log.info("waiting for the previous owner of the file prefix to exit", prefix=self.prefix,
                         old_pid=pid, exiting=exiting)
                deadline = time.monotonic() + EXIT_WAIT
            elif time.monotonic() > deadline:
                raise self._busy_error(f"; it has been exiting for more than {EXIT_WAIT:g} s")
            time.sleep(0.02)

    def mark_exiting(self) -> None:
        """Record in the lock file that this instance is closing (see the module docstring).

        Only the acquiring process does it; the lock is still held until :meth:`release`.
        """
        if self._lock_fd is None or os.getpid() != self._owner_pid:
            return
        line = f"{os.getpid()} {EXITING}\n".encode()
        os.pwrite(self._lock_fd, line, 0)
        os.ftruncate(self._lock_fd, len(line))

    def _busy_error(self, more: str = "") -> RuntimeDirBusy:
        pid = self._read_pid()
        who = f"pid {pid}" if pid else "another process"
        return RuntimeDirBusy(
            f"file prefix {self.prefix!r} is in use by {who} (lock {self.lock_path}){more}; "
            f"use another --file-prefix or stop that process"
        )

    def _owner(self) -> tuple[int | None, bool]:
        """The pid in the lock file, and whether it is marked exiting."""
        try:
            with open(self.lock_path) as f:
                words = f.read().split()
        except OSError:
            return None, False
        try:
            pid = int(words[0]) if words else None
        except ValueError:
            return None, False
        return pid or None, words[1:2] == [EXITING]

    def _read_pid(self) -> int | None:
        return self._owner()[0]

    def _clean_stale(self) -> None:
        """Remove what a dead previous owner left (we hold the lock now)."""
        leftovers = sorted(n for n in os.listdir(self.path) if n != LOCK_NAME)
        old_pid = self._read_pid()
        if not leftovers and old_pid is None:
            return
        huge_dirs = self.huge_dirs()
        log.warning(
            "removing stale files of a dead run",
            prefix=self.prefix,
            path=self.path,
            old_pid=old_pid,
            files=leftovers,
            huge_dirs=huge_dirs,
        )
        for d in huge_dirs:
            hugepages.clear_files(d, self.prefix)
        for name in leftovers:
            _remove(os.path.join(self.path, name))

    def add_huge_dir(self, huge_dir: str) -> None:
        """Record that this run creates hugepage files in ``huge_dir``, so a
        later start can clean them if this run dies."""
        dirs = self.huge_dirs()
        if huge_dir not in dirs:
            with open(self.file(HUGE_DIRS_NAME), "a") as f:
                f.write(huge_dir + "\n")

    def huge_dirs(self) -> list[str]:
        """The huge dirs recorded with add_huge_dir (by this or a dead run)."""
        try:
            with open(self.file(HUGE_DIRS_NAME)) as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def release(self) -> None:
        """Remove the directory and drop the lock. Idempotent; in a forked
        child it does nothing (the directory belongs to the primary)."""
        if self._lock_fd is None or os.getpid() != self._owner_pid:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            for name in os.listdir(self.path):
                _remove(os.path.join(self.path, name))
            try:
                os.rmdir(self.path)
            except OSError as e:  # a new owner may already be creating it again
                log.debug("runtime directory not removed", path=self.path, error=str(e))
        finally:
            os.close(fd)
        log.debug("runtime directory released", prefix=self.prefix, path=self.path)

    def __enter__(self) -> "RuntimeDir":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<RuntimeDir {self.path}{' locked' if self.acquired else ''}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
