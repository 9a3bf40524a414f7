"""The public API: registration flags, feature offers, per-vid queries."""

from __future__ import annotations

import pytest

from dataplane.vhost import library as vhost
from dataplane.vhost.library import (
    DEFAULT_FEATURES,
    DEFAULT_PROTOCOL_FEATURES,
    VhostBusy,
    VhostError,
    VhostNoDevice,
    VhostNotSupported,
)
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

BASE = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)


def test_flag_values_are_dpdk_22_11():
    assert (vhost.RTE_VHOST_USER_CLIENT, vhost.RTE_VHOST_USER_NO_RECONNECT) == (1 << 0, 1 << 1)
    assert (vhost.RTE_VHOST_USER_IOMMU_SUPPORT, vhost.RTE_VHOST_USER_POSTCOPY_SUPPORT) == (1 << 3, 1 << 4)
    assert (vhost.RTE_VHOST_USER_EXTBUF_SUPPORT, vhost.RTE_VHOST_USER_LINEARBUF_SUPPORT) == (1 << 5, 1 << 6)
    assert vhost.RTE_VHOST_USER_ASYNC_COPY == 1 << 7


@pytest.mark.parametrize(
    "flag,words",
    [
        (vhost.RTE_VHOST_USER_IOMMU_SUPPORT, "IOMMU_SUPPORT"),
        (vhost.RTE_VHOST_USER_ASYNC_COPY, "ASYNC_COPY"),
    ],
)
def test_unimplemented_flags_are_refused(lib, sock_path, flag, words):
    with pytest.raises(VhostNotSupported, match=words):
        lib.driver_register(sock_path, vhost.CLIENT | flag)
    assert lib.driver_paths() == []


def test_unknown_flags_and_bad_paths_are_refused(lib, sock_path):
    with pytest.raises(VhostError, match="unknown registration flag bits 0x4"):
        lib.driver_register(sock_path, vhost.RTE_VHOST_USER_RESERVED_1)
    with pytest.raises(VhostError, match="not a valid unix socket path"):
        lib.driver_register("/tmp/" + "x" * 120, 0)


def test_feature_offer_api(lib, sock_path):
    lib.driver_register(sock_path, vhost.EXTBUF_SUPPORT | vhost.LINEARBUF_SUPPORT)
    assert lib.driver_get_features(sock_path) == DEFAULT_FEATURES
    assert not DEFAULT_FEATURES & bit(VF.VIRTIO_F_ACCESS_PLATFORM)
    mrg = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
    lib.driver_disable_features(sock_path, mrg)
    assert not lib.driver_get_features(sock_path) & mrg
    lib.driver_enable_features(sock_path, mrg)
    assert lib.driver_get_features(sock_path) == DEFAULT_FEATURES
    lib.driver_set_features(sock_path, BASE)
    assert lib.driver_get_features(sock_path) == BASE
    with pytest.raises(VhostNotSupported, match="cannot enable unsupported features VIRTIO_NET_F_MRG_RXBUF"):
        lib.driver_enable_features(sock_path, mrg)
    with pytest.raises(VhostNotSupported, match="ACCESS_PLATFORM"):
        lib.driver_set_features(sock_path, BASE | bit(VF.VIRTIO_F_ACCESS_PLATFORM))


def test_linearbuf_without_extbuf_withdraws_segmentation_offloads(lib, sock_path):
    """HOST_TSO4/6 and HOST_ECN with them (net.HOST_TSO_FEATURES) go; the rest of the offer stays."""
    from dataplane.vhost.net import HOST_TSO_FEATURES

    lib.driver_register(sock_path, vhost.LINEARBUF_SUPPORT)
    offered = lib.driver_get_features(sock_path)
    for f in (VF.VIRTIO_NET_F_HOST_TSO4, VF.VIRTIO_NET_F_HOST_TSO6, VF.VIRTIO_NET_F_HOST_ECN):
        assert not offered & bit(f) and HOST_TSO_FEATURES & bit(f)
    assert offered == DEFAULT_FEATURES & ~HOST_TSO_FEATURES


def test_protocol_feature_offer(lib, sock_path):
    lib.driver_register(sock_path, 0)
    offered = lib.driver_get_protocol_features(sock_path)
    assert offered == DEFAULT_PROTOCOL_FEATURES
    for f in ("MQ", "LOG_SHMFD", "RARP", "REPLY_ACK", "MTU", "BACKEND_REQ", "STATUS"):
        assert offered & bit(PF[f"VHOST_USER_PROTOCOL_F_{f}"]), f
    # not implemented in this issue: never advertised, and refused when asked for
    for f in ("PAGEFAULT", "CRYPTO_SESSION", "INBAND_NOTIFICATIONS"):
        b = bit(PF[f"VHOST_USER_PROTOCOL_F_{f}"])
        assert not offered & b, f
        with pytest.raises(VhostNotSupported, match=f):
            lib.driver_set_protocol_features(sock_path, offered | b)
    lib.driver_set_protocol_features(sock_path, bit(PF.VHOST_USER_PROTOCOL_F_MQ))
    assert lib.driver_get_protocol_features(sock_path) == bit(PF.VHOST_USER_PROTOCOL_F_MQ)


#: The back-end channel's bits and the tests that exercise each (offered means implemented).
CHANNEL_BITS = {
    "REPLY_ACK": "tests/vhost/test_device.py (every NEED_REPLY), test_backend_channel.py (answers to back-end requests)",
    "BACKEND_REQ": "test_backend_channel.py; test_blk_backend.py::test_resize_*; guests/test_blk_guest.py::test_disk_grows_*",
    "BACKEND_SEND_FD": "test_backend_channel.py::test_host_notifier_*; guests/test_host_notifier.py",
    "HOST_NOTIFIER": "test_backend_channel.py::test_host_notifier_*; guests/test_host_notifier.py (QEMU maps the page)",
    "CONFIG": "test_device.py::test_config_space_access_rules (net, on request); blk: test_blk_backend.py, the guest tests",
}


@pytest.mark.parametrize("device,offers", [
    ("net", {"REPLY_ACK", "BACKEND_REQ", "BACKEND_SEND_FD", "HOST_NOTIFIER"}),
    ("blk", {"REPLY_ACK", "BACKEND_REQ", "BACKEND_SEND_FD", "HOST_NOTIFIER", "CONFIG"}),
])
def test_channel_and_config_bits_per_device_class(lib, sock_path, device, offers):
    """net serves a config space, but QEMU's virtio-net never reads it (and warns about the offer):
    CONFIG is implemented there and offered only on request.  QEMU's vhost-user-blk needs it."""
    from dataplane.vhost.blk.device import BlkDevice

    cls = BlkDevice(sectors=8) if device == "blk" else None
    lib.driver_register(sock_path, 0, device=cls)
    offered = lib.driver_get_protocol_features(sock_path)
    assert {f for f in CHANNEL_BITS if offered & bit(PF[f"VHOST_USER_PROTOCOL_F_{f}"])} == offers
    config = bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
    lib.driver_set_protocol_features(sock_path, offered | config)  # implemented: may be offered
    assert lib.driver_get_protocol_features(sock_path) & config


def test_queue_num(lib, server, sock_path, connect, guest):
    assert lib.driver_get_queue_num(sock_path) == 128
    lib.driver_set_max_queue_num(sock_path, 2)
    with pytest.raises(VhostError):
        lib.driver_set_max_queue_num(sock_path, 129)
    fe = connect(guest)
    fe.negotiate(BASE)
    assert fe.get_queue_num() == 2


def test_device_queries(lib, server, sock_path, connect, guest, recorder):
    with pytest.raises(VhostNoDevice):
        lib.get_negotiated_features(0)
    fe = connect(guest)
    fe.start(features=BASE)
    recorder.wait(("new_device", 0))
    assert lib.get_negotiated_features(0) == BASE
    assert lib.get_negotiated_protocol_features(0) == DEFAULT_PROTOCOL_FEATURES
    assert lib.get_vring_num(0) == 2
    assert lib.get_ifname(0) == sock_path
    vq = lib.get_vhost_vring(0, 1)
    assert vq.size == 256 and vq.desc_gpa == fe.vrings[1].desc_gpa
    assert vq.avail_gpa == fe.vrings[1].avail_gpa and vq.used_gpa == fe.vrings[1].used_gpa
    assert lib.get_device(0).region_table.shape == (1, 3)
    with pytest.raises(VhostError, match="no vring 5"):
        lib.get_vring_base(0, 5)
    with pytest.raises(VhostBusy, match="started"):
        lib.set_vring_base(0, 0, 1, 1)
    fe.get_vring_base(0)  # stops the device
    fe.sync()
    lib.set_vring_base(0, 0, 77, 70)
    assert lib.get_vring_base(0, 0) == (77, 70)
    stats = lib.stats(0)
    assert stats["messages"] > 10 and stats.get("errors", 0) == 0


def test_module_level_api_uses_the_process_library(sock_path):
    vhost.driver_register(sock_path, 0)
    try:
        assert sock_path in vhost.get_library().driver_paths()
        assert vhost.driver_get_features(sock_path) == DEFAULT_FEATURES
        vhost.driver_start(sock_path)
    finally:
        vhost.driver_unregister(sock_path)
    assert sock_path not in vhost.get_library().driver_paths()
    vhost.get_library().close()  # stops its event thread; the library stays usable (a new thread on demand)
    assert vhost.driver_register.__doc__ == vhost.VhostLibrary.driver_register.__doc__
