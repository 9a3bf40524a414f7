"""IFCVF register facts (VDPA-FACTS §2.1-2.4 and docs/nic.md), as data, defined once for the driver.

The card keeps its own tables; the two sides meet only through the BAR files, config space,
the control channel, doorbells and eventfds.
"""

from __future__ import annotations

# -- PCI identity (§2.1) ------------------------------------------------------------------
VIRTIO_PCI_VENDOR = 0x1AF4
#: (device, subsystem vendor, subsystem device) -> virtio id
IFCVF_IDS = {
    (0x1041, 0x8086, 0x001A): 1,  # net, modern
    (0x1000, 0x8086, 0x0001): 1,  # net, transitional
    (0x1001, 0x8086, 0x0002): 2,  # blk, transitional
    (0x1042, 0x8086, 0x0002): 2,  # blk, modern
}
VIRTIO_ID_NET = 1
VIRTIO_ID_BLK = 2

# -- config space (§2.2) --------------------------------------------------------------------
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_VNDR = 0x09
CAP_BAR, CAP_OFFSET, CAP_LENGTH, CAP_NOTIFY_MULT = 4, 8, 12, 16  # offsets inside a vendor capability
COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG, PCI_CFG = 1, 2, 3, 4, 5

# -- common cfg (offsets inside the COMMON_CFG window) ----------------------------------------
DEVICE_FEATURE_SELECT = 0x00
DEVICE_FEATURE = 0x04
GUEST_FEATURE_SELECT = 0x08
GUEST_FEATURE = 0x0C
MSIX_CONFIG = 0x10
NUM_QUEUES = 0x12
DEVICE_STATUS = 0x14
CONFIG_GENERATION = 0x15
QUEUE_SELECT = 0x16
QUEUE_SIZE = 0x18
QUEUE_MSIX_VECTOR = 0x1A
QUEUE_ENABLE = 0x1C
QUEUE_NOTIFY_OFF = 0x1E
QUEUE_DESC_LO = 0x20
QUEUE_AVAIL_LO = 0x28
QUEUE_USED_LO = 0x30

S_RESET, S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, S_FAILED = 0, 0x01, 0x02, 0x04, 0x08, 0x80
NO_VECTOR = 0xFFFF
IFCVF_MAX_QUEUES = 32  # queue pairs

# -- device cfg, net --------------------------------------------------------------------------
NET_CFG_MAC = 0
NET_CFG_STATUS = 6
NET_CFG_MAX_VQP = 8
NET_CFG_MTU = 10

ISR_CONFIG = 0x2  # ISR bit 1: config change (the card's ISR is cleared by writing 0)

# -- the emulated card's posted-write flush (docs/nic.md "Registers, and the flush"), BAR0 ----
WRITE_SEQ = 0xC0
ACK_SEQ = 0xC4

# -- BAR4, live migration (§2.4) ----------------------------------------------------------------
LM_LOGGING_CTRL = 0x00
LM_ENABLE_VF = 0x1
LM_BASE_ADDR_LOW = 0x10
LM_BASE_ADDR_HIGH = 0x14
LM_END_ADDR_LOW = 0x18
LM_END_ADDR_HIGH = 0x1C
LM_RING_STATE_OFFSET = 0x20
MQ_CFG = 0x28
LM_CFG_SIZE = 0x40
IFCVF_LOG_BASE = 0x100000000000
IFCVF_MEDIATED_VRING = 0x200000000000

NOTIFY_AREA_SIZE = 0x1000


def ring_state_off(qid: int, net: bool = True) -> int:
    """BAR4 offset of vring ``qid``'s state word (net: per queue pair; blk: per queue)."""
    if net:
        return LM_RING_STATE_OFFSET + (qid // 2) * LM_CFG_SIZE + (qid % 2) * 4
    return LM_RING_STATE_OFFSET + qid * LM_CFG_SIZE
