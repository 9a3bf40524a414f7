"""A thread waiting on eventfds for a vDPA driver (the kick relays, the config-interrupt and SW relay threads).

:class:`EventfdRelay` calls ``handler(key)`` once per readable eventfd (its counter read and
cleared first) until :meth:`EventfdRelay.stop`.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any

from dataplane import log as dplog

__all__ = ["EventfdRelay"]

log = dplog.get_logger("dataplane.vdpa")


class EventfdRelay(threading.Thread):
    """A thread waiting on eventfds: ``handler(key)`` for each event, until :meth:`stop`."""

    def __init__(self, name: str, fds: dict[int, Any], handler):
        super().__init__(name=name, daemon=True)
        self.fds = dict(fds)
        self.handler = handler
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.events = 0

    def run(self) -> None:
        ep = select.epoll()
        try:
            ep.register(self._stop_fd, select.EPOLLIN)
            for fd in self.fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLPRI)
            while True:
                for fd, _ in ep.poll():
                    if fd == self._stop_fd:
                        return
                    try:
                        os.eventfd_read(fd)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        continue
                    self.events += 1
                    try:
                        self.handler(self.fds[fd])
                    except Exception:
                        log.exception("vdpa: eventfd relay handler failed", thread=self.name)
        finally:
            ep.close()

    def stop(self, timeout: float = 2.0) -> None:
        os.eventfd_write(self._stop_fd, 1)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        os.close(self._stop_fd)
