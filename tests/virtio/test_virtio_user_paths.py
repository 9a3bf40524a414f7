"""Rx/Tx callback selection follows seed 003's rules on the negotiated features."""

from __future__ import annotations

import pytest

from dataplane.vhost_user import VirtioFeature as VF, bit
from dataplane.virtio.paths import RX_PATHS, TX_PATHS, select_paths

MRG = bit(VF.VIRTIO_NET_F_MRG_RXBUF)
IO = bit(VF.VIRTIO_F_IN_ORDER)
PK = bit(VF.VIRTIO_F_RING_PACKED)
V1 = bit(VF.VIRTIO_F_VERSION_1)


@pytest.mark.parametrize(
    "features,vec,rx,tx",
    [
        (V1, False, "virtio_recv_pkts", "virtio_xmit_pkts"),
        (V1 | MRG, False, "virtio_recv_mergeable_pkts", "virtio_xmit_pkts"),
        (V1, True, "virtio_recv_pkts_vec", "virtio_xmit_pkts"),
        (V1 | MRG, True, "virtio_recv_mergeable_pkts", "virtio_xmit_pkts"),  # mergeable disables vector
        (V1 | IO, True, "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),  # in-order disables vector
        (V1 | IO, False, "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
        (V1 | IO | MRG, False, "virtio_recv_pkts_inorder", "virtio_xmit_pkts_inorder"),
        (V1 | PK, False, "virtio_recv_pkts_packed", "virtio_xmit_pkts_packed"),
        (V1 | PK | IO, False, "virtio_recv_pkts_packed", "virtio_xmit_pkts_packed"),
        (V1 | PK | MRG, False, "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
        (V1 | PK | MRG | IO, False, "virtio_recv_mergeable_pkts_packed", "virtio_xmit_pkts_packed"),
    ],
)
def test_selection(features, vec, rx, tx):
    p = select_paths(features, vec)
    assert (p.rx, p.tx) == (rx, tx)
    assert p.rx in RX_PATHS and p.tx in TX_PATHS
    assert p.packed == bool(features & PK) and p.mergeable == bool(features & MRG) and p.in_order == bool(features & IO)


def test_the_seed_names_six_rx_and_three_tx_callbacks():
    assert len(RX_PATHS) == 6 and len(TX_PATHS) == 3
