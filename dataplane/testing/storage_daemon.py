"""``qemu-storage-daemon`` as a reference vhost-user-blk back-end (Debian package ``qemu-system-common``).

::

    with StorageDaemon("/tmp/disk.img", "/tmp/blk.sock", num_queues=2) as qsd:
        ...   # a front-end (QEMU's vhost-user-blk-pci, a test driver) connects to qsd.socket

The export serves one image file (``driver=file``); ``writable`` and
``num_queues`` map to the export's options. The daemon is started with its
socket path free and ``close()`` ends it by its pid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

__all__ = ["QSD", "StorageDaemon", "StorageDaemonError"]

QSD = shutil.which("qemu-storage-daemon")


class StorageDaemonError(RuntimeError):
    pass


class StorageDaemon:
    """One ``qemu-storage-daemon --export type=vhost-user-blk`` of ``image`` on unix socket ``socket``."""

    def __init__(self, image: str, socket: str, *, writable: bool = True, num_queues: int = 1,
                 timeout: float = 30.0):
        if QSD is None:
            raise StorageDaemonError("qemu-storage-daemon is not installed (Debian package qemu-system-common)")
        self.image, self.socket = image, socket
        self._log = tempfile.TemporaryFile()
        cmd = [
            QSD,
            "--blockdev", f"driver=file,node-name=disk,filename={image}",
            "--export", (f"type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path={socket},"
                         f"writable={'on' if writable else 'off'},num-queues={num_queues}"),
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output
                self.close()
                raise StorageDaemonError(f"qemu-storage-daemon did not listen on {socket}:\n{out[-2000:]}")
            time.sleep(0.02)

    @property
    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        """End the daemon (its pid only) and remove its socket."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "StorageDaemon":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
