#!/usr/bin/env python3
"""VM-to-VM through the emulated IFC card (ifcvf vDPA) against software vm2vm, in Mpps at 64 B and 1518 B.

Usage::

    python bench/vdpa_perf.py [--seconds S] [--rounds N] [--sizes 64,1518]

Every row has the same two "VMs": two DPDK ``net_virtio_user`` ports (MACs 02:00:00:00:00:01
and :02, each the other's ``--eth-peer``) in one ``dpdk-testpmd`` pinned to cpu 0, forwarding
io between them (rings of ``QUEUE_SIZE`` = 1024 entries), seeded by ``start tx_first 32`` with
``--txpkts=SIZE`` frames: frames sent by
port 0 cross the middle to port 1, which sends them back into the middle from port 0's side,
and the same the other way.  (Separate txonly and rxonly testpmds would make three busy
pollers on two cpus; time-slicing them drops whole rings.)  What sits between the ports gets
cpu 1:

* **card**: ``dataplane-nic`` (one process: the IFC card with two VFs) pinned to cpu 1, and
  ``dataplane-vdpa -a VF1,vdpa=1 -a VF2,vdpa=1`` (the ifcvf driver; its notify relay
  thread) on cpu 0 with the VMs.  Frames go virtio-user TX ring → the card's switch → the
  other virtio-user's RX ring, the card walking both rings in the VMs' memory.
* **DPDK vm2vm**: ``dpdk-testpmd`` in io mode between two ``net_vhost`` ports, its
  forwarding lcore on cpu 1 (DPDK's software vm2vm).
* **dataplane vm2vm**: ``dataplane`` (our testpmd-compatible engine) in io mode between two
  ``net_vhost`` ports, its forwarding lcore on cpu 1.

A figure is the frames per second the middle delivered (the VM testpmd's RX-packets of both
ports): the median of 1-s samples after a 1-s warm-up.  Rows alternate (card, DPDK, dataplane, card, ...) ``--rounds`` times and
report the median of the rounds.  The LAST line is ``speed_ratio=<card ÷ DPDK vm2vm, 64 B>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane.nic.kernels import QUEUE_COUNTER_NAMES  # noqa: E402
from dataplane.nic.shm import CardShm  # noqa: E402
from dataplane.testing.nic_card import CardProc, card_in_runtime  # noqa: E402
from dataplane.testing.testpmd import TESTPMD, Testpmd, dataplane_shell  # noqa: E402
from dataplane.testing.vdpa_proc import VdpaProcess  # noqa: E402

VF1, VF2 = "0000:00:05.1", "0000:00:05.2"
VM_CPU, MIDDLE_CPU = "0", 1
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")  # VF1's and VF2's with the card's default --mac-base
MBUFS = 16384
SEED_BURSTS = 32  # ``start tx_first 32``: 32 bursts of 32 frames per port circulate
#: virtio-user ring size: with DPDK's default of 256 and 8 bursts in flight, one run read card 1.61 /
#: DPDK vm2vm 6.20 Mpps; with 1024 and 32 bursts, 4.44 / 10.19 -- both rows at their best
QUEUE_SIZE = 1024


def _pin_all_threads(pid: int, cpu: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


def _vms(sock0: str, sock1: str, size: int) -> Testpmd:
    """Both VMs' ports in one testpmd on ``VM_CPU`` (two busy pollers on two cpus; three would
    time-slice and drop whole rings): port 0 on ``sock0``, port 1 on ``sock1``, io forwarding,
    seeded with ``SEED_BURSTS`` bursts of ``size``-byte frames per port.  Each frame crosses the
    middle, reaches the other port, and is sent back into the middle unchanged (port 0's frames
    always enter through port 0, so the card's switch learns each source MAC on one VF)."""
    eal = []
    for i, s in enumerate((sock0, sock1)):
        eal += ["--vdev", f"net_virtio_user{i},path={s},queues=1,queue_size={QUEUE_SIZE},mac={MACS[i]}"]
    app = ["--forward-mode=io", f"--txpkts={size}", "--nb-cores=1", "--burst=32",
           f"--eth-peer=0,{MACS[1]}", f"--eth-peer=1,{MACS[0]}"]
    vm = Testpmd(eal, app, cpus=VM_CPU, mbufs=MBUFS, memory_mb=1024)
    try:
        vm.wait_link(0, timeout=60)
        vm.wait_link(1, timeout=60)
        vm.cmd(f"start tx_first {SEED_BURSTS}")
    except BaseException:
        vm.close()
        raise
    return vm


def _received(vm: Testpmd) -> int:
    return vm.port_stats(0)["RX-packets"] + vm.port_stats(1)["RX-packets"]


def _measure(vm: Testpmd, seconds: int) -> float:
    """Median, over 1-s samples after a 1-s warm-up, of the frames per second the middle delivered
    to the two ports together (Mpps)."""
    deadline = time.monotonic() + 30
    while _received(vm) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no frame came back through the middle in 30 s:\n{vm.output[-2000:]}")
        time.sleep(0.1)
    time.sleep(1.0)  # warm-up
    rates = []
    last_t, last = time.monotonic(), _received(vm)
    for _ in range(seconds):
        time.sleep(1.0)
        n, t = _received(vm), time.monotonic()
        rates.append((n - last) / (t - last_t) / 1e6)
        last_t, last = t, n
    if rates[-1] == 0:
        raise RuntimeError(f"the circulation stopped:\n{vm.output[-2000:]}")
    return statistics.median(rates)


def _card_counters(card: CardProc) -> None:
    """One line per VF queue: the card's own counters (kicks and interrupts per frame show the
    notification traffic the driver's relay carried)."""
    shm = CardShm(os.path.join(card.dir, "counters"))
    try:
        for vf in range(shm.nvfs):
            for q, name in ((0, "rx"), (1, "tx")):
                row = shm.queues[vf][q]
                print(f"  card VF{vf + 1} {name}: " + " ".join(
                    f"{n}={int(row[i])}" for i, n in enumerate(QUEUE_COUNTER_NAMES)
                    if n in ("packets", "kicks", "irqs", "drops", "no_buffer", "flooded", "errors")), flush=True)
    finally:
        shm.close()


def run_card(size: int, seconds: int) -> float:
    with card_in_runtime(vfs=2, prefix="vdpab") as card:
        _pin_all_threads(card.proc.pid, MIDDLE_CPU)
        with VdpaProcess(allow=[f"{VF1},vdpa=1", f"{VF2},vdpa=1"]) as app:
            with _vms(app.socket(0), app.socket(1), size) as vm:
                mpps = _measure(vm, seconds)
                _card_counters(card)
                return mpps


def run_vm2vm(kind: str, size: int, seconds: int) -> float:
    d = tempfile.mkdtemp(prefix="vm2vm", dir="/tmp")
    a, b = os.path.join(d, "vhost0"), os.path.join(d, "vhost1")
    eal = ["--vdev", f"net_vhost0,iface={a},queues=1", "--vdev", f"net_vhost1,iface={b},queues=1"]
    app = ["--forward-mode=io", "--nb-cores=1", "--burst=32"]
    try:
        if kind == "dpdk":
            sw = Testpmd(eal, app, cpus=str(MIDDLE_CPU), mbufs=MBUFS, memory_mb=1024)
        else:
            sw = dataplane_shell(eal, app, lcores=f"0@{VM_CPU},1@{MIDDLE_CPU}", mbufs=MBUFS, memory_mb=512)
        try:
            sw.cmd("start")
            with _vms(a, b, size) as vm:
                return _measure(vm, seconds)
        finally:
            sw.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


ROWS = {
    "card (ifcvf vDPA)": run_card,
    "DPDK vm2vm": lambda size, s: run_vm2vm("dpdk", size, s),
    "dataplane vm2vm": lambda size, s: run_vm2vm("dataplane", size, s),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="1-s samples per measurement (after a 1-s warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="times each row is measured, rows alternating")
    ap.add_argument("--sizes", default="64,1518")
    args = ap.parse_args(argv)
    if TESTPMD is None:
        print("dpdk-testpmd not found (Debian package dpdk): it runs the VMs of every row", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    for size in sizes:
        for rnd in range(args.rounds):
            for name, fn in ROWS.items():
                mpps = fn(size, args.seconds)
                results.setdefault((name, size), []).append(mpps)
                print(f"round {rnd + 1} {size:>5} B  {name:<18} {mpps:7.3f} Mpps", flush=True)
    print()
    print(f"| {'row':<18} | size | Mpps (median of {args.rounds}) | ÷ DPDK vm2vm |")
    print("|---|---|---|---|")
    med = {k: statistics.median(v) for k, v in results.items()}
    for name, size in results:
        ratio = med[(name, size)] / med[("DPDK vm2vm", size)] if med[("DPDK vm2vm", size)] else float("nan")
        print(f"| {name:<18} | {size} | {med[(name, size)]:.3f} | {ratio:.2f} |")
    size0 = 64 if 64 in sizes else sizes[0]
    card, dpdk = med[("card (ifcvf vDPA)", size0)], med[("DPDK vm2vm", size0)]
    print(f"speed_ratio={card / dpdk if dpdk else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
