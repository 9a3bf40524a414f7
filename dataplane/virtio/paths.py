"""Which Rx/Tx callbacks a port uses: the rules of seed 003 ("Virtio PMD Rx/Tx Callbacks").

Rx (six callbacks)::

    split,  vectorized allowed, mergeable off, in-order off -> virtio_recv_pkts_vec
    split,  in-order                                        -> virtio_recv_pkts_inorder  (mergeable or not)
    split,  mergeable                                       -> virtio_recv_mergeable_pkts
    split                                                   -> virtio_recv_pkts
    packed, mergeable                                       -> virtio_recv_mergeable_pkts_packed (regular and in-order)
    packed                                                  -> virtio_recv_pkts_packed           (regular and in-order)

Tx (three)::

    split, in-order -> virtio_xmit_pkts_inorder;  split -> virtio_xmit_pkts;  packed -> virtio_xmit_pkts_packed

"In-order" and "mergeable" mean *negotiated* (VIRTIO_F_IN_ORDER, VIRTIO_NET_F_MRG_RXBUF),
not merely asked for in the devargs; as in DPDK, in-order disables the vector
path and so does mergeable.  Here every callback is the same pair of numba
kernels of :mod:`dataplane.virtio.rxtx` specialised by the ring layout and
the ``mergeable`` flag (the ring kernels handle in-order themselves); the
names say which DPDK behaviour the port has, for logs, stats and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.vhost_user.features import VirtioFeature as VF, bit

__all__ = ["RxTxPaths", "select_paths", "RX_PATHS", "TX_PATHS"]

RX_PATHS = (
    "virtio_recv_pkts",
    "virtio_recv_mergeable_pkts",
    "virtio_recv_pkts_vec",
    "virtio_recv_pkts_inorder",
    "virtio_recv_pkts_packed",
    "virtio_recv_mergeable_pkts_packed",
)
TX_PATHS = ("virtio_xmit_pkts", "virtio_xmit_pkts_inorder", "virtio_xmit_pkts_packed")


@dataclass(frozen=True)
class RxTxPaths:
    rx: str
    tx: str
    packed: bool
    mergeable: bool
    in_order: bool


def select_paths(features: int, vectorized: bool = False) -> RxTxPaths:
    """The seed's choice for a negotiated feature mask and the ``vectorized`` devarg."""
    packed = bool(features & bit(VF.VIRTIO_F_RING_PACKED))
    mrg = bool(features & bit(VF.VIRTIO_NET_F_MRG_RXBUF))
    in_order = bool(features & bit(VF.VIRTIO_F_IN_ORDER))
    if packed:
        rx = "virtio_recv_mergeable_pkts_packed" if mrg else "virtio_recv_pkts_packed"
        tx = "virtio_xmit_pkts_packed"
    else:
        if vectorized and not mrg and not in_order:
            rx = "virtio_recv_pkts_vec"
        elif in_order:
            rx = "virtio_recv_pkts_inorder"
        elif mrg:
            rx = "virtio_recv_mergeable_pkts"
        else:
            rx = "virtio_recv_pkts"
        tx = "virtio_xmit_pkts_inorder" if in_order else "virtio_xmit_pkts"
    return RxTxPaths(rx, tx, packed, mrg, in_order)
