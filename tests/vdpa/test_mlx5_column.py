"""The mlx5 column of the vDPA features table: what the driver offers with the emulated card's caps, against the
seed's mlx5 column."""

from __future__ import annotations

from dataplane.nic.mlx5.objects import Caps
from dataplane.vdpa.features_table import features_table, list_drivers, load_drivers
from dataplane.vdpa.mlx5 import features as F
from dataplane.vdpa.mlx5.driver import _default_caps
from dataplane.vhost_user.features import VirtioFeature as VF, bit

#: the virtio and protocol feature rows the seed ("Features availability in vDPA drivers") marks Y for mlx5
SEED_MLX5_Y = {"csum", "guest csum", "host tso4", "host tso6", "any layout", "guest announce", "mq", "version 1",
               "log all", "packed", "proto mq", "proto log shmfd", "proto host notifier"}


def _column(table, name):
    i = table[0].index(name)
    return {row[0]: row[i] for row in table[1:]}


def test_mlx5_column():
    load_drivers()
    assert "mlx5" in [d.name for d in list_drivers()]
    col = _column(features_table(), "mlx5")
    yes = {label for label, cell in col.items() if cell == "Y"}
    assert SEED_MLX5_Y <= yes
    assert {"mtu", "Other kdrv", "x86-64", "Usage doc", "Design doc"} <= yes
    for label in ("IOMMU platform", "mrg rxbuf", "indirect desc", "event idx", "ctrl vq", "proto reply ack",
                  "Linux VFIO"):
        assert label not in yes, label
    # the column is the probed card's offer (0x154c60180b, checked in test_mlx5_driver against a running card) ...
    assert F.mlx5_vdpa_features(_default_caps()) == 0x154c60180b
    # ... which are the card's own caps
    vdpa_caps = Caps().vdpa()
    assert {k: vdpa_caps[k] for k in _default_caps()} == _default_caps()
    # and a card without the offload caps would not fill the offload rows
    caps = dict(_default_caps(), tx_csum=0, rx_csum=0, tso_ipv4=0, tso_ipv6=0)
    f = F.mlx5_vdpa_features(caps)
    for b in (VF.VIRTIO_NET_F_CSUM, VF.VIRTIO_NET_F_GUEST_CSUM, VF.VIRTIO_NET_F_HOST_TSO4, VF.VIRTIO_NET_F_HOST_TSO6):
        assert not f & bit(b)
