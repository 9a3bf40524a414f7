"""The drivers' features table: the seed table's rows, every cell computed from a driver's ops and metadata."""

from __future__ import annotations

import subprocess
import sys

from dataplane.testing.vdpa_driver import RecordingVdpaOps
from dataplane.vdpa import vdpasim  # noqa: F401  (registers the simulators' columns)
from dataplane.vdpa.features_table import VdpaDriverInfo, features_table, format_table, list_drivers
from dataplane.vdpa.vdpasim import VDPASIM_NET_FEATURES
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

#: The rows of "Features availability in vDPA drivers" (seed 000), in its order.
SEED_ROWS = [
    "csum", "guest csum", "mac", "gso", "guest tso4", "guest tso6", "ecn", "ufo", "host tso4", "host tso6",
    "mrg rxbuf", "ctrl vq", "ctrl rx", "any layout", "guest announce", "mq", "version 1", "log all",
    "indirect desc", "event idx", "mtu", "in_order", "IOMMU platform", "packed", "proto mq", "proto log shmfd",
    "proto rarp", "proto reply ack", "proto host notifier", "proto pagefault", "BSD nic_uio", "Linux VFIO",
    "Other kdrv", "ARMv7", "ARMv8", "Power8", "x86-32", "x86-64", "Usage doc", "Design doc", "Perf doc",
]


def _column(table, name):
    i = table[0].index(name)
    return {row[0]: row[i] for row in table[1:]}


def test_rows_are_the_seed_tables_in_its_order():
    table = features_table()
    assert [row[0] for row in table[1:]] == SEED_ROWS
    assert table[0][0] == "Feature"


def test_cells_come_from_the_drivers_features_and_metadata(tmp_path):
    (tmp_path / "vdpa.md").write_text("# vDPA\n\n## fakedrv\n\n### Usage\n\ntext\n\n## other\n\n### Design\n")
    info = VdpaDriverInfo(
        name="fakedrv",
        get_features=lambda: bit(VF.VIRTIO_NET_F_CSUM) | bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VIRTIO_F_ACCESS_PLATFORM)
        | bit(VF.VHOST_F_LOG_ALL) | bit(VF.VIRTIO_F_RING_PACKED),
        get_protocol_features=lambda: bit(PF.VHOST_USER_PROTOCOL_F_MQ) | bit(PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER)
        | bit(PF.VHOST_USER_PROTOCOL_F_PAGEFAULT) | bit(PF.VHOST_USER_PROTOCOL_F_RARP),
        ops_class=RecordingVdpaOps,
        kdrv=frozenset({"vfio"}),
        arch=frozenset({"x86-64", "armv8"}),
    )
    col = _column(features_table([info], docs=str(tmp_path)), "fakedrv")
    yes = {label for label, cell in col.items() if cell == "Y"}
    assert yes == {"csum", "version 1", "log all", "packed", "proto mq", "proto host notifier", "proto rarp",
                   "Linux VFIO", "ARMv8", "x86-64", "Usage doc"}
    # ACCESS_PLATFORM cannot be negotiated over vhost-user here; PAGEFAULT is not implemented for vDPA devices
    assert col["IOMMU platform"] == col["proto pagefault"] == ""
    assert set(col.values()) <= {"Y", ""}


def test_protocol_rows_follow_the_drivers_optional_ops():
    class NoMigrationDone(RecordingVdpaOps):
        migration_done = None

    info = VdpaDriverInfo("nomig", get_features=lambda: 0,
                          get_protocol_features=lambda: bit(PF.VHOST_USER_PROTOCOL_F_RARP), ops_class=NoMigrationDone)
    assert _column(features_table([info], docs="/nonexistent"), "nomig")["proto rarp"] == ""


def test_simulator_columns_and_the_command():
    names = [d.name for d in list_drivers()]
    assert "vdpasim_net" in names and "vdpasim_blk" in names
    table = features_table()
    net, blk = _column(table, "vdpasim_net"), _column(table, "vdpasim_blk")
    for label, feature in (("mac", VF.VIRTIO_NET_F_MAC), ("mtu", VF.VIRTIO_NET_F_MTU), ("ctrl vq", VF.VIRTIO_NET_F_CTRL_VQ),
                           ("version 1", VF.VIRTIO_F_VERSION_1), ("csum", VF.VIRTIO_NET_F_CSUM)):
        assert (net[label] == "Y") == bool(VDPASIM_NET_FEATURES >> feature & 1), label
    assert blk["mac"] == "" and blk["version 1"] == "Y"  # blk's device bits are not net's
    out = subprocess.run([sys.executable, "-m", "dataplane.cli", "vdpa", "features"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == format_table(table)
