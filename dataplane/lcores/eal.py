"""EAL initialisation: arguments → logging, memory, pinned lcores (``rte_eal_init``).

``Eal`` owns everything an instance starts and releases it in :meth:`Eal.close`
(also on SIGINT/SIGTERM and as a context manager): worker processes, the
memory segments (hugepage files or memfds) and the runtime directory.
"""

from __future__ import annotations

import signal
import socket
import threading

from dataplane._jitcache import init_target
from dataplane import log as dplog
from dataplane._version import __version__
from dataplane.lcores.eal_args import EalConfig, parse_eal_args
from dataplane.lcores.launch import Launcher
from dataplane.memory.memory import Memory

log = dplog.get_logger("dataplane.eal")

MiB = 1 << 20
DEFAULT_MEMORY_MB = 256

# The instance of this process tree; forked workers inherit it.
_CURRENT: "Eal | None" = None


def current() -> "Eal":
    """The running instance (in the main process and in every worker lcore)."""
    if _CURRENT is None:
        raise RuntimeError("the EAL is not initialised in this process")
    return _CURRENT


def current_memory() -> Memory:
    """The instance's memory: look memzones up from any lcore with ``current_memory().memzone_lookup``."""
    return current().memory


class Eal:
    """One running dataplane instance: ``Eal(config)`` or :func:`eal_init`."""

    def __init__(self, cfg: EalConfig, *, handle_signals: bool = True):
        global _CURRENT
        if _CURRENT is not None:
            raise RuntimeError("the EAL is already initialised in this process")
        self.cfg = cfg
        dplog.configure_logging(cfg.log_levels, cfg.log_format)
        if cfg.show_version:
            log.info("version", version=f"dataplane {__version__}")
        for flag, value in (
            ("--no-telemetry", cfg.no_telemetry),
            ("--proc-type", cfg.proc_type if cfg.proc_type != "primary" else None),
            ("--no-pci", cfg.no_pci),
            ("--single-file-segments", cfg.single_file_segments),
            ("--force-max-simd-bitwidth", cfg.force_max_simd_bitwidth),
            ("-n", cfg.memory_channels),
        ):
            if value:
                log.info("option accepted for compatibility, no effect", option=flag, value=value)
        self._old_handlers: dict[int, object] = {}
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self.memory: Memory | None = None
        self.launcher: Launcher | None = None
        try:
            self.memory = Memory(
                self.memory_size(cfg),
                huge=not cfg.no_huge,
                huge_dir=cfg.huge_dir,
                file_prefix=cfg.file_prefix,
                in_memory=cfg.in_memory,
            )
            _CURRENT = self
            init_target()  # now, without numba's BLAS probe; the lcores inherit it rather than each loading it
            # Workers are forked after the memory is mapped: they inherit every segment.
            self.launcher = Launcher(cfg.lcores, cfg.main_lcore)
        except BaseException:
            self.close()
            raise
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            self._watch_signals()
        log.info(
            "EAL ready",
            lcores={i: sorted(c) for i, c in cfg.lcores.items()},
            main_lcore=cfg.main_lcore,
            memory=self.memory.size,
            hugepage=self.memory.hugepage,
        )

    @staticmethod
    def memory_size(cfg: EalConfig) -> int:
        if cfg.memory_mb:
            return cfg.memory_mb * MiB
        if cfg.socket_mem:
            return sum(cfg.socket_mem) * MiB
        return DEFAULT_MEMORY_MB * MiB

    def _watch_signals(self) -> None:
        """Raise the stop flag as soon as a signal arrives.

        Python runs signal handlers only when the main thread is back in the
        interpreter; a numba poll loop on the main lcore would never get
        there.  The C-level handler writes the signal number to the wakeup fd
        at once, and this thread turns it into the shared stop flag, which
        the loop does check.
        """
        r, w = socket.socketpair()
        r.setblocking(True)
        w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._wakeup = (r, w)

        def watch():
            while True:
                try:
                    data = r.recv(64)
                except OSError:
                    return
                if not data:
                    return
                if self.launcher is not None and (signal.SIGINT in data or signal.SIGTERM in data):
                    self.mark_exiting()
                    self.launcher.request_stop()

        threading.Thread(target=watch, name="eal-signals", daemon=True).start()

    def _on_signal(self, signum, frame):
        log.warning("signal received, stopping", signal=signal.Signals(signum).name)
        self.mark_exiting()
        if self.launcher is not None:
            self.launcher.request_stop()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def mark_exiting(self) -> None:
        """Say that this instance is on its way out (``quit``, a signal): from now on a successor
        with our file prefix waits for us to exit instead of being refused."""
        memory = self.memory
        if memory is not None and memory.runtime is not None:
            memory.runtime.mark_exiting()

    def close(self) -> None:
        """Stop and reap every worker, release memory and the runtime directory."""
        global _CURRENT
        self.mark_exiting()  # a successor with our prefix waits for us
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            r, w = self._wakeup
            w.close()
            r.shutdown(socket.SHUT_RDWR)
            r.close()
            self._wakeup = None
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if _CURRENT is self:
            _CURRENT = None

    def __enter__(self) -> "Eal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def eal_init(argv: list[str], **kw) -> Eal:
    """Parse EAL arguments (up to ``--``) and start the instance; app args in ``eal.cfg.app_args``."""
    return Eal(parse_eal_args(argv), **kw)
