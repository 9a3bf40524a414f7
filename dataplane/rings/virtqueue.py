"""What split and packed virtqueues share: bit values, error codes, chains.

The spec facts (virtio 1.1+, §2.7 split and §2.8 packed virtqueues) are data
here, defined once; :mod:`dataplane.rings.split` and
:mod:`dataplane.rings.packed` read them.

**Chains.**  The device side hands a burst of descriptor chains to its caller
(the vhost copy loop, an emulated vDPA device) as a :class:`Chains` bundle of
flat arrays, so a numba kernel fills them and another consumes them with no
Python in between:

* ``head[c]``   – the chain's id (split: head descriptor index; packed: buffer id)
* ``ndesc[c]``  – descriptors the chain used in the ring (packed: slots to skip)
* ``seg_start[c]``, ``seg_count[c]`` – its segments in the seg arrays
* ``seg_addr[s]`` (host virtual address, already translated and bounds-checked),
  ``seg_len[s]``, ``seg_write[s]`` (1 = device-writable)
* ``status[c]`` – 0, or an ``ERR_*`` code: the chain must be completed with
  length 0 and nothing in it may be touched.

**Ring state.**  Each side keeps its private indices and counters in a small
``int64`` array (``STATE_*`` slots), so the state can live in shared memory
and be read by the control plane (GET_VRING_BASE) while the lcore runs.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

# -- descriptor flags (split and packed) -------------------------------------
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
# packed only
VRING_PACKED_DESC_F_AVAIL = 1 << 7
VRING_PACKED_DESC_F_USED = 1 << 15

# -- split ring notification flags -------------------------------------------
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

# -- packed ring event suppression (flags field of the event structures) -----
VRING_PACKED_EVENT_FLAG_ENABLE = 0
VRING_PACKED_EVENT_FLAG_DISABLE = 1
VRING_PACKED_EVENT_FLAG_DESC = 2
VRING_PACKED_EVENT_F_WRAP_CTR = 15  # bit of off_wrap holding the wrap counter

DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768

# -- chain status / error codes (counted per code in the ring state) --------
OK = 0
ERR_DESC_INDEX = 1  # a descriptor index (head or next) >= queue size
ERR_CHAIN_LOOP = 2  # chain longer than the queue size: a cycle
ERR_ADDR = 3  # a buffer not wholly inside a mapped region
ERR_INDIRECT = 4  # indirect table bad: length not a multiple of 16, nested, unmapped, NEXT with INDIRECT
ERR_AVAIL_IDX = 5  # the driver's avail idx moved more than the queue size: queue broken
ERR_TOO_MANY_SEGS = 6  # chain has more segments than the caller's seg arrays hold
ERR_LAYOUT = 7  # readable descriptor after a writable one
ERR_NAMES = {
    OK: "ok",
    ERR_DESC_INDEX: "desc_index",
    ERR_CHAIN_LOOP: "chain_loop",
    ERR_ADDR: "bad_address",
    ERR_INDIRECT: "bad_indirect",
    ERR_AVAIL_IDX: "avail_idx_jump",
    ERR_TOO_MANY_SEGS: "too_many_segments",
    ERR_LAYOUT: "bad_layout",
}
N_ERR = len(ERR_NAMES)

# -- ring state slots (int64 array) ------------------------------------------
# device side
STATE_SIZE = 0  # queue size
STATE_LAST_AVAIL = 1  # split: last_avail_idx (free-running u16); packed: index in ring
STATE_LAST_USED = 2  # split: used idx we have published; packed: next used slot
STATE_AVAIL_WRAP = 3  # packed: device's avail wrap counter
STATE_USED_WRAP = 4  # packed: device's used wrap counter
STATE_FEATURES = 5  # EVENT_IDX / IN_ORDER / INDIRECT bits in use (see FEAT_*)
STATE_BROKEN = 6  # nonzero: queue stopped after an ERR_AVAIL_IDX-class fault
STATE_SHADOW_N = 7  # entries in the shadow used ring not yet flushed
STATE_SIGNALLED_USED = 8  # split EVENT_IDX: used idx at our last interrupt decision
STATE_CHAINS = 9  # chains fetched (counter)
STATE_USED = 10  # used entries published (counter)
STATE_ERRORS = 11  # chains failed (counter, all codes)
STATE_ERR_BASE = 16  # STATE_ERR_BASE + code: per-code counters
STATE_SLOTS = STATE_ERR_BASE + N_ERR + 9  # room for side-specific slots after

# features as the kernels see them (not virtio bit numbers: a compact mask)
FEAT_EVENT_IDX = 1
FEAT_IN_ORDER = 2
FEAT_INDIRECT = 4
# The device only reads this ring's buffers (a net Tx queue): WRITE flags are ignored,
# as DPDK's vhost dequeue does.  DPDK's packed virtio Tx leaves WRITE set on the
# header entry of its indirect tables (vring_desc_init_indirect_packed), a layout
# the strict check would reject.
FEAT_READ_ONLY = 8

Chains = namedtuple(
    "Chains",
    ["head", "ndesc", "seg_start", "seg_count", "seg_addr", "seg_len", "seg_write", "status", "total_len"],
)


def make_chains(max_chains: int = 32, max_segs: int = 32 * 64) -> Chains:
    """Preallocated arrays for one burst of up to ``max_chains`` chains."""
    return Chains(
        head=np.zeros(max_chains, np.uint32),
        ndesc=np.zeros(max_chains, np.uint32),
        seg_start=np.zeros(max_chains, np.uint32),
        seg_count=np.zeros(max_chains, np.uint32),
        seg_addr=np.zeros(max_segs, np.uint64),
        seg_len=np.zeros(max_segs, np.uint32),
        seg_write=np.zeros(max_segs, np.uint8),
        status=np.zeros(max_chains, np.uint8),
        total_len=np.zeros(max_chains, np.uint64),
    )


def make_state() -> np.ndarray:
    return np.zeros(STATE_SLOTS, np.int64)


@njit(cache=True, inline="always")
def vring_need_event(event_idx, new_idx, old_idx):
    """virtio spec: notify iff ``event_idx`` lies in ``[old_idx, new_idx)`` (u16 arithmetic)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


@njit(cache=True, inline="always")
def count_error(state, code):
    state[STATE_ERRORS] += 1
    state[STATE_ERR_BASE + code] += 1
