"""Acceptance: DPDK's virtio-user (a real dpdk-testpmd) talks to our net_vhost port on every path.

Our side is ``dataplane.apps.vhost_echo`` (a separate process, as a user runs it): lcore
loops that check every packet testpmd's txonly engine built and echo it back.  testpmd
(``set fwd rxonly`` + ``start tx_first N``) sends N bursts of each size and counts what
comes back.
"""

from __future__ import annotations

import collections
import os
import re
import struct
import tempfile
import time

import numpy as np
import pytest

from dataplane.rings.virtqueue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_USED_F_NO_NOTIFY,
)
from dataplane.testing.testpmd import TESTPMD, Testpmd
from dataplane.testing.vhost_echo_proc import EchoProcess
from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.testing.vhost_support import wait_until
from dataplane.vhost_user import VirtioFeature as VF, bit

pytestmark = pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed")

SIZES = [64, 128, 256, 512, 1024, 1518]
CHAINED = "2000,2000,2000,2000"  # 8000 B in 4 segments
BURSTS = 4  # tx_first bursts of 32 per size

with open("/proc/cpuinfo") as _f:
    HAVE_AVX512 = " avx512f " in _f.read()

# DPDK 22.11 virtio-user devargs for each path, and the Rx/Tx paths testpmd must report
# ("virtio: using <X> Rx path").  Mergeable paths receive 8000 B into chained 2 KiB
# mbufs (--enable-scatter); the others get 10 KiB mbufs.  DPDK 22.11 names no separate
# in-order Tx path for packed rings ("packed ring standard" handles IN_ORDER inside).
PATHS = {
    "split-mergeable": ("packed_vq=0,mrg_rxbuf=1,in_order=0", "mergeable buffer", "standard"),
    "split-non-mergeable": ("packed_vq=0,mrg_rxbuf=0,in_order=0", "standard", "standard"),
    "split-inorder-mergeable": ("packed_vq=0,mrg_rxbuf=1,in_order=1", "inorder", "inorder"),
    "split-inorder-non-mergeable": ("packed_vq=0,mrg_rxbuf=0,in_order=1", "inorder", "inorder"),
    "split-vectorized": ("packed_vq=0,mrg_rxbuf=0,in_order=0,vectorized=1", "vectorized", "standard"),
    "packed-mergeable": ("packed_vq=1,mrg_rxbuf=1,in_order=0", "packed ring mergeable buffer", "packed ring standard"),
    "packed-non-mergeable": ("packed_vq=1,mrg_rxbuf=0,in_order=0", "packed ring standard", "packed ring standard"),
    "packed-inorder-mergeable": ("packed_vq=1,mrg_rxbuf=1,in_order=1", "packed ring mergeable buffer", "packed ring standard"),
    "packed-inorder-non-mergeable": ("packed_vq=1,mrg_rxbuf=0,in_order=1", "packed ring standard", "packed ring standard"),
    "packed-vectorized": ("packed_vq=1,mrg_rxbuf=0,in_order=1,vectorized=1", "packed ring vectorized", "packed ring vectorized"),
}


@pytest.fixture(scope="module")
def sock_dir():
    d = tempfile.mkdtemp(prefix="vhp", dir="/tmp")
    yield d
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


@pytest.fixture(scope="module")
def echo1(sock_dir):
    sock = os.path.join(sock_dir, "q1.sock")
    with EchoProcess([f"net_vhost0,iface={sock},queues=1"], check="txonly") as e:
        e.sock = sock
        yield e


def _virtio_user(sock: str, devargs: str, queues: int = 1, extra_eal=(), app=(), wait=True) -> Testpmd:
    return Testpmd(
        ["--vdev", f"net_virtio_user0,path={sock},queues={queues},{devargs}",
         "--log-level=pmd.net.virtio.*:info", *extra_eal],
        [f"--rxq={queues}", f"--txq={queues}", "--nb-cores=1", *app],
        cpus="1", mbufs=4096, wait=wait,
    )


def _paths_used(output: str) -> tuple[str, str]:
    rx = re.findall(r"using (.+?) Rx path", output)
    tx = re.findall(r"using (.+?) Tx path", output)
    return (rx[-1] if rx else "", tx[-1] if tx else "")


def _send_and_count(tp: Testpmd, txpkts: str, bursts: int = BURSTS, timeout: float = 15.0) -> dict:
    """rxonly + tx_first: returns the fwd stats once every sent packet is back (or the timeout)."""
    tp.cmd(f"set txpkts {txpkts}")
    tp.cmd(f"start tx_first {bursts}")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        s = tp.port_stats(0)
        if s["TX-packets"] and s["RX-packets"] >= s["TX-packets"]:
            break
        if s == last:
            time.sleep(0.2)
        last = s
        time.sleep(0.05)
    return tp.stop()


@pytest.mark.parametrize("path", list(PATHS))
def test_virtio_user_path_echo(echo1, path):
    devargs, rx_path, tx_path = PATHS[path]
    extra = []
    if path == "packed-vectorized":
        if not HAVE_AVX512:
            pytest.skip("packed vectorized path needs AVX-512")
        extra = ["--force-max-simd-bitwidth=512"]
    before = echo1.stats()
    mbufs = ["--enable-scatter"] if "mrg_rxbuf=1" in devargs else ["--mbuf-size=10240"]
    sent, per_size = 0, {}
    with _virtio_user(echo1.sock, devargs, extra_eal=extra, app=["--max-pkt-len=9000", *mbufs]) as tp:
        tp.wait_link(0)
        assert _paths_used(tp.output) == (rx_path, tx_path)
        tp.cmd("set fwd rxonly")
        for size in SIZES + [8000]:
            # one burst of 8000 B chains (5 descriptors each) fits a 256-entry ring
            fwd = _send_and_count(tp, CHAINED if size == 8000 else str(size), 1 if size == 8000 else BURSTS)
            assert fwd["TX-packets"] > 0 and fwd["RX-packets"] == fwd["TX-packets"], (path, size, fwd)
            per_size[size] = fwd["TX-packets"]
            sent += fwd["TX-packets"]
    after = echo1.wait_stats(lambda s: s["checked"] - before["checked"] >= sent)
    assert after["checked"] - before["checked"] == sent
    assert after["bad"] == before["bad"] == 0
    x0, x1 = before["ports"]["net_vhost0"]["xstats"], after["ports"]["net_vhost0"]["xstats"]
    d = {k: x1[k] - x0[k] for k in x1}
    assert d["rx_good_packets"] == d["tx_good_packets"] == sent
    assert d["rx_q0_size_64_packets"] == d["tx_q0_size_64_packets"] == per_size[64]
    assert d["rx_q0_size_1024_to_1518_packets"] == per_size[1024] + per_size[1518]
    assert d["rx_q0_size_1519_to_max_packets"] == d["tx_q0_size_1519_to_max_packets"] == per_size[8000]
    assert d["rx_total_bytes"] == sum(size * n for size, n in per_size.items())
    assert d["tx_missed_pkts"] == 0 and d["rx_errors"] == 0


def _rxonly_round(tp: Testpmd, txpkts: str = "64", bursts: int = BURSTS) -> dict:
    tp.cmd("set fwd rxonly")
    fwd = _send_and_count(tp, txpkts, bursts)
    assert fwd["TX-packets"] > 0 and fwd["RX-packets"] == fwd["TX-packets"], fwd
    return fwd


def test_two_queues_both_carry_traffic(sock_dir):
    sock = os.path.join(sock_dir, "q2.sock")
    with EchoProcess([f"net_vhost0,iface={sock},queues=2"], check="txonly") as echo:
        with _virtio_user(sock, "mrg_rxbuf=1,in_order=0", queues=2, app=["--enable-scatter"]) as tp:
            tp.wait_link(0)
            fwd = _rxonly_round(tp, "256")
        s = echo.wait_stats(lambda s: s["checked"] >= fwd["TX-packets"])
    x = s["ports"]["net_vhost0"]["xstats"]
    assert x["rx_q0_good_packets"] > 0 and x["rx_q1_good_packets"] > 0, x
    assert x["tx_q0_good_packets"] == x["rx_q0_good_packets"] and x["tx_q1_good_packets"] == x["rx_q1_good_packets"]
    assert x["rx_good_packets"] == fwd["TX-packets"] and s["bad"] == 0


def test_reconnect_backend_client_testpmd_server(sock_dir):
    """Our port in client mode, testpmd's virtio-user as server: kill and restart either side."""
    sock = os.path.join(sock_dir, "rc.sock")
    vdev = f"net_vhost0,iface={sock},queues=1,client=1"
    tp = _virtio_user(sock, "mrg_rxbuf=1,in_order=0,server=1", app=["--enable-scatter"], wait=False)
    echo = None
    try:
        echo = EchoProcess([vdev])
        tp.wait_ready()
        tp.wait_link(0)
        _rxonly_round(tp)
        # our back-end dies: testpmd's link goes down; a new one connects and traffic resumes.  The link-down
        # event is read from testpmd's output: a `show port info` while DPDK's virtio-user server handles the
        # disconnection can block for good (seen once in CI)
        mark = tp.mark()
        echo.kill()
        tp.wait_text("virtio-user port 0 is down", since=mark)
        echo = EchoProcess([vdev])
        tp.wait_link(0)
        _rxonly_round(tp)
        # testpmd dies: our link goes down, we keep retrying; a new testpmd gets us back
        tp.kill()
        echo.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])
        os.unlink(sock)  # a killed testpmd leaves its socket file; DPDK will not bind over it
        tp = _virtio_user(sock, "mrg_rxbuf=1,in_order=0,server=1", app=["--enable-scatter"], wait=False)
        tp.wait_ready()
        tp.wait_link(0)
        _rxonly_round(tp)
        assert echo.wait_stats(lambda s: s["ports"]["net_vhost0"]["link"])
    finally:
        tp.close()
        if echo is not None:
            echo.close()
        if os.path.exists(sock):
            os.unlink(sock)


def _proc_resources(pid: int) -> tuple[collections.Counter, collections.Counter]:
    """(fd kinds, memfd mappings) of a process: what a vhost connection adds."""
    fds = collections.Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        fds[t.split("[")[0].split(":")[0] if not t.startswith("/") else "file:" + t] += 1
    with open(f"/proc/{pid}/maps") as f:
        maps = collections.Counter(line.split(None, 5)[5].strip() for line in f if "memfd:" in line)
    return fds, maps


def _tree(pid: int) -> list[int]:
    out = [pid]
    for line in open(f"/proc/{pid}/task/{pid}/children").read().split():
        out.append(int(line))
    return sorted(out)


def test_server_fds_and_maps_back_to_baseline(echo1):
    """testpmd connects and quits 5 times: the back-end's processes (main and lcores) hold
    no more fds and guest-memory mappings than before."""
    pids = _tree(echo1.proc.pid)
    assert len(pids) == 2  # main + one worker lcore
    with _virtio_user(echo1.sock, "mrg_rxbuf=1,in_order=0", app=["--enable-scatter"]) as tp:  # warm
        tp.wait_link(0)
        _rxonly_round(tp)
    echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])
    time.sleep(0.5)
    base = {p: _proc_resources(p) for p in pids}
    for _ in range(5):
        with _virtio_user(echo1.sock, "mrg_rxbuf=1,in_order=0", app=["--enable-scatter"]) as tp:
            tp.wait_link(0)
            during = {p: _proc_resources(p) for p in pids}
            _rxonly_round(tp)
        echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])
    # the worker did map the guest memory while connected (so "back to baseline" means something)
    assert sum(during[pids[1]][1].values()) > sum(base[pids[1]][1].values())
    deadline = time.monotonic() + 5
    while {p: _proc_resources(p) for p in pids} != base and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {p: _proc_resources(p) for p in pids} == base


def _put_desc(vq, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
    vq.desc[16 * i : 16 * i + 16] = np.frombuffer(struct.pack("<QIHH", addr, length, flags, nxt), np.uint8)


def test_hostile_live_ring_is_logged_counted_and_the_port_keeps_serving(echo1):
    """A scripted guest posts a descriptor loop and an indirect table outside its memory on
    its Tx ring: the lcore completes both as errors (counted, logged with their kind), and
    the same port then serves DPDK's virtio-user as before."""
    before = echo1.stats()["ports"]["net_vhost0"]["xstats"]["rx_errors"]
    mem = GuestMemoryLayout.simple()
    fe = VhostUserFrontend.connect(echo1.sock, memory=mem)
    try:
        want = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VIRTIO_RING_F_INDIRECT_DESC)
        fe.start(num_queues=1, queue_size=256, features=want)
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["link"])
        tx = fe.vrings[1]
        buf = mem.alloc(4096)
        _put_desc(tx, 0, buf, 64, VRING_DESC_F_NEXT, 1)
        _put_desc(tx, 1, buf, 64, VRING_DESC_F_NEXT, 0)  # 0 -> 1 -> 0 -> ...
        _put_desc(tx, 2, 0xDEAD_0000_0000, 64, VRING_DESC_F_INDIRECT, 0)  # table outside guest memory
        tx.avail[2], tx.avail[3] = 0, 2
        tx.avail_idx = 2
        os.eventfd_write(tx.kick_fd, 1)
        s = echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["xstats"]["rx_errors"] - before >= 2)
        assert s["ports"]["net_vhost0"]["xstats"]["rx_errors"] - before == 2
        deadline = time.monotonic() + 10
        while tx.used_idx != 2 and time.monotonic() < deadline:  # both completed (length 0), not stuck
            time.sleep(0.05)
        assert tx.used_idx == 2
        while "bad descriptor chains in a live ring" not in echo1.output and time.monotonic() < deadline:
            time.sleep(0.1)
        line = [l for l in echo1.output.splitlines() if "bad descriptor chains in a live ring" in l][-1]
        assert "chain_loop" in line and "bad_indirect" in line
    finally:
        fe.close()
        mem.close()
    echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])
    with _virtio_user(echo1.sock, "mrg_rxbuf=1,in_order=0", app=["--enable-scatter"]) as tp:
        tp.wait_link(0)
        _rxonly_round(tp)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_polled_rings_ask_the_guest_not_to_kick(echo1, packed):
    """The port's lcores poll every ring, so the guest is asked not to kick on any of them (split:
    VRING_USED_F_NO_NOTIFY in the used ring; packed: the device event flags DISABLE), as DPDK's
    vhost PMD does; otherwise a busy driver makes an eventfd write after every burst."""
    mem = GuestMemoryLayout.simple()
    fe = VhostUserFrontend.connect(echo1.sock, memory=mem)
    try:
        features = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
        fe.start(num_queues=1, queue_size=256, features=features | (bit(VF.VIRTIO_F_RING_PACKED) if packed else 0))
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["link"])
        no_kick = VRING_PACKED_EVENT_FLAG_DISABLE if packed else VRING_USED_F_NO_NOTIFY

        def flags():  # the flags word of each ring's used ring / device event area
            return [int(vq.used.view(np.uint16)[1 if packed else 0]) for vq in (fe.vrings[0], fe.vrings[1])]

        assert wait_until(lambda: flags() == [no_kick, no_kick], timeout=30.0), flags()  # once the lcore has them
    finally:
        fe.close()
        mem.close()
    echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])


def test_get_vring_base_returns_what_the_lcore_consumed_and_unmaps(echo1):
    """GET_VRING_BASE is answered only after the lcore let go of the ring: the index is the
    one the lcore reached, and the lcore process no longer maps the guest's memory."""
    worker = _tree(echo1.proc.pid)[1]
    mem = GuestMemoryLayout.simple()
    fe = VhostUserFrontend.connect(echo1.sock, memory=mem)
    try:
        fe.start(num_queues=1, queue_size=256, features=bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES))
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["link"])
        before = echo1.stats()["ports"]["net_vhost0"]["stats"]["ipackets"]
        tx = fe.vrings[1]
        for i in range(5):
            buf = mem.alloc(128)
            mem.view(buf, 128)[:] = 0
            _put_desc(tx, i, buf, 12 + 64, 0, 0)  # virtio-net header + a 64 B frame
            tx.avail[2 + i] = i
        tx.avail_idx = 5
        os.eventfd_write(tx.kick_fd, 1)
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["stats"]["ipackets"] - before == 5)
        with open(f"/proc/{worker}/maps") as f:
            assert "vhost-frontend-guest" in f.read()  # the lcore maps the guest memory itself
        assert fe.get_vring_base(1) == 5
        with open(f"/proc/{worker}/maps") as f:
            assert "vhost-frontend-guest" not in f.read()
    finally:
        fe.close()
        mem.close()
    echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])


def test_changed_mem_table_is_remapped_by_the_lcore(echo1):
    """SET_MEM_TABLE with a changed table while the lcore polls: the ring is taken back, the
    lcore maps the new table, and buffers in the new region are consumed, none twice."""
    mem = GuestMemoryLayout.simple(nregions=2)
    first = GuestMemoryLayout([mem.regions[0]])
    fe = VhostUserFrontend.connect(echo1.sock, memory=first)
    try:
        fe.start(num_queues=1, queue_size=256, features=bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES))
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["link"])
        before = echo1.stats()["ports"]["net_vhost0"]["stats"]["ipackets"]
        errors_before = echo1.stats()["ports"]["net_vhost0"]["stats"]["ierrors"]
        tx = fe.vrings[1]

        def post(i, region):
            buf = mem.alloc(128, region=region)
            mem.view(buf, 128)[:] = 0
            _put_desc(tx, i, buf, 12 + 64, 0, 0)
            tx.avail[2 + i] = i
            tx.avail_idx = i + 1
            os.eventfd_write(tx.kick_fd, 1)

        for i in range(3):
            post(i, 0)
        echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["stats"]["ipackets"] - before == 3)
        fe.set_mem_table(mem.table(), mem.fds())  # now two regions: the data path must remap
        fe.sync()
        for i in range(3, 6):
            post(i, 1)  # buffers in the new region
        s = echo1.wait_stats(lambda s: s["ports"]["net_vhost0"]["stats"]["ipackets"] - before >= 6)
        assert s["ports"]["net_vhost0"]["stats"]["ipackets"] - before == 6
        assert s["ports"]["net_vhost0"]["stats"]["ierrors"] == errors_before
        assert fe.get_vring_base(1) == 6
    finally:
        fe.close()
        mem.close()
    echo1.wait_stats(lambda s: not s["ports"]["net_vhost0"]["link"])
