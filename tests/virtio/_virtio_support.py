"""Helpers for the virtio-user tests: a dpdk-testpmd vhost back-end, packets as numpy patterns."""

from __future__ import annotations

import os
import time

import numpy as np

from dataplane.memory.mempool import pktmbuf_from_bytes, pktmbuf_to_bytes
from dataplane.testing.testpmd import TESTPMD, Testpmd

class VhostTestpmd:
    """``dpdk-testpmd --vdev net_vhost0,iface=SOCK,queues=N[,client=1]`` forwarding in io mode (auto-started),
    over the shared driver :class:`dataplane.testing.testpmd.Testpmd`."""

    def __init__(self, sock: str, prefix: str, queues: int = 1, client: bool = False, mode: str = "io"):
        self.sock = sock
        self.prefix = prefix
        self.queues = queues
        self.client = client
        self.mode = mode
        self.tp: Testpmd | None = None

    @property
    def proc(self):
        return None if self.tp is None else self.tp.proc

    def start(self) -> "VhostTestpmd":
        vdev = f"net_vhost0,iface={self.sock},queues={self.queues}" + (",client=1" if self.client else "")
        self.tp = Testpmd(
            ["--log-level=pmd.net.vhost:info", "--vdev", vdev],
            [f"--rxq={self.queues}", f"--txq={self.queues}", "--nb-cores=1", f"--forward-mode={self.mode}",
             "--port-topology=loop", "--auto-start"],
            cpus="0", mbufs=4096, prefix=self.prefix,
        )
        return self

    def wait_socket(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, "testpmd exited:\n" + self.log()
            assert time.monotonic() < deadline, "testpmd made no socket:\n" + self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return "" if self.tp is None else self.tp.output

    def stop(self, kill: bool = False) -> None:
        tp, self.tp = self.tp, None
        if tp is None:
            return
        if kill:
            tp.kill()
        else:
            tp.close()


def make_packet(size: int, seq: int, q: int = 0) -> bytes:
    """An Ethernet frame of ``size`` bytes: broadcast dst, fixed src, ethertype 0x88b5, seq + pattern."""
    hdr = b"\xff" * 6 + bytes([0x02, 0, 0, 0, q, 1]) + b"\x88\xb5"
    body = seq.to_bytes(4, "little") + size.to_bytes(4, "little")
    n = size - len(hdr) - len(body)
    pat = ((np.arange(n, dtype=np.uint32) * 7 + seq) & 0xFF).astype(np.uint8).tobytes()
    return hdr + body + pat


def send_and_receive(vu, mp, packets: dict[int, list[bytes]], seg_size: int = 0, timeout: float = 120.0,
                     burst: int = 32, window: int = 32) -> dict[int, list[bytes]]:
    """Send each queue's packets and collect what comes back per queue (until all counted or timeout;
    the timeout is generous because a first burst may wait for a numba compile).

    At most ``window`` frames per queue are in flight: testpmd's io forwarding
    drops (does not retry) what our Rx ring has no room for."""
    got: dict[int, list[bytes]] = {q: [] for q in packets}
    pending = {q: [pktmbuf_from_bytes(mp, -1, p, seg_size) for p in pl] for q, pl in packets.items()}
    want = sum(len(v) for v in packets.values())
    deadline = time.monotonic() + timeout
    out = np.empty(burst, np.uint32)
    while sum(len(v) for v in got.values()) < want and time.monotonic() < deadline:
        for q in packets:
            room = window - (len(packets[q]) - len(pending[q]) - len(got[q]))
            if pending[q] and room > 0:
                chunk = np.asarray(pending[q][: min(burst, room)], np.uint32)
                k = vu.tx_burst(q, chunk)
                pending[q] = pending[q][k:]
            n = vu.rx_burst_into(q, out, burst)
            for i in range(n):
                m = int(out[i])
                got[q].append(pktmbuf_to_bytes(mp, m))
                mp.free(m)
    for q in pending:
        for m in pending[q]:
            mp.free(m)
    return got


WARMUP_TYPE = b"\x88\xb6"


def warm_up(vu, mp, queues, timeout: float = 120.0) -> None:
    """Send marker frames on every queue until one comes back on each, then drain.

    testpmd's vhost port drops what it is given to send in the first moments
    after the device is created (its Tx queue is not yet allowed), so the
    exact-payload checks start only once a round trip works."""
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + WARMUP_TYPE + bytes(50)
    out = np.empty(32, np.uint32)
    ok = set()
    deadline = time.monotonic() + timeout
    last = 0.0
    while len(ok) < len(queues):
        assert time.monotonic() < deadline, f"no round trip through the back-end on queues {set(queues) - ok}"
        now = time.monotonic()
        if now - last > 0.05:
            last = now
            for q in queues:
                if q not in ok:
                    m = pktmbuf_from_bytes(mp, -1, frame)
                    if vu.tx_burst(q, np.array([m], np.uint32)) != 1:
                        mp.free(m)
        for q in queues:
            n = vu.rx_burst_into(q, out, 32)
            for i in range(n):
                mp.free(int(out[i]))
            if n:
                ok.add(q)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        for q in queues:
            n = vu.rx_burst_into(q, out, 32)
            for i in range(n):
                mp.free(int(out[i]))


SIZES = [64, 128, 256, 512, 1024, 1518]
JUMBO = 8000

PATHS = [
    # devargs, expected (rx, tx) callback names (seed 003)
    ("mrg_rxbuf=1,in_order=1", "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
    ("mrg_rxbuf=1,in_order=0", "virtio_recv_mergeable_pkts", "virtio_xmit_pkts"),
    ("mrg_rxbuf=0,in_order=1", "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
    ("mrg_rxbuf=0,in_order=0", "virtio_recv_pkts", "virtio_xmit_pkts"),
    ("mrg_rxbuf=0,in_order=0,vectorized=1", "virtio_recv_pkts_vec", "virtio_xmit_pkts"),
    ("packed_vq=1,mrg_rxbuf=1,in_order=1", "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
    ("packed_vq=1,mrg_rxbuf=1,in_order=0", "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
    ("packed_vq=1,mrg_rxbuf=0,in_order=1", "virtio_recv_pkts_packed", "virtio_xmit_pkts_packed"),
    ("packed_vq=1,mrg_rxbuf=0,in_order=0", "virtio_recv_pkts_packed", "virtio_xmit_pkts_packed"),
    ("queue_size=1024", "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
    ("queue_size=1024,packed_vq=1", "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
]


def frames(q: int, reps: int = 8) -> list[bytes]:
    """``reps`` rounds of every size in SIZES plus one JUMBO frame, numbered."""
    out = []
    seq = 0
    for _ in range(reps):
        for s in SIZES + [JUMBO]:
            out.append(make_packet(s, seq, q))
            seq += 1
    return out


def round_trip_matrix(sock: str, memory, devargs: str, rx_path: str, tx_path: str, queues: int,
                      warmup_timeout: float = 120.0) -> None:
    """Probe a port on ``sock`` with ``devargs``, check its paths, send frames() on every queue
    (jumbo frames as chains of 2 KiB mbufs) and require each back, in order, byte for byte."""
    from dataplane.memory.mempool import mempool_create
    from dataplane.virtio import VirtioUser

    packed_nonmrg = "packed_vq=1" in devargs and "mrg_rxbuf=0" in devargs
    # DPDK's vhost cannot fill chained Rx buffers of a packed ring (it batches 4
    # descriptors ignoring NEXT): that path receives jumbo frames in big mbufs.
    room = 9216 + 128 if packed_nonmrg else 2048 + 128
    mp = mempool_create(memory, "vut", 8192, cache_size=0, data_room_size=room)
    vu = VirtioUser.probe(f"net_virtio_user0,path={sock},queues={queues},{devargs}", memory, mp, max_rx_pkt_len=9000)
    try:
        vu.start()
        assert vu.link_up
        assert (vu.paths.rx, vu.paths.tx) == (rx_path, tx_path)
        assert vu.hdr_len == 12
        warm_up(vu, mp, range(queues), timeout=warmup_timeout)
        vu.reset_stats()
        sent = {q: frames(q) for q in range(queues)}
        got = send_and_receive(vu, mp, sent, seg_size=2048)
        for q in range(queues):
            assert len(got[q]) == len(sent[q]), f"queue {q}: {len(got[q])} of {len(sent[q])} frames came back"
            assert got[q] == sent[q], f"queue {q}: payloads differ or out of order"
        st = vu.stats()
        assert st["q_opackets"] == [len(sent[q]) for q in range(queues)]
        assert st["q_ipackets"] == [len(sent[q]) for q in range(queues)]
        assert st["ierrors"] == 0 and st["oerrors"] == 0 and st["rx_nombuf"] == 0
        assert st["obytes"] == st["ibytes"] == sum(len(f) for q in sent for f in sent[q])
    finally:
        vu.close()
    assert not vu.link_up
    assert mp.avail_count() == mp.n, "mbufs leaked"
