"""A dataplane app as a child process (tests and benchmarks): start, wait until it says it is up, stop, kill.

Its own ``--file-prefix`` and a temporary directory for its log; :meth:`AppProcess.stop`
sends SIGINT and returns the last JSON line it printed (the apps print their final
figures that way).  Subclasses add what their app reports.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref

__all__ = ["AppProcess", "end_process"]

_SEQ = itertools.count()


def end_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM child ``proc`` and reap it (SIGKILL after ``timeout`` s); close its pipes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            try:
                f.close()
            except BrokenPipeError:
                pass


class AppProcess:
    """``python3 -m <module> -l lcores --no-huge -m memory_mb --file-prefix P <eal_extra> -- <app_args>``.

    Returns from the constructor once ``ready`` appears in the output (raises
    RuntimeError with the output if the process exits or ``timeout`` passes first).
    ``workdir``: the temporary directory to use (made with ``tempfile.mkdtemp``;
    removed by :meth:`close`), e.g. when the app's arguments name files in it.
    ``stdin``: give it a pipe for :meth:`command` (an interactive shell); otherwise it has none.
    """

    name = "app"

    def __init__(self, module: str, app_args: list[str], *, ready: str, lcores: str = "0-1", memory_mb: int = 256,
                 eal_extra: list[str] = (), timeout: float = 240.0, prefix: str = "app", workdir: str | None = None,
                 stdin: bool = False):
        self.dir = workdir or tempfile.mkdtemp(prefix=prefix)
        # the directory goes with the object at the latest (a test that only stops the app, a failed start)
        self._rm_dir = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.log_file = os.path.join(self.dir, "out.log")
        self.prefix = f"{prefix}{os.getpid()}_{next(_SEQ)}"
        cmd = [sys.executable, "-m", module, "-l", lcores, "--no-huge", "-m", str(memory_mb),
               "--file-prefix", self.prefix, *eal_extra, "--", *app_args]
        self._log = open(self.log_file, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if stdin else None)
        deadline = time.monotonic() + timeout
        while ready not in self.output:
            if self.proc.poll() is not None:
                self._close()
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} not up within {timeout} s:\n{self.output[-4000:]}")
            time.sleep(0.05)

    @property
    def output(self) -> str:
        with open(self.log_file, "rb") as f:
            return f.read().decode(errors="replace")

    def command(self, line: str) -> None:
        """Write one command line to its stdin (``stdin=True``)."""
        self.proc.stdin.write(line.rstrip("\n").encode() + b"\n")
        self.proc.stdin.flush()

    def wait_output(self, text: str, timeout: float = 60.0, start: int = 0) -> str:
        """Wait until ``text`` appears in the output after offset ``start``; return the output."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output
            if text in out[start:]:
                return out
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {text!r} not printed:\n{out[-4000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> dict:
        """SIGINT, wait, and return the final JSON line it prints."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        self._close()
        for line in reversed(self.output.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"{self.name} printed no final stats (exit {self.proc.returncode}):\n{self.output[-4000:]}")

    def kill(self) -> None:
        """SIGKILL (a crashed back-end); its workers die with it (PDEATHSIG)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()
        shutil.rmtree(f"/var/run/dataplane/{self.prefix}", ignore_errors=True)

    def _close(self) -> None:
        if not self._log.closed:
            self._log.close()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.stop()
        finally:
            self.kill()
            self._rm_dir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
