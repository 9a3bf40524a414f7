"""The device state machine: the semantics of DESIGN.md §3, each with a test, driven by a scripted front-end."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from dataplane.testing.vhost_frontend import GuestMemoryLayout, GuestRegion, eventfd_count
from dataplane.vhost.device import VIRTIO_INVALID_EVENTFD, VIRTIO_UNINITIALIZED_EVENTFD
from dataplane.vhost.net_hdr import net_hdr_len
from dataplane.vhost.library import IMPLEMENTED_PROTOCOL_FEATURES, VhostNotSupported, VhostTryAgain
from dataplane.vhost_user import (
    MemoryRegion,
    MemRegMsg,
    U64,
    VhostUserProtocolFeature as PF,
    VhostUserRequest as R,
    VirtioDeviceStatus as S,
    VirtioFeature as VF,
    bit,
)

V1 = bit(VF.VIRTIO_F_VERSION_1)
PROTO = bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
MRG = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
PACKED = bit(VF.VIRTIO_F_RING_PACKED)
LOG_ALL = bit(VF.VHOST_F_LOG_ALL)
MQ = bit(VF.VIRTIO_NET_F_MQ)
MTU = bit(VF.VIRTIO_NET_F_MTU)
BASE_FEATURES = V1 | PROTO | MRG
REPLY_ACK = bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
STATUS = bit(PF.VHOST_USER_PROTOCOL_F_STATUS)


DRIVER_OK = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK


def _running(lib, connect, guest, features=BASE_FEATURES, protocol_features=None, **kw):
    fe = connect(guest)
    fe.start(features=features, protocol_features=protocol_features, **kw)
    dev = lib.get_device(0)
    assert dev.running
    return fe, dev


# -- ring states ---------------------------------------------------------------------


def test_rings_start_stopped_and_disabled_with_protocol_features(lib, server, connect, guest, recorder, datapath):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    fe.set_mem_table()
    fe.setup_vring(0, 256, enable=False)
    fe.setup_vring(1, 256, enable=False)
    fe.sync()
    dev = lib.get_device(0)
    for vq in dev.vrings:
        assert vq.access_ok and vq.kick_fd >= 0 and vq.call_fd >= 0
        assert not vq.enabled and not vq.ready and not vq.started
    assert not dev.running and datapath.calls == []
    assert "new_device" not in recorder.names()

    fe.set_vring_enable(0)
    fe.set_vring_enable(1)
    fe.set_status(DRIVER_OK)  # STATUS is negotiated: DRIVER_OK too
    fe.sync()
    assert dev.running and all(vq.enabled and vq.ready and vq.started for vq in dev.vrings)
    assert datapath.calls == [("start", 0, 0), ("start", 0, 1)]


def test_enabled_ring_stays_stopped_until_kicked(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    fe.set_mem_table()
    fe.setup_vring(0, 256, kick=False, enable=True)
    fe.sync()
    vq = lib.get_device(0).vrings[0]
    assert vq.enabled and not vq.ready and not vq.started
    fe.set_vring_kick(0, fe.vrings[0].kick_fd)
    fe.sync()
    assert vq.ready


def test_kick_enables_ring_without_protocol_features(lib, server, connect, guest, recorder):
    fe = connect(guest)
    fe.negotiate(V1)  # no VHOST_USER_F_PROTOCOL_FEATURES
    assert fe.protocol_features == 0 and fe.offered_protocol_features == 0
    fe.set_mem_table()
    fe.setup_vring(0, 256, kick=False)
    fe.setup_vring(1, 256, kick=False)
    fe.sync()
    dev = lib.get_device(0)
    assert not any(vq.enabled for vq in dev.vrings)
    fe.set_vring_kick(0, fe.vrings[0].kick_fd)
    fe.sync()
    assert dev.vrings[0].enabled and dev.vrings[0].ready and not dev.vrings[1].enabled
    fe.set_vring_kick(1, fe.vrings[1].kick_fd)
    recorder.wait(("new_device", 0))
    assert dev.running


def test_nofd_kick_and_call_mean_polling(lib, server, connect, guest, recorder):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    fe.set_mem_table()
    fe.setup_vring(0, 256, nofd=True)
    fe.setup_vring(1, 256, nofd=True)
    fe.set_status(DRIVER_OK)
    recorder.wait(("new_device", 0))
    dev = lib.get_device(0)
    assert [(vq.kick_fd, vq.call_fd) for vq in dev.vrings] == [(VIRTIO_INVALID_EVENTFD, VIRTIO_INVALID_EVENTFD)] * 2
    assert all(vq.ready for vq in dev.vrings)
    assert lib.vring_call(0, 0) is False  # nothing to signal: the front-end polls


# -- GET_VRING_BASE ------------------------------------------------------------------


def test_get_vring_base_stops_ring_and_returns_last_avail_without_reset(lib, server, connect, guest, recorder, datapath):
    fe, dev = _running(lib, connect, guest)
    datapath.progress[0] = dict(last_avail_idx=1234, last_used_idx=1200)  # what the "lcore" reached
    datapath.calls.clear()
    assert fe.get_vring_base(0) == 1234
    # the data path gave back every ring before the reply, then destroy_device
    assert datapath.calls == [("stop", 0, 0), ("stop", 0, 1)]
    fe.sync()
    assert recorder.events[-2:] == [("destroy_device", 0), ("vring_state_changed", 0, 0, 0)]
    vq = dev.vrings[0]
    assert not dev.running and not vq.started and not vq.ready
    assert vq.kick_fd == vq.call_fd == VIRTIO_UNINITIALIZED_EVENTFD and not vq.access_ok
    # not reset: asked again, same answer; the API sees both indices
    assert fe.get_vring_base(0) == 1234
    assert lib.get_vring_base(0, 0) == (1234, 1200)
    # restart from there (the used ring in guest memory agrees: everything fetched was completed)
    fe.vrings[0].used.view(np.uint16)[1] = 1234
    fe.setup_vring(0, 256, base=1234)
    fe.sync()
    assert vq.last_avail_idx == 1234


def test_get_vring_base_packed_carries_wrap_counters(lib, server, connect, guest, datapath):
    fe, dev = _running(lib, connect, guest, features=BASE_FEATURES | PACKED)
    vq = dev.vrings[1]
    assert vq.packed and (vq.last_avail_idx, vq.avail_wrap_counter, vq.last_used_idx, vq.used_wrap_counter) == (0, 1, 0, 1)
    datapath.progress[1] = dict(last_avail_idx=5, avail_wrap_counter=0, last_used_idx=3, used_wrap_counter=1)
    value = fe.get_vring_base(1)
    assert value & 0x7FFF == 5 and not value & 0x8000  # bit 15: avail wrap counter
    assert value >> 16 == 3 | 0x8000  # used index and used wrap counter (spec's bits 16-31)
    assert fe.get_vring_base(1) == value
    assert lib.get_vring_base(0, 1) == (5, 3 | 0x8000)
    # SET_VRING_BASE: low half only (DPDK virtio-user) -> used = avail; both halves (QEMU) -> as given
    fe.set_vring_base(1, 7 | 0x8000)
    fe.sync()
    assert (vq.last_avail_idx, vq.avail_wrap_counter, vq.last_used_idx, vq.used_wrap_counter) == (7, 1, 7, 1)
    fe.set_vring_base(1, 9 | (4 << 16) | (1 << 31))
    fe.sync()
    assert (vq.last_avail_idx, vq.avail_wrap_counter, vq.last_used_idx, vq.used_wrap_counter) == (9, 0, 4, 1)


# -- REPLY_ACK -------------------------------------------------------------------------


def test_need_reply_gets_0_on_success_and_1_on_failure(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    assert fe.reply_ack
    assert fe.set_mem_table(ack=True) == 0
    assert fe.set_vring_num(0, 256, ack=True) == 0
    assert fe.set_vring_num(0, 100, ack=True) == 1  # split size not a power of two: refused, connection kept
    assert fe.set_vring_num(0, 0, ack=True) == 1
    assert fe.set_vring_num(0, 65536, ack=True) == 1
    assert lib.get_device(0).vrings[0].size == 256
    # a request with a reply of its own gets that reply, not an extra ack
    fe.send(R.VHOST_USER_GET_QUEUE_NUM, need_reply=True)
    assert U64.parse(fe.reply(R.VHOST_USER_GET_QUEUE_NUM).payload).u64 == 128
    fe.sync()
    # without NEED_REPLY a refused request closes the connection (DPDK)
    fe.set_vring_num(0, 100)
    assert fe.wait_closed()


# -- memory tables ------------------------------------------------------------------------


def test_eight_regions_accepted(lib, server, connect):
    layout = GuestMemoryLayout.simple(64 << 10, nregions=8)
    try:
        fe = connect(layout)
        fe.negotiate(BASE_FEATURES)
        assert fe.set_mem_table(ack=True) == 0
        assert len(lib.get_mem_table(0)) == 8
    finally:
        fe.close()
        layout.close()


def test_region_mapped_with_mmap_offset(lib, server, connect):
    layout = GuestMemoryLayout([GuestRegion(0x4000_0000, 1 << 20, qva=0x5555_0000_0000, mmap_offset=5 * 4096)])
    try:
        fe = connect(layout)
        fe.negotiate(BASE_FEATURES)
        layout.view(0x4000_0000 + 100, 4)[:] = [0xDE, 0xAD, 0xBE, 0xEF]
        assert fe.set_mem_table(ack=True) == 0
        (region,) = lib.get_mem_table(0)
        assert region["mmap_offset"] == 5 * 4096 and region["mmap_size"] == (1 << 20) + 5 * 4096
        dev = lib.get_device(0)
        hva = dev.memory.gpa_to_hva(0x4000_0000 + 100, 4)
        assert bytes((np.ctypeslib.ctypes.c_uint8 * 4).from_address(hva)) == b"\xde\xad\xbe\xef"
    finally:
        fe.close()
        layout.close()


def _open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def test_identical_mem_table_is_ignored(lib, server, connect, guest, datapath):
    fe, dev = _running(lib, connect, guest)
    memory, addr = dev.memory, dev.memory.regions[0].mmap_addr
    datapath.calls.clear()
    fds = _open_fds()
    assert fe.set_mem_table(ack=True) == 0
    assert dev.memory is memory and dev.memory.regions[0].mmap_addr == addr
    assert datapath.calls == []  # the data path was not disturbed
    assert _open_fds() == fds  # the fds that came with the message were closed


def test_changed_mem_table_remaps_and_retranslates(lib, server, connect, guest, recorder, datapath):
    fe, dev = _running(lib, connect, guest)
    old = {q: dict(datapath.snapshots[q]) for q in (0, 1)}
    old_region = dev.memory.regions[0]
    extra = GuestRegion(1 << 32, 1 << 20, name="vh-test-extra")
    try:
        guest.regions.append(extra)
        recorder.clear()
        datapath.calls.clear()
        assert fe.set_mem_table(ack=True) == 0
        fe.sync()
        # data path stopped before the old mapping went away, restarted on the new one
        assert datapath.calls == [("stop", 0, 0), ("stop", 0, 1), ("start", 0, 0), ("start", 0, 1)]
        assert old_region.mmap_addr == 0  # unmapped
        assert len(dev.memory) == 2
        for q in (0, 1):
            vq = dev.vrings[q]
            assert vq.ready and vq.started
            assert vq.desc_hva != old[q]["desc_hva"]  # retranslated into the new mapping
            assert vq.desc_hva == dev.memory.gpa_to_hva(fe.vrings[q].desc_gpa, 16)
            assert datapath.snapshots[q]["regions"].shape == (2, 3)
        assert recorder.events == []  # no application-visible change
        # the new mapping sees the front-end's ring memory
        fe.vrings[0].avail_idx = 3
        assert lib.avail_entries(0, 0) == 3

        # a table without the rings' region: the rings cannot be translated any more
        first = guest.regions.pop(0)
        try:
            assert fe.set_mem_table(ack=True) == 0
        finally:
            guest.regions.insert(0, first)  # the fixture unmaps it
        fe.sync()
        assert not dev.vrings[0].ready and not dev.vrings[0].access_ok
        assert ("vring_state_changed", 0, 0, 0) in recorder.events
        assert "not inside one memory region" in dev.vrings[0].error
    finally:
        fe.close()


# -- features ----------------------------------------------------------------------------


def test_set_features_while_running_may_only_toggle_log_all(lib, server, connect, guest, recorder):
    fe, dev = _running(lib, connect, guest)
    assert fe.set_features(BASE_FEATURES | LOG_ALL, ack=True) == 0
    recorder.wait(("features_changed", 0, BASE_FEATURES | LOG_ALL))
    assert dev.log_all and dev.running
    assert fe.set_features(BASE_FEATURES, ack=True) == 0
    recorder.wait(("features_changed", 0, BASE_FEATURES))
    assert fe.set_features(BASE_FEATURES & ~MRG, ack=True) == 1
    assert dev.features == BASE_FEATURES and dev.running
    assert "only VHOST_F_LOG_ALL may change" in dev.last_error
    fe.set_features(BASE_FEATURES | bit(VF.VIRTIO_RING_F_EVENT_IDX))  # no NEED_REPLY: connection closed
    assert fe.wait_closed()


@pytest.mark.parametrize(
    "features,hlen",
    [(0, 10), (MRG, 12), (V1, 12), (PACKED, 12), (bit(VF.VIRTIO_NET_F_CSUM), 10)],
)
def test_net_header_length(features, hlen):
    assert net_hdr_len(features) == hlen


def test_header_length_follows_negotiation(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(PROTO)
    fe.sync()
    assert net_hdr_len(lib.get_device(0).features) == 10
    fe.set_features(PROTO | V1)
    fe.sync()
    assert net_hdr_len(lib.get_device(0).features) == 12


def test_without_mq_only_the_first_pair_is_kept(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES | MQ)
    assert fe.get_queue_num() == 128
    fe.set_mem_table()
    for q in range(4):
        fe.setup_vring(q, 64)
    fe.set_status(DRIVER_OK)
    fe.sync()
    dev = lib.get_device(0)
    assert dev.nr_vring == 4 and dev.running
    fe2_features = BASE_FEATURES  # MQ dropped (only allowed while not running: reset first)
    fe.request(R.VHOST_USER_RESET_OWNER)
    fe.negotiate(fe2_features)
    fe.set_mem_table()
    for q in range(4):
        fe.setup_vring(q, 64)
    fe.set_features(fe2_features)
    fe.sync()
    assert dev.nr_vring == 2


# -- callbacks and hooks -------------------------------------------------------------------


def test_callbacks_and_hooks_fire_in_order(lib, server, connect, guest, recorder, datapath):
    fe, dev = _running(lib, connect, guest)
    assert recorder.events == [
        ("new_connection", 0),
        ("vring_state_changed", 0, 0, 1),
        ("vring_state_changed", 0, 1, 1),
        ("new_device", 0),
    ]
    assert datapath.calls == [("start", 0, 0), ("start", 0, 1)]
    fe.close()
    recorder.wait(("destroy_connection", 0))
    assert recorder.names()[4:] == ["destroy_device", "destroy_connection"]
    assert datapath.calls[2:] == [("stop", 0, 0), ("stop", 0, 1)]


def test_reconfiguring_a_ready_ring_cycles_it(lib, server, connect, guest, recorder, datapath):
    fe, dev = _running(lib, connect, guest)
    old_call = datapath.snapshots[1]["call_fd"]
    recorder.clear()
    datapath.calls.clear()
    new_call = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        fe.set_vring_call(1, new_call)
        fe.sync()
        assert datapath.calls == [("stop", 0, 1), ("start", 0, 1)]
        assert recorder.events == [("vring_state_changed", 0, 1, 0), ("vring_state_changed", 0, 1, 1)]
        assert datapath.snapshots[1]["call_fd"] != old_call
        assert lib.vring_call(0, 1) is True
        assert eventfd_count(new_call) == 1
        # disabling a ring stops it
        fe.set_vring_enable(0, False)
        fe.sync()
        assert datapath.calls[-1] == ("stop", 0, 0) and not dev.vrings[0].ready and dev.running
    finally:
        os.close(new_call)


def test_status_driver_ok_gates_new_device(lib, server, connect, guest, recorder):
    fe = connect(guest)
    fe.start(features=BASE_FEATURES, driver_ok=False)
    dev = lib.get_device(0)
    assert dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_STATUS)
    assert all(vq.ready for vq in dev.vrings) and not dev.running
    assert fe.get_status() == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK
    assert fe.set_status(DRIVER_OK) == 0
    recorder.wait(("new_device", 0))
    assert fe.set_status(0x1FF, ack=True) == 1  # 8 bits only


def _enable_config(lib, sock_path):
    """net implements CONFIG but offers it only on request"""
    lib.driver_set_protocol_features(sock_path, lib.driver_get_protocol_features(sock_path)
                                     | bit(PF.VHOST_USER_PROTOCOL_F_CONFIG))


def test_rarp_mtu_config_and_notification_intent(lib, server, sock_path, connect, guest, datapath):
    lib.driver_set_mac(sock_path, "02:00:00:00:00:01")
    _enable_config(lib, sock_path)
    fe, dev = _running(lib, connect, guest, features=BASE_FEATURES | MTU)
    with pytest.raises(VhostTryAgain):
        lib.get_mtu(0)
    assert fe.net_set_mtu(9000, ack=True) == 0
    assert lib.get_mtu(0) == 9000
    assert fe.net_set_mtu(20, ack=True) == 1
    # virtio-net config space: mac, status (link up), max_virtqueue_pairs, mtu
    cfg = fe.get_config(0, 12)
    assert cfg[:6] == bytes.fromhex("020000000001")
    assert struct.unpack("<HHH", cfg[6:12]) == (1, 128, 9000)
    # SEND_RARP: MAC recorded, flag for the next dequeue, data path told
    fe.send_rarp(bytes.fromhex("52540012abcd"))
    fe.sync()
    assert dev.device_state.broadcast_rarp and dev.device_state.mac == bytes.fromhex("52540012abcd")
    assert datapath.calls[-1] == ("rarp", 0, bytes.fromhex("52540012abcd"))
    lib.enable_guest_notification(0, 1, False)
    assert dev.vrings[1].guest_notification is False and datapath.calls[-1] == ("notify", 0, 1, False)


def test_mtu_needs_the_feature(lib, server, connect, guest):
    _running(lib, connect, guest)
    with pytest.raises(VhostNotSupported):
        lib.get_mtu(0)


def test_reset_owner_stops_everything_and_resets_state(lib, server, connect, guest, recorder, datapath):
    fe, dev = _running(lib, connect, guest)
    fe.request(R.VHOST_USER_RESET_OWNER)
    fe.sync()
    assert ("destroy_device", 0) in recorder.events and datapath.started == set()
    assert dev.memory is None and dev.features == 0 and dev.vrings == [] and not dev.running
    # the same connection can start over
    fe.start(features=BASE_FEATURES)
    assert dev.running


def test_add_and_remove_memory_regions(lib, server, sock_path, connect, guest, datapath):
    lib.driver_set_protocol_features(sock_path, IMPLEMENTED_PROTOCOL_FEATURES)
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    assert fe.protocol_features >> PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS & 1
    assert fe.get_u64(R.VHOST_USER_GET_MAX_MEM_SLOTS) == 32
    r0 = guest.regions[0]
    assert fe.request(R.VHOST_USER_ADD_MEM_REG, MemRegMsg(r0.spec()), [r0.fd], ack=True) == 0
    for q in (0, 1):
        fe.setup_vring(q, 256)
    fe.set_status(DRIVER_OK)
    fe.sync()
    dev = lib.get_device(0)
    assert dev.running
    extra = GuestRegion(1 << 33, 1 << 20, name="vh-test-add")
    try:
        assert fe.request(R.VHOST_USER_ADD_MEM_REG, MemRegMsg(extra.spec()), [extra.fd], ack=True) == 0
        assert len(dev.memory) == 2
        overlapping = MemoryRegion(1 << 33, 4096, 0x1234_0000_0000, 0)
        assert fe.request(R.VHOST_USER_ADD_MEM_REG, MemRegMsg(overlapping), [extra.fd], ack=True) == 1
        datapath.calls.clear()
        assert fe.request(R.VHOST_USER_REM_MEM_REG, MemRegMsg(extra.spec()), ack=True) == 0
        fe.sync()
        assert len(dev.memory) == 1 and all(vq.ready for vq in dev.vrings)
        assert datapath.calls == [("stop", 0, 0), ("stop", 0, 1), ("start", 0, 0), ("start", 0, 1)]
        # removing the rings' region leaves them unusable
        assert fe.request(R.VHOST_USER_REM_MEM_REG, MemRegMsg(r0.spec()), ack=True) == 0
        fe.sync()
        assert not any(vq.ready for vq in dev.vrings)
    finally:
        fe.close()
        extra.close()


def test_mem_slot_requests_need_the_protocol_feature(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    r0 = guest.regions[0]
    assert fe.request(R.VHOST_USER_ADD_MEM_REG, MemRegMsg(r0.spec()), [r0.fd], ack=True) == 1
    assert "CONFIGURE_MEM_SLOTS" in lib.get_device(0).last_error


def test_avail_entries_reads_guest_avail_idx(lib, server, connect, guest, datapath):
    fe, dev = _running(lib, connect, guest)
    assert lib.avail_entries(0, 1) == 0
    fe.vrings[1].avail_idx = 17
    assert lib.avail_entries(0, 1) == 17
    datapath.progress[1] = dict(last_avail_idx=10)
    fe.get_vring_base(1)
    assert lib.avail_entries(0, 1) == 0  # addresses forgotten after GET_VRING_BASE


def test_used_idx_mismatch_resumes_from_the_used_ring(lib, server, connect, guest):
    """Reconnect without inflight tracking: last_used_idx is taken from the ring (DPDK)."""
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    fe.set_mem_table()
    vr = fe.alloc_vring(0, 256)
    vr.used.view(np.uint16)[1] = 42
    fe.setup_vring(0, 256, base=40)
    fe.sync()
    vq = lib.get_device(0).vrings[0]
    assert (vq.last_avail_idx, vq.last_used_idx) == (42, 42)


def test_backend_req_fd_makes_a_channel_and_a_new_one_replaces_it(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES)
    assert fe.open_backend_channel(ack=True) == 0
    dev = lib.get_device(0)
    first = dev.backend_channel
    assert first is not None and not first.closed
    assert fe.open_backend_channel(ack=True) == 0
    assert first.closed and dev.backend_channel is not first and not dev.backend_channel.closed


def test_reset_device_keeps_owner_and_protocol_features(lib, server, connect, guest, recorder):
    fe, dev = _running(lib, connect, guest)
    assert fe.request(R.VHOST_USER_RESET_DEVICE, ack=True) == 0
    assert ("destroy_device", 0) in recorder.events
    assert dev.owner and dev.protocol_features == fe.protocol_features
    assert dev.memory is None and dev.features == 0 and not dev.running


def test_reset_device_needs_the_protocol_feature(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES, protocol_features=REPLY_ACK)
    assert fe.request(R.VHOST_USER_RESET_DEVICE, ack=True) == 1


def test_config_space_access_rules(lib, server, sock_path, connect, guest):
    from dataplane.vhost_user import Config

    _enable_config(lib, sock_path)
    fe, dev = _running(lib, connect, guest)
    assert fe.get_config(250, 10) == b""  # beyond the 256-byte space: the spec's empty error reply
    assert dev.stats["errors:VHOST_USER_GET_CONFIG"] == 1
    mac = bytes.fromhex("020000abcdef")
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(0, 6, Config.WRITABLE_FIELDS, mac), ack=True) == 0
    assert dev.device_state.mac == mac and fe.get_config(0, 6) == mac
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(10, 2, Config.WRITABLE_FIELDS, b"\x00\x10"), ack=True) == 1
    assert "read-only" in dev.last_error
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(10, 2, Config.MIGRATION, b"\xdc\x05"), ack=True) == 0
    assert dev.device_state.mtu == 1500


def test_no_control_queue_and_the_withdrawn_net_bits_are_refused_by_name(lib, server, sock_path, connect, guest):
    """CTRL_VQ, CTRL_RX, GSO, HOST_UFO and GUEST_UFO are not implemented: never offered, a
    SET_FEATURES asking for them is refused naming them, there is no control vring, and the
    library refuses to offer them, saying why."""
    lib.driver_set_max_queue_num(sock_path, 1)
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES, protocol_features=REPLY_ACK)
    offered = fe.get_features()
    for f in (VF.VIRTIO_NET_F_CTRL_VQ, VF.VIRTIO_NET_F_CTRL_RX, VF.VIRTIO_NET_F_GSO, VF.VIRTIO_NET_F_HOST_UFO,
              VF.VIRTIO_NET_F_GUEST_UFO):
        assert not offered & bit(f), f.name
        assert fe.set_features(BASE_FEATURES | bit(f), ack=True) == 1
        assert f"features never offered: {f.name}" in lib.get_device(0).last_error
        with pytest.raises(VhostNotSupported, match=f"does not implement {f.name} "):
            lib.driver_enable_features(sock_path, bit(f))
        with pytest.raises(VhostNotSupported, match=f.name):
            lib.driver_set_features(sock_path, BASE_FEATURES | bit(f))
    with pytest.raises(VhostNotSupported, match="CTRL_VQ \\(no control virtqueue"):
        lib.driver_enable_features(sock_path, bit(VF.VIRTIO_NET_F_CTRL_VQ))
    assert fe.set_features(BASE_FEATURES, ack=True) == 0
    fe.set_mem_table()
    assert fe.set_vring_num(1, 64, ack=True) == 0
    assert fe.set_vring_num(2, 64, ack=True) == 1  # a 1-pair device has vrings 0 and 1 only
    assert "vring index 2 out of range (device has 2 vrings)" in lib.get_device(0).last_error


# -- the message table -----------------------------------------------------------------


def test_the_message_table_says_which_requests_the_back_end_serves():
    from dataplane.vhost.device import REQUEST_HANDLERS
    from dataplane.vhost.net import NetDevice
    from dataplane.vhost_user.messages import FRONTEND_REQUESTS, Handler

    rows = FRONTEND_REQUESTS.values()
    assert set(REQUEST_HANDLERS) == {s.number for s in rows if s.handler is Handler.BACKEND}
    assert set(NetDevice().requests()) == {s.number for s in rows if s.handler is Handler.DEVICE}
    assert all(s.why for s in rows if s.handler is Handler.UNSUPPORTED)


def test_gated_requests_need_their_protocol_feature(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE_FEATURES, protocol_features=REPLY_ACK)
    dev = lib.get_device(0)
    assert fe.net_set_mtu(1500, ack=True) == 1
    assert dev.last_error == "VHOST_USER_NET_SET_MTU: MTU protocol feature not negotiated"
    assert fe.set_status(S.ACKNOWLEDGE, ack=True) == 1
    assert dev.last_error == "VHOST_USER_SET_STATUS: STATUS protocol feature not negotiated"
    assert dev.status == 0 and dev.device_state.mtu == 0
