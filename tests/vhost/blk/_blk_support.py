"""Constants the blk data-path tests share."""

from dataplane.vhost.blk.requests import BlkLimits
from dataplane.vhost.blk.spec import VirtioBlkFeature as BF
from dataplane.vhost_user import VirtioFeature as VF

DISK_SIZE = 1 << 20
SERIAL = b"dataplane-blk-0001"
LIMITS = BlkLimits(max_discard_sectors=256, max_discard_seg=4, max_write_zeroes_sectors=512, max_write_zeroes_seg=4)
ALL_FEATURES = (1 << BF.VIRTIO_BLK_F_DISCARD | 1 << BF.VIRTIO_BLK_F_WRITE_ZEROES | 1 << VF.VIRTIO_RING_F_INDIRECT_DESC
                | 1 << VF.VIRTIO_F_VERSION_1)
