"""Run ``dataplane-vhost-blk`` (``python3 -m dataplane.apps.vhost_blk``) as a child process for tests and benchmarks."""

from __future__ import annotations

from dataplane.testing.app_process import AppProcess

__all__ = ["BlkProcess"]


class BlkProcess(AppProcess):
    """The blk back-end on ``socket`` with a RAM disk of ``size`` or the disk file ``file``.

    Up (the socket listening, or connecting with ``client``) when the constructor
    returns; :meth:`stop` returns its final figures ``{"queues": [per-queue counters]}``.
    ``interactive``: its ``-i`` shell reads :meth:`command` lines; :meth:`resize` grows the disk.
    """

    def resize(self, size: str | int, timeout: float = 60.0) -> str:
        """``resize SIZE`` in its shell; returns what it printed for it (up to the next prompt)."""
        start = len(self.output)
        self.command(f"resize {size}")
        out = self.wait_output("vhost-blk> ", timeout, start)[start:]
        return out[: out.index("vhost-blk> ")]

    name = "dataplane-vhost-blk"

    def __init__(self, socket: str, *, size: str | int | None = None, file: str | None = None, queues: int = 1,
                 readonly: bool = False, serial: str | None = None, client: bool = False, lcores: str = "0-1",
                 memory_mb: int = 64, timeout: float = 240.0, extra: list[str] = (), interactive: bool = False):
        args = ["--socket", socket]
        args += ["--size", str(size)] if file is None else ["--file", file]
        args += ["--queues", str(queues)]
        if readonly:
            args.append("--readonly")
        if serial is not None:
            args += ["--serial", serial]
        if client:
            args.append("--client")
        if interactive:
            args.append("-i")
        super().__init__("dataplane.apps.vhost_blk", [*args, *extra], ready="vhost-blk: ready", lcores=lcores,
                         memory_mb=memory_mb, timeout=timeout, prefix="vblk", stdin=interactive)
