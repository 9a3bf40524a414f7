"""The vdpa management "netlink" vocabulary: commands, attributes and their types.

The ids are the Linux generic netlink family ``vdpa`` (version 1) ones
(include/uapi/linux/vdpa.h): ``VdpaCmd.DEV_GET`` is ``VDPA_CMD_DEV_GET``,
``VdpaAttr.DEV_NAME`` is ``VDPA_ATTR_DEV_NAME``, and so on.  A message is an
ordered list of ``(attr, value)`` pairs, like a netlink message; values are
Python ints (u8..u64), ``str`` (strings) or ``bytes`` (binary).  On the
service socket they travel as JSON lines (see :mod:`.transport`), binary
values as hex strings.
"""

from __future__ import annotations

from enum import IntEnum

GENL_NAME = "vdpa"
GENL_VERSION = 1


class VdpaCmd(IntEnum):
    """``VDPA_CMD_*``."""

    UNSPEC = 0
    MGMTDEV_NEW = 1  # the reply to MGMTDEV_GET
    MGMTDEV_GET = 2
    DEV_NEW = 3  # dev add; also the reply to DEV_GET
    DEV_DEL = 4
    DEV_GET = 5
    DEV_CONFIG_GET = 6
    DEV_VSTATS_GET = 7
    DEV_ATTR_SET = 8


class VdpaAttr(IntEnum):
    """``VDPA_ATTR_*`` (``VDPA_ATTR_PAD`` is ``UNSPEC``, 0)."""

    UNSPEC = 0
    MGMTDEV_BUS_NAME = 1
    MGMTDEV_DEV_NAME = 2
    MGMTDEV_SUPPORTED_CLASSES = 3
    DEV_NAME = 4
    DEV_ID = 5
    DEV_VENDOR_ID = 6
    DEV_MAX_VQS = 7
    DEV_MAX_VQ_SIZE = 8
    DEV_MIN_VQ_SIZE = 9
    DEV_NET_CFG_MACADDR = 10
    DEV_NET_STATUS = 11
    DEV_NET_CFG_MAX_VQP = 12
    DEV_NET_CFG_MTU = 13
    DEV_NEGOTIATED_FEATURES = 14
    DEV_MGMTDEV_MAX_VQS = 15
    DEV_SUPPORTED_FEATURES = 16
    DEV_QUEUE_INDEX = 17
    DEV_VENDOR_ATTR_NAME = 18
    DEV_VENDOR_ATTR_VALUE = 19
    DEV_FEATURES = 20
    DEV_BLK_CFG_CAPACITY = 21
    DEV_BLK_CFG_SEG_SIZE = 22
    DEV_BLK_CFG_BLK_SIZE = 23
    DEV_BLK_CFG_SEG_MAX = 24
    DEV_BLK_CFG_NUM_QUEUES = 25
    DEV_BLK_CFG_PHY_BLK_EXP = 26
    DEV_BLK_CFG_ALIGN_OFFSET = 27
    DEV_BLK_CFG_MIN_IO_SIZE = 28
    DEV_BLK_CFG_OPT_IO_SIZE = 29
    DEV_BLK_CFG_MAX_DISCARD_SEC = 30
    DEV_BLK_CFG_MAX_DISCARD_SEG = 31
    DEV_BLK_CFG_DISCARD_SEC_ALIGN = 32
    DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC = 33
    DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG = 34
    DEV_BLK_CFG_READ_ONLY = 35
    DEV_BLK_CFG_FLUSH = 36


#: attribute -> type: "str", "bin", or "u8"/"u16"/"u32"/"u64"
ATTR_TYPES: dict[VdpaAttr, str] = {
    VdpaAttr.MGMTDEV_BUS_NAME: "str",
    VdpaAttr.MGMTDEV_DEV_NAME: "str",
    VdpaAttr.MGMTDEV_SUPPORTED_CLASSES: "u64",
    VdpaAttr.DEV_NAME: "str",
    VdpaAttr.DEV_ID: "u32",
    VdpaAttr.DEV_VENDOR_ID: "u32",
    VdpaAttr.DEV_MAX_VQS: "u32",
    VdpaAttr.DEV_MAX_VQ_SIZE: "u16",
    VdpaAttr.DEV_MIN_VQ_SIZE: "u16",
    VdpaAttr.DEV_NET_CFG_MACADDR: "bin",
    VdpaAttr.DEV_NET_STATUS: "u16",
    VdpaAttr.DEV_NET_CFG_MAX_VQP: "u16",
    VdpaAttr.DEV_NET_CFG_MTU: "u16",
    VdpaAttr.DEV_NEGOTIATED_FEATURES: "u64",
    VdpaAttr.DEV_MGMTDEV_MAX_VQS: "u32",
    VdpaAttr.DEV_SUPPORTED_FEATURES: "u64",
    VdpaAttr.DEV_QUEUE_INDEX: "u32",
    VdpaAttr.DEV_VENDOR_ATTR_NAME: "str",
    VdpaAttr.DEV_VENDOR_ATTR_VALUE: "u64",
    VdpaAttr.DEV_FEATURES: "u64",
    VdpaAttr.DEV_BLK_CFG_CAPACITY: "u64",
    VdpaAttr.DEV_BLK_CFG_SEG_SIZE: "u32",
    VdpaAttr.DEV_BLK_CFG_BLK_SIZE: "u32",
    VdpaAttr.DEV_BLK_CFG_SEG_MAX: "u32",
    VdpaAttr.DEV_BLK_CFG_NUM_QUEUES: "u16",
    VdpaAttr.DEV_BLK_CFG_PHY_BLK_EXP: "u8",
    VdpaAttr.DEV_BLK_CFG_ALIGN_OFFSET: "u8",
    VdpaAttr.DEV_BLK_CFG_MIN_IO_SIZE: "u16",
    VdpaAttr.DEV_BLK_CFG_OPT_IO_SIZE: "u32",
    VdpaAttr.DEV_BLK_CFG_MAX_DISCARD_SEC: "u32",
    VdpaAttr.DEV_BLK_CFG_MAX_DISCARD_SEG: "u32",
    VdpaAttr.DEV_BLK_CFG_DISCARD_SEC_ALIGN: "u32",
    VdpaAttr.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC: "u32",
    VdpaAttr.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG: "u32",
    VdpaAttr.DEV_BLK_CFG_READ_ONLY: "u8",
    VdpaAttr.DEV_BLK_CFG_FLUSH: "u8",
}

_INT_BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64}

#: virtio device ids (bit N of a management device's class mask)
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2

#: virtio status bit that makes the negotiated features readable
VIRTIO_CONFIG_S_FEATURES_OK = 8

# virtio-net feature bits the netlink core looks at
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_RSS = 60
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2
#: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX: the largest queue index VSTATS_GET accepts
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000

# virtio-blk feature bits gating the blk config attributes
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_TRANSPORT_F_START = 28
VIRTIO_TRANSPORT_F_END = 42

#: DEV_NEW attributes that are "network class" attributes
NET_ATTRS_MASK = (
    (1 << VdpaAttr.DEV_NET_CFG_MACADDR) | (1 << VdpaAttr.DEV_NET_CFG_MTU) | (1 << VdpaAttr.DEV_NET_CFG_MAX_VQP)
)
#: the per-device (non-transport) feature bits
VIRTIO_DEVICE_F_MASK = ((~0 << (VIRTIO_TRANSPORT_F_END + 1)) | ((1 << VIRTIO_TRANSPORT_F_START) - 1)) & (2**64 - 1)


class AttrError(ValueError):
    """An attribute that is not of its type (unknown id, wrong type, out of range)."""


def attr_type(attr: int) -> str:
    try:
        return ATTR_TYPES[VdpaAttr(attr)]
    except (ValueError, KeyError):
        raise AttrError(f"unknown attribute {attr!r}") from None


def check_value(attr: int, value):
    """Return ``value`` if it fits attribute ``attr``'s type, else raise AttrError."""
    kind = attr_type(attr)
    if kind == "str":
        if not isinstance(value, str) or "\0" in value:
            raise AttrError(f"attribute {VdpaAttr(attr).name} must be a string")
        return value
    if kind == "bin":
        if not isinstance(value, (bytes, bytearray)):
            raise AttrError(f"attribute {VdpaAttr(attr).name} must be binary")
        return bytes(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << _INT_BITS[kind]):
        raise AttrError(f"attribute {VdpaAttr(attr).name} must be a {kind}")
    return value


def encode_attrs(attrs) -> list:
    """``[(attr, value)]`` -> a JSON-able ``[[id, value]]`` (binary as hex)."""
    out = []
    for attr, value in attrs:
        value = check_value(attr, value)
        out.append([int(attr), value.hex() if isinstance(value, bytes) else value])
    return out


def decode_attrs(items) -> list[tuple[VdpaAttr, object]]:
    """The inverse of :func:`encode_attrs`; raises AttrError on anything malformed."""
    if not isinstance(items, list):
        raise AttrError("attributes must be a list of [id, value] pairs")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != 2 or isinstance(item[0], bool) or not isinstance(item[0], int):
            raise AttrError(f"malformed attribute {item!r}")
        attr, value = item
        kind = attr_type(attr)
        if kind == "bin":
            if not isinstance(value, str):
                raise AttrError(f"attribute {VdpaAttr(attr).name} must be a hex string")
            try:
                value = bytes.fromhex(value)
            except ValueError:
                raise AttrError(f"attribute {VdpaAttr(attr).name} is not valid hex") from None
        out.append((VdpaAttr(attr), check_value(attr, value)))
    return out
