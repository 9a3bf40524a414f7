"""What an mlx5 vDPA device offers and checks (facts §3.2, §3.4), from the card's capabilities.

``caps`` is a mapping with the card's QUERY_HCA_CAP fields (the VDPA_EMULATION ones merged
with the general ones): ``valid``, ``max_num_virtio_queues``, ``virtio_queue_type`` (bit 0
split, bit 1 packed), ``event_mode`` (bit n: event mode n), ``tso_ipv4``, ``tso_ipv6``,
``tx_csum``, ``rx_csum``, ``virtio_version_1_0``, ``queue_counters_valid``.

* :func:`mlx5_vdpa_features`: MLX5_VDPA_DEFAULT_FEATURES = PROTOCOL_FEATURES | ANY_LAYOUT |
  MQ | GUEST_ANNOUNCE | ORDER_PLATFORM | LOG_ALL | MTU = 0x104c600008, plus RING_PACKED,
  HOST_TSO4, HOST_TSO6, CSUM, GUEST_CSUM and VERSION_1 as the caps allow.
* :data:`MLX5_VDPA_PROTOCOL_FEATURES` = BACKEND_REQ | BACKEND_SEND_FD | HOST_NOTIFIER |
  LOG_SHMFD | MQ | MTU | STATUS = 0x10c33.
* :func:`get_queue_num`: ``max_num_virtio_queues // 2`` (queue pairs).
* :func:`check_caps`: the probe's "Not enough capabilities to support vdpa, maybe old FW/OFED
  version?" (ENOTSUP).
* :func:`validate_negotiated`: dev_conf's check of the negotiated features against the caps
  (ENOTSUP), and :func:`virtq_feature_attrs` / :func:`virtq_event_mode`: the virtq fields
  they become (TSO forces tx_csum; QP event mode for a guest with a callfd or a card without
  NO_MSIX).
"""

from __future__ import annotations

import errno
from typing import Mapping

from dataplane import log as dplog
from dataplane.vdpa.device import VdpaError
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

__all__ = ["MLX5_VDPA_DEFAULT_FEATURES", "MLX5_VDPA_PROTOCOL_FEATURES", "Q_TYPE_SPLIT", "Q_TYPE_PACKED",
           "EVENT_MODE_NO_MSIX", "EVENT_MODE_QP", "EVENT_MODE_MSIX", "mlx5_vdpa_features", "get_queue_num",
           "check_caps", "validate_negotiated", "virtq_feature_attrs", "virtq_event_mode"]

log = dplog.get_logger("dataplane.vdpa.mlx5")

MLX5_VDPA_DEFAULT_FEATURES = sum(bit(f) for f in (
    VF.VHOST_USER_F_PROTOCOL_FEATURES, VF.VIRTIO_F_ANY_LAYOUT, VF.VIRTIO_NET_F_MQ, VF.VIRTIO_NET_F_GUEST_ANNOUNCE,
    VF.VIRTIO_F_ORDER_PLATFORM, VF.VHOST_F_LOG_ALL, VF.VIRTIO_NET_F_MTU))

MLX5_VDPA_PROTOCOL_FEATURES = sum(bit(f) for f in (
    PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ, PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD,
    PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER, PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD, PF.VHOST_USER_PROTOCOL_F_MQ,
    PF.VHOST_USER_PROTOCOL_F_MTU, PF.VHOST_USER_PROTOCOL_F_STATUS))

#: virtq types (bit numbers of caps ``virtio_queue_type``) and event modes (bits of caps ``event_mode``)
Q_TYPE_SPLIT, Q_TYPE_PACKED = 0, 1
EVENT_MODE_NO_MSIX, EVENT_MODE_QP, EVENT_MODE_MSIX = 0, 1, 2

#: (feature, caps field, what dev_conf says when the caps lack it)
_CAP_FEATURES = (
    (VF.VIRTIO_NET_F_HOST_TSO4, "tso_ipv4", "Failed to enable TSO4 for vdev {vid} with no support."),
    (VF.VIRTIO_NET_F_HOST_TSO6, "tso_ipv6", "Failed to enable TSO6 for vdev {vid} with no support."),
    (VF.VIRTIO_NET_F_CSUM, "tx_csum", "Failed to enable CSUM for vdev {vid} with no support."),
    (VF.VIRTIO_NET_F_GUEST_CSUM, "rx_csum", "Failed to enable GUEST CSUM for vdev {vid} with no support."),
    (VF.VIRTIO_F_VERSION_1, "virtio_version_1_0", "Failed to enable version 1 for vdev {vid} with no support."),
)


def _packed(caps: Mapping) -> bool:
    return bool(int(caps.get("virtio_queue_type", 0)) >> Q_TYPE_PACKED & 1)


def mlx5_vdpa_features(caps: Mapping) -> int:
    """get_features: the default set plus what the caps allow."""
    f = MLX5_VDPA_DEFAULT_FEATURES
    if _packed(caps):
        f |= bit(VF.VIRTIO_F_RING_PACKED)
    for feature, cap, _ in _CAP_FEATURES:
        if caps.get(cap):
            f |= bit(feature)
    return f


def get_queue_num(caps: Mapping) -> int:
    """get_queue_num: queue pairs."""
    return int(caps["max_num_virtio_queues"]) // 2


def check_caps(caps: Mapping) -> None:
    """The probe's capability check."""
    if not caps.get("valid") or not caps.get("max_num_virtio_queues"):
        msg = "Not enough capabilities to support vdpa, maybe old FW/OFED version?"
        log.error(msg)
        raise VdpaError(msg, errno.ENOTSUP)


def validate_negotiated(features: int, caps: Mapping, vid: int = 0) -> None:
    """dev_conf refuses (ENOTSUP) negotiated features the caps lack."""
    if features & bit(VF.VIRTIO_F_RING_PACKED) and not _packed(caps):
        msg = f"Failed to configure PACKED mode for vdev {vid} with no support."
        log.error(msg)
        raise VdpaError(msg, errno.ENOTSUP)
    for feature, cap, text in _CAP_FEATURES:
        if features & bit(feature) and not caps.get(cap):
            msg = text.format(vid=vid)
            log.error(msg)
            raise VdpaError(msg, errno.ENOTSUP)


def virtq_feature_attrs(features: int) -> dict:
    """The virtq fields from the negotiated features (a TSO feature forces tx_csum)."""
    tso4 = bool(features & bit(VF.VIRTIO_NET_F_HOST_TSO4))
    tso6 = bool(features & bit(VF.VIRTIO_NET_F_HOST_TSO6))
    return dict(tso_ipv4=int(tso4), tso_ipv6=int(tso6),
                tx_csum=int(bool(features & bit(VF.VIRTIO_NET_F_CSUM)) or tso4 or tso6),
                rx_csum=int(bool(features & bit(VF.VIRTIO_NET_F_GUEST_CSUM))),
                virtio_version_1_0=int(bool(features & bit(VF.VIRTIO_F_VERSION_1))),
                q_type=Q_TYPE_PACKED if features & bit(VF.VIRTIO_F_RING_PACKED) else Q_TYPE_SPLIT)


def virtq_event_mode(callfd: int, caps: Mapping) -> int:
    """QP when the guest has a callfd or the card cannot do NO_MSIX; else NO_MSIX (a polling guest)."""
    if callfd != -1 or not int(caps.get("event_mode", 0)) >> EVENT_MODE_NO_MSIX & 1:
        return EVENT_MODE_QP
    return EVENT_MODE_NO_MSIX
