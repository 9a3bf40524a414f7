"""virtio-blk facts (virtio 1.2 §5.2), defined once: feature bits, request types, status codes, config layout.

A request is a descriptor chain: a 16-byte header ``{type u32, reserved u32,
sector u64}`` the device reads, then data (device-readable for OUT, DISCARD
and WRITE_ZEROES; device-writable for IN and GET_ID), then one status byte,
the last device-writable byte of the chain.  Sectors are 512 bytes whatever
``blk_size`` says.  DISCARD and WRITE_ZEROES carry segments
``{sector u64, num_sectors u32, flags u32}`` (flag UNMAP, bit 0, only for
WRITE_ZEROES).  GET_ID writes the 20-byte serial, NUL-padded.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = [
    "VirtioBlkFeature",
    "VIRTIO_BLK_T_IN",
    "VIRTIO_BLK_T_OUT",
    "VIRTIO_BLK_T_FLUSH",
    "VIRTIO_BLK_T_GET_ID",
    "VIRTIO_BLK_T_DISCARD",
    "VIRTIO_BLK_T_WRITE_ZEROES",
    "VIRTIO_BLK_S_OK",
    "VIRTIO_BLK_S_IOERR",
    "VIRTIO_BLK_S_UNSUPP",
    "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP",
    "VIRTIO_BLK_ID_BYTES",
    "SECTOR_SIZE",
    "SECTOR_SHIFT",
    "REQ_HDR_SIZE",
    "DWZ_SEG_SIZE",
    "VIRTIO_BLK_CONFIG",
    "config_space",
]


class VirtioBlkFeature(enum.IntEnum):
    """virtio-blk device feature bit numbers (the transport bits are in :class:`~dataplane.vhost_user.features.VirtioFeature`)."""

    VIRTIO_BLK_F_SIZE_MAX = 1
    VIRTIO_BLK_F_SEG_MAX = 2
    VIRTIO_BLK_F_GEOMETRY = 4
    VIRTIO_BLK_F_RO = 5
    VIRTIO_BLK_F_BLK_SIZE = 6
    VIRTIO_BLK_F_FLUSH = 9
    VIRTIO_BLK_F_TOPOLOGY = 10
    VIRTIO_BLK_F_CONFIG_WCE = 11
    VIRTIO_BLK_F_MQ = 12
    VIRTIO_BLK_F_DISCARD = 13
    VIRTIO_BLK_F_WRITE_ZEROES = 14


# -- request types ---------------------------------------------------------------
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

# -- status byte -------------------------------------------------------------------
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
VIRTIO_BLK_ID_BYTES = 20
SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT
REQ_HDR_SIZE = 16  # type u32, reserved (ioprio) u32, sector u64
DWZ_SEG_SIZE = 16  # sector u64, num_sectors u32, flags u32

#: ``struct virtio_blk_config`` (little endian), up to the write-zeroes fields.
VIRTIO_BLK_CONFIG = np.dtype(
    {
        "names": [
            "capacity", "size_max", "seg_max", "cylinders", "heads", "sectors", "blk_size",
            "physical_block_exp", "alignment_offset", "min_io_size", "opt_io_size", "writeback",
            "num_queues", "max_discard_sectors", "max_discard_seg", "discard_sector_alignment",
            "max_write_zeroes_sectors", "max_write_zeroes_seg", "write_zeroes_may_unmap",
        ],
        "formats": ["<u8", "<u4", "<u4", "<u2", "u1", "u1", "<u4", "u1", "u1", "<u2", "<u4", "u1",
                    "<u2", "<u4", "<u4", "<u4", "<u4", "<u4", "u1"],
        "offsets": [0, 8, 12, 16, 18, 19, 20, 24, 25, 26, 28, 32, 34, 36, 40, 44, 48, 52, 56],
        "itemsize": 60,
    }
)


def config_space(**fields) -> bytes:
    """The config space bytes with ``fields`` set (the others 0); see :data:`VIRTIO_BLK_CONFIG`."""
    cfg = np.zeros(1, VIRTIO_BLK_CONFIG)
    for name, value in fields.items():
        cfg[name] = value
    return cfg.tobytes()
