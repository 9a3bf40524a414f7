"""The vDPA device registry and the stats API (DPDK's lib/vhost/vdpa.c rules)."""

from __future__ import annotations

import errno

import pytest

from dataplane.testing.vdpa_driver import RecordingVdpaOps
from dataplane.vdpa import device as V
from dataplane.vdpa.device import VDPA_DEVICE_TYPE_BLK, VDPA_DEVICE_TYPE_NET, VdpaDevOps, VdpaError


def _ops(**kw):
    kw.setdefault("features", 1 << 32)
    kw.setdefault("protocol_features", 0)
    return RecordingVdpaOps(None, **kw)


@pytest.fixture
def registered():
    made = []

    def reg(name, ops, **kw):
        vdev = V.register_device(name, ops, **kw)
        if vdev in V.list_devices():
            made.append(vdev)
        return vdev

    yield reg
    for vdev in made:
        if vdev in V.list_devices():
            V.unregister_device(vdev)


def test_register_find_list_unregister(registered):
    a = registered("0000:06:00.3", _ops(), driver="recording")
    b = registered("blk-x", _ops(dev_type=VDPA_DEVICE_TYPE_BLK))
    assert V.find_device_by_name("0000:06:00.3") is a
    assert V.find_device_by_name("nope") is None
    assert V.find_device_by_name(None) is None
    assert a.type == VDPA_DEVICE_TYPE_NET and b.type == VDPA_DEVICE_TYPE_BLK
    assert [d for d in V.list_devices() if d in (a, b)] == [a, b]  # registration order
    V.unregister_device(b)
    assert V.find_device_by_name("blk-x") is None
    with pytest.raises(VdpaError) as e:
        V.unregister_device(b)
    assert e.value.errno == errno.ENODEV
    V.register_device("blk-x", b.ops)  # the name is free again
    V.unregister_device(V.find_device_by_name("blk-x"))


def test_names_compare_over_64_bytes(registered):
    long = "d" * 64
    registered(long + "-first", _ops())
    with pytest.raises(VdpaError) as e:
        V.register_device(long + "-second", _ops())
    assert e.value.errno == errno.EEXIST
    assert V.find_device_by_name(long + "-anything") is not None


def test_missing_mandatory_op_is_refused():
    class NoClose(VdpaDevOps):
        def get_queue_num(self, vdev):
            return 1

        def get_features(self, vdev):
            return 0

        def get_protocol_features(self, vdev):
            return 0

        def dev_conf(self, vid):
            return 0

        def set_vring_state(self, vid, vring, state):
            return 0

        def set_features(self, vid):
            return 0

    with pytest.raises(VdpaError, match="Some mandatory vDPA ops aren't implemented .*dev_close"):
        V.register_device("no-close", NoClose())
    with pytest.raises(VdpaError):
        V.register_device("no-ops", None)
    assert V.find_device_by_name("no-close") is None


def test_failing_get_dev_type_returns_the_device_unlisted(registered):
    vdev = registered("bad-type", _ops(dev_type=7))
    assert vdev.name == "bad-type"
    assert V.find_device_by_name("bad-type") is None


def test_queue_num_features_and_stats_wrappers(registered):
    ops = _ops(queue_num=4, features=0x308830028, protocol_features=0x8)
    vdev = registered("stats-dev", ops)
    assert V.get_queue_num(vdev) == 4
    assert V.get_features(vdev) == 0x308830028
    assert V.get_protocol_features(vdev) == 0x8
    assert V.get_stats_names(vdev) == ["calls"]
    ops.calls.extend([("x",), ("y",)])
    assert V.get_stats(vdev, 0) == [(0, 2)]
    V.reset_stats(vdev, 0)
    assert V.get_stats(vdev, 0) == [(0, 0)]
    with pytest.raises(VdpaError):
        V.get_queue_num(None)


def test_stats_without_the_op_is_not_supported(registered):
    class Minimal(RecordingVdpaOps):
        get_stats_names = None
        get_stats = None

    vdev = registered("minimal", Minimal(None, features=0, protocol_features=0))
    with pytest.raises(VdpaError) as e:
        V.get_stats_names(vdev)
    assert e.value.errno == errno.ENOTSUP
