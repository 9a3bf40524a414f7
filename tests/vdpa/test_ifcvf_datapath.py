"""The ifcvf vDPA driver on the emulated IFC card: probe, registry, mgmtdev, features column; dev_conf
programs the card, frames cross the card's switch from VF1's TX ring to VF2's RX ring, interrupts reach
the front-ends' call eventfds, relayed kicks are counted by the card, GET_VRING_BASE returns the card's
ring state and a second connection resumes from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from dataplane.nic.kernels import Q_IRQS, Q_KICKS, Q_PACKETS, Q_RUNNING
from dataplane.nic.shm import V_CONNECTED, V_DMA_MAPS, V_LOG_ON, V_STATUS, CardShm
from dataplane.testing.app_process import end_process
from dataplane.testing.nic_card import ROOT, card_in_runtime
from dataplane.testing.vdpa_card import GUEST_GPA, SPLIT, WRITE, connect_guest, post_chain, served_vfs, vnet_frame, \
    wait_until
from dataplane.testing.vhost_frontend import FrontendLog, GuestMemoryLayout, VhostUserFrontend, eventfd_count
from dataplane.vdpa import device as vdpa
from dataplane.vdpa.ifcvf import NotOurDevice, parse_devargs, probe
from dataplane.vdpa.ifcvf.driver import IFCVF_NET_PROTOCOL_FEATURES
from dataplane.vdpa.ifcvf.hw import IfcvfHwError
from dataplane.vhost_user.errors import EndpointTimeout
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

VF1, VF2 = "0000:00:05.1", "0000:00:05.2"
DRIVER_OK = 4


@pytest.fixture(scope="module")
def card():
    with card_in_runtime(vfs=2, prefix="ifc") as c:
        yield c


@pytest.fixture
def served(card):
    """``make(bdf)``: the probed VF on a fresh socket of a private vhost library."""
    with served_vfs(probe, {"vdpa": "1"}) as make:
        yield make


def _shm(card):
    return CardShm(os.path.join(card.dir, "counters"))


_wait, _post, _connect, _frame = wait_until, post_chain, connect_guest, vnet_frame


# ----------------------------------------------------------------------------------------------


def test_devargs_are_validated_as_dpdk_does():
    assert parse_devargs({"vdpa": "1"}) is False
    assert parse_devargs({"vdpa": "0x1", "sw-live-migration": "1"}) is True
    for args in ({}, {"vdpa": "0"}, {"sw-live-migration": "1"}):
        with pytest.raises(NotOurDevice):
            parse_devargs(args)
    with pytest.raises(ValueError, match="unknown devargs key"):
        parse_devargs({"vdpa": "1", "mac": "1"})
    with pytest.raises(ValueError, match="not a number"):
        parse_devargs({"vdpa": "yes"})


def test_probe_registers_the_vf_with_dpdk_features(card, served):
    path, dev = served(VF1)
    vdev = vdpa.find_device_by_name(VF1)
    assert vdev is dev.vdev and vdev.driver == "ifcvf"
    assert vdpa.get_queue_num(vdev) == 4  # min(32, (num_queues - 1) / 2) for the card's 4 pairs
    f = vdpa.get_features(vdev)
    assert not f & bit(VF.VIRTIO_F_ACCESS_PLATFORM)
    for b in (VF.VIRTIO_NET_F_GUEST_ANNOUNCE, VF.VIRTIO_NET_F_CTRL_VQ, VF.VIRTIO_NET_F_STATUS,
              VF.VHOST_USER_F_PROTOCOL_FEATURES, VF.VIRTIO_F_VERSION_1, VF.VIRTIO_NET_F_MQ):
        assert f & bit(b), b
    assert f & bit(VF.VHOST_F_LOG_ALL)  # HW-assisted live migration: the card logs
    assert vdpa.get_protocol_features(vdev) == IFCVF_NET_PROTOCOL_FEATURES == 0x10c2b
    assert dev.mac == bytes.fromhex("020000000001")
    assert dev.mgmtdev.bus == "pci" and dev.mgmtdev.name == VF1
    with pytest.raises(IfcvfHwError, match="no such PCI function"):
        probe("0000:00:07.1", {"vdpa": "1"}, None)
    # sw-live-migration=1: the same offer (the relay logs instead of the card)
    _, sw = served(VF2, {"vdpa": "1", "sw-live-migration": "1"})
    assert vdpa.get_features(sw.vdev) == f and sw.sw_lm
    # one driver at a time: the card refuses a second one
    with pytest.raises(IfcvfHwError, match="in use"):
        probe(VF1, {"vdpa": "1"}, None, vf_dir=card.vf_dir(0))
    # the front-end sees the socket's offer
    guest = GuestMemoryLayout.simple(1 << 20)
    fe = VhostUserFrontend.connect(path, memory=guest)
    try:
        assert fe.get_features() == f
        pf = fe.get_protocol_features()
        assert pf & ~IFCVF_NET_PROTOCOL_FEATURES == 0
        fe.set_protocol_features(pf)
        assert fe.get_queue_num() == 4
    finally:
        fe.close()
        guest.close()


def test_frames_cross_the_card_switch_and_a_second_connection_resumes(card, served):
    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    shm = _shm(card)
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    try:
        assert _wait(lambda: dev1.configured and dev2.configured), "dev_conf did not run"
        for i in (0, 1):  # the card runs the queues the driver programmed
            assert shm.vf[i][V_STATUS] & DRIVER_OK
            assert shm.vf[i][V_DMA_MAPS] >= 1
            assert _wait(lambda i=i: shm.queues[i][0, Q_RUNNING] == 1 and shm.queues[i][1, Q_RUNNING] == 1)
        rx = fe2.vrings[0]
        bufs = [g2.alloc(2048) for _ in range(4)]
        for b in bufs:
            _post(rx, b, 2048, WRITE)
        tx = fe1.vrings[1]
        kicks0 = int(shm.queues[0][1, Q_KICKS])
        frame = _frame(1, b"hello through the card" + bytes(40))
        src = g1.alloc(len(frame))
        g1.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(tx, src, len(frame), 0)
        assert _wait(lambda: rx.used_idx == 1), "the frame did not reach VF2's RX ring"
        assert bytes(g2.view(bufs[0], len(frame)))[12:] == frame[12:]
        assert _wait(lambda: tx.used_idx == 1)
        assert int(shm.queues[0][1, Q_PACKETS]) == 1 and int(shm.queues[1][0, Q_PACKETS]) == 1
        # the kick went through the notify relay to the doorbell, counted by the card
        assert dev1.relayed_kicks >= 1 and int(shm.queues[0][1, Q_KICKS]) > kicks0
        # interrupts reach the front-ends' call eventfds (MSI-X vector q+1 -> callfd of vring q)
        assert _wait(lambda: int(shm.queues[1][0, Q_IRQS]) >= 1)
        assert eventfd_count(rx.call_fd) >= 1
        assert eventfd_count(tx.call_fd) >= 1
        # GET_VRING_BASE stops the device: the answer is the card's ring state
        assert fe1.get_vring_base(1) == 1
        assert fe1.get_vring_base(0) == 0
        assert not dev1.configured
        assert _wait(lambda: shm.queues[0][1, Q_RUNNING] == 0)
        assert shm.vf[0][V_STATUS] == 0  # reset by the driver
    finally:
        fe1.close()
        g1.close()
    # a second connection on VF1 resumes from the saved indices
    g1, fe1 = _connect(path1, bases={1: 1}, resume={1: 1})  # the guest goes on where it stopped
    try:
        assert _wait(lambda: dev1.configured)
        tx = fe1.vrings[1]
        frame = _frame(1, b"second connection" + bytes(40))
        src = g1.alloc(len(frame))
        g1.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(tx, src, len(frame), 0)
        assert _wait(lambda: tx.used_idx == 2), tx.used_idx
        assert _wait(lambda: rx.used_idx == 2)
        assert bytes(g2.view(bufs[1], len(frame)))[12:] == frame[12:]
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        shm.close()


def _app(card, sock_prefix, prefix):
    """``dataplane-vdpa -a VF1,vdpa=1 -- --iface PREFIX`` (its own process); waits for ``vdpa: ready``."""
    env = dict(card.env, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "dataplane.apps.vdpa", "-l", "0", "--no-huge", "-m", "64",
                             "--file-prefix", prefix, "-a", f"{VF1},vdpa=1", "-a", VF2, "--", "--iface", sock_prefix],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("vdpa: ready"):
            return proc, line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"dataplane-vdpa did not start: {proc.stderr.read()[-2000:]}")


def test_driver_restart_finds_the_card_reset_and_configures_it_again(card):
    """``dataplane-vdpa`` killed while configured: the card drops the DMA maps and irqs and resets the
    function; started again, the driver probes and configures it again and traffic runs."""
    shm = _shm(card)
    d = tempfile.mkdtemp(prefix="vh")
    prefix = f"ifct{os.getpid()}"
    sock = os.path.join(d, "vd")
    proc, ready = _app(card, sock, prefix)
    try:
        assert ready.split() == ["vdpa:", "ready", f"devices={VF1}", f"sockets={sock}0"]
        # the management tool sees pci/<bdf>, and the device made by the probe
        env = dict(card.env, PYTHONPATH=ROOT)
        out = subprocess.run([sys.executable, "-m", "dataplane.cli", "vdpa", "--file-prefix", prefix, "mgmtdev",
                              "show", f"pci/{VF1}"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == f"pci/{VF1}: "
        assert "supported_classes net" in out.stdout
        g, fe = _connect(sock + "0")
        assert _wait(lambda: shm.vf[0][V_DMA_MAPS] >= 1 and shm.queues[0][1, Q_RUNNING] == 1)
        proc.kill()  # the driver dies with the datapath running
        proc.wait(30)
        assert _wait(lambda: shm.vf[0][V_CONNECTED] == 0 and shm.vf[0][V_DMA_MAPS] == 0)
        assert shm.vf[0][V_STATUS] == 0 and shm.queues[0][1, Q_RUNNING] == 0
        fe.close()
        g.close()
        os.unlink(sock + "0")  # the killed process left its socket file (server mode refuses it)
        proc.stdout.close()
        proc.stderr.close()
        proc, ready = _app(card, sock, prefix)
        g, fe = _connect(sock + "0")
        try:
            assert _wait(lambda: shm.vf[0][V_CONNECTED] == 1 and shm.queues[0][1, Q_RUNNING] == 1)
            tx = fe.vrings[1]
            frame = _frame(1, b"after restart" + bytes(40))
            src = g.alloc(len(frame))
            g.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
            _post(tx, src, len(frame), 0)
            assert _wait(lambda: tx.used_idx == 1)
        finally:
            fe.close()
            g.close()
    finally:
        end_process(proc)
        shm.close()
        shutil.rmtree(d, ignore_errors=True)


def test_host_notifiers_and_the_config_interrupt_over_the_backend_channel(card, served):
    path, dev = served(VF1)
    g, fe = _connect(path, backend=True)
    try:
        assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER & 1
        seen = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            spec, payload, msg = fe.backend_recv(timeout=5)
            fd = msg.take_fd() if msg.fds else None
            seen[int(payload.u64) & 0xFF] = (int(payload.size), int(payload.offset), fd)
            fe.backend_ack(msg)
        assert set(seen) == {0, 1}
        for q, (size, offset, fd) in seen.items():
            assert size == 0x1000 and offset == 0x1000 + q * 0x1000
            assert fd is not None and os.fstat(fd).st_size >= offset + size
            os.close(fd)
        # the card's config interrupt (link down, on MSI-X vector 0) reaches the driver's interrupt thread,
        # which clears the ISR and asks the back-end for CONFIG_CHANGE_MSG; as in DPDK the net function does
        # not offer CONFIG (QEMU's virtio-net over vhost-user does not read the device's config), so the
        # back-end does not send it: nothing arrives
        env = dict(card.env, PYTHONPATH=ROOT)
        out = subprocess.run([sys.executable, "-m", "dataplane.nic", "link", card.pf, VF1, "down"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert _wait(lambda: dev.config_interrupts == 1)
        assert _wait(lambda: dev.hw.bar0.r8(dev.hw.isr) == 0)
        with pytest.raises(EndpointTimeout):
            fe.backend_recv(timeout=0.5)
        assert dev.net_status & 1 == 0  # LINK_UP cleared in the device cfg
    finally:
        subprocess.run([sys.executable, "-m", "dataplane.nic", "link", card.pf, VF1, "up"],
                       env=dict(card.env, PYTHONPATH=ROOT), capture_output=True, timeout=60)
        fe.close()
        g.close()


def test_set_vring_state_stops_and_restarts_one_ring_while_configured(card, served):
    path, dev = served(VF1)
    shm = _shm(card)
    g, fe = _connect(path)
    try:
        assert _wait(lambda: dev.configured and shm.queues[0][1, Q_RUNNING] == 1)
        tx = fe.vrings[1]
        frame = _frame(1, b"one" + bytes(60))
        src = g.alloc(len(frame))
        g.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(tx, src, len(frame), 0)
        assert _wait(lambda: tx.used_idx == 1)
        fe.set_vring_enable(1, False)
        fe.sync()
        assert _wait(lambda: shm.queues[0][1, Q_RUNNING] == 0)
        assert shm.queues[0][0, Q_RUNNING] == 1  # the other ring runs on
        assert dev.configured and 1 not in dev.notify
        # a chain posted while the ring is disabled is not taken
        _post(tx, src, len(frame), 0)
        time.sleep(0.3)
        assert tx.used_idx == 1
        fe.set_vring_enable(1, True)
        fe.sync()
        assert _wait(lambda: shm.queues[0][1, Q_RUNNING] == 1)
        os.eventfd_write(tx.kick_fd, 1)  # the guest kicks again: through the restarted relay
        assert _wait(lambda: tx.used_idx == 2), "the ring did not resume from its saved state"
    finally:
        fe.close()
        g.close()
        shm.close()


def test_hw_assisted_dirty_logging_marks_what_the_card_writes(card, served):
    """LOG_ALL toggled while running (QEMU's migration start): the log is DMA-mapped at IFCVF_LOG_BASE and
    BAR4 logging turned on; the card marks the RX buffer and used ring pages it writes; LOG_ALL off stops it."""
    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    shm = _shm(card)
    g1, fe1 = _connect(path1)
    g2, fe2 = _connect(path2)
    flog = None
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        flog = FrontendLog(g2)
        fe2.set_logging(True, flog)
        assert _wait(lambda: shm.vf[1][V_LOG_ON] == 1)
        assert dev2.log_map is not None
        rx = fe2.vrings[0]
        buf = g2.alloc(2048, align=4096)
        _post(rx, buf, 2048, WRITE)
        frame = _frame(1, b"logged" + bytes(60))
        src = g1.alloc(len(frame))
        g1.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(fe1.vrings[1], src, len(frame), 0)
        assert _wait(lambda: rx.used_idx == 1)
        pages = flog.pages()
        assert buf // 4096 in pages  # the RX buffer the card wrote
        assert rx.used_gpa // 4096 in pages  # the used ring entry and index
        assert all(GUEST_GPA // 4096 <= p < (GUEST_GPA + (4 << 20)) // 4096 for p in pages)
        fe2.set_logging(False)
        assert _wait(lambda: shm.vf[1][V_LOG_ON] == 0)
        assert dev2.log_map is None
        assert flog.slack_untouched()
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        if flog is not None:
            flog.close()
        shm.close()


def test_two_queue_pairs_a_frame_sent_on_pair_1_arrives_on_pair_1(card, served):
    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2)
    shm = _shm(card)
    g1, fe1 = _connect(path1, pairs=2)
    g2, fe2 = _connect(path2, pairs=2)
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        assert sorted(dev1.started_qids) == [0, 1, 2, 3]
        assert dev1.hw.lm.r32(0x28) == 2  # mq_cfg: two pairs enabled
        for i in (0, 1):
            assert _wait(lambda i=i: all(shm.queues[i][q, Q_RUNNING] == 1 for q in range(4)))
        rx0, rx1 = fe2.vrings[0], fe2.vrings[2]
        b0, b1 = g2.alloc(2048), g2.alloc(2048)
        _post(rx0, b0, 2048, WRITE)
        _post(rx1, b1, 2048, WRITE)
        frame = _frame(1, b"pair one" + bytes(60))
        src = g1.alloc(len(frame))
        g1.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(fe1.vrings[3], src, len(frame), 0)  # TX of pair 1
        assert _wait(lambda: rx1.used_idx == 1), "the frame did not reach RX of pair 1"
        assert bytes(g2.view(b1, len(frame)))[12:] == frame[12:]
        assert rx0.used_idx == 0
        assert int(shm.queues[0][3, Q_KICKS]) >= 1
        assert fe1.get_vring_base(3) == 1
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        shm.close()


def test_sw_assisted_live_migration_relays_mediated_used_rings_and_logs(card, served):
    """sw-live-migration=1: LOG_ALL switches VF2 to mediated RX used rings (DMA-mapped at
    IFCVF_MEDIATED_VRING); the relay thread copies the card's used entries to the guest and marks the
    RX buffers in the log; the card itself does not log; GET_VRING_BASE still answers the card's state."""
    path1, dev1 = served(VF1)
    path2, dev2 = served(VF2, {"vdpa": "1", "sw-live-migration": "1"})
    shm = _shm(card)
    g1, fe1 = _connect(path1)
    # no EVENT_IDX: this scripted guest never moves its used_event, which the card reads to interrupt
    # (a Linux guest does; the relay runs on the card's interrupts, as DPDK's)
    g2, fe2 = _connect(path2, features=SPLIT & ~bit(VF.VIRTIO_RING_F_EVENT_IDX))
    flog = None
    try:
        assert _wait(lambda: dev1.configured and dev2.configured)
        rx = fe2.vrings[0]
        early = g2.alloc(2048, align=4096)
        _post(rx, early, 2048, WRITE)
        frame = _frame(1, b"before" + bytes(60))
        src = g1.alloc(len(frame))
        g1.view(src, len(frame))[:] = np.frombuffer(frame, np.uint8)
        _post(fe1.vrings[1], src, len(frame), 0)
        assert _wait(lambda: rx.used_idx == 1)  # direct datapath
        flog = FrontendLog(g2)
        fe2.set_logging(True, flog)
        assert _wait(lambda: dev2.sw_running)
        assert sorted(dev2.mediated) == [0]  # net: the RX vrings
        assert shm.vf[1][V_LOG_ON] == 0  # the card does not log: the relay does
        bufs = [g2.alloc(2048, align=4096) for _ in range(3)]
        for b in bufs:
            _post(rx, b, 2048, WRITE)
        for i in range(3):
            f = _frame(1, bytes([i]) * 64)
            g1.view(src, len(f))[:] = np.frombuffer(f, np.uint8)
            _post(fe1.vrings[1], src, len(f), 0)
            assert _wait(lambda i=i: rx.used_idx == 2 + i), rx.used_idx
            assert bytes(g2.view(bufs[i], len(f)))[12:] == f[12:]
        assert dev2.relayed_used >= 3, (dev2.vring_relay and dev2.vring_relay.events, dev2.mediated[0].iova, dev2.relayed_kicks)
        pages = flog.pages()
        for b in bufs:
            assert b // 4096 in pages
        assert early // 4096 not in pages  # written before logging started
        assert eventfd_count(rx.call_fd) >= 1  # the relay signalled the guest
        assert fe2.get_vring_base(0) == 4
        assert rx.used_gpa // 4096 in flog.pages()  # the used ring is logged at stop
        assert not dev2.sw_running and not dev2.mediated
        assert flog.slack_untouched()
    finally:
        fe1.close()
        g1.close()
        fe2.close()
        g2.close()
        if flog is not None:
            flog.close()
        shm.close()
