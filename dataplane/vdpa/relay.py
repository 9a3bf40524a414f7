"""``relay_vring_used``: the mediated-used-ring relay with dirty logging (DPDK's ``rte_vdpa_relay_vring_used``).

For software-assisted live migration a driver points the hardware at a
*mediated* split ring: the hardware reads the guest's descriptors and avail
ring but writes its used entries into the mediated used ring.  A relay thread
then calls :func:`relay_vring_used`, which

1. copies each used entry the hardware added (from the guest's ``used->idx``
   up to the mediated one) into the guest's used ring;
2. walks the guest's descriptor chain of each entry (through an indirect
   table if the head has ``VRING_DESC_F_INDIRECT``) and, while LOG_ALL is
   negotiated and a log is mapped, marks the pages of every device-writable
   buffer in the dirty log;
3. publishes the guest's ``used->idx`` (release);
4. with EVENT_IDX, writes the new index into the mediated ring's ``used_event``
   slot, so that the hardware interrupts on its next completion;

and returns the number of entries relayed, or -1: no device, no mediated
ring, no such vring, a packed ring, a descriptor id or a chain beyond the ring
size, an indirect table longer than the ring or outside guest memory.  On -1
nothing is published (the guest's index is unchanged).

It does not log the used ring itself: the caller logs it
(``VhostLibrary.log_used_vring``), e.g. when the relay stops.

The copy and the walk are one numba kernel over the two rings' views.
"""

from __future__ import annotations

import numpy as np

from dataplane.rings.atomics import load_acquire, store_release
from dataplane.rings.jit import kernel
from dataplane.rings.mem import ld64
from dataplane.rings.regions import translate
from dataplane.rings.split import SplitVring, split_vring_from_addrs
from dataplane.rings.virtqueue import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from dataplane.vhost.dirty_log import log_sync, log_write_gpa, make_log
from dataplane.vhost.library import VhostError, get_library
from dataplane.vhost_user.features import VirtioFeature as VF

__all__ = ["relay_vring_used", "relay_used_entries"]

_USED_IDX = 1  # used ring, u16 slot of idx (after flags)


@kernel
def _log_chain(desc_hva, num, regions, lg, head):
    """Mark the device-writable buffers of the chain at ``head``; False if the chain is malformed."""
    i = head
    steps = 0
    table = desc_hva
    limit = np.int64(num)
    indirect = False
    while True:
        if i >= limit or steps >= limit:
            return False
        entry = table + np.uint64(16 * i)
        addr = ld64(entry)
        word = ld64(entry + np.uint64(8))
        length = word & np.uint64(0xFFFFFFFF)
        flags = (word >> np.uint64(32)) & np.uint64(0xFFFF)
        nxt = (word >> np.uint64(48)) & np.uint64(0xFFFF)
        if flags & np.uint64(VRING_DESC_F_INDIRECT):
            if steps > 0 or indirect:
                return False  # indirect only at the head of a chain, never nested
            n = length >> np.uint64(4)
            if n == 0 or n > np.uint64(num) or length & np.uint64(15):
                return False
            hva = translate(regions, addr, length)
            if hva == 0:
                return False
            table = hva
            limit = np.int64(n)
            i = np.int64(0)
            indirect = True
            continue
        if flags & np.uint64(VRING_DESC_F_WRITE):
            log_write_gpa(lg, addr, np.int64(length))
        steps += 1
        if not flags & np.uint64(VRING_DESC_F_NEXT):
            return True
        i = np.int64(nxt)


@kernel
def relay_used_entries(guest, med, num, regions, lg, event_idx):
    """The relay (see the module docstring) over ring views: returns entries relayed or -1."""
    idx = np.int64(load_acquire(guest.used_u16, _USED_IDX))
    idx_m = np.int64(load_acquire(med.used_u16, _USED_IDX))
    ret = (idx_m - idx) & 0xFFFF
    mask = num - 1
    while idx != idx_m:
        slot = idx & mask
        head = med.used_u32[1 + 2 * slot]
        guest.used_u32[1 + 2 * slot] = head
        guest.used_u32[2 + 2 * slot] = med.used_u32[2 + 2 * slot]
        if head >= num:
            return -1
        if not _log_chain(np.uint64(guest.desc_u64.ctypes.data), num, regions, lg, np.int64(head)):
            return -1
        idx = (idx + 1) & 0xFFFF
    log_sync(lg)
    store_release(guest.used_u16, _USED_IDX, np.uint16(idx_m))
    if event_idx:
        med.avail[2 + num] = np.uint16(idx_m)
    return ret


def relay_vring_used(vid: int, qid: int, vring_m: SplitVring | None, *, lib=None) -> int:
    """Relay vring ``qid``'s used entries from mediated ring ``vring_m`` (a
    :class:`~dataplane.rings.split.SplitVring` of the same size) to the guest; see the module docstring."""
    lib = lib or get_library()
    if vring_m is None:
        return -1
    try:
        dev = lib.get_device(vid)
        vq = lib.get_vhost_vring(vid, qid)
    except VhostError:
        return -1
    if dev.has_feature(VF.VIRTIO_F_RING_PACKED) or not vq.access_ok or vq.size == 0:
        return -1
    guest = split_vring_from_addrs(vq.desc_hva, vq.avail_hva, vq.used_hva, vq.size)
    if dev.log_all and dev.dirty_log is not None:
        lg = make_log(dev.dirty_log.bitmap, on=True)
    else:
        lg = make_log()
    return int(relay_used_entries(guest, vring_m, vq.size, dev.region_table, lg,
                                  dev.has_feature(VF.VIRTIO_RING_F_EVENT_IDX)))
