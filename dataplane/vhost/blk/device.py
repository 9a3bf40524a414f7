"""The virtio-blk device class of the vhost-user back-end (see :mod:`~dataplane.vhost.device_class`).

What a block device adds to the generic state machine:

* the features it implements (:func:`blk_features`): SEG_MAX, BLK_SIZE,
  FLUSH, MQ, DISCARD, WRITE_ZEROES, RO with ``readonly``; the ring
  features VERSION_1, RING_PACKED, EVENT_IDX, INDIRECT_DESC, and LOG_ALL
  (live migration: the requests' writes are marked in the dirty log,
  :mod:`~dataplane.vhost.dirty_log`).  Not offered, because nothing here
  does them, and refused by name when asked for (:data:`NOT_IMPLEMENTED`):
  SIZE_MAX and GEOMETRY (no limit, no legacy geometry), TOPOLOGY,
  CONFIG_WCE (the cache mode is fixed: writeback, made durable by FLUSH),
  IN_ORDER.
* the protocol features MQ and CONFIG (QEMU's vhost-user-blk needs CONFIG).
  Not PAGEFAULT: the blk lcores do not register guest memory with the
  postcopy fault relay, so POSTCOPY_SUPPORT is refused for a blk socket.
* one vring per queue: ``GET_QUEUE_NUM`` answers the queue count and the
  device runs once vring 0 is ready.
* the config space, ``struct virtio_blk_config``
  (:data:`~dataplane.vhost.blk.spec.VIRTIO_BLK_CONFIG`): capacity, seg_max,
  blk_size, num_queues, the DISCARD and WRITE_ZEROES limits.  Without
  CONFIG_WCE no field is writable: SET_CONFIG is refused.
"""

from __future__ import annotations

from typing import Any

from dataplane.vhost.device import DataPathHooks, RequestError
from dataplane.vhost.device_class import DeviceClass
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

from .requests import BlkLimits
from .spec import SECTOR_SIZE, VirtioBlkFeature as BF, config_space

__all__ = ["NOT_IMPLEMENTED", "VIRTIO_ID_BLOCK", "BLK_MAX_QUEUES", "DEFAULT_LIMITS", "DEFAULT_SEG_MAX", "BlkDevice", "blk_features"]

VIRTIO_ID_BLOCK = 2
BLK_MAX_QUEUES = 64
#: Data segments per request the device accepts (QEMU's default for a 128-entry queue).
DEFAULT_SEG_MAX = 126
#: 16 MiB per DISCARD / WRITE_ZEROES segment, 16 segments per request.
DEFAULT_LIMITS = BlkLimits(max_discard_sectors=32768, max_discard_seg=16, max_write_zeroes_sectors=32768,
                           max_write_zeroes_seg=16)

_TRANSPORT = (
    VF.VIRTIO_F_VERSION_1,
    VF.VHOST_USER_F_PROTOCOL_FEATURES,
    VF.VIRTIO_F_RING_PACKED,
    VF.VIRTIO_RING_F_EVENT_IDX,
    VF.VIRTIO_RING_F_INDIRECT_DESC,
    VF.VHOST_F_LOG_ALL,
)
_BLK = (
    BF.VIRTIO_BLK_F_SEG_MAX,
    BF.VIRTIO_BLK_F_BLK_SIZE,
    BF.VIRTIO_BLK_F_FLUSH,
    BF.VIRTIO_BLK_F_MQ,
    BF.VIRTIO_BLK_F_DISCARD,
    BF.VIRTIO_BLK_F_WRITE_ZEROES,
)


#: Bits a user might ask for that the blk device does not implement, and why (refused by name).
NOT_IMPLEMENTED = {
    BF.VIRTIO_BLK_F_SIZE_MAX: "no limit on a segment's size to announce",
    BF.VIRTIO_BLK_F_GEOMETRY: "no legacy disk geometry",
    BF.VIRTIO_BLK_F_TOPOLOGY: "no topology (physical block size, alignment) to announce",
    BF.VIRTIO_BLK_F_CONFIG_WCE: "the cache mode is fixed (writeback, made durable by FLUSH)",
    VF.VIRTIO_F_IN_ORDER: "requests complete out of order",
}


def blk_features(readonly: bool) -> int:
    """The virtio feature bits a blk socket offers."""
    f = sum(bit(b) for b in _TRANSPORT + _BLK)
    return f | (bit(BF.VIRTIO_BLK_F_RO) if readonly else 0)


class BlkDevice(DeviceClass):
    """A virtio-blk disk of ``sectors`` 512-byte sectors served on ``num_queues`` vrings."""

    name = "blk"
    device_type = VIRTIO_ID_BLOCK
    feature_names = BF
    not_implemented = NOT_IMPLEMENTED
    protocol_features = bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
    max_queues = BLK_MAX_QUEUES
    ready_vrings = 1

    def __init__(self, datapath: DataPathHooks | None = None, *, sectors: int, num_queues: int = 1,
                 readonly: bool = False, seg_max: int = DEFAULT_SEG_MAX, limits: BlkLimits = DEFAULT_LIMITS):
        super().__init__(datapath)
        if not 1 <= num_queues <= BLK_MAX_QUEUES:
            raise ValueError(f"queues must be 1..{BLK_MAX_QUEUES}, got {num_queues}")
        if sectors < 1:
            raise ValueError(f"a disk has at least one sector, got {sectors}")
        self.sectors = int(sectors)
        self.num_queues = int(num_queues)
        self.readonly = bool(readonly)
        self.seg_max = int(seg_max)
        self.limits = limits

    def offered_features(self, flags: int) -> int:
        return blk_features(self.readonly)

    def implemented_features(self, flags: int) -> int:
        return self.offered_features(flags)  # RO only on a read-only disk

    def queue_num(self, config: Any) -> int:
        return self.num_queues

    def max_vrings(self, config: Any) -> int:
        return self.num_queues

    def config_space(self, dev: Any) -> bytes:
        lim = self.limits
        return config_space(
            capacity=self.sectors,
            seg_max=self.seg_max,
            blk_size=SECTOR_SIZE,
            num_queues=self.num_queues,
            max_discard_sectors=lim.max_discard_sectors,
            max_discard_seg=lim.max_discard_seg,
            discard_sector_alignment=1,
            max_write_zeroes_sectors=lim.max_write_zeroes_sectors,
            max_write_zeroes_seg=lim.max_write_zeroes_seg,
            write_zeroes_may_unmap=1,
        )

    def set_config(self, dev: Any, offset: int, data: bytes, flags: int) -> None:
        raise RequestError("no virtio-blk config field is writable (CONFIG_WCE is not offered)")
