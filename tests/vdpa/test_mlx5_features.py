"""mlx5 vDPA features, protocol features, queue count and feature checks (facts §3.2, §3.4)."""

import errno

import pytest

from dataplane.vdpa.device import VdpaError
from dataplane.vdpa.mlx5.features import (
    EVENT_MODE_NO_MSIX,
    EVENT_MODE_QP,
    MLX5_VDPA_DEFAULT_FEATURES,
    MLX5_VDPA_PROTOCOL_FEATURES,
    Q_TYPE_PACKED,
    Q_TYPE_SPLIT,
    check_caps,
    get_queue_num,
    mlx5_vdpa_features,
    validate_negotiated,
    virtq_event_mode,
    virtq_feature_attrs,
)

NONE = dict(valid=1, max_num_virtio_queues=32, virtio_queue_type=1, event_mode=0b101, tso_ipv4=0, tso_ipv6=0,
            tx_csum=0, rx_csum=0, virtio_version_1_0=0)
ALL = dict(NONE, virtio_queue_type=3, tso_ipv4=1, tso_ipv6=1, tx_csum=1, rx_csum=1, virtio_version_1_0=1)


def test_constants():
    assert MLX5_VDPA_DEFAULT_FEATURES == 0x104C600008
    assert MLX5_VDPA_PROTOCOL_FEATURES == 0x10C33


def test_features_from_caps():
    assert mlx5_vdpa_features(NONE) == 0x104C600008
    # + packed 34, TSO4 11, TSO6 12, CSUM 0, GUEST_CSUM 1, VERSION_1 32
    assert mlx5_vdpa_features(ALL) == 0x104C600008 | 1 << 34 | 1 << 11 | 1 << 12 | 1 | 2 | 1 << 32
    for cap, b in (("tso_ipv4", 11), ("tso_ipv6", 12), ("tx_csum", 0), ("rx_csum", 1), ("virtio_version_1_0", 32)):
        assert mlx5_vdpa_features(dict(NONE, **{cap: 1})) == 0x104C600008 | 1 << b
    assert mlx5_vdpa_features(dict(NONE, virtio_queue_type=2)) == 0x104C600008 | 1 << 34


def test_the_emulated_cards_default_caps():
    """The card of dataplane-nic reports split+packed, version 1, TSO4/6, TX and RX checksums, 32 queues (its
    Caps defaults)."""
    caps = dict(valid=1, max_num_virtio_queues=32, virtio_queue_type=3, event_mode=0b101, virtio_version_1_0=1,
                tso_ipv4=1, tso_ipv6=1, tx_csum=1, rx_csum=1)
    assert mlx5_vdpa_features(caps) == 0x104C600008 | 1 << 34 | 1 << 32 | 1 << 11 | 1 << 12 | 1 | 2
    assert get_queue_num(caps) == 16


def test_queue_num_is_pairs():
    assert get_queue_num(dict(max_num_virtio_queues=33)) == 16
    assert get_queue_num(dict(max_num_virtio_queues=1)) == 0


def test_check_caps():
    check_caps(NONE)
    for bad in (dict(NONE, valid=0), dict(NONE, max_num_virtio_queues=0), {}):
        with pytest.raises(VdpaError, match="Not enough capabilities to support vdpa") as e:
            check_caps(bad)
        assert e.value.errno == errno.ENOTSUP


def test_validate_negotiated():
    validate_negotiated(mlx5_vdpa_features(ALL), ALL)
    validate_negotiated(MLX5_VDPA_DEFAULT_FEATURES, NONE)
    for b, text in ((34, "PACKED"), (11, "TSO4"), (12, "TSO6"), (0, "CSUM"), (1, "GUEST CSUM"), (32, "version 1")):
        with pytest.raises(VdpaError, match=text) as e:
            validate_negotiated(1 << b, NONE, vid=3)
        assert e.value.errno == errno.ENOTSUP and "vdev 3" in str(e.value)


def test_virtq_attrs():
    assert virtq_feature_attrs(0) == dict(tso_ipv4=0, tso_ipv6=0, tx_csum=0, rx_csum=0, virtio_version_1_0=0,
                                          q_type=Q_TYPE_SPLIT)
    a = virtq_feature_attrs(1 << 11 | 1 << 32 | 1 << 34 | 1 << 1)
    assert a == dict(tso_ipv4=1, tso_ipv6=0, tx_csum=1, rx_csum=1, virtio_version_1_0=1, q_type=Q_TYPE_PACKED)
    assert virtq_feature_attrs(1 << 12)["tx_csum"] == 1 and virtq_feature_attrs(1)["tx_csum"] == 1


def test_virtq_event_mode():
    assert virtq_event_mode(7, NONE) == EVENT_MODE_QP
    assert virtq_event_mode(-1, NONE) == EVENT_MODE_NO_MSIX  # a polling guest, the card can do NO_MSIX
    assert virtq_event_mode(-1, dict(NONE, event_mode=0b110)) == EVENT_MODE_QP
