"""An Rx lcore in interrupt mode, as its own process (run by test_virtio_user_rx_intr.py).

Usage: ``python3 _rx_intr_lcore.py SOCK DEVARGS FILE_PREFIX``

Probes a virtio-user port on the vhost-user back-end at SOCK (which must
forward what it receives back: testpmd io), warms up, prints ``READY``, then
runs the loop of DPDK's l3fwd-power: poll ``rx_burst``; when the queue is
empty, ``rx_intr_enable`` and sleep in ``select`` on the queue's interrupt fd
(and stdin, the test's command channel); on wake-up ``rx_intr_disable`` and
poll again.

Lines on stdout: ``READY``; ``WAKE intr`` / ``WAKE cmd`` (what ended a sleep);
``SENDING``, ``SENT n`` (before and after a Tx burst); ``GOT n ok|bad`` (frames received, compared with the last sent);
``SPUN n`` (busy-poll iterations); ``BYE``.  Commands on stdin: ``send`` (one
frame on queue 0, 0.3 s later, from another thread: the lcore is asleep again by then), ``spin S`` (busy-poll for S seconds without sleeping: the
control for the CPU measurement), ``quit`` (or EOF).
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time

import numpy as np

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create, pktmbuf_from_bytes, pktmbuf_to_bytes
from dataplane.memory.units import MiB
from dataplane.virtio import VirtioUser

from _virtio_support import make_packet, warm_up


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def send_one(vu, mp, q: int, frame: bytes) -> None:
    m = pktmbuf_from_bytes(mp, -1, frame)
    say("SENDING")  # before the frame can come back: the order of lines to the test
    k = 0
    for _ in range(100):  # a burst returns 0 while another thread holds the port
        k = vu.tx_burst(q, np.array([m], np.uint32))
        if k:
            break
        time.sleep(0.001)
    if k != 1:
        mp.free(m)
    say(f"SENT {k}")


def main() -> int:
    sock, devargs, prefix = sys.argv[1:4]
    q = 0
    with Memory(64 * MiB, huge=False, file_prefix=prefix) as memory:
        mp = mempool_create(memory, "rxi", 1024, cache_size=0)
        vu = VirtioUser.probe(f"net_virtio_user0,path={sock},queues=1,{devargs}", memory, mp)
        try:
            vu.start()
            warm_up(vu, mp, [q])
            fd = vu.rx_intr_fd(q)
            out = np.empty(32, np.uint32)
            cmd_buf = b""
            expect = b""
            seq = 0
            say("READY")
            while True:
                n = vu.rx_burst_into(q, out)
                if n:
                    frames = [pktmbuf_to_bytes(mp, int(out[i])) for i in range(n)]
                    for i in range(n):
                        mp.free(int(out[i]))
                    say(f"GOT {n} {'ok' if frames == [expect] else 'bad'}")
                    continue
                if vu.rx_intr_enable(q):  # something arrived meanwhile: poll, do not sleep
                    vu.rx_intr_disable(q)
                    continue
                r, _, _ = select.select([fd, 0], [], [])
                vu.rx_intr_disable(q)
                if fd in r:
                    say("WAKE intr")
                if 0 not in r:
                    continue
                say("WAKE cmd")
                chunk = os.read(0, 4096)
                if not chunk:
                    break
                cmd_buf += chunk
                quit_ = False
                while b"\n" in cmd_buf:
                    line, cmd_buf = cmd_buf.split(b"\n", 1)
                    w = line.decode().split()
                    if not w:
                        continue
                    if w[0] == "send":
                        # sent 0.3 s later from another thread, so the frame comes back while
                        # this loop is asleep again (not while it is still polling)
                        seq += 1
                        expect = make_packet(128, seq)
                        threading.Timer(0.3, send_one, (vu, mp, q, expect)).start()
                    elif w[0] == "spin":
                        end = time.monotonic() + float(w[1])
                        spins = 0
                        while time.monotonic() < end:
                            n = vu.rx_burst_into(q, out)
                            for i in range(n):
                                mp.free(int(out[i]))
                            spins += 1
                        say(f"SPUN {spins}")
                    elif w[0] == "quit":
                        quit_ = True
                if quit_:
                    break
        finally:
            vu.close()
        ok = mp.avail_count() == mp.n
    say("BYE" if ok else "BYE leaked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
