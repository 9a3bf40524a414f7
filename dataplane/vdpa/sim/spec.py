"""Facts of the Linux vDPA simulators ``vdpasim_net`` and ``vdpasim_blk`` (VDPA-FACTS §4.1-4.3), defined once.

Feature sets, queue layout, the config spaces the devices present, the vendor
statistics names in their order, the blk RAM disk limits and the GET_ID
string.  Nothing here runs a ring: :mod:`~dataplane.vdpa.sim.kernels` does.
"""

from __future__ import annotations

from dataplane.vhost.blk.spec import VirtioBlkFeature as BF
from dataplane.vhost_user.features import VirtioFeature as VF

import struct

__all__ = [
    "VDPASIM_FEATURES",
    "VDPASIM_NET_FEATURES",
    "VDPASIM_BLK_FEATURES",
    "VDPASIM_QUEUE_MAX",
    "VDPASIM_VENDOR_ID",
    "VDPASIM_NET_VQ_NUM",
    "VDPASIM_BLK_VQ_NUM",
    "VDPASIM_BLK_CAPACITY",
    "VDPASIM_BLK_SIZE_MAX",
    "VDPASIM_BLK_SEG_MAX",
    "VDPASIM_BLK_DWZ_MAX_SECTORS",
    "VDPASIM_BLK_ID",
    "NET_RXQ",
    "NET_TXQ",
    "NET_CVQ",
    "NET_STATS_NAMES",
    "VIRTIO_NET_S_LINK_UP",
    "VIRTIO_NET_CTRL_MAC",
    "VIRTIO_NET_CTRL_MAC_ADDR_SET",
    "VIRTIO_NET_OK",
    "VIRTIO_NET_ERR",
    "VIRTIO_NET_HDR_LEN",
    "VIRTIO_NET_HDR_V1_LEN",
    "ETH_ALEN",
    "TX_PULL_MAX",
    "F_VERSION_1",
    "F_CTRL_VQ",
    "net_hdr_len",
    "net_config_space",
    "blk_config_space",
]


def _bits(*ns: int) -> int:
    v = 0
    for n in ns:
        v |= 1 << n
    return v


# -- feature bits (the project's tables: dataplane.vhost_user.features, dataplane.vhost.blk.spec) ----------
F_MTU = int(VF.VIRTIO_NET_F_MTU)
F_MAC = int(VF.VIRTIO_NET_F_MAC)
F_STATUS = int(VF.VIRTIO_NET_F_STATUS)
F_CTRL_VQ = int(VF.VIRTIO_NET_F_CTRL_VQ)
F_CTRL_MAC_ADDR = int(VF.VIRTIO_NET_F_CTRL_MAC_ADDR)
F_ANY_LAYOUT = int(VF.VIRTIO_F_ANY_LAYOUT)
F_VERSION_1 = int(VF.VIRTIO_F_VERSION_1)
F_ACCESS_PLATFORM = int(VF.VIRTIO_F_ACCESS_PLATFORM)
F_BLK_SIZE_MAX, F_BLK_SEG_MAX, F_BLK_BLK_SIZE = int(BF.VIRTIO_BLK_F_SIZE_MAX), int(BF.VIRTIO_BLK_F_SEG_MAX), int(BF.VIRTIO_BLK_F_BLK_SIZE)
F_BLK_FLUSH, F_BLK_TOPOLOGY, F_BLK_MQ = int(BF.VIRTIO_BLK_F_FLUSH), int(BF.VIRTIO_BLK_F_TOPOLOGY), int(BF.VIRTIO_BLK_F_MQ)
F_BLK_DISCARD, F_BLK_WRITE_ZEROES = int(BF.VIRTIO_BLK_F_DISCARD), int(BF.VIRTIO_BLK_F_WRITE_ZEROES)

#: The core's base features: ANY_LAYOUT | VERSION_1 | ACCESS_PLATFORM.
VDPASIM_FEATURES = _bits(F_ANY_LAYOUT, F_VERSION_1, F_ACCESS_PLATFORM)
#: vdpasim_net: base | MAC | STATUS | MTU | CTRL_VQ | CTRL_MAC_ADDR (no MQ).
VDPASIM_NET_FEATURES = VDPASIM_FEATURES | _bits(F_MAC, F_STATUS, F_MTU, F_CTRL_VQ, F_CTRL_MAC_ADDR)
#: vdpasim_blk: base | FLUSH | SIZE_MAX | SEG_MAX | BLK_SIZE | TOPOLOGY | MQ | DISCARD | WRITE_ZEROES.
VDPASIM_BLK_FEATURES = VDPASIM_FEATURES | _bits(F_BLK_FLUSH, F_BLK_SIZE_MAX, F_BLK_SEG_MAX, F_BLK_BLK_SIZE,
                                                 F_BLK_TOPOLOGY, F_BLK_MQ, F_BLK_DISCARD, F_BLK_WRITE_ZEROES)
assert VDPASIM_NET_FEATURES == 0x308830028 and VDPASIM_BLK_FEATURES == 0x308007646

VDPASIM_QUEUE_MAX = 256  # vq_num_max (``max_vq_size``)
VDPASIM_VENDOR_ID = 0
VDPASIM_NET_VQ_NUM = 3  # rx, tx, cvq
VDPASIM_BLK_VQ_NUM = 1

# -- net ------------------------------------------------------------------------------
NET_RXQ, NET_TXQ, NET_CVQ = 0, 1, 2
#: Vendor statistics per queue index, exact names in order (``vdpa dev vstats show``).
NET_STATS_NAMES = {
    NET_RXQ: ("rx packets", "rx bytes", "rx errors", "rx overruns", "rx drops"),
    NET_TXQ: ("tx packets", "tx bytes", "tx errors", "tx drops"),
    NET_CVQ: ("cvq requests", "cvq successes", "cvq errors"),
}
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_CTRL_MAC = 1
VIRTIO_NET_CTRL_MAC_ADDR_SET = 1
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
VIRTIO_NET_HDR_LEN = 10  # struct virtio_net_hdr (no VERSION_1)
VIRTIO_NET_HDR_V1_LEN = 12  # struct virtio_net_hdr_v1
ETH_ALEN = 6
#: A TX chain is pulled into a PAGE_SIZE buffer: longer frames are cut.
TX_PULL_MAX = 4096


def net_hdr_len(features: int) -> int:
    """The header length the receive filter skips: 12 with VERSION_1, else 10."""
    return VIRTIO_NET_HDR_V1_LEN if int(features) >> F_VERSION_1 & 1 else VIRTIO_NET_HDR_LEN


def net_config_space(mac: bytes, mtu: int) -> bytes:
    """``struct virtio_net_config`` as vdpasim_net presents it (24 bytes, little endian).

    mac[6] @0, status u16 @6 (always LINK_UP: rewritten on every read),
    max_virtqueue_pairs u16 @8 (0: no MQ), mtu u16 @10, then speed u32 @12,
    duplex u8 @16, rss_max_key_size u8 @17, rss_max_indirection_table_length
    u16 @18, supported_hash_types u32 @20, all 0 (never set by the simulator).
    """
    mac = bytes(mac)
    if len(mac) != ETH_ALEN:
        raise ValueError(f"mac must be {ETH_ALEN} bytes, got {len(mac)}")
    return mac + struct.pack("<HHHIBBHI", VIRTIO_NET_S_LINK_UP, 0, int(mtu), 0, 0, 0, 0, 0)


# -- blk ------------------------------------------------------------------------------
VDPASIM_BLK_CAPACITY = 0x40000  # sectors of 512 bytes: 128 MiB
VDPASIM_BLK_SIZE_MAX = 0x1000
VDPASIM_BLK_SEG_MAX = 32
#: The IN / OUT range check's limit, in sectors (size_max * seg_max, compared against a sector count).
VDPASIM_BLK_IO_MAX_SECTORS = VDPASIM_BLK_SIZE_MAX * VDPASIM_BLK_SEG_MAX
VDPASIM_BLK_DWZ_MAX_SECTORS = 0xFFFFFFFF
VDPASIM_BLK_ID = b"vdpa_blk_sim".ljust(20, b"\0")
BLK_CONFIG_SIZE = 96


def blk_config_space(capacity: int = VDPASIM_BLK_CAPACITY) -> bytes:
    """The 96-byte ``struct virtio_blk_config`` of vdpasim_blk (every read: zeroed, then filled)."""
    b = bytearray(BLK_CONFIG_SIZE)
    struct.pack_into("<QII", b, 0, int(capacity), VDPASIM_BLK_SIZE_MAX, VDPASIM_BLK_SEG_MAX)
    struct.pack_into("<I", b, 20, 512)  # blk_size
    struct.pack_into("<HI", b, 26, 1, 1)  # min_io_size u16 @26, opt_io_size u32 @28
    struct.pack_into("<H", b, 34, 1)  # num_queues
    struct.pack_into("<IIIII", b, 36, 0xFFFFFFFF, 1, 512, 0xFFFFFFFF, 1)  # discard / write zeroes limits
    return bytes(b)
