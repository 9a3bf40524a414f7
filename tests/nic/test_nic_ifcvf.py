"""The emulated IFC VF card, driven at register level by dataplane.testing.nic_driver."""

import os
import struct
import time

import pytest

from dataplane.nic.card import DEVICE_FEATURES, F
from dataplane.nic.kernels import (
    ERR_QUEUE_SIZE,
    ERR_RING_DMA,
    ERR_RING_ZERO,
    Q_ERR,
    Q_FAULTS,
    Q_FLOODED,
    Q_IRQS,
    Q_KICKS,
    Q_NOBUF,
    Q_PACKETS,
    Q_POLLED,
    Q_RUNNING,
)
from dataplane.nic.pci import (
    CC,
    COMMON_CFG,
    DEVICE_CFG,
    DEVICE_ID,
    ISR_CFG,
    NOTIFY_CFG,
    PCI_CAP_ID_MSIX,
    S_DRIVER_OK,
    S_FEATURES_OK,
    SUBSYS_DEVICE_ID,
    SUBSYS_VENDOR_ID,
    VENDOR_ID,
)
from dataplane.nic.shm import V_CONNECTED, V_DMA_MAPS, V_FAULTS, V_IRQS_SET
from dataplane.rings.virtqueue import ERR_ADDR
from dataplane.testing.nic_card import wait_for
from dataplane.testing.nic_driver import NicDriver, NicError, NicQueue, net_frame
from dataplane.testing.vhost_frontend import GuestMemoryLayout

FEATS = (1 << F.VERSION_1) | (1 << F.ACCESS_PLATFORM) | (1 << F.MAC) | (1 << F.MQ)
BCAST = b"\xff" * 6




class Guest:
    """A VF with its driver, guest memory and queue pair 0 (rx 0, tx 1)."""

    def __init__(self, vf_dir, *, packed=False, features=FEATS, num=64, start=True):
        self.drv = NicDriver(vf_dir)
        self.mem = GuestMemoryLayout.simple(8 << 20, gpa=1 << 20)  # (a ring at IOVA 0 is refused)
        self.drv.dma_map_memory(self.mem)
        self.drv.set_irqs(self.drv.num_irqs)
        self.features = features | ((1 << F.RING_PACKED) if packed else 0)
        self.rx = NicQueue(self.drv, self.mem, 0, num=num, packed=packed, features=self.features)
        self.tx = NicQueue(self.drv, self.mem, 1, num=num, packed=packed, features=self.features)
        if start:
            self.drv.start({0: self.rx, 1: self.tx}, self.features)

    @property
    def mac(self) -> bytes:
        return bytes(self.drv.bar0.u8[self.drv.device : self.drv.device + 6])

    def close(self):
        self.drv.close()
        self.mem.close()


@pytest.fixture
def guests(on_vf):
    return lambda i, **kw: on_vf(Guest, i, **kw)



# -----------------------------------------------------------------------------------------


def test_config_space_and_capabilities(card):
    drv = NicDriver(card.vf_dir(0))
    try:
        cs = drv.config
        assert len(cs) == 256
        assert struct.unpack_from("<HH", cs, 0) == (VENDOR_ID, DEVICE_ID)
        assert struct.unpack_from("<HH", cs, 0x2C) == (SUBSYS_VENDOR_ID, SUBSYS_DEVICE_ID)
        assert cs[0x06] & 0x10  # capability list
        caps = drv.caps
        for t in (COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG):
            assert caps[t]["bar"] == 0
            assert caps[t]["offset"] + caps[t]["length"] <= drv.bar0.size
        assert caps[COMMON_CFG]["offset"] == 0 and caps[COMMON_CFG]["length"] == 0x38
        assert caps[NOTIFY_CFG]["multiplier"] == 0x1000
        assert caps[NOTIFY_CFG]["offset"] % 4096 == 0
        assert any(cap_id == PCI_CAP_ID_MSIX for _pos, cap_id in caps["other"])
        nq = drv.r16(CC.NUM_QUEUES)
        pairs = drv.bar0.r16(caps[DEVICE_CFG]["offset"] + 8)
        assert nq == 2 * pairs + 1  # the control queue is counted, as IFCVF counts it
        assert caps[NOTIFY_CFG]["length"] == nq * 0x1000
        # MSI-X table size = num_queues + 1 (config vector)
        msix_pos = [p for p, i in caps["other"] if i == PCI_CAP_ID_MSIX][0]
        assert (struct.unpack_from("<H", cs, msix_pos + 2)[0] & 0x7FF) + 1 == nq + 1 == drv.num_irqs
        for q in range(nq):  # each queue has its own doorbell page
            assert drv.notify_off(q) == q
        assert drv.bar0.r16(caps[DEVICE_CFG]["offset"] + 10) == 1500  # mtu
        assert drv.bar0.u8[caps[DEVICE_CFG]["offset"]: caps[DEVICE_CFG]["offset"] + 6].tobytes() == bytes.fromhex("020000000001")
    finally:
        drv.close()


def test_reset_and_feature_negotiation(card):
    drv = NicDriver(card.vf_dir(0))
    try:
        assert drv.device_features() == DEVICE_FEATURES
        assert DEVICE_FEATURES >> F.VERSION_1 & 1 and DEVICE_FEATURES >> F.ACCESS_PLATFORM & 1
        assert not DEVICE_FEATURES >> F.MRG_RXBUF & 1
        drv.reset()
        # a feature the card does not offer: FEATURES_OK does not stick
        drv.add_status(1)
        drv.add_status(2)
        drv.write_guest_features((1 << F.VERSION_1) | (1 << F.MRG_RXBUF))
        assert not drv.add_status(S_FEATURES_OK) & S_FEATURES_OK
        drv.reset()
        drv.add_status(1)
        drv.add_status(2)
        drv.write_guest_features(1 << F.MAC)  # no VERSION_1: refused
        assert not drv.add_status(S_FEATURES_OK) & S_FEATURES_OK
        drv.reset()
        assert drv.status == 0
        assert drv.negotiate(FEATS)
        assert drv.status & S_FEATURES_OK
        shm = card.counters()
        assert shm.vf[0][8] == FEATS  # V_FEATURES
        # the guest features read back per select
        drv.w32(CC.GUEST_FEATURE_SELECT, 1)
        drv.flush()
        assert drv.r32(CC.GUEST_FEATURE) == FEATS >> 32
        # msix_config beyond the table reads back NO_VECTOR
        drv.w16(CC.MSIX_CONFIG, drv.num_irqs + 5)
        drv.flush()
        assert drv.r16(CC.MSIX_CONFIG) == 0xFFFF
        drv.reset()
        assert drv.status == 0 and drv.r16(CC.MSIX_CONFIG) == 0xFFFF
        shm.close()
    finally:
        drv.close()


def test_negotiate_masks_and_accepts(card):
    drv = NicDriver(card.vf_dir(1))
    try:
        assert drv.negotiate(DEVICE_FEATURES | (1 << F.MRG_RXBUF))  # negotiate() keeps only what is offered
    finally:
        drv.close()


RING_KINDS = pytest.mark.parametrize("packed,event_idx", [(False, False), (True, False), (False, True), (True, True)],
                                     ids=["split", "packed", "split-event_idx", "packed-event_idx"])


@RING_KINDS
def test_switch_learning_flooding_interrupts(card, guests, packed, event_idx):
    feats = FEATS | ((1 << F.EVENT_IDX) if event_idx else 0)
    a = guests(0, packed=packed, features=feats)
    b = guests(1, packed=packed, features=feats)
    for g in (a, b):
        for _ in range(8):
            g.rx.post_rx()
        g.rx.kick()
    # broadcast from A: flooded to B only (never back to A)
    f1 = net_frame(BCAST, a.mac, b"hello from a" * 4)
    a.tx.send(f1)
    a.tx.kick()
    [(slot, n)] = b.rx.wait_used(1)
    assert n == len(f1)
    assert b.rx.data(slot, n) == bytes(10) + b"\x01\x00" + f1[12:]  # num_buffers = 1
    assert a.tx.wait_used(1)[0][1] == 0
    # A's MAC is learnt: B -> A unicast goes to A
    f2 = net_frame(a.mac, b.mac, b"reply from b" * 10)
    b.tx.send(f2)
    b.tx.kick()
    [(slot, n)] = a.rx.wait_used(1)
    assert a.rx.data(slot, n)[12:] == f2[12:]
    b.tx.wait_used(1)
    # now B is learnt too: A -> B unicast, not flooded
    shm = card.counters()
    flooded = int(shm.queues[0][1][Q_FLOODED])
    f3 = net_frame(b.mac, a.mac, b"x" * 1000)
    a.tx.send(f3)
    a.tx.kick()
    [(slot, n)] = b.rx.wait_used(1)
    assert b.rx.data(slot, n)[12:] == f3[12:]
    a.tx.wait_used(1)
    assert shm.queues[0][1][Q_FLOODED] == flooded
    # unknown unicast is flooded
    f4 = net_frame(bytes.fromhex("02aabbccddee"), a.mac, b"?" * 60)
    a.tx.send(f4)
    a.tx.kick()
    [(slot, n)] = b.rx.wait_used(1)
    assert b.rx.data(slot, n)[12:] == f4[12:]
    assert shm.queues[0][1][Q_FLOODED] == flooded + 1
    # counters (TX kicks depend on whether the queue was still polled: test_idle_queue_wakes_on_its_doorbell)
    # RX kicks are suppressed (with EVENT_IDX the driver may kick once more: avail_event is never moved)
    rx_kicks = 1 if event_idx else 0
    assert shm.queues[0][0][Q_KICKS] <= rx_kicks and shm.queues[1][0][Q_KICKS] <= rx_kicks
    assert shm.queues[1][0][Q_PACKETS] == 3 and shm.queues[0][0][Q_PACKETS] == 1
    # interrupts as the drivers asked (their first used entry at least: used_event starts at 0)
    assert shm.queues[1][0][Q_IRQS] >= 1 and b.drv.interrupts(0) >= 1
    if not event_idx:
        assert shm.queues[0][1][Q_IRQS] >= 1 and a.drv.interrupts(1) >= 1
    from dataplane.nic.cli import list_cards

    [c] = list_cards(os.path.dirname(card.dir))
    qc = c["vfs"][1]["queue_counters"]["0"]
    assert qc["packets"] == 3 and qc["running"] == 1 and qc["irqs"] >= 1
    assert c["vfs"][0]["counters"]["connected"] == 1
    assert dict(shm.fdb_entries()) == {":".join(f"{x:02x}" for x in a.mac): 0,
                                       ":".join(f"{x:02x}" for x in b.mac): 1}
    shm.close()


def test_many_frames_and_rx_without_buffers(card, guests):
    a = guests(0)
    b = guests(1)
    total = 300
    got = []
    sent = 0
    for _ in range(32):
        b.rx.post_rx()
    b.rx.kick()
    while len(got) < total:
        while sent < total and a.tx.ring.free:
            a.tx.send(net_frame(b.mac, a.mac, sent.to_bytes(4, "big") * 16))
            sent += 1
        a.tx.kick()
        a.tx.harvest()
        a.tx.used.clear()
        for slot, n in b.rx.harvest():
            got.append(int.from_bytes(b.rx.data(slot, n)[26:30], "big"))
        b.rx.used.clear()
        while b.rx.ring.free:
            b.rx.post_rx()
        b.rx.kick()
        if len(got) < total:
            time.sleep(0.001)
        shm = card.counters()
        lost = int(shm.queues[1][0][Q_NOBUF])
        shm.close()
        if len(got) + lost >= total:
            break
    assert got == sorted(got)  # in order
    assert len(got) + lost == total


def test_queue_disable_writes_ring_state_and_resumes(card, guests):
    a = guests(0)
    b = guests(1)
    for _ in range(8):
        b.rx.post_rx()
    b.rx.kick()
    for i in range(5):
        a.tx.send(net_frame(b.mac, a.mac, bytes([i]) * 60))
    a.tx.kick()
    a.tx.wait_used(5)
    b.rx.wait_used(5)
    rs = a.drv.stop_queue(1)
    assert rs == 5 | 5 << 16  # net: last_used in both halves
    shm = card.counters()
    assert shm.queues[0][1][Q_RUNNING] == 0
    # frames added while the queue is disabled stay in the ring
    a.tx.send(net_frame(b.mac, a.mac, b"late" * 20))
    rx_before = int(shm.queues[1][0][Q_PACKETS])
    kicks = int(shm.queues[0][1][Q_KICKS])
    a.tx.kick(force=True)
    wait_for(lambda: shm.queues[0][1][Q_KICKS] > kicks, what="the kick taken")
    a.drv.flush()  # acknowledged on the card's next turn: the turn that took the kick has switched
    assert shm.queues[1][0][Q_PACKETS] == rx_before  # nothing moved: the queue is stopped
    assert a.tx.harvest() == []
    # re-enable from the saved state: the pending frame is served
    a.drv.program_queue(a.tx, last_avail=rs & 0xFFFF, last_used=rs >> 16)
    [(slot, n)] = b.rx.wait_used(1)
    assert b.rx.data(slot, n)[12:] == b"".join([b.mac, a.mac, b"\x88\xb5", b"late" * 20])
    assert shm.queues[0][1][Q_RUNNING] == 1
    assert a.drv.stop_queue(1) == 6 | 6 << 16
    shm.close()


def test_dirty_logging_marks_written_pages(card, guests):
    from dataplane.testing.vhost_frontend import FrontendLog

    a = guests(0)
    b = guests(1)
    log = FrontendLog(b.mem)
    LOG_IOVA = 0x100000000000
    try:
        size = (log.size + 4095) & ~4095
        b.drv.dma_map(LOG_IOVA, size, log.fd, 0)
        # B's TX queue idles first: its kick-suppression flag is written before logging starts
        wait_for(lambda: card.counters().queues[1][1][Q_POLLED] == 0, what="B's TX queue idle")
        b.drv.log_start(LOG_IOVA, log.size)
        shm = card.counters()
        assert shm.vf[1][10] == 1  # V_LOG_ON
        slots = [b.rx.post_rx(2048) for _ in range(3)]
        b.rx.kick()
        frames = [net_frame(b.mac, a.mac, bytes([i]) * 1200) for i in range(3)]
        for f in frames:
            a.tx.send(f)
        a.tx.kick()
        used = b.rx.wait_used(3)
        assert [n for _s, n in used] == [len(f) for f in frames]
        pages = set()
        for s, n in used:
            g = b.rx.ring.data_gpa(s)
            pages |= set(range(g >> 12, (g + n - 1 >> 12) + 1))
        ring = b.rx.ring
        pages.add((ring.used_gpa + 2) >> 12)
        pages |= {(ring.used_gpa + 4 + 8 * i) >> 12 for i in range(3)}
        wait_for(lambda: log.pages() >= pages, what="pages logged")
        assert log.pages() == pages  # exactly the written pages: no ring page of A, no unwritten buffer
        assert log.slack_untouched()
        assert slots == [s for s, _ in used]
        # B's TX: the card writes only B's TX used ring (entries, idx, the kick-suppression flags)
        for _ in range(2):
            a.rx.post_rx()
        a.rx.kick()
        b.tx.send(net_frame(a.mac, b.mac, b"logged tx" * 10))
        b.tx.kick()
        b.tx.wait_used(1)
        a.rx.wait_used(1)
        tx_used = b.tx.ring.used_gpa
        pages |= {tx_used >> 12, (tx_used + 4) >> 12}
        wait_for(lambda: log.pages() >= pages, what="TX used ring logged")
        assert log.pages() == pages
        b.drv.log_stop()
        assert shm.vf[1][10] == 0
        log.clear()
        b.rx.post_rx()
        b.rx.kick()
        a.tx.send(frames[0])
        a.tx.kick()
        b.rx.wait_used(1)
        assert log.pages() == set()
        shm.close()
    finally:
        b.drv.dma_unmap(LOG_IOVA, (log.size + 4095) & ~4095)
        log.close()


def test_bad_programming_is_a_counted_fault(card, guests):
    g = guests(0, start=False)
    peer = guests(1)
    d = g.drv
    d.reset()
    assert d.negotiate(FEATS)
    shm = card.counters()
    d.program_queue(g.rx)
    d.add_status(S_DRIVER_OK)
    # split size not a power of two
    d.program_queue(g.tx, size=48)
    assert not d.queue_enabled(1)
    assert shm.queues[0][1][Q_ERR] == ERR_QUEUE_SIZE
    # ring address 0
    d.program_queue(g.tx, addrs=(0, g.tx.ring.avail_gpa, g.tx.ring.used_gpa))
    assert not d.queue_enabled(1)
    assert shm.queues[0][1][Q_FAULTS] == 2 and shm.queues[0][1][Q_ERR] == ERR_RING_ZERO
    assert shm.queues[0][3][Q_ERR] == 0
    # a ring outside the DMA map
    d.program_queue(g.tx, addrs=(0x40000000, g.tx.ring.avail_gpa, g.tx.ring.used_gpa))
    assert not d.queue_enabled(1)
    assert shm.queues[0][1][Q_FAULTS] == 3 and shm.queues[0][1][Q_ERR] == ERR_RING_DMA
    assert shm.vf[0][V_FAULTS] == 3
    # a descriptor whose buffer is outside the DMA map: the queue stops in error, the card lives on
    d.program_queue(g.tx)
    assert d.queue_enabled(1) and shm.queues[0][1][Q_ERR] == 0
    g.tx.ring.add([(0x7000_0000, 64, False)])
    g.tx.kick()
    wait_for(lambda: shm.queues[0][1][Q_ERR] != 0, what="DMA fault")
    assert shm.queues[0][1][Q_ERR] == ERR_ADDR
    assert shm.queues[0][1][Q_RUNNING] == 0
    assert card.alive()
    # the other VF still works
    peer.rx.post_rx()
    peer.rx.kick()
    peer.tx.send(net_frame(BCAST, peer.mac, b"still alive" * 5))
    peer.tx.kick()
    peer.tx.wait_used(1)
    assert card.alive()
    shm.close()


def test_hostile_control_requests(card):
    drv = NicDriver(card.vf_dir(0))
    mem = GuestMemoryLayout.simple(4 << 20)
    try:
        with pytest.raises(NicError, match="size"):
            drv.dma_map(0, 0, mem.regions[0].fd)
        with pytest.raises(NicError, match="aligned"):
            drv.dma_map(0x123, 4096, mem.regions[0].fd)
        with pytest.raises(NicError, match="past the file"):
            drv.dma_map(0, 8 << 20, mem.regions[0].fd)
        r, w = os.pipe()
        try:
            with pytest.raises(NicError, match="not a memory file"):
                drv.dma_map(0, 4096, r)
        finally:
            os.close(r)
            os.close(w)
        drv.dma_map_memory(mem)
        with pytest.raises(NicError, match="overlaps"):
            drv.dma_map(4096, 4096, mem.regions[0].fd)
        with pytest.raises(NicError, match="cuts"):
            drv.dma_unmap(0, 4096)
        with pytest.raises(NicError, match="nothing is mapped"):
            drv.dma_unmap(1 << 40, 4096)
        with pytest.raises(NicError, match="one fd"):
            drv.request("dma_map", iova=1 << 30, size=4096, offset=0)
        with pytest.raises(NicError, match="unknown request"):
            drv.request("frobnicate")
        with pytest.raises(NicError, match="vector"):
            drv.request("set_irqs", vectors=[0, 1])
        with pytest.raises(NicError, match="unsigned"):
            drv.request("dma_unmap", iova=-1, size=4096)
        drv.sock.send(b"not json")
        assert b'"ok": false' in drv.sock.recv(4096)
        shm = card.counters()
        assert shm.vf[0][V_DMA_MAPS] == 1
        # a second driver is refused while the first holds the function
        with pytest.raises(NicError, match="in use"):
            NicDriver(card.vf_dir(0))
        assert drv.dma_unmap(0, 4 << 20) == [0]
        assert shm.vf[0][V_DMA_MAPS] == 0
        shm.close()
        assert card.alive()
    finally:
        drv.close()
        mem.close()


def test_driver_death_drops_dma_maps_and_resets(card, guests):
    a = guests(0)
    shm = card.counters()
    assert shm.vf[0][V_DMA_MAPS] == 1 and shm.vf[0][V_IRQS_SET] == a.drv.num_irqs
    assert shm.queues[0][0][Q_RUNNING] == 1
    a.drv.close()
    wait_for(lambda: shm.vf[0][V_CONNECTED] == 0, what="disconnect")
    assert shm.vf[0][V_DMA_MAPS] == 0 and shm.vf[0][V_IRQS_SET] == 0
    assert shm.queues[0][0][Q_RUNNING] == 0 and shm.queues[0][1][Q_RUNNING] == 0
    # the function was reset, and the card has no mapping of the old memory left
    drv = NicDriver(card.vf_dir(0))
    try:
        assert drv.status == 0
        pid = card.proc.pid
        maps = open(f"/proc/{pid}/maps").read()
        assert "vhost-frontend-guest" not in maps
        with pytest.raises(NicError, match="nothing is mapped"):
            drv.dma_unmap(1 << 20, 8 << 20)
    finally:
        drv.close()
    shm.close()


def test_two_queue_pairs_and_mq_cfg(card):
    made = []
    try:
        for i in range(2):
            g = Guest(card.vf_dir(i), start=False)
            made.append(g)
            g.rx1 = NicQueue(g.drv, g.mem, 2)
            g.tx1 = NicQueue(g.drv, g.mem, 3)
            g.drv.start({0: g.rx, 1: g.tx, 2: g.rx1, 3: g.tx1}, FEATS)
            assert g.drv.bar4.r32(0x28) == 2  # mq_cfg: queue pairs enabled
        a, b = made
        for q in (b.rx, b.rx1):
            for _ in range(4):
                q.post_rx()
            q.kick()
        a.tx1.send(net_frame(b.mac, a.mac, b"pair one" * 8))  # unknown yet: flooded, onto B's pair 1
        a.tx1.kick()
        [(slot, n)] = b.rx1.wait_used(1)
        assert b.rx1.data(slot, n)[12:26] == b.mac + a.mac + b"\x88\xb5"
        a.tx.send(net_frame(b.mac, a.mac, b"pair zero" * 8))
        a.tx.kick()
        [(slot, n)] = b.rx.wait_used(1)
        assert b.rx.data(slot, n)[26:35] == b"pair zero"
        # B with one pair enabled: everything lands on its pair 0
        b.drv.set_mq(1)
        b.drv.flush()
        a.tx1.send(net_frame(b.mac, a.mac, b"again" * 8))
        a.tx1.kick()
        [(slot, n)] = b.rx.wait_used(1)
        assert b.rx.data(slot, n)[26:31] == b"again"
        shm = card.counters()
        assert shm.queues[0][3][Q_PACKETS] == 2 and shm.queues[0][1][Q_PACKETS] == 1
        assert shm.queues[1][2][Q_PACKETS] == 1 and shm.queues[1][0][Q_PACKETS] == 2
        shm.close()
    finally:
        for g in made:
            g.close()


def test_unmap_under_a_running_queue_stops_it(card, guests):
    a = guests(0)
    shm = card.counters()
    assert shm.queues[0][1][Q_RUNNING] == 1
    r = a.mem.regions[0]
    assert a.drv.dma_unmap(r.gpa, r.size) == [r.gpa]
    for q in (0, 1):
        assert shm.queues[0][q][Q_RUNNING] == 0
        assert shm.queues[0][q][Q_ERR] == ERR_RING_DMA
    assert "vhost-frontend-guest" not in open(f"/proc/{card.proc.pid}/maps").read()
    # a kick on the stopped queue touches nothing
    a.tx.send(net_frame(BCAST, a.mac, b"z" * 64))
    a.tx.kick()
    kicks = int(shm.queues[0][1][Q_KICKS])
    a.tx.kick(force=True)
    wait_for(lambda: shm.queues[0][1][Q_KICKS] > kicks, what="kick counted")
    assert card.alive()
    shm.close()


@RING_KINDS
def test_idle_queue_wakes_on_its_doorbell(card, guests, packed, event_idx):
    feats = FEATS | ((1 << F.EVENT_IDX) if event_idx else 0)
    a = guests(0, packed=packed, features=feats)
    b = guests(1, packed=packed, features=feats)
    for _ in range(8):
        b.rx.post_rx()
    b.rx.kick(force=True)
    shm = card.counters()
    for i in range(3):
        # wait until the card has gone idle on A's TX queue: it asks for kicks again
        wait_for(lambda: shm.queues[0][1][Q_POLLED] == 0, what="the TX queue asking for kicks")
        kicks = int(shm.queues[0][1][Q_KICKS])
        a.tx.send(net_frame(b.mac, a.mac, bytes([i]) * 80))
        assert a.tx.kick()  # the card wants this kick: it is the only way the frame moves
        [(slot, n)] = b.rx.wait_used(1)
        assert b.rx.data(slot, n)[26] == i
        assert shm.queues[0][1][Q_KICKS] == kicks + 1
    shm.close()


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_interrupts_follow_the_driver_suppression(card, guests, packed):
    from dataplane.rings.packed import packed_drv_enable_interrupt
    from dataplane.rings.split import split_drv_enable_interrupt

    a = guests(0, packed=packed)
    b = guests(1, packed=packed)
    enable_irq = packed_drv_enable_interrupt if packed else split_drv_enable_interrupt
    shm = card.counters()
    for _ in range(16):
        b.rx.post_rx()
    b.rx.kick()
    enable_irq(b.rx.ring.vr, b.rx.ring.ds, False)
    for i in range(4):
        a.tx.send(net_frame(b.mac, a.mac, bytes([i]) * 64))
    a.tx.kick()
    got = b.rx.wait_used(4)
    assert len(got) == 4
    assert shm.queues[1][0][Q_IRQS] == 0 and b.drv.interrupts(0) == 0
    enable_irq(b.rx.ring.vr, b.rx.ring.ds, True)
    a.tx.send(net_frame(b.mac, a.mac, b"irq" * 30))
    a.tx.kick()
    b.rx.wait_used(1)
    wait_for(lambda: shm.queues[1][0][Q_IRQS] == 1, what="the RX interrupt")
    assert b.drv.interrupts(0) == 1
    shm.close()


def test_an_idle_card_sleeps(card):
    """An idle card wakes only to poll registers and doorbells: measured as CPU time over a window
    (the one place a test waits for time to pass: CPU use is a rate)."""
    pid = card.proc.pid

    def cpu_s():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    drv = NicDriver(card.vf_dir(0))
    try:
        drv.flush()
    finally:
        drv.close()
    t0, c0 = time.monotonic(), cpu_s()
    time.sleep(2.0)
    used = cpu_s() - c0
    assert used < 0.3 * (time.monotonic() - t0), f"idle card used {used:.2f} s of CPU in 2 s"


def test_link_down_raises_the_config_interrupt(card, guests):
    import subprocess
    import sys

    a = guests(0)
    b = guests(1)
    shm = card.counters()
    gen = b.drv.r8(CC.CONFIG_GENERATION)
    status_off = b.drv.device + 6

    def link(state):
        r = subprocess.run([sys.executable, "-m", "dataplane.nic", "link", card.pf, "0000:00:05.2", state],
                           env=card.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    link("down")
    # the card writes the generation, the status, then the ISR bit (config change): wait for all three
    wait_for(lambda: b.drv.bar0.r16(status_off) == 0 and b.drv.bar0.r8(0x40) & 2, what="link down in device cfg")
    assert b.drv.r8(CC.CONFIG_GENERATION) == (gen + 1) & 0xFF
    from dataplane.testing.vhost_frontend import eventfd_count

    wait_for(lambda: shm.vf[1][12] == 1, what="config interrupt")  # V_CONFIG_IRQS
    assert eventfd_count(b.drv.irq_fd(0)) == 1  # msix_config = vector 0
    # no frame reaches a VF whose link is down
    b.rx.post_rx()
    b.rx.kick()
    a.tx.send(net_frame(BCAST, a.mac, b"anyone?" * 10))
    a.tx.kick()
    a.tx.wait_used(1)
    assert shm.queues[0][1][Q_PACKETS] == 1 and shm.queues[1][0][Q_PACKETS] == 0
    assert b.rx.harvest() == []
    link("up")
    wait_for(lambda: b.drv.bar0.r16(status_off) == 1, what="link up")
    a.tx.send(net_frame(BCAST, a.mac, b"hello again" * 10))
    a.tx.kick()
    [(slot, n)] = b.rx.wait_used(1)
    assert b.rx.data(slot, n)[26:37] == b"hello again"
    shm.close()


def test_driver_restart_resumes_from_bar4_state(card, guests):
    a = guests(0)
    b = guests(1)
    for _ in range(8):
        b.rx.post_rx()
    b.rx.kick()
    for i in range(3):
        a.tx.send(net_frame(b.mac, a.mac, bytes([i]) * 64))
    a.tx.kick()
    a.tx.wait_used(3)
    b.rx.wait_used(3)
    shm = card.counters()
    # A's driver dies: the card stops A's queues (state to BAR4), drops its maps and irqs, resets A
    a.drv.sock.close()
    a.drv.sock = None
    wait_for(lambda: shm.vf[0][V_CONNECTED] == 0, what="disconnect")
    assert shm.vf[0][V_DMA_MAPS] == 0
    old = a.drv
    # a new driver for the same guest memory and rings, from the ring state the card saved
    new = NicDriver(card.vf_dir(0))
    try:
        assert new.bar4.r32(0x24) == 3 | 3 << 16  # ring state of queue 1: three chains completed
        new.dma_map_memory(a.mem)
        new.set_irqs(new.num_irqs)
        a.drv = a.rx.drv = a.tx.drv = new
        new.reset()
        assert new.negotiate(FEATS)
        new.w16(CC.MSIX_CONFIG, 0)
        new.set_mq(1)
        for q in (a.rx, a.tx):
            rs = new.bar4.r32(0x20 + 4 * q.qid)
            new.program_queue(q, last_avail=rs & 0xFFFF, last_used=rs >> 16)
        new.add_status(S_DRIVER_OK)
        a.tx.send(net_frame(b.mac, a.mac, b"after restart" * 5))
        a.tx.kick()
        [(slot, n)] = b.rx.wait_used(1)
        assert b.rx.data(slot, n)[26:39] == b"after restart"
        a.tx.wait_used(1)
        # one mapping of A's memory in the card: nothing stale from the first driver
        maps = [ln for ln in open(f"/proc/{card.proc.pid}/maps").read().splitlines() if "vhost-frontend-guest" in ln]
        assert len(maps) == 2  # A's and B's regions, once each
        assert shm.vf[0][V_DMA_MAPS] == 1 and shm.vf[0][8] == FEATS
    finally:
        old.close()
    shm.close()


def test_doorbell_page_mapped_elsewhere_is_a_kick(card, guests):
    """The host-notifier path: another process maps one queue's doorbell page of resource0 (what QEMU
    does with page-per-vq=on) and a 16-bit store of the queue index there is the kick."""
    import mmap

    a = guests(0)
    b = guests(1)
    for _ in range(4):
        b.rx.post_rx()
    b.rx.kick()
    shm = card.counters()
    wait_for(lambda: shm.queues[0][1][Q_POLLED] == 0, what="A's TX queue idle")
    off = a.drv.notify_base + a.drv.notify_off(1) * a.drv.notify_mult
    fd = os.open(os.path.join(card.vf_dir(0), "resource0"), os.O_RDWR)
    try:
        page = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
    finally:
        os.close(fd)
    try:
        kicks = int(shm.queues[0][1][Q_KICKS])
        a.tx.send(net_frame(b.mac, a.mac, b"via the mapped page" * 3))
        assert a.tx.ring.publish()  # the card wants a kick
        import numpy as np

        word = np.frombuffer(page, np.uint16, count=1)
        word[0] = 1  # the guest's store: one 16-bit write of the queue index
        del word
        [(slot, n)] = b.rx.wait_used(1)
        assert b.rx.data(slot, n)[26:45] == b"via the mapped page"
        assert shm.queues[0][1][Q_KICKS] == kicks + 1
        assert page[0:2] == b"\xff\xff"  # taken by the card
    finally:
        page.close()
    shm.close()
