"""The emulated ConnectX-6 Dx as a running card (``dataplane-nic start mlx5``): its PCI face, the
VAR doorbell, VIRTIO_NET_Q datapath through the switch, SUSPEND/QUERY/resume, faults -> ERROR,
the counters objects (facts §3.4, §3.5, §3.9)."""

import json
import os
import struct
import subprocess
import sys
import time

import pytest

from dataplane.nic.kernels import ERR_RING_DMA, MAX_SEGS, Q_KICKS, Q_RUNNING
from dataplane.nic.mlx5.card import DEVICE_ID, VAR_OFF, VAR_SIZE, VENDOR_ID
from dataplane.hwspec.mlx5_prm import ERRQ_OFF, EVQ_OFF, UAR_OFF, CapType, QState, Status, Syn
from dataplane.nic.mlx5.mailbox import FW_REV, R_FW_REV
from dataplane.nic.pci import PCI_CAP_ID_MSIX, vf_bdf
from dataplane.nic.shm import V_CONNECTED, V_DMA_FAULTS, V_DOORBELLS_IGNORED, V_FAULTS, V_RESETS
from dataplane.rings.virtqueue import ERR_ADDR, ERR_TOO_MANY_SEGS
from dataplane.testing.mlx5_cmd import Mlx5Vf as Vf
from dataplane.testing.nic_card import MLX5_PF, ROOT, CardProc, wait_for
from dataplane.testing.nic_driver import net_frame

BCAST = b"\xff" * 6




@pytest.fixture
def card(runtime):
    c = CardProc(runtime, vfs=2, model="mlx5")
    try:
        yield c
    finally:
        c.stop()
    assert not os.path.exists(c.dir), "the card left its directory"


@pytest.fixture
def vfs(on_vf):
    return lambda i, **kw: on_vf(Vf, i, **kw)



def _frames(n, src, tag=b""):
    return [net_frame(BCAST, src, tag + bytes([i]) * 60) for i in range(n)]


def _deliver(a, b, n, tag=b""):
    """``n`` frames from a's TX virtq to b's RX virtq; checks their bytes."""
    for _ in range(n):
        b.rx.post_rx()
    b.rx.kick(force=True)
    frames = _frames(n, b"\x02\x00\x00\x00\x00\x01", tag)
    for f in frames:
        a.tx.send(f)
    a.tx.kick(force=True)
    assert len(a.tx.wait_used(n)) == n
    got = b.rx.wait_used(n)
    for (slot, ln), f in zip(got, frames):
        assert ln == len(f)
        assert b.rx.data(slot, ln)[12:] == f[12:]


# -----------------------------------------------------------------------------------------


def test_pci_face(card, vfs):
    v = vfs(0)
    cs = v.drv.config
    assert len(cs) == 256
    assert struct.unpack_from("<HH", cs, 0) == (VENDOR_ID, DEVICE_ID) == (0x15B3, 0x101E)
    assert cs[0x09:0x0C] == bytes([0, 0, 2])  # class: network controller
    assert cs[0x34] == 0x40 and cs[0x40] == PCI_CAP_ID_MSIX
    assert (struct.unpack_from("<H", cs, 0x42)[0] & 0x7FF) + 1 == v.drv.num_irqs
    info = v.drv.info
    assert info["doorbell"] == {"bar": 0, "offset": VAR_OFF, "size": VAR_SIZE}
    assert info["uar"] == {"bar": 0, "offset": UAR_OFF, "size": 0x1000}
    assert info["event_rings"] == {"bar": 0, "completion": EVQ_OFF, "error": ERRQ_OFF}
    assert info["num_queues"] == 32  # 16 queue pairs by default
    assert v.drv.bar0.r32(R_FW_REV) == FW_REV
    caps = v.drv.fw.query_caps().fields
    assert caps["max_num_virtio_queues"] == 32
    gen = v.drv.fw.query_caps(CapType.GENERAL)
    assert gen.status == Status.OK
    with pytest.raises(Exception, match="no region 4"):
        v.drv.request("get_region_info", bar=4)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_frames_cross_the_switch(card, vfs, packed):
    a, b = vfs(0, packed=packed), vfs(1, packed=packed)
    a.ready()
    b.ready()
    _deliver(a, b, 20)
    _deliver(b, a, 5)  # and back
    shm = card.counters()
    try:
        assert shm.queues[0][1][Q_KICKS] >= 1  # the 32-bit VAR doorbell of TX virtq 1 counted
        assert shm.queues[1][0][Q_RUNNING] == 1
        assert shm.fdb_entries()  # the switch learnt the sources
    finally:
        shm.close()
    # RX in MSIX mode: interrupts on vector 1
    assert b.drv.interrupts(0) >= 1
    c_tx, c_rx = a.drv.counters(a.txq), b.drv.counters(b.rxq)
    assert c_tx["received_desc"] == c_tx["completed_desc"] == 20
    assert c_rx["received_desc"] == c_rx["completed_desc"] == 20
    assert c_tx["invalid_buffer"] == c_tx["bad_desc_errors"] == c_tx["exceed_max_chain"] == 0
    assert c_tx["error_cqes"] == 0


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_suspend_query_resume(card, vfs, packed):
    a, b = vfs(0, packed=packed), vfs(1, packed=packed)
    a.ready()
    b.ready()
    _deliver(a, b, 10, b"1")
    assert a.drv.set_state(a.txq, QState.SUSPEND).status == Status.OK
    q = a.drv.query(a.txq)
    assert q["state"] == QState.SUSPEND
    want = (0x8000 | 10) if packed else 10  # packed: offset | wrap counter << 15
    assert q["hw_available_index"] == q["hw_used_index"] == want
    # chains made available while suspended wait
    for _ in range(3):
        b.rx.post_rx()
    b.rx.kick(force=True)
    frames = _frames(3, b"\x02\x00\x00\x00\x00\x01", b"2")
    for f in frames:
        a.tx.send(f)
    a.tx.kick(force=True)
    time.sleep(0.3)
    assert a.tx.harvest() == []
    assert a.drv.query(a.txq)["hw_used_index"] == want
    # a second RDY resumes from the indices reached
    assert a.drv.set_state(a.txq, QState.RDY).status == Status.OK
    assert len(a.tx.wait_used(3)) == 3
    got = b.rx.wait_used(3)
    assert [b.rx.data(s, n)[12:] for s, n in got] == [f[12:] for f in frames]
    assert a.drv.set_state(a.txq, QState.SUSPEND).status == Status.OK
    assert a.drv.query(a.txq)["hw_used_index"] == want + 3
    assert a.drv.counters(a.txq)["completed_desc"] == 13


def test_dma_fault_puts_the_virtq_in_error(card, vfs):
    a, b = vfs(0), vfs(1)
    a.ready()
    b.ready()
    _deliver(a, b, 2)
    # a TX buffer outside guest memory (and outside the mkey)
    a.tx.ring.add([(0x7000_0000, 64, False)], a.tx.ring.alloc_slot())
    a.tx.kick(force=True)
    wait_for(lambda: a.drv.query(a.txq)["state"] == QState.ERROR, what="ERROR")
    q = a.drv.query(a.txq)
    assert q["error_type"] == ERR_ADDR
    assert q["hw_used_index"] == 2
    assert a.drv.counters(a.txq)["invalid_buffer"] == 1
    shm = card.counters()
    try:
        assert shm.vf[0][V_FAULTS] == 1 and shm.vf[0][V_DMA_FAULTS] == 1
        assert shm.queues[0][1][Q_RUNNING] == 0
    finally:
        shm.close()
    # ERROR: modify refused, query and destroy allowed; the card goes on for the others
    r = a.drv.set_state(a.txq, QState.RDY)
    assert (r.status, r.syndrome) == (Status.BAD_RES_STATE, Syn.FIELD_NOT_MODIFIABLE)
    _deliver(b, a, 3)
    assert a.drv.fw.destroy_virtq(a.txq).status == Status.OK


def test_guest_memory_in_two_regions_through_a_klm_mkey(card, vfs):
    """Buffers in the second region translate through the KLM mkey; one in the hole (null mkey) is a fault."""
    a, b = vfs(0, nregions=2), vfs(1, nregions=2)
    a.ready()
    b.ready()
    g_rx = b.mem.alloc(2048, 64, region=1)
    b.rx.ring.add([(g_rx, 2048, True)], b.rx.ring.alloc_slot())
    b.rx.kick(force=True)
    f = net_frame(BCAST, b"\x02\x00\x00\x00\x00\x01", b"second region" * 4)
    g_tx = a.mem.alloc(len(f), 64, region=1)
    a.mem.view(g_tx, len(f))[:] = list(f)
    a.tx.ring.add([(g_tx, len(f), False)], a.tx.ring.alloc_slot())
    a.tx.kick(force=True)
    assert len(a.tx.wait_used(1)) == 1
    [(_slot, ln)] = b.rx.wait_used(1)
    assert ln == len(f) and bytes(b.mem.view(g_rx, ln))[12:] == f[12:]
    hole = (1 << 20) + (8 << 20) + 0x1000
    a.tx.ring.add([(hole, 64, False)], a.tx.ring.alloc_slot())
    a.tx.kick(force=True)
    wait_for(lambda: a.drv.query(a.txq)["state"] == QState.ERROR, what="ERROR")
    assert a.drv.query(a.txq)["error_type"] == ERR_ADDR


def test_chain_too_long_exceeds_max_chain(card, vfs):
    a, b = vfs(0, num=256), vfs(1, num=256)  # room in the ring for a chain over MAX_SEGS
    a.ready()
    b.ready()
    slot = a.tx.ring.alloc_slot()
    g = a.tx.ring.data_gpa(slot)
    a.tx.ring.add([(g + i, 1, False) for i in range(MAX_SEGS + 6)], slot)
    a.tx.kick(force=True)
    wait_for(lambda: a.drv.query(a.txq)["state"] == QState.ERROR, what="ERROR")
    assert a.drv.query(a.txq)["error_type"] == ERR_TOO_MANY_SEGS
    c = a.drv.counters(a.txq)
    assert c["exceed_max_chain"] == 1 and c["received_desc"] == 0 and c["bad_desc_errors"] == 0


def test_link_down_stops_delivery(card, vfs):
    a, b = vfs(0), vfs(1)
    a.ready()
    b.ready()
    _deliver(a, b, 2)
    assert _run(card.runtime, "link", card.pf, vf_bdf(card.pf, 1), "down").returncode == 0
    for _ in range(2):
        b.rx.post_rx()
    b.rx.kick(force=True)
    for f in _frames(2, b"\x02\x00\x00\x00\x00\x01"):
        a.tx.send(f)
    a.tx.kick(force=True)
    assert len(a.tx.wait_used(2)) == 2  # taken and dropped: nobody to deliver to
    time.sleep(0.2)
    assert b.rx.harvest() == []
    assert _run(card.runtime, "link", card.pf, vf_bdf(card.pf, 1), "up").returncode == 0
    for f in _frames(2, b"\x02\x00\x00\x00\x00\x01"):
        a.tx.send(f)
    a.tx.kick(force=True)
    assert len(b.rx.wait_used(2)) == 2


def test_dma_unmap_under_running_rings(card, vfs):
    a, b = vfs(0), vfs(1)
    a.ready()
    b.ready()
    _deliver(a, b, 1)
    r = a.mem.regions[0]
    assert a.drv.dma_unmap(r.gpa, r.size) == [r.gpa]
    for oid in (a.rxq, a.txq):
        q = a.drv.query(oid)
        assert q["state"] == QState.ERROR and q["error_type"] == ERR_RING_DMA
    shm = card.counters()
    try:
        assert shm.vf[0][V_DMA_FAULTS] == 2
    finally:
        shm.close()
    assert card.alive()


def test_doorbell_takes_only_32_bit_writes(card, vfs):
    a = vfs(0)
    a.ready()
    shm = card.counters()
    try:
        before = int(shm.queues[0][1][Q_KICKS])
        a.drv.doorbell(1, width=2)
        wait_for(lambda: shm.vf[0][V_DOORBELLS_IGNORED] == 1, what="the narrow write ignored")
        assert shm.queues[0][1][Q_KICKS] == before
        a.drv.doorbell(1)
        wait_for(lambda: shm.queues[0][1][Q_KICKS] == before + 1, what="the kick")
        a.drv.doorbell(5)  # any queue index of the function is counted, even one that does not run
        wait_for(lambda: shm.queues[0][5][Q_KICKS] == 1, what="the kick of queue 5")
        a.drv.doorbell(999)  # not a queue of the function
        wait_for(lambda: shm.vf[0][V_DOORBELLS_IGNORED] == 2, what="the bad index ignored")
    finally:
        shm.close()


def test_msix_vectors_rebound_under_a_running_virtq(card, vfs):
    a, b = vfs(0), vfs(1)
    a.ready()
    b.ready()
    _deliver(a, b, 2)
    old = b.drv.irq_fd(1)
    assert b.drv.interrupts(0) >= 1
    b.drv.set_irqs(4)  # new eventfds: the running RX virtq's vector 1 follows
    assert b.drv.irq_fd(1) != old
    _deliver(a, b, 2)
    assert b.drv.interrupts(0) >= 1


def test_reset_request_drops_the_firmware_objects(card, vfs):
    a = vfs(0)
    a.ready()
    a.drv.request("reset")
    r = a.drv.fw.query_virtq(a.txq)
    assert r.status == Status.BAD_RESOURCE
    shm = card.counters()
    try:
        assert shm.queues[0][1][Q_RUNNING] == 0 and shm.vf[0][V_RESETS] == 1
    finally:
        shm.close()


def test_driver_gone_resets_the_function(card, vfs):
    a = vfs(0)
    a.ready()
    a.drv.close()
    shm = card.counters()
    try:
        wait_for(lambda: shm.vf[0][V_CONNECTED] == 0, what="the card seeing the driver go")
        assert shm.queues[0][1][Q_RUNNING] == 0
    finally:
        shm.close()
    b = Vf(card.vf_dir(0))  # a new driver meets a fresh firmware: the old objects are gone
    try:
        assert (b.drv.pd, b.rxq, b.txq) == (a.drv.pd, a.rxq, a.txq)  # ids start over
        assert b.drv.query(b.txq)["state"] == QState.INIT
    finally:
        b.close()
    a.mem.close()


def _run(runtime, *args, timeout=180):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=runtime, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "dataplane.nic", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_start_show_stop(runtime):
    r = _run(runtime, "start", "mlx5", "--pf", MLX5_PF, "--vfs", "2", "--queue-pairs", "4", "--daemon")
    assert r.returncode == 0, r.stderr
    try:
        r = _run(runtime, "show", "-j")
        [c] = json.loads(r.stdout)["cards"]
        assert c["model"] == "mlx5" and c["running"]
        assert [v["bdf"] for v in c["vfs"]] == ["0000:00:06.1", "0000:00:06.2"]
        assert [v["mac"] for v in c["vfs"]] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
        assert all(v["num_queues"] == 8 and not v["driver"] for v in c["vfs"])
        r = _run(runtime, "show")
        assert f"card {MLX5_PF} mlx5 pid" in r.stdout
        r = _run(runtime, "link", MLX5_PF, "0000:00:06.2", "down")
        assert r.returncode == 0, r.stderr
    finally:
        r = _run(runtime, "stop", MLX5_PF)
    assert r.returncode == 0, r.stderr
    assert os.listdir(runtime) == []
