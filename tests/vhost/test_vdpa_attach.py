"""The back-end with a vDPA device attached: the feature AND, and DPDK's ops called where vhost_user.c calls them.

The driver is :class:`~dataplane.testing.vdpa_driver.RecordingVdpaOps` (it records the ops);
the front-end is the scripted one.  Real devices behind the same hooks are tested in tests/vdpa
and with guests.
"""

from __future__ import annotations

import os

import pytest

from dataplane.testing.vdpa_driver import RecordingVdpaOps
from dataplane.vdpa.device import VDPA_DEVICE_TYPE_BLK, VdpaDevice, register_device, unregister_device
from dataplane.vhost.library import VhostBusy
from dataplane.vhost.vdpa import VDPA_SOCKET_FEATURES
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit
from dataplane.vhost_user.messages import VhostUserRequest as R

NET_FEATURES = (bit(VF.VIRTIO_NET_F_MAC) | bit(VF.VIRTIO_NET_F_STATUS) | bit(VF.VIRTIO_NET_F_MTU)
                | bit(VF.VIRTIO_NET_F_CTRL_VQ) | bit(VF.VIRTIO_F_ANY_LAYOUT) | bit(VF.VIRTIO_F_VERSION_1)
                | bit(VF.VIRTIO_F_ACCESS_PLATFORM) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES) | bit(VF.VHOST_F_LOG_ALL))
PROTOCOL = (bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_MQ)
            | bit(PF.VHOST_USER_PROTOCOL_F_CONFIG) | bit(PF.VHOST_USER_PROTOCOL_F_STATUS)
            | bit(PF.VHOST_USER_PROTOCOL_F_CRYPTO_SESSION))


@pytest.fixture
def vdpa(lib, server):
    """A recording net vDPA device registered and attached to the server socket; unregistered after."""
    made = []

    def attach(**kw):
        kw.setdefault("features", NET_FEATURES)
        kw.setdefault("protocol_features", PROTOCOL)
        ops = RecordingVdpaOps(lib, **kw)
        vdev = register_device(f"rec{len(made)}-{os.getpid()}", ops, driver="recording")
        made.append(vdev)
        lib.driver_attach_vdpa_device(server, vdev)
        return ops, vdev

    yield attach
    for vdev in made:
        unregister_device(vdev)


def _bring_up(fe, features=None, protocol=None, nvrings=2):
    fe.start(num_queues=1, queue_size=64, features=features, protocol_features=protocol, nvrings=nvrings)


def test_attach_ands_features_and_protocol_features_and_caps_queue_pairs(lib, server, vdpa, connect, guest):
    ops, vdev = vdpa(queue_num=200)
    assert lib.driver_get_vdpa_device(server) is vdev
    fe = connect(guest)
    fe.set_owner()
    offered = fe.get_features()
    assert offered == NET_FEATURES & VDPA_SOCKET_FEATURES
    assert not offered & bit(VF.VIRTIO_F_ACCESS_PLATFORM)  # no IOTLB here: never offered
    assert offered & bit(VF.VIRTIO_NET_F_CTRL_VQ)  # the device implements its own control queue
    poffered = fe.get_protocol_features()
    assert poffered & PROTOCOL == poffered
    assert not poffered & bit(PF.VHOST_USER_PROTOCOL_F_CRYPTO_SESSION)  # the back-end does not implement it
    assert not poffered & bit(PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)  # the device does not offer it
    assert poffered & bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
    fe.set_protocol_features(poffered)
    assert fe.get_queue_num() == 0x80


def test_set_features_with_a_bit_the_device_lacks_is_refused(lib, server, vdpa, connect, guest):
    ops, _ = vdpa()
    fe = connect(guest)
    fe.set_owner()
    fe.get_features()
    fe.set_protocol_features(fe.get_protocol_features())
    extra = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
    assert fe.set_features(NET_FEATURES & VDPA_SOCKET_FEATURES | extra, ack=True) == 1
    assert "set_features" not in ops.names()
    assert fe.set_features(NET_FEATURES & VDPA_SOCKET_FEATURES, ack=True) == 0
    ops.wait(("set_features", 0))
    assert ops.negotiated == [NET_FEATURES & VDPA_SOCKET_FEATURES]


def test_set_protocol_features_beyond_the_and_is_refused(lib, server, vdpa, connect, guest):
    vdpa(protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))
    fe = connect(guest)
    fe.set_owner()
    assert fe.get_protocol_features() == bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
    fe.send(R.VHOST_USER_SET_PROTOCOL_FEATURES, P.U64(bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_MQ)))
    assert fe.wait_closed()  # refused without NEED_REPLY: the connection is closed, as DPDK does


def test_ops_follow_dpdk_order_conf_when_ready_close_on_get_vring_base(lib, server, vdpa, connect, guest, datapath, recorder):
    ops, _ = vdpa()
    fe = connect(guest)
    _bring_up(fe)
    ops.wait(("dev_conf", 0))
    names = ops.names()
    assert names == ["set_features", "set_vring_state", "set_vring_state", "dev_conf"], ops.calls
    assert ops.calls[1:3] == [("set_vring_state", 0, 0, 1), ("set_vring_state", 0, 1, 1)]
    # STATUS was negotiated: the device is configured only once DRIVER_OK came, after the rings
    assert ("new_device", 0) in recorder.events
    assert not datapath.calls, "a vDPA device's queues were handed to a data path"
    ops.consumed = {0: (7, 7), 1: (3, 3)}  # what the "hardware" reached
    assert fe.get_vring_base(0) == 7
    ops.wait(("set_vring_state", 0, 0, 0))  # readiness is recomputed after the reply
    assert ops.calls[4:] == [("dev_close", 0), ("set_vring_state", 0, 0, 0)]
    assert fe.get_vring_base(1) == 3
    assert ops.names().count("dev_close") == 1  # the device was already closed


def test_dev_conf_failure_is_retried_after_the_next_message(lib, server, vdpa, connect, guest):
    ops, _ = vdpa(dev_conf_result=-1)
    fe = connect(guest)
    _bring_up(fe)
    ops.wait(("dev_conf", 0))
    ops.dev_conf_result = 0
    n = ops.names().count("dev_conf")
    fe.get_features()
    fe.sync()
    assert ops.names().count("dev_conf") == n + 1
    fe.get_features()
    fe.sync()
    assert ops.names().count("dev_conf") == n + 1  # configured now: not again


def test_changed_mem_table_closes_and_reconfigures_an_identical_one_does_nothing(lib, server, vdpa, connect, guest):
    ops, _ = vdpa()
    fe = connect(guest)
    _bring_up(fe)
    ops.wait(("dev_conf", 0))
    before = len(ops.calls)
    fe.set_mem_table()
    fe.sync()
    assert len(ops.calls) == before  # "memory regions not changed"
    table = guest.table()
    # the same region, smaller (the rings sit at its start): a changed table, rings still translatable
    moved = [P.MemoryRegion(r.guest_phys_addr, r.memory_size // 2, r.userspace_addr, r.mmap_offset) for r in table]
    fe.set_mem_table(moved, guest.fds())
    fe.sync()
    assert ops.names()[before:] == ["dev_close", "dev_conf"], ops.calls[before:]


def test_log_all_toggle_while_running_calls_set_features_an_unchanged_set_does_not(lib, server, vdpa, connect, guest):
    ops, _ = vdpa()
    fe = connect(guest)
    _bring_up(fe)
    ops.wait(("dev_conf", 0))
    base = fe.features
    assert fe.set_features(base | bit(VF.VHOST_F_LOG_ALL), ack=True) == 0
    assert fe.set_features(base | bit(VF.VHOST_F_LOG_ALL), ack=True) == 0
    assert fe.set_features(base, ack=True) == 0
    assert ops.negotiated == [base, base | bit(VF.VHOST_F_LOG_ALL), base]
    assert fe.set_features(base ^ bit(VF.VIRTIO_NET_F_MTU), ack=True) == 1  # only LOG_ALL may change while running
    assert len(ops.negotiated) == 3
    assert "dev_close" not in ops.names()


def test_disconnect_closes_then_cleans_up(lib, server, vdpa, connect, guest, recorder):
    ops, _ = vdpa()
    fe = connect(guest)
    _bring_up(fe)
    ops.wait(("dev_conf", 0))
    fe.close()
    ops.wait(("dev_cleanup", 0))
    tail = ops.names()[-2:]
    assert tail == ["dev_close", "dev_cleanup"], ops.calls


def test_get_config_is_the_devices_and_a_data_path_is_refused(lib, server, vdpa, connect, guest):
    ops, _ = vdpa(config=bytes(range(1, 13)))
    with pytest.raises(VhostBusy):
        lib.driver_datapath_register(server, object())
    fe = connect(guest)
    fe.negotiate()
    assert fe.get_config(0, 12) == bytes(range(1, 13))


def test_blk_device_is_configured_at_the_last_vrings_call(lib, server, vdpa, connect, guest):
    blk = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
    ops, vdev = vdpa(features=blk, protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_MQ),
                     queue_num=2, dev_type=VDPA_DEVICE_TYPE_BLK)
    assert vdev.type == VDPA_DEVICE_TYPE_BLK
    fe = connect(guest)
    fe.negotiate()
    fe.set_mem_table()
    fe.setup_vring(0, 64, call=False)
    fe.setup_vring(1, 64, call=False)
    fe.set_vring_call(0, fe.vrings[0].call_fd)  # vring 0 is ready: a blk device is "ready", but its last vring is 1
    fe.sync()
    assert "dev_conf" not in ops.names()
    fe.set_vring_call(1, fe.vrings[1].call_fd)
    ops.wait(("dev_conf", 0))


def test_blk_device_in_qemus_order_is_configured_when_the_last_ring_is_enabled(lib, server, vdpa, connect, guest):
    """QEMU sets every ring's kick and call fds, then enables the rings (then DRIVER_OK with STATUS)."""
    blk = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
    ops, _ = vdpa(features=blk, protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK) | bit(PF.VHOST_USER_PROTOCOL_F_MQ),
                  queue_num=2, dev_type=VDPA_DEVICE_TYPE_BLK)
    fe = connect(guest)
    fe.negotiate()
    fe.set_mem_table()
    fe.setup_vring(0, 64, enable=False)
    fe.setup_vring(1, 64, enable=False)
    fe.set_vring_enable(0, True)
    fe.sync()
    assert "dev_conf" not in ops.names()  # vring 1 is not ready yet
    fe.set_vring_enable(1, True)
    ops.wait(("dev_conf", 0))
    assert ops.names().count("dev_conf") == 1


def test_detach_restores_the_socket_offer(lib, server, vdpa, connect, guest):
    offer = lib.driver_get_features(server)
    vdpa()
    assert lib.driver_get_features(server) != offer
    lib.driver_detach_vdpa_device(server)
    assert lib.driver_get_vdpa_device(server) is None
    assert lib.driver_get_features(server) == offer


CHANNEL = (bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ) | bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD)
           | bit(PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER))


def test_host_notifier_ctrl_maps_each_vrings_doorbell_page_through_the_backend_channel(lib, server, vdpa, connect, guest):
    page = os.memfd_create("doorbells")
    os.ftruncate(page, 2 * 4096)
    try:
        ops, _ = vdpa(protocol_features=PROTOCOL | CHANNEL, notify_fd=page)
        fe = connect(guest)
        _bring_up(fe)
        assert fe.open_backend_channel() == 0
        ops.wait(("dev_conf", 0))
        futures = lib.host_notifier_ctrl(0, 0xFFFF, True)
        assert len(futures) == 2
        for q in range(2):
            spec, area, msg = fe.backend_recv(5)
            assert spec.name == "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG"
            assert (area.u64, area.size, area.offset) == (q, 4096, q * 4096) and msg.need_reply
            got = msg.take_fd(0)
            assert os.path.samestat(os.fstat(got), os.fstat(page))
            os.close(got)
            fe.backend_ack(msg, 0)
        assert [f.result(5) for f in futures] == [0, 0]
        futures = lib.host_notifier_ctrl(0, 1, False)
        spec, area, msg = fe.backend_recv(5)
        assert area.u64 == 1 | 0x100 and msg.fds == []
        fe.backend_ack(msg, 0)
        assert futures[0].result(5) == 0
        with pytest.raises(Exception, match="no vring 5"):
            lib.host_notifier_ctrl(0, 5, True)
    finally:
        os.close(page)


def test_host_notifier_ctrl_needs_the_protocol_features(lib, server, vdpa, connect, guest):
    vdpa(protocol_features=PROTOCOL)  # no back-end channel features
    fe = connect(guest)
    _bring_up(fe)
    with pytest.raises(Exception, match="BACKEND_REQ"):
        lib.host_notifier_ctrl(0, 0, True)
