"""net_virtio_user devargs (seed 003): defaults, values, and clear errors for impossible combinations."""

from __future__ import annotations

import os

import pytest

from structlog.testing import capture_logs

from dataplane.virtio.devargs import DevargsError, parse_virtio_user_devargs
from dataplane.vhost_user.features import VirtioFeature as VF
from dataplane.virtio.paths import select_paths


def test_defaults_are_the_seed_s():
    a = parse_virtio_user_devargs("net_virtio_user0,path=/tmp/x.sock")
    assert (a.path, a.cq, a.queue_size, a.queues, a.server) == ("/tmp/x.sock", False, 256, 1, False)
    assert (a.mrg_rxbuf, a.in_order, a.packed_vq, a.vectorized, a.speed) == (True, True, False, False, 10000)
    assert a.iface is None
    assert len(a.mac) == 6 and a.mac[0] & 2 and not a.mac[0] & 1  # random, locally administered unicast


def test_every_key_parses():
    a = parse_virtio_user_devargs(
        "net_virtio_user3,path=/tmp/s,mac=00:11:22:33:44:55,queue_size=1024,queues=4,server=1,"
        "mrg_rxbuf=0,in_order=0,packed_vq=1,speed=25000"
    )
    assert a.name == "net_virtio_user3" and a.mac_str == "00:11:22:33:44:55"
    assert (a.queue_size, a.queues, a.server, a.mrg_rxbuf, a.in_order, a.packed_vq, a.speed) == (1024, 4, True, False, False, True, 25000)
    assert parse_virtio_user_devargs("net_virtio_user0,path=/tmp/s,vectorized=1,mrg_rxbuf=0").vectorized
    assert parse_virtio_user_devargs("net_virtio_user0,path=/tmp/s,cq=1,queues=2").cq


@pytest.mark.parametrize(
    "extra,key",
    [
        ("queues=0", "queues"),
        ("queues=129", "queues"),
        ("queues=two", "queues"),
        ("queue_size=100", "queue_size"),
        ("queue_size=65536", "queue_size"),
        ("server=2", "server"),
        ("mrg_rxbuf=yes", "mrg_rxbuf"),
        ("in_order=", "in_order"),
        ("packed_vq=-1", "packed_vq"),
        ("speed=12345", "speed"),
        ("mac=01:00:5e:00:00:01", "mac"),
        ("mac=00:11:22:33:44", "mac"),
        ("mac=zz:11:22:33:44:55", "mac"),
        ("cq=3", "cq"),
        ("bogus=1", "bogus"),
    ],
)
def test_bad_values_name_the_key(extra, key):
    with pytest.raises(DevargsError) as ei:
        parse_virtio_user_devargs(f"net_virtio_user0,path=/tmp/s,{extra}")
    assert ei.value.key == key
    assert key in str(ei.value)


def test_packed_vectorized_falls_back_to_the_packed_scalar_path_with_a_log_line():
    """DPDK 22.11 accepts packed_vq=1,vectorized=1 and, on a CPU without AVX-512, uses the scalar path."""
    with capture_logs() as logs:
        a = parse_virtio_user_devargs("net_virtio_user0,path=/tmp/s,packed_vq=1,vectorized=1")
    assert a.packed_vq and a.vectorized
    fallback = [e for e in logs if "vectorized" in e["event"]]
    assert len(fallback) == 1 and fallback[0]["log_level"] == "info"
    assert fallback[0]["rx"] == "virtio_recv_pkts_packed" and fallback[0]["port"] == "net_virtio_user0"
    features = (1 << int(VF.VIRTIO_F_RING_PACKED)) | (1 << int(VF.VIRTIO_F_IN_ORDER))
    paths = select_paths(features, a.vectorized)
    assert (paths.rx, paths.tx, paths.packed) == ("virtio_recv_pkts_packed", "virtio_xmit_pkts_packed", True)


def test_path_is_mandatory_and_the_name_is_checked():
    with pytest.raises(DevargsError, match="path"):
        parse_virtio_user_devargs("net_virtio_user0,queues=1")
    with pytest.raises(DevargsError, match="net_virtio_user"):
        parse_virtio_user_devargs("net_vhost0,path=/tmp/s")
    with pytest.raises(DevargsError, match="duplicate"):
        parse_virtio_user_devargs("net_virtio_user0,path=/tmp/s,path=/tmp/t")


def test_iface_gives_a_clear_error():
    with pytest.raises(DevargsError) as ei:
        parse_virtio_user_devargs("net_virtio_user0,path=/dev/vhost-net,iface=tap0")
    assert ei.value.key == "iface"
    if os.path.exists("/dev/vhost-net"):
        assert "not implemented" in str(ei.value)
    else:
        assert "/dev/vhost-net does not exist" in str(ei.value)
    with pytest.raises(DevargsError, match="server=1"):
        parse_virtio_user_devargs("net_virtio_user0,path=/dev/vhost-net,iface=tap0,server=1")
