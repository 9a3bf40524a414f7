"""The ifcvf column of the vDPA features table: DPDK's feature set (HW-assisted live migration included)."""

from __future__ import annotations

from dataplane.vdpa.features_table import features_table, list_drivers


def _column(table, name):
    header = table[0]
    i = header.index(name)
    return {row[0]: row[i] for row in table[1:]}


def test_ifcvf_column():
    assert "ifcvf" in [d.name for d in list_drivers()]
    col = _column(features_table(), "ifcvf")
    yes = {label for label, cell in col.items() if cell == "Y"}
    for label in ("mac", "mtu", "ctrl vq", "guest announce", "mq", "version 1", "indirect desc", "event idx",
                  "packed", "proto mq", "proto reply ack", "proto host notifier", "Linux VFIO", "x86-64",
                  "Usage doc", "Design doc"):
        assert label in yes, label
    assert "log all" in yes and "proto log shmfd" in yes  # HW-assisted live migration
    for label in ("IOMMU platform", "mrg rxbuf", "csum", "BSD nic_uio"):
        assert label not in yes, label
