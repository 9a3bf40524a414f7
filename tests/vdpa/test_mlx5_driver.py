"""The mlx5 vDPA driver on the emulated ConnectX-6 Dx (a card process): probe, registry, mgmtdev; dev_conf
programs the card (guest mkey, virtqs RDY in QP event mode, RSS steering); frames cross the card's switch from
VF1's TX ring to VF2's RX ring; completions reach the front-ends' callfds through the event thread in each
event mode; GET_VRING_BASE returns the card's indices and a second connection resumes; the six stats; a DMA
fault gives error events, recoveries, and the driver gives up after 3 errors in 3 s."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

from dataplane.hwspec import mlx5_prm as P
from dataplane.testing.nic_card import card_in_runtime
from dataplane.testing.vdpa_card import GUEST_GPA, WRITE, connect_guest, post_chain, send_frame, served_vfs, vnet_frame, \
    wait_until
from dataplane.testing.vhost_frontend import eventfd_count
from dataplane.vdpa import device as vdpa
from dataplane.vdpa.device import VdpaError
from dataplane.vdpa.mlx5 import rss as RSS
from dataplane.vdpa.mlx5.devargs import NotOurDevice
from dataplane.vdpa.mlx5.driver import probe
from dataplane.vdpa.mlx5.features import MLX5_VDPA_PROTOCOL_FEATURES
from dataplane.vdpa.mlx5.hw import Mlx5HwError
from dataplane.vdpa.mlx5.stats import STATS_NAMES
from dataplane.vhost_user.features import VirtioFeature as VF, bit

VF1, VF2 = "0000:00:06.1", "0000:00:06.2"
_wait, _post, _connect, _frame, _send = wait_until, post_chain, connect_guest, vnet_frame, send_frame


@pytest.fixture(scope="module")
def card():
    with card_in_runtime(vfs=2, prefix="m5w", model="mlx5") as c:
        yield c


@pytest.fixture
def served(card):
    """``make(bdf, args)``: the probed VF on a fresh socket of a private vhost library."""
    with served_vfs(probe, {"class": "vdpa"}) as make:
        yield make


def _query(dev, q):
    return dev.hw.obj(P.Op.QUERY_GENERAL_OBJECT, P.ObjType.VIRTIO_NET_Q, dev.virtqs[q].oid, out=P.VIRTQ)


# ----------------------------------------------------------------------------------------------


def test_probe_registers_the_vf_with_dpdk_features(card, served):
    path, dev = served(VF1)
    vdev = vdpa.find_device_by_name(VF1)
    assert vdev is dev.vdev and vdev.driver == "mlx5"
    assert vdpa.get_queue_num(vdev) == 16  # max_num_virtio_queues 32 / 2
    f = vdpa.get_features(vdev)
    assert f == 0x154c60180b  # DPDK's 0x104c600008; VERSION_1, RING_PACKED, HOST_TSO4/6, CSUM, GUEST_CSUM from the caps
    assert f & bit(VF.VIRTIO_F_VERSION_1) and f & bit(VF.VIRTIO_F_RING_PACKED)
    assert vdpa.get_protocol_features(vdev) == MLX5_VDPA_PROTOCOL_FEATURES == 0x10c33
    assert vdpa.get_stats_names(vdev) == list(STATS_NAMES)
    assert dev.mgmtdev.bus == "pci" and dev.mgmtdev.name == VF1
    ops = dev.vdev.ops
    assert ops.get_notify_area(0, 0) == ops.get_notify_area(0, 5) == (P.VAR_OFF, P.VAR_SIZE)
    with pytest.raises(NotOurDevice):
        probe(VF2, {"class": "eth"}, None)
    with pytest.raises(NotOurDevice):
        probe(VF2, {}, None)
    with pytest.raises(Mlx5HwError, match="no such PCI function"):
        probe("0000:00:07.1", {"class": "vdpa"}, None)
    with pytest.raises(Mlx5HwError, match="in use"):  # one driver at a time: the card refuses a second
        probe(VF1, {"class": "vdpa"}, None, vf_dir=card.vf_dir(0))
    # stats before any virtq: EINVAL (no counters object yet), E2BIG past the queues
    with pytest.raises(VdpaError) as e:
        vdpa.get_stats(vdev, 0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(VdpaError) as e:
        vdpa.get_stats(vdev, 32)
    assert e.value.errno == errno.E2BIG


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_frames_cross_the_card_and_completions_reach_the_callfds(card, served, mode):
    args = {"class": "vdpa", "event_mode": str(mode), "event_us": "200", "no_traffic_time": "4"}
    path1, dev1 = served(VF1, args)
    path2, dev2 = served(VF2, args)
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    try:
        assert _wait(lambda: dev1.configured and dev2.configured), "dev_conf did not run"
        assert dev1.ev_thread is not None and dev1.ev_thread.name.startswith("vDPA-mlx5-")
        for dev in (dev1, dev2):
            for q in (0, 1):
                a = _query(dev, q)
                assert a["state"] == P.QState.RDY and a["event_mode"] == P.EventMode.QP
                assert a["mkey"] == dev.gpa_mkey and a["counters_obj_id"] == dev.virtqs[q].counters
            assert dev.rqtn is not None and len(dev.tirs) == 7
        rx, tx = fe2.vrings[0], fe1.vrings[1]
        # the setup wrote 1 to every callfd once
        assert eventfd_count(rx.call_fd) == 1 and eventfd_count(tx.call_fd) == 1
        bufs = [g2.alloc(2048) for _ in range(4)]
        for b in bufs:
            _post(rx, b, 2048, WRITE)
        irq0 = dev2.interrupts
        frame = _frame(1, b"hello through the mlx5 card" + bytes(40))
        _send(g1, tx, frame)
        assert _wait(lambda: rx.used_idx == 1), "the frame did not reach VF2's RX ring"
        assert bytes(g2.view(bufs[0], len(frame)))[12:] == frame[12:]
        assert _wait(lambda: tx.used_idx == 1)
        assert dev1.relayed_kicks >= 1
        # the event thread completed the CQs and wrote the callfds
        assert _wait(lambda: dev2.interrupts > irq0), "no completion interrupt"
        assert _wait(lambda: eventfd_count(rx.call_fd) >= 1)
        assert _wait(lambda: eventfd_count(tx.call_fd) >= 1)
        # again after the thread fell back to interrupt wait (modes 0/1) or re-armed (mode 2)
        time.sleep(0.2)
        _send(g1, tx, _frame(1, b"second" + bytes(60)))
        assert _wait(lambda: rx.used_idx == 2)
        assert _wait(lambda: eventfd_count(rx.call_fd) >= 1), "no interrupt for the second frame"
        if mode != 2:
            assert dev1.policy.blocks >= 1  # the no-traffic fall-back happened
        # stats: the six counters of the card's counters objects
        st = dict(vdpa.get_stats(dev1.vdev, 1))
        assert st[0] == 2 and st[1] == 2 and st[2] == st[3] == st[4] == st[5] == 0
        assert dict(vdpa.get_stats(dev2.vdev, 0))[1] == 2
        vdpa.reset_stats(dev1.vdev, 1)
        assert dict(vdpa.get_stats(dev1.vdev, 1))[0] == 0
        # GET_VRING_BASE stops the device: the answer is the card's indices
        assert fe1.get_vring_base(1) == 2
        assert fe1.get_vring_base(0) == 0
        assert not dev1.configured and dev1.ev_thread is None
    finally:
        fe1.close()
        g1.close()
    # a second connection on VF1 resumes from the saved indices
    g1, fe1 = _connect(path1, bases={1: 2}, resume={1: 2})
    try:
        assert _wait(lambda: dev1.configured)
        assert _query(dev1, 1)["hw_available_index"] >= 2
        tx = fe1.vrings[1]
        frame = _frame(1, b"second connection" + bytes(40))
        _send(g1, tx, frame)
        assert _wait(lambda: tx.used_idx == 3), tx.used_idx
        assert _wait(lambda: rx.used_idx == 3)
        assert bytes(g2.view(bufs[2], len(frame)))[12:] == frame[12:]
        # the counters persist across reconfiguration (from the reset snapshot)
        assert dict(vdpa.get_stats(dev1.vdev, 1))[0] == 1
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()


def test_a_dma_fault_is_recovered_then_given_up_after_3_in_3s(card, served):
    path1, dev1 = served(VF1, {"class": "vdpa", "event_mode": "2"})
    path2, dev2 = served(VF2, {"class": "vdpa", "event_mode": "2"})
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        tx, rx = fe1.vrings[1], fe2.vrings[0]
        buf = g2.alloc(2048)
        _post(rx, buf, 2048, WRITE)
        oid0 = dev1.virtqs[1].oid
        frame = _frame(1, b"after the recovery" + bytes(40))
        good = g1.alloc(len(frame))
        g1.view(good, len(frame))[:] = np.frombuffer(frame, np.uint8)
        head = tx.avail_idx % tx.num
        with dev1._lock:  # the recovery waits while the guest mends its descriptor
            _post(tx, 0x7000_0000, 64, 0)  # outside guest memory: the card faults, the virtq goes ERROR
            assert _wait(lambda: _query(dev1, 1)["state"] == P.QState.ERROR)
            tx.desc.view(np.uint64)[2 * head] = good
            tx.desc.view(np.uint64)[2 * head + 1] = len(frame)
        # the error event: query (indices saved), destroy, set up again from there: the mended chain goes
        assert _wait(lambda: dev1.recoveries == 1), "no recovery"
        assert dev1.virtqs[1].oid not in (None, oid0)
        assert _wait(lambda: rx.used_idx == 1), "no traffic after the recovery"
        assert _query(dev1, 1)["state"] == P.QState.RDY
        assert bytes(g2.view(buf, len(frame)))[12:] == frame[12:]
        # a chain that keeps faulting: recovered twice more, then the 4th error within 3 s gives up
        _post(tx, 0x7000_0000, 64, 0)
        assert _wait(lambda: dev1.gave_up == [1]), (dev1.recoveries, dev1.gave_up)
        assert dev1.recoveries == 3 and dev1.virtqs[1].oid is None
        # the other virtq and the other VF go on
        assert _query(dev1, 0)["state"] == P.QState.RDY
        assert _query(dev2, 1)["state"] == P.QState.RDY
    finally:
        for x in (fe1, g1, fe2, g2):
            x.close()


def test_rss_reference_agrees_with_the_cards_symmetric_hash():
    """rss.py (the driver's reference) and the card's steering compute the same queue for the same flows."""
    from dataplane.nic.mlx5 import steer

    flows = [(RSS.FLOW_PRIORITY[i], ipv, proto if crit & P.Match.IP_PROTOCOL else -1, fields, 1, l3, l4)
             for i, (crit, ipv, proto, fields, l3, l4) in enumerate(__import__(
                 "dataplane.vdpa.mlx5.driver", fromlist=["FLOWS"]).FLOWS)]
    table = RSS.rqt_table([0, 2])
    import struct

    for sport in range(1000, 1040):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        frame = b"\xff" * 6 + b"\x02" + bytes(5) + b"\x08\x00" + ip + struct.pack("!HHHH", sport, 4789, 8, 0)
        assert steer.reference_queue(frame, flows, key=RSS.MLX5_VDPA_RSS_KEY, rqt=table) == RSS.predict(frame, table)


def test_dataplane_vdpa_probes_class_vdpa_and_the_tools_show_it(card):
    """``dataplane-vdpa -a VF1,class=vdpa,event_mode=2 -a VF2,class=eth``: VF1 probed (mgmtdev ``pci/VF1``), VF2
    left to another class; a front-end's frames are counted by ``vdpa dev vstats`` and the ``stats`` command."""
    import subprocess
    import sys

    from dataplane.testing.app_process import end_process
    from dataplane.testing.nic_card import ROOT

    d = tempfile.mkdtemp(prefix="vh")
    prefix = f"m5app{os.getpid()}"
    sock = os.path.join(d, "vd")
    env = dict(card.env, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "dataplane.apps.vdpa", "-l", "0", "--no-huge", "-m", "64",
                             "--file-prefix", prefix, "-a", f"{VF1},class=vdpa,event_mode=2", "-a", f"{VF2},class=eth",
                             "--", "--iface", sock, "-i"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        ready = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "vdpa: ready" in line:
                ready = line
                break
            if not line and proc.poll() is not None:
                break
        assert ready, proc.stderr.read()[-2000:] if proc.poll() is not None else "not ready"
        assert f"devices={VF1}" in ready and VF2 not in ready
        tool = [sys.executable, "-m", "dataplane.cli", "vdpa", "--file-prefix", prefix]
        out = subprocess.run(tool + ["mgmtdev", "show", f"pci/{VF1}"], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"pci/{VF1}: " and "supported_classes net" in out.stdout
        g, fe = _connect(sock + "0")
        try:
            tx = fe.vrings[1]
            for i in range(3):
                _send(g, tx, _frame(1, bytes([i]) * 60))
            assert _wait(lambda: tx.used_idx == 3)
            out = subprocess.run(tool + ["dev", "vstats", "show", VF1, "qidx", "1"], capture_output=True, text=True,
                                 env=env, timeout=60)
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == [f"{VF1}:", "queue_type", "tx", "received_desc", "3", "completed_desc", "3"]
            proc.stdin.write(f"stats {VF1} 1\n")
            proc.stdin.flush()
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any("completion errors" in x for x in seen):
                seen.append(proc.stdout.readline())
            text = "".join(seen)
            for name in STATS_NAMES:
                assert name in text, text
            assert "received_descriptors" in text and "3" in text
        finally:
            fe.close()
            g.close()
    finally:
        end_process(proc)
        shutil.rmtree(d, ignore_errors=True)


def _flow_frames(n):
    """Scapy-built IPv4/IPv6 UDP/TCP flows (broadcast, from VF1's source MAC) and an ARP-like one."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    out = []
    for i in range(n):
        l4 = (UDP if i % 2 else TCP)(sport=10000 + 7 * i, dport=80 + i % 5)
        ip = IP(src=f"10.0.0.{i % 200 + 1}", dst="10.0.1.1") if i % 3 else IPv6(src=f"fd00::{i + 1:x}", dst="fd00::ff")
        out.append(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ip / l4 / (bytes([i % 256]) * 8)))
    return out


def test_two_queue_pairs_flows_spread_as_rss_predicts(card, served):
    """MQ: the driver's RQT over VF2's RX virtqs 0 and 2, 7 TIRs and flow rules; every flow lands on the queue the
    reference Toeplitz (rss.py, the symmetric key) predicts, counted by the card and by the virtq counters."""
    from dataplane.nic.kernels import Q_PACKETS

    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    shm = card.counters()
    g1, fe1 = _connect(path1, pairs=2)
    g2, fe2 = _connect(path2, pairs=2)
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        assert sorted(q for q, v in dev2.virtqs.items() if v.running) == [0, 1, 2, 3]
        assert len(dev2.flows) == 7
        rqt = dev2.hw.op(P.Op.QUERY_RQT, P.RQT_REF, P.RQT_IN, rqtn=dev2.rqtn)
        assert rqt["rqt_actual_size"] == 512 and rqt["rq_type"] == P.RqType.VIRTQ
        table = RSS.rqt_table([0, 2])
        frames = _flow_frames(24)
        want = {0: 0, 2: 0}
        for f in frames:
            want[RSS.predict(f, table)] += 1
        assert want[0] and want[2], want  # the flows do spread
        rx = {q: fe2.vrings[q] for q in (0, 2)}
        for q, vr in rx.items():
            for _ in range(32):
                _post(vr, g2.alloc(2048), 2048, WRITE, kick=False)
            os.eventfd_write(vr.kick_fd, 1)
        pk0 = {q: int(shm.queues[1][q, Q_PACKETS]) for q in (0, 2)}
        tx = fe1.vrings[1]
        for f in frames:
            _send(g1, tx, bytes(12) + f)
        assert _wait(lambda: rx[0].used_idx + rx[2].used_idx == len(frames)), (rx[0].used_idx, rx[2].used_idx)
        assert {q: rx[q].used_idx for q in (0, 2)} == want
        assert {q: int(shm.queues[1][q, Q_PACKETS]) - pk0[q] for q in (0, 2)} == want
        assert {q: dict(vdpa.get_stats(dev2.vdev, q))[1] for q in (0, 2)} == want
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        shm.close()


def test_log_all_turns_on_the_hardware_dirty_bitmap(card, served):
    """LOG_ALL while running: the log DMA-mapped, DIRTY_BITMAP_PARAMS then DUMP_ENABLE on every virtq; the card
    marks the RX buffer and used ring pages it writes; at close the used rings are logged."""
    from dataplane.testing.vhost_frontend import FrontendLog

    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    flog = None
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        flog = FrontendLog(g2)
        fe2.set_logging(True, flog)
        assert _wait(lambda: dev2.log_map is not None)
        for q in (0, 1):
            a = _query(dev2, q)
            assert a["dirty_bitmap_dump_enable"] == 1 and a["dirty_bitmap_mkey"] == dev2.log_mkey
        rx = fe2.vrings[0]
        buf = g2.alloc(2048, align=4096)
        _post(rx, buf, 2048, WRITE)
        _send(g1, fe1.vrings[1], _frame(1, b"logged" + bytes(60)))
        assert _wait(lambda: rx.used_idx == 1)
        pages = flog.pages()
        assert buf // 4096 in pages and rx.used_gpa // 4096 in pages
        assert all(GUEST_GPA // 4096 <= p < (GUEST_GPA + (4 << 20)) // 4096 for p in pages)
        assert fe2.get_vring_base(0) == 1  # dev_close: suspended, indices saved, the log unmapped
        assert dev2.log_map is None
        assert flog.slack_untouched()
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        if flog is not None:
            flog.close()


def test_log_all_cleared_stops_the_marking_and_a_new_log_replaces_the_old(card, served):
    """A cancelled migration, then another: LOG_ALL cleared turns DIRTY_BITMAP_DUMP_ENABLE off (the params
    zeroed, the log's mkey and DMA map gone: QEMU drops that log), and LOG_ALL set again with a new log
    (SET_LOG_BASE) has the card mark the new log, never the old one."""
    from dataplane.testing.vhost_frontend import FrontendLog

    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    logs = []
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        rx = fe2.vrings[0]

        def receive(n):
            buf = g2.alloc(2048, align=4096)
            _post(rx, buf, 2048, WRITE)
            _send(g1, fe1.vrings[1], _frame(1, b"logged" + bytes(60)))
            assert _wait(lambda: rx.used_idx == n)
            return buf // 4096

        logs.append(FrontendLog(g2))
        fe2.set_logging(True, logs[0])
        assert _wait(lambda: dev2.log_map is not None)
        assert receive(1) in logs[0].pages()
        fe2.set_logging(False)
        assert _wait(lambda: dev2.log_map is None)
        for q in (0, 1):
            a = _query(dev2, q)
            assert (a["dirty_bitmap_dump_enable"], a["dirty_bitmap_mkey"], a["dirty_bitmap_size"]) == (0, 0, 0)
        logs[0].clear()
        assert receive(2) not in logs[0].pages() and logs[0].pages() == set()
        logs.append(FrontendLog(g2))
        fe2.set_logging(True, logs[1])
        assert _wait(lambda: dev2.log_map is not None)
        assert _query(dev2, 0)["dirty_bitmap_dump_enable"] == 1
        page = receive(3)
        assert page in logs[1].pages() and logs[0].pages() == set()
        assert fe2.get_vring_base(0) == 3
        assert dev2.log_map is None
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        for lg in logs:
            lg.close()


def _thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_the_event_thread_is_quiet_at_idle(card, served, mode):
    """At idle the event thread blocks on the completion channel: modes 0/1 after no_traffic_time empty polls
    (default 16), mode 2 always -- under 5 % of a CPU."""
    path, dev = served(VF1, {"class": "vdpa", "event_mode": str(mode)})
    g, fe = _connect(path)
    try:
        assert _wait(lambda: dev.configured and dev.ev_thread is not None)
        time.sleep(0.5)
        tid = dev.ev_thread.native_id
        c0, t0 = _thread_cpu(tid), time.monotonic()
        time.sleep(2.0)
        share = (_thread_cpu(tid) - c0) / (time.monotonic() - t0)
        assert share < 0.05, share
        if mode != 2:
            assert dev.policy.blocks >= 1
    finally:
        fe.close()
        g.close()
