"""The runtime directory of a file prefix: ``/var/run/dataplane/<prefix>/``.

The primary process of a prefix holds an exclusive flock on ``<dir>/lock``
(which contains its pid) for its whole life, and only the primary: a process
forked from it (an lcore worker) closes its inherited copy of the lock fd at
once (:func:`os.register_at_fork`), and the fd is ``O_CLOEXEC`` for programs
it runs, so the lock ends with the primary process whatever its workers do.
(An flock belongs to the open file description, which fork shares; DPDK's
fcntl lock on its config file is per process, so it too ends with the
primary.)  A second instance with the same prefix is refused with
:class:`RuntimeDirBusy`, unless the owner is on its way out: an instance that
is closing marks its lock file ``<pid> exiting`` (:meth:`RuntimeDir.mark_exiting`),
and the newcomer waits for it (up to :data:`EXIT_WAIT` seconds), so a
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
import threading
import time
import weakref

from dataplane import log as dplog

from . import hugepages
from .errors import RuntimeDirBusy

log = dplog.get_logger("dataplane.memory")

DEFAULT_RUNTIME_PARENT = "/var/run/dataplane"
RUNTIME_DIR_ENV = "DATAPLANE_RUNTIME_DIR"
LOCK_NAME = "lock"
HUGE_DIRS_NAME = "huge_dirs"
EXITING = "exiting"
#: seconds a new instance waits for an owner that is exiting (or dead, a process it forked
#: outside os.fork still holding the lock)
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
        self._mutex = threading.RLock()

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
        waiter = _Waiter(self.prefix)
        for _ in range(1000):  # reopen while releasing owners unlink the file under us
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue
            try:
                locked = self._lock(fd, waiter)
            except BaseException:
                os.close(fd)
                raise
            if locked and os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)  # the owner removed that file while we waited: take the new one
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
        _HELD.add(self)
        log.debug("runtime directory acquired", prefix=self.prefix, path=self.path)
        return self

    def _lock(self, fd: int, waiter: "_Waiter") -> bool:
        """Take the exclusive lock on ``fd``, waiting while the owner is exiting or dead.

        False when the file was unlinked meanwhile (its owner released it): the
        caller opens the lock file again.
        """
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if os.fstat(fd).st_nlink == 0:
                return False
            pid, exiting = _read_owner(fd)  # the file we tried, not whatever the path names now
            leaving = exiting or (pid is not None and not _alive(pid))
            if not leaving:
                raise self._busy_error(pid)
            if not waiter.wait(pid, exiting):
                raise self._busy_error(pid, f"; it has been exiting for more than {EXIT_WAIT:g} s")

    def mark_exiting(self) -> None:
        """Record in the lock file that this instance is closing (see the module docstring).

        Only the acquiring process does it; the lock is still held until :meth:`release`.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._mutex:  # a signal-watching thread may call it while release() closes the fd
            if self._lock_fd is None:
                return
            line = f"{os.getpid()} {EXITING}\n".encode()
            os.pwrite(self._lock_fd, line, 0)
            os.ftruncate(self._lock_fd, len(line))

    def _busy_error(self, pid: int | None, more: str = "") -> RuntimeDirBusy:
        who = f"pid {pid}" if pid else "another process"
        return RuntimeDirBusy(
            f"file prefix {self.prefix!r} is in use by {who} (lock {self.lock_path}){more}; "
            f"use another --file-prefix or stop that process"
        )

    def _owner(self) -> tuple[int | None, bool]:
        """The pid in the lock file, and whether it is marked exiting."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None, False
        try:
            return _read_owner(fd)
        finally:
            os.close(fd)

    def _read_pid(self) -> int | None:
        return self._owner()[0]

    def _forget_after_fork(self) -> None:
        """In a child just forked from the owner: close the inherited lock fd.

        Only ``close``: ``flock(LOCK_UN)`` would unlock the open file
        description the owner still uses.  The child owns nothing (release()
        and mark_exiting() do nothing in it).
        """
        if self._lock_fd is not None and os.getpid() != self._owner_pid:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.close(fd)
            except OSError:
                pass

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
        with self._mutex:
            fd, self._lock_fd = self._lock_fd, None
        _HELD.discard(self)
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


class _Waiter:
    """The newcomer's patience with an owner on its way out: logs once, gives up after EXIT_WAIT."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.deadline: float | None = None

    def wait(self, pid: int | None, exiting: bool) -> bool:
        if self.deadline is None:
            log.info("waiting for the previous owner of the file prefix to exit", prefix=self.prefix,
                     old_pid=pid, exiting=exiting)
            self.deadline = time.monotonic() + EXIT_WAIT
        elif time.monotonic() > self.deadline:
            return False
        time.sleep(0.02)
        return True


def _read_owner(fd: int) -> tuple[int | None, bool]:
    """The pid written in an open lock file, and whether it is marked exiting."""
    try:
        words = os.pread(fd, 64, 0).decode(errors="replace").split()
    except OSError:
        return None, False
    try:
        pid = int(words[0]) if words else None
    except ValueError:
        return None, False
    return pid or None, words[1:2] == [EXITING]


#: The runtime directories this process holds; a forked child closes their lock fds.
_HELD: "weakref.WeakSet[RuntimeDir]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for rundir in list(_HELD):
        rundir._forget_after_fork()
    _HELD.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs: a zombie (exited, not yet reaped by its parent) holds no lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
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
