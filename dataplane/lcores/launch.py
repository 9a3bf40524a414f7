"""Lcore launcher: worker processes pinned to cpus, in DPDK's terms.

The main lcore runs in the calling process.  Every worker lcore is a process
forked once, at start-up, after the shared memory is mapped (so it inherits
every mapping at the same address), pinned with ``os.sched_setaffinity`` to
its cpu set, and then waiting for work:

* :meth:`Launcher.remote_launch` sends ``fn(arg)`` to one waiting worker;
  :meth:`Launcher.wait_lcore` returns its result.
* :meth:`Launcher.mp_remote_launch` / :meth:`Launcher.mp_wait_lcore` do the
  same on every worker (and optionally on the main lcore).
* A stop flag in shared memory (:attr:`Launcher.stop_flag`) is what poll loops
  check between bursts; :meth:`Launcher.request_stop` raises it.

A worker that raises or dies (even by SIGKILL) is detected by a monitor thread
within a fraction of a second, logged with its lcore id and cause, and the
stop flag is raised so the other workers end their loops cleanly.

A numba loop that runs on the main lcore must be compiled with
``nogil=True``: the monitor thread and the signal watcher are Python threads
and need the GIL to raise the stop flag.

Functions and their arguments travel pickled (cloudpickle, so closures and
jitted functions work; arrays in ``arg`` are *copied*, so shared memory is
reached through inherited objects such as memzones or :func:`stop_flag`) over a SOCK_SEQPACKET socket pair, which also carries
file descriptors (SCM_RIGHTS) for the mailbox used by later layers to hand
queues to a running lcore.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import select
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field

import cloudpickle
import numpy as np

from dataplane import log as dplog

log = dplog.get_logger("dataplane.lcores")

_MAX_MSG = 1 << 20
_PR_SET_PDEATHSIG = 1

# Set in each worker process after fork (and to the main lcore in the main process).
_CURRENT_LCORE: int = -1
_WORKER: "_WorkerSide | None" = None
_STOP_FLAG: np.ndarray | None = None


class LcoreState(enum.Enum):
    """DPDK's ``rte_lcore_state_t``."""

    WAIT = "WAIT"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # kept for API parity; a worker goes back to WAIT once its result is read
    DEAD = "DEAD"


class CallMain(enum.Enum):
    SKIP_MAIN = 0
    CALL_MAIN = 1


SKIP_MAIN = CallMain.SKIP_MAIN
CALL_MAIN = CallMain.CALL_MAIN


class LcoreError(RuntimeError):
    """A function on an lcore raised, or the lcore's process died."""

    def __init__(self, lcore_id: int, cause: str, detail: str = ""):
        self.lcore_id = lcore_id
        self.cause = cause
        self.detail = detail
        super().__init__(f"lcore {lcore_id}: {cause}" + (f"\n{detail}" if detail else ""))


class LcoreBusy(RuntimeError):
    """remote_launch on an lcore that is not waiting (DPDK's -EBUSY)."""


def lcore_id() -> int:
    """The id of the lcore running the caller (``rte_lcore_id()``); -1 outside the EAL."""
    return _CURRENT_LCORE


def stop_requested() -> bool:
    """True once the launcher raised the shared stop flag (for plain-Python loops)."""
    return _STOP_FLAG is not None and bool(_STOP_FLAG[0])


def stop_flag() -> np.ndarray | None:
    """The shared stop flag (uint32[16]); numba loops read ``load_acquire(flag, 0)``."""
    return _STOP_FLAG


def in_worker() -> bool:
    """True in a worker lcore process (one with a mailbox), False in the main process."""
    return _WORKER is not None


def mailbox_recv(timeout: float | None = 0.0):
    """In a worker: the next ``(obj, fds)`` posted to this lcore, or None."""
    if _WORKER is None:
        raise RuntimeError("mailbox_recv() is only available inside a worker lcore")
    return _WORKER.mailbox_recv(timeout)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"status {status:#x}"


def _set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Make the kernel kill this process when its parent dies (no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except OSError:  # pragma: no cover - not Linux
        pass


def send_message(sock: socket.socket, obj, fds=()) -> None:
    """Send ``obj`` (cloudpickled) and ``fds`` (SCM_RIGHTS) as one datagram of a SEQPACKET or DGRAM socket."""
    data = cloudpickle.dumps(obj)
    if len(data) > _MAX_MSG:
        raise ValueError(f"message too large ({len(data)} bytes)")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_message(sock: socket.socket):
    """One message: (obj, fds); (None, []) on EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, 64)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return cloudpickle.loads(data), fds


@dataclass
class Lcore:
    """The main process's view of one lcore."""

    id: int
    cpus: frozenset[int]
    pid: int = 0
    state: LcoreState = LcoreState.WAIT
    cmd: socket.socket | None = None
    mailbox: socket.socket | None = None
    result: object = None
    error: LcoreError | None = None
    results_ready: bool = False
    launched_at: float = 0.0
    extra: dict = field(default_factory=dict)


class _WorkerSide:
    """The loop a worker process runs: wait for a function, run it, report."""

    def __init__(self, lcore: int, cmd: socket.socket, mailbox: socket.socket):
        self.lcore = lcore
        self.cmd = cmd
        self.mailbox = mailbox

    def mailbox_recv(self, timeout):
        r, _, _ = select.select([self.mailbox], [], [], timeout)
        if not r:
            return None
        obj, fds = recv_message(self.mailbox)
        return None if obj is None and not fds else (obj, fds)

    def run(self) -> int:
        while True:
            try:
                msg, _fds = recv_message(self.cmd)
            except (ConnectionError, OSError):
                return 0
            if msg is None or msg[0] == "exit":
                return 0
            _, fn, arg = msg
            try:
                result = fn(arg)
                reply = ("done", result)
            except BaseException as exc:  # report every failure, including SystemExit
                reply = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            try:
                send_message(self.cmd, reply)
            except Exception as exc:  # an unpicklable result is an error, not a hang
                send_message(self.cmd, ("error", f"cannot send result: {exc}", ""))


class Launcher:
    """Worker lcore processes and the shared stop flag.

    ``lcores`` maps lcore id to its cpu set; ``main_lcore`` stays in this
    process.  ``before_fork`` is mapped already (memory segments are created by
    the caller before the Launcher so workers inherit them).
    """

    def __init__(self, lcores: dict[int, frozenset[int]], main_lcore: int):
        global _CURRENT_LCORE, _STOP_FLAG
        if main_lcore not in lcores:
            raise ValueError(f"main lcore {main_lcore} is not in the lcore set")
        self.main_lcore = main_lcore
        self.lcores: dict[int, Lcore] = {i: Lcore(i, frozenset(c)) for i, c in sorted(lcores.items())}
        self._shm = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED|MAP_ANONYMOUS: shared with forked workers
        self.stop_flag = np.frombuffer(self._shm, dtype=np.uint32, count=16)
        _STOP_FLAG = self.stop_flag
        self._cond = threading.Condition()
        self._closed = False
        self._failures: list[LcoreError] = []
        self._main_cpus_before = os.sched_getaffinity(0)

        for lc in self.lcores.values():
            if lc.id != main_lcore:
                self._fork_worker(lc)
        os.sched_setaffinity(0, self.lcores[main_lcore].cpus)
        _CURRENT_LCORE = main_lcore
        dplog.set_lcore(main_lcore)
        self._wake_r, self._wake_w = os.pipe()
        self._monitor = threading.Thread(target=self._monitor_loop, name="lcore-monitor", daemon=True)
        self._monitor.start()

    # ---------------------------------------------------------------- workers
    def _fork_worker(self, lc: Lcore) -> None:
        cmd_main, cmd_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mb_main, mb_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                cmd_main.close()
                mb_main.close()
                for other in self.lcores.values():  # siblings' sockets are not ours
                    for s in (other.cmd, other.mailbox):
                        if s is not None:
                            s.close()
                code = self._worker_main(lc, cmd_worker, mb_worker)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        cmd_worker.close()
        mb_worker.close()
        lc.pid, lc.cmd, lc.mailbox = pid, cmd_main, mb_main
        log.debug("lcore started", worker=lc.id, worker_pid=pid, cpus=sorted(lc.cpus))

    def _worker_main(self, lc: Lcore, cmd: socket.socket, mailbox: socket.socket) -> int:
        global _CURRENT_LCORE, _WORKER
        _set_pdeathsig()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.sched_setaffinity(0, lc.cpus)
        _CURRENT_LCORE = lc.id
        dplog.set_lcore(lc.id)
        _WORKER = _WorkerSide(lc.id, cmd, mailbox)
        return _WORKER.run()

    def _monitor_loop(self) -> None:
        """Sole reader of the workers' command sockets: results, errors, deaths."""
        while not self._closed:
            socks = {lc.cmd.fileno(): lc for lc in self.lcores.values() if lc.cmd is not None and lc.state != LcoreState.DEAD}
            try:
                ready, _, _ = select.select(list(socks) + [self._wake_r], [], [], 0.2)
            except (OSError, ValueError):
                if self._closed:
                    return
                continue
            for fd in ready:
                if fd == self._wake_r:
                    os.read(self._wake_r, 64)
                    continue
                lc = socks[fd]
                try:
                    msg, _ = recv_message(lc.cmd)
                except OSError:
                    msg = None
                if msg is None:
                    self._on_death(lc)
                elif msg[0] == "done":
                    self._on_result(lc, msg[1], None)
                else:
                    err = LcoreError(lc.id, f"raised {msg[1]}", msg[2])
                    log.error("lcore failed", failed_lcore=lc.id, cause=msg[1])
                    self._on_result(lc, None, err)
                    self.request_stop()

    def _on_result(self, lc: Lcore, result, err) -> None:
        with self._cond:
            lc.result, lc.error = result, err
            lc.results_ready = True
            lc.state = LcoreState.WAIT
            if err is not None:
                self._failures.append(err)
            self._cond.notify_all()

    def _on_death(self, lc: Lcore) -> None:
        cause = "died"
        try:
            for _ in range(50):
                pid, status = os.waitpid(lc.pid, os.WNOHANG)
                if pid:
                    cause = _describe_status(status)
                    break
                time.sleep(0.01)
        except ChildProcessError:
            pass
        with self._cond:
            expected = self._closed or lc.extra.get("exiting")
            was_running = lc.state == LcoreState.RUNNING
            lc.state = LcoreState.DEAD
            if not expected:
                err = LcoreError(lc.id, f"process {lc.pid} {cause}")
                lc.error = err
                lc.results_ready = was_running
                self._failures.append(err)
                log.error("lcore died", failed_lcore=lc.id, worker_pid=lc.pid, cause=cause)
            self._cond.notify_all()
        if not expected:
            self.request_stop()

    # ------------------------------------------------------------------ API
    @property
    def worker_ids(self) -> list[int]:
        return [i for i in self.lcores if i != self.main_lcore]

    @property
    def failures(self) -> list[LcoreError]:
        """Every lcore failure seen so far (errors raised, processes died)."""
        with self._cond:
            return list(self._failures)

    def get_state(self, lcore: int) -> LcoreState:
        return self.lcores[lcore].state

    def request_stop(self) -> None:
        """Raise the shared stop flag: every poll loop returns at its next check."""
        self.stop_flag[0] = 1

    def clear_stop(self) -> None:
        self.stop_flag[0] = 0

    def remote_launch(self, fn, arg, lcore: int) -> None:
        """Run ``fn(arg)`` on worker ``lcore`` (``rte_eal_remote_launch``)."""
        if lcore == self.main_lcore or lcore not in self.lcores:
            raise ValueError(f"lcore {lcore} is not a worker lcore (workers: {self.worker_ids})")
        lc = self.lcores[lcore]
        with self._cond:
            if lc.state == LcoreState.DEAD:
                raise LcoreError(lcore, f"process {lc.pid} is dead")
            if lc.state != LcoreState.WAIT:
                raise LcoreBusy(f"lcore {lcore} is {lc.state.value}")
            lc.state = LcoreState.RUNNING
            lc.results_ready = False
            lc.result = lc.error = None
            lc.launched_at = time.monotonic()
        try:
            send_message(lc.cmd, ("run", fn, arg))
        except BaseException:
            with self._cond:
                lc.state = LcoreState.WAIT
            raise

    def mp_remote_launch(self, fn, arg, call_main: CallMain = SKIP_MAIN):
        """Launch ``fn(arg)`` on every worker; with CALL_MAIN also run it here and return its result."""
        for i in self.worker_ids:
            self.remote_launch(fn, arg, i)
        if call_main == CALL_MAIN:
            return fn(arg)
        return None

    def wait_lcore(self, lcore: int, timeout: float | None = None):
        """Wait for the function on ``lcore`` and return its result (``rte_eal_wait_lcore``).

        Raises :class:`LcoreError` if it raised or the process died,
        :class:`TimeoutError` if ``timeout`` passes first.
        """
        lc = self.lcores[lcore]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while lc.state == LcoreState.RUNNING:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"lcore {lcore} still running after {timeout} s")
                self._cond.wait(left)
            if lc.error is not None and lc.results_ready:
                lc.results_ready = False
                raise lc.error
            lc.results_ready = False
            return lc.result

    def mp_wait_lcore(self, timeout: float | None = None) -> dict[int, object]:
        """Wait for every worker; returns {lcore: result}.

        If any lcore failed, the others were told to stop (stop flag); after
        all have returned, the first failure is raised.
        """
        results, errors = {}, []
        deadline = None if timeout is None else time.monotonic() + timeout
        for i in self.worker_ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                results[i] = self.wait_lcore(i, left)
            except LcoreError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def post(self, lcore: int, obj, fds=()) -> None:
        """Put ``(obj, fds)`` in a worker's mailbox (read there with :func:`mailbox_recv`)."""
        if lcore == self.main_lcore:
            raise ValueError("the main lcore has no mailbox")
        send_message(self.lcores[lcore].mailbox, obj, fds)

    def close(self, timeout: float = 2.0) -> None:
        """Stop every worker and reap it: ask, then SIGTERM, then SIGKILL."""
        global _STOP_FLAG, _CURRENT_LCORE
        if self._closed:
            return
        self.request_stop()
        with self._cond:
            for lc in self.lcores.values():
                lc.extra["exiting"] = True
        for lc in self.lcores.values():
            if lc.cmd is not None and lc.state == LcoreState.WAIT:
                try:
                    send_message(lc.cmd, ("exit",))
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        pending = {lc.pid: lc for lc in self.lcores.values() if lc.pid}
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                for pid in pending:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                for pid in list(pending):
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done = pid
                    if done:
                        pending.pop(pid).state = LcoreState.DEAD
                if pending:
                    time.sleep(0.01)
            if not pending:
                break
        self._closed = True
        os.write(self._wake_w, b"x")
        self._monitor.join(timeout=2)
        for lc in self.lcores.values():
            for s in (lc.cmd, lc.mailbox):
                if s is not None:
                    s.close()
            lc.cmd = lc.mailbox = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        try:
            os.sched_setaffinity(0, self._main_cpus_before)
        except OSError:
            pass
        _CURRENT_LCORE = -1
        dplog.set_lcore(-1)
        if _STOP_FLAG is self.stop_flag:
            _STOP_FLAG = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
