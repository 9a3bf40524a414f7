"""``dataplane-vhost-blk``: a vhost-user-blk back-end serving a RAM disk or a file.

::

    dataplane-vhost-blk [EAL options] -- --socket PATH (--size SIZE | --file PATH)
                        [--queues N] [--readonly] [--serial ID] [--client] [-i]

    dataplane-vhost-blk -l 0-1 --no-huge -m 64 -- --socket /tmp/blk.sock --size 256M
    qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/blk.sock \\
        -device vhost-user-blk-pci,chardev=c0,num-queues=1

* ``--size SIZE`` (``512M``, ``1G``, bytes): a zeroed RAM disk in shared
  memory (hugepages, or tmpfs with ``--no-huge``); ``--file PATH``: an
  existing file, mapped shared (FLUSH makes writes durable; the file is
  synced again at exit).
* ``--queues N``: virtqueues, spread over the worker lcores (round-robin);
  the main lcore runs the vhost-user control plane.
* ``--readonly``: the RO feature; the guest sees a read-only disk and
  writes get IOERR.  ``--serial ID``: what GET_ID returns (<= 20 bytes).
* ``--client``: connect to PATH (retrying every second) instead of listening.
* ``--duration S``: stop after S seconds (default: at SIGINT/SIGTERM).
* ``-i`` / ``--interactive``: commands on stdin (prompt ``vhost-blk>``):
  ``resize SIZE`` grows the disk, ``show disk``, ``help``, ``quit``
  (end of input quits too).

**Growing the disk at run time.**  ``resize SIZE`` (``2G``, bytes; never
smaller) grows a RAM disk (more shared memory) or a ``--file`` (extended,
sparse).  With ``--file``, ``SIGHUP`` does the same after the file was grown
from outside (``truncate -s 2G disk.img; kill -HUP PID``).  The lcores stop
serving the queues while the disk grows and pick up the new size when they
resume; then every connected front-end that gave a back-end channel with the
CONFIG protocol feature gets ``VHOST_USER_BACKEND_CONFIG_CHANGE_MSG``: QEMU
re-reads the config space and the guest sees the new capacity (Linux:
``/sys/block/vda/size``, "detected capacity change" in its log).  Each
outcome is printed: ``vhost-blk: resized sectors=N``, then per front-end
``vhost-blk: vid=V config change acknowledged`` (or ``... failed: REASON``).

At start it prints ``vhost-blk: ready ...`` once the socket is up; at exit it
prints the per-queue counters as one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import signal
import sys

from dataplane import log as dplog
from dataplane.lcores.usage import UsageParser
from dataplane.apps.eal_app import StdinShell, eal_main, stop_lcores, wait_for_stop
from dataplane.memory.units import format_size, parse_size
from dataplane.vhost.backend_channel import ACK_TIMEOUT
from dataplane.vhost.blk.device import DEFAULT_LIMITS, BlkDevice
from dataplane.vhost.blk.handoff import BlkVringHandoff, serve_queues, warm_up
from dataplane.vhost.blk.spec import VIRTIO_BLK_ID_BYTES
from dataplane.vhost.blk.storage import Storage, StorageError
from dataplane.vhost.library import CLIENT, VhostError, VhostLibrary

log = dplog.get_logger("dataplane.apps")

PROG = "dataplane-vhost-blk"
BURST = 32
PROMPT = "vhost-blk> "


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(PROG, eal=True, app="vhost-blk", description="a vhost-user-blk back-end serving a RAM disk or a file")
    p.add_argument("--socket", required=True, help="vhost-user unix socket path")
    disk = p.add_mutually_exclusive_group(required=True)
    disk.add_argument("--size", help="RAM disk size (512M, 1G, bytes)")
    disk.add_argument("--file", help="disk image file, mapped shared")
    p.add_argument("--queues", type=int, default=1, help="virtqueues, spread over the worker lcores")
    p.add_argument("--readonly", action="store_true", help="a read-only disk (the RO feature)")
    p.add_argument("--serial", default="", help="what GET_ID returns (at most 20 bytes)")
    p.add_argument("--client", action="store_true", help="connect to the socket instead of listening")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until SIGINT/SIGTERM)")
    p.add_argument("-i", "--interactive", action="store_true",
                   help="commands on stdin: 'resize SIZE' grows the disk (the guest is told), 'show disk', 'quit'")
    p.epilog = ("With --file, SIGHUP adopts the file's new size after it was grown from outside "
                "(truncate -s 2G IMG; kill -HUP PID). Front-ends are told with CONFIG_CHANGE_MSG.")
    return p


def _check(opts) -> str | None:
    if not 1 <= opts.queues <= 64:
        return f"--queues must be 1..64, got {opts.queues}"
    if len(opts.serial.encode()) > VIRTIO_BLK_ID_BYTES:
        return f"--serial is at most {VIRTIO_BLK_ID_BYTES} bytes"
    if len(opts.socket.encode()) >= 108:
        return "--socket path too long for a unix socket (max 107 bytes)"
    return None


def _open_storage(eal, opts) -> Storage:
    if opts.file:
        return Storage.open_file(opts.file, readonly=opts.readonly)
    try:
        size = parse_size(opts.size)
    except ValueError as e:
        raise StorageError(f"--size: {e}") from None
    mem = eal.memory
    return Storage.ram(size, hugepage=mem.hugepage, page_size=mem.page_size, readonly=opts.readonly)


class BlkShell:
    """The ``-i`` commands and the SIGHUP resize over one served disk (``handle(line)`` returns the output)."""

    def __init__(self, lib: VhostLibrary, socket: str, device: BlkDevice, storage: Storage):
        self.lib, self.socket, self.device, self.storage = lib, socket, device, storage

    def resize(self, size: int) -> str:
        """Grow the disk to ``size`` bytes with no lcore serving meanwhile, then tell the front-ends."""
        def update() -> None:
            self.storage.grow(size)
            self.device.sectors = self.storage.sectors

        try:
            futures = self.lib.driver_config_change(self.socket, update)
        except (StorageError, VhostError) as e:
            return f"vhost-blk: resize failed: {e}\n"
        out = [f"vhost-blk: resized sectors={self.storage.sectors} size={format_size(self.storage.size)}\n"]
        if not futures:
            out.append("vhost-blk: no front-end with a back-end channel to tell\n")
        concurrent.futures.wait(futures.values(), timeout=ACK_TIMEOUT + 5)
        for vid, fut in sorted(futures.items()):
            err = fut.exception(0) if fut.done() else TimeoutError("no outcome")
            out.append(f"vhost-blk: vid={vid} config change acknowledged\n" if err is None
                       else f"vhost-blk: vid={vid} config change failed: {err}\n")
        return "".join(out)

    def reread_file(self) -> str:
        """SIGHUP: adopt the size of a disk file grown from outside."""
        if not self.storage.file_backed:
            return "vhost-blk: SIGHUP ignored: a RAM disk has no file to re-read (use 'resize SIZE' with -i)\n"
        return self.resize(self.storage.file_size())

    def handle(self, line: str) -> str | None:
        """Run one command; None means quit."""
        w = line.split()
        if not w:
            return ""
        if w[0] in ("quit", "exit"):
            return None
        if w[0] == "resize" and len(w) == 2:
            try:
                size = parse_size(w[1])
            except ValueError as e:
                return f"vhost-blk: resize failed: {e}\n"
            return self.resize(size)
        if w == ["show", "disk"]:
            s = self.storage
            return (f"vhost-blk: sectors={s.sectors} size={format_size(s.size)} file={s.path or '-'}"
                    f" readonly={int(s.readonly)} vids={self.lib.list_vids()}\n")
        if w[0] == "help":
            return "commands: resize SIZE | show disk | quit\n"
        return f"vhost-blk: unknown command {line.strip()!r} (help lists them)\n"


def _serve(eal, opts, shell: BlkShell) -> None:
    """The main lcore's wait: signals, the shell, SIGHUP."""
    hup = []
    old = signal.signal(signal.SIGHUP, lambda *_: hup.append(1))
    stdin = StdinShell(shell.handle, PROMPT) if opts.interactive else None

    def tick() -> bool:
        while hup:
            hup.pop()
            print(shell.reread_file(), end="", flush=True)
        return stdin is not None and stdin.tick()

    try:
        wait_for_stop(eal, opts.duration, tick=tick)
    finally:
        signal.signal(signal.SIGHUP, old)


def run(eal, opts) -> int:
    workers = eal.launcher.worker_ids
    if not workers:
        print(f"{PROG}: needs at least one worker lcore (e.g. -l 0-1)", file=sys.stderr)
        return 2
    try:
        storage = _open_storage(eal, opts)
    except StorageError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    handoff = lib = None
    plan: dict[int, list[int]] = {}
    try:
        handoff = BlkVringHandoff("blk0", opts.queues, storage, readonly=opts.readonly,
                                  serial=opts.serial.encode(), limits=DEFAULT_LIMITS,
                                  memory=eal.memory, launcher=eal.launcher)
        for q in range(opts.queues):
            lc = workers[q % len(workers)]
            handoff.place(q, lc)
            plan.setdefault(lc, []).append(q)
        warm_up({len(qs) for qs in plan.values()}, BURST)
        for lc, qs in plan.items():
            eal.launcher.remote_launch(serve_queues, ("blk0", qs, BURST), lc)
        device = BlkDevice(handoff, sectors=storage.sectors, num_queues=opts.queues, readonly=opts.readonly,
                           limits=DEFAULT_LIMITS)
        lib = VhostLibrary()
        lib.driver_register(opts.socket, CLIENT if opts.client else 0, device=device)
        lib.driver_start(opts.socket)
        print(f"vhost-blk: ready socket={opts.socket} sectors={storage.sectors} queues={opts.queues}"
              f" readonly={int(opts.readonly)}", flush=True)
        _serve(eal, opts, BlkShell(lib, opts.socket, device, storage))
    except KeyboardInterrupt:
        pass
    except VhostError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    finally:
        if lib is not None:
            lib.close()  # disconnects: every vring is taken back from its lcore first
        stop_lcores(eal)
        stats = handoff.stats() if handoff is not None else []
        if handoff is not None:
            handoff.close()
        try:
            storage.flush()
        except OSError as e:
            log.error("disk file sync failed", error=str(e))
        storage.close()
    print(json.dumps({"queues": stats}), flush=True)
    return 1 if eal.launcher.failures else 0


def main(argv: list[str] | None = None) -> int:
    return eal_main(PROG, _parser(), run, argv, check=_check)


if __name__ == "__main__":
    # Run the importable module, not __main__: lcore functions pickle by reference and
    # their kernels load from the disk cache.
    from dataplane.apps import vhost_blk

    sys.exit(vhost_blk.main())
