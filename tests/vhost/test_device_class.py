"""The state machine is device-generic: a device class other than net gets exactly what it declares."""

from __future__ import annotations

import struct

import pytest

from dataplane.vhost.device import GENERIC_PROTOCOL_FEATURES, RequestError
from dataplane.vhost.device_class import DeviceClass
from dataplane.vhost.library import VhostNotSupported
from dataplane.vhost_user import (
    Config,
    VhostUserProtocolFeature as PF,
    VhostUserRequest as R,
    VirtioDeviceStatus as S,
    VirtioFeature as VF,
    bit,
)

V1 = bit(VF.VIRTIO_F_VERSION_1)
PROTO = bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
CONFIG = bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
MQ = bit(PF.VHOST_USER_PROTOCOL_F_MQ)
DRIVER_OK = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK


class CounterDevice(DeviceClass):
    """A made-up device: one u32 register in its config space, writable by the driver; no requests of its own."""

    name = "counter"
    device_type = 42
    protocol_features = CONFIG | MQ
    max_queues = 4

    def offered_features(self, flags):
        return V1 | PROTO

    def new_state(self):
        return {"register": 7}

    def config_space(self, dev):
        return struct.pack("<I", dev.device_state["register"])

    def set_config(self, dev, offset, data, flags):
        if offset != 0:
            raise RequestError("only the whole register is writable")
        dev.device_state["register"] = struct.unpack("<I", data)[0]


@pytest.fixture
def counter(lib, sock_path, recorder, datapath):
    device = CounterDevice(datapath)
    lib.driver_register(sock_path, 0, device=device)
    lib.driver_callback_register(sock_path, recorder)
    lib.driver_start(sock_path)
    return device


def test_offers_are_the_device_class_offers(lib, sock_path, counter, connect, guest):
    assert lib.driver_get_features(sock_path) == V1 | PROTO
    assert lib.driver_get_protocol_features(sock_path) == (
        GENERIC_PROTOCOL_FEATURES | CONFIG | MQ
    ) & ~bit(PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS)
    with pytest.raises(VhostNotSupported, match="RARP"):
        lib.driver_set_protocol_features(sock_path, bit(PF.VHOST_USER_PROTOCOL_F_RARP))
    with pytest.raises(VhostNotSupported, match="no MAC"):
        lib.driver_set_mac(sock_path, "02:00:00:00:00:01")
    fe = connect(guest)
    fe.negotiate(V1 | PROTO)
    assert fe.get_queue_num() == 4
    lib.driver_set_max_queue_num(sock_path, 2)
    assert fe.get_queue_num() == 2


def test_one_ready_vring_starts_the_device_and_its_data_path(lib, counter, connect, guest, recorder, datapath):
    fe = connect(guest)
    fe.negotiate(V1 | PROTO)
    fe.set_mem_table()
    fe.setup_vring(0, 64)
    fe.set_status(DRIVER_OK)
    recorder.wait(("new_device", 0))
    assert datapath.calls == [("start", 0, 0)]
    assert fe.set_vring_num(3, 64, ack=True) == 0  # max_vrings: the 4 queues, not pairs
    assert fe.set_vring_num(4, 64, ack=True) == 1
    assert "vring index 4 out of range" in lib.get_device(0).last_error


def test_config_space_and_device_requests(lib, counter, connect, guest):
    fe = connect(guest)
    fe.negotiate(V1 | PROTO)
    dev = lib.get_device(0)
    assert fe.get_config(0, 4) == struct.pack("<I", 7)
    assert fe.get_config(0, 8) == struct.pack("<I", 7) + bytes(4)  # zeros beyond the space
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(0, 4, Config.WRITABLE_FIELDS, struct.pack("<I", 99)), ack=True) == 0
    assert dev.device_state == {"register": 99}
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(2, 2, Config.WRITABLE_FIELDS, b"\0\0"), ack=True) == 1
    assert dev.last_error.endswith("only the whole register is writable")
    assert fe.request(R.VHOST_USER_SET_CONFIG, Config(2, 4, Config.WRITABLE_FIELDS, bytes(4)), ack=True) == 1
    assert "beyond the 4-byte config space" in dev.last_error
    # net's requests are not this device's
    assert fe.net_set_mtu(1500, ack=True) == 1
    assert "VHOST_USER_NET_SET_MTU" in dev.last_error and "not supported" in dev.last_error
    # a reset gives a fresh per-connection state
    assert fe.request(R.VHOST_USER_RESET_DEVICE, ack=True) == 0
    assert dev.device_state == {"register": 7}


def test_a_device_without_config_space_refuses_config_requests(lib, sock_path, connect, guest):
    lib.driver_register(sock_path, 0, device=DeviceClass())
    lib.driver_start(sock_path)
    lib.driver_set_features(sock_path, V1 | PROTO)
    fe = connect(guest)
    fe.negotiate(V1 | PROTO, protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))
    assert fe.request(R.VHOST_USER_GET_CONFIG, Config(0, 4, 0, bytes(4)), ack=True) == 1
    assert "CONFIG protocol feature not negotiated" in lib.get_device(0).last_error


def test_blk_bits_are_named_as_blk_bits_in_logs_and_errors(lib, sock_path, connect, guest):
    """Bits 0-23 are the device's: a blk socket logs and refuses them by virtio-blk names
    (bit 11 is CONFIG_WCE there, not net's HOST_TSO4)."""
    import structlog

    from dataplane.vhost.blk.device import BlkDevice
    from dataplane.vhost.blk.spec import VirtioBlkFeature as BF

    lib.driver_register(sock_path, 0, device=BlkDevice(sectors=8))
    lib.driver_start(sock_path)
    fe = connect(guest)
    wce = bit(BF.VIRTIO_BLK_F_CONFIG_WCE)
    with pytest.raises(VhostNotSupported, match=r"does not implement VIRTIO_BLK_F_CONFIG_WCE \(the cache mode"):
        lib.driver_enable_features(sock_path, wce)
    with structlog.testing.capture_logs() as logs:
        fe.negotiate(V1 | PROTO | bit(BF.VIRTIO_BLK_F_FLUSH), protocol_features=bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK))
        assert fe.set_features(V1 | PROTO | wce, ack=True) == 1
    (neg,) = [e for e in logs if e["event"] == "negotiated virtio features"]
    assert neg["names"] == "VIRTIO_BLK_F_FLUSH|VHOST_USER_F_PROTOCOL_FEATURES|VIRTIO_F_VERSION_1"
    dev = lib.get_device(0)
    assert "features never offered: VIRTIO_BLK_F_CONFIG_WCE" in dev.last_error and "NET" not in dev.last_error
