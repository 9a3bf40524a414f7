"""The vDPA drivers' features table (DPDK's "Features availability in vDPA drivers"), computed from the drivers.

Each driver registers what the table needs (:func:`register_driver`): its
``get_features`` / ``get_protocol_features`` (the values a device of that
driver offers) and its metadata: the kernel drivers and architectures it was
tested with, and the documents that describe it.  :func:`features_table`
builds the rows of the seed table, in its order, with one column per
registered driver; nothing in a cell is typed by hand:

* a virtio or protocol feature row is ``Y`` when the bit is in what the
  driver offers a vhost-user front-end: its features ANDed with what the
  vhost-user back-end can carry (:data:`~dataplane.vhost.vdpa.VDPA_SOCKET_FEATURES`:
  ACCESS_PLATFORM never is), its protocol features with what the back-end
  implements for a device with the driver's ops;
  (the device-specific rows are virtio-net's: a blk driver has none of them);
* a kernel-driver or architecture row is ``Y`` when the driver's metadata
  lists it;
* "Usage doc" / "Design doc" are ``Y`` when ``docs/vdpa.md`` has the
  driver's section with a "Usage" / "Design" heading under it; "Perf doc" when
  a performance document for it exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from types import SimpleNamespace

from dataplane.vhost.library import implemented_protocol_features
from dataplane.vhost.vdpa import VDPA_SOCKET_FEATURES, VdpaDeviceClass
from dataplane.vhost_user.features import VhostUserProtocolFeature as PF, VirtioFeature as VF

__all__ = ["VdpaDriverInfo", "register_driver", "list_drivers", "ROWS", "features_table", "format_table", "docs_dir"]

#: The seed table's rows, in order: (label, kind, what) with kind "feature" (virtio bit),
#: "protocol" (vhost-user protocol bit), "kdrv", "arch" or "doc".
ROWS: list[tuple[str, str, object]] = [
    ("csum", "feature", VF.VIRTIO_NET_F_CSUM),
    ("guest csum", "feature", VF.VIRTIO_NET_F_GUEST_CSUM),
    ("mac", "feature", VF.VIRTIO_NET_F_MAC),
    ("gso", "feature", VF.VIRTIO_NET_F_GSO),
    ("guest tso4", "feature", VF.VIRTIO_NET_F_GUEST_TSO4),
    ("guest tso6", "feature", VF.VIRTIO_NET_F_GUEST_TSO6),
    ("ecn", "feature", VF.VIRTIO_NET_F_HOST_ECN),
    ("ufo", "feature", VF.VIRTIO_NET_F_HOST_UFO),
    ("host tso4", "feature", VF.VIRTIO_NET_F_HOST_TSO4),
    ("host tso6", "feature", VF.VIRTIO_NET_F_HOST_TSO6),
    ("mrg rxbuf", "feature", VF.VIRTIO_NET_F_MRG_RXBUF),
    ("ctrl vq", "feature", VF.VIRTIO_NET_F_CTRL_VQ),
    ("ctrl rx", "feature", VF.VIRTIO_NET_F_CTRL_RX),
    ("any layout", "feature", VF.VIRTIO_F_ANY_LAYOUT),
    ("guest announce", "feature", VF.VIRTIO_NET_F_GUEST_ANNOUNCE),
    ("mq", "feature", VF.VIRTIO_NET_F_MQ),
    ("version 1", "feature", VF.VIRTIO_F_VERSION_1),
    ("log all", "feature", VF.VHOST_F_LOG_ALL),
    ("indirect desc", "feature", VF.VIRTIO_RING_F_INDIRECT_DESC),
    ("event idx", "feature", VF.VIRTIO_RING_F_EVENT_IDX),
    ("mtu", "feature", VF.VIRTIO_NET_F_MTU),
    ("in_order", "feature", VF.VIRTIO_F_IN_ORDER),
    ("IOMMU platform", "feature", VF.VIRTIO_F_ACCESS_PLATFORM),
    ("packed", "feature", VF.VIRTIO_F_RING_PACKED),
    ("proto mq", "protocol", PF.VHOST_USER_PROTOCOL_F_MQ),
    ("proto log shmfd", "protocol", PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD),
    ("proto rarp", "protocol", PF.VHOST_USER_PROTOCOL_F_RARP),
    ("proto reply ack", "protocol", PF.VHOST_USER_PROTOCOL_F_REPLY_ACK),
    ("proto host notifier", "protocol", PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER),
    ("proto pagefault", "protocol", PF.VHOST_USER_PROTOCOL_F_PAGEFAULT),
    ("BSD nic_uio", "kdrv", "nic_uio"),
    ("Linux VFIO", "kdrv", "vfio"),
    ("Other kdrv", "kdrv", "other"),
    ("ARMv7", "arch", "armv7"),
    ("ARMv8", "arch", "armv8"),
    ("Power8", "arch", "power8"),
    ("x86-32", "arch", "x86-32"),
    ("x86-64", "arch", "x86-64"),
    ("Usage doc", "doc", "Usage"),
    ("Design doc", "doc", "Design"),
    ("Perf doc", "doc", "Perf"),
]


@dataclass
class VdpaDriverInfo:
    """What the table reads of one driver.

    ``get_features()`` / ``get_protocol_features()``: what a device of the driver offers (its
    ops' values for a default device); ``ops_class``: its ops class (which optional ops it has
    decides what the back-end implements for it, e.g. CONFIG needs ``get_config``);
    ``dev_type``: net (0) or blk (1); ``kdrv``: kernel drivers it works with ("vfio",
    "nic_uio", "other"); ``arch``: architectures it was tested on; ``perf_doc``: the path of a
    performance document (relative to the repository), if any.
    """

    name: str
    get_features: Callable[[], int]
    get_protocol_features: Callable[[], int]
    ops_class: type
    dev_type: int = 0
    kdrv: frozenset[str] = field(default_factory=frozenset)
    arch: frozenset[str] = field(default_factory=frozenset)
    perf_doc: str | None = None


_drivers: list[VdpaDriverInfo] = []


def register_driver(info: VdpaDriverInfo) -> None:
    """Add a driver's column (a second registration of the same name replaces the first)."""
    global _drivers
    _drivers = [d for d in _drivers if d.name != info.name] + [info]


#: The driver modules of this installation (each registers its column when imported).
DRIVER_MODULES = ("dataplane.vdpa.vdpasim", "dataplane.vdpa.ifcvf.driver", "dataplane.vdpa.mlx5.driver")


def load_drivers() -> None:
    """Import every driver module, so that each has registered its column."""
    import importlib

    for name in DRIVER_MODULES:
        importlib.import_module(name)


def list_drivers() -> list[VdpaDriverInfo]:
    """Every driver's column (the installation's driver modules are loaded first), in the order of
    :data:`DRIVER_MODULES` whatever order they were imported in (others after, as registered)."""
    load_drivers()

    def rank(info: VdpaDriverInfo) -> int:
        module = getattr(info.ops_class, "__module__", "")
        return DRIVER_MODULES.index(module) if module in DRIVER_MODULES else len(DRIVER_MODULES)

    return sorted(_drivers, key=rank)


def docs_dir() -> str:
    """The repository's ``docs/`` directory."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs")


def _doc_sections(driver: str, docs: str) -> set[str]:
    """The headings ("Usage", "Design") under ``driver``'s section of docs/vdpa.md."""
    try:
        text = open(os.path.join(docs, "vdpa.md"), encoding="utf-8").read()
    except OSError:
        return set()
    found: set[str] = set()
    inside = 0
    for m in re.finditer(r"^(#+)\s+(.*?)\s*$", text, re.M):
        level, title = len(m.group(1)), m.group(2)
        if inside and level <= inside:
            inside = 0
        if not inside and re.fullmatch(rf"(the )?`?{re.escape(driver)}`?( driver)?", title, re.I):
            inside = level
            continue
        if inside and level > inside:
            found.add(title.split()[0].capitalize())
    return found


def features_table(drivers: list[VdpaDriverInfo] | None = None, docs: str | None = None) -> list[list[str]]:
    """The table: a header row ``["Feature", driver...]``, then one row per :data:`ROWS` entry."""
    drivers = list_drivers() if drivers is None else drivers
    docs = docs_dir() if docs is None else docs
    cols = []
    for d in drivers:
        features = int(d.get_features()) & VDPA_SOCKET_FEATURES
        if d.dev_type != 0:  # the rows name net bits: a blk device's bits 0-23 mean other things
            features &= ~((1 << 24) - 1)
        cls = VdpaDeviceClass(SimpleNamespace(name=d.name, type=d.dev_type, ops=d.ops_class))
        protocol = int(d.get_protocol_features()) & implemented_protocol_features(cls)
        sections = _doc_sections(d.name, docs)
        perf = d.perf_doc is not None and os.path.exists(os.path.join(os.path.dirname(docs), d.perf_doc))
        cols.append((d, features, protocol, sections, perf))
    table = [["Feature"] + [d.name for d in drivers]]
    for label, kind, what in ROWS:
        row = [label]
        for d, features, protocol, sections, perf in cols:
            if kind == "feature":
                yes = bool(features >> int(what) & 1)
            elif kind == "protocol":
                yes = bool(protocol >> int(what) & 1)
            elif kind == "kdrv":
                yes = what in d.kdrv
            elif kind == "arch":
                yes = what in d.arch
            elif what == "Perf":
                yes = perf
            else:
                yes = what in sections
            row.append("Y" if yes else "")
        table.append(row)
    return table


def format_table(table: list[list[str]]) -> str:
    """Text columns: the labels left-aligned, each driver's cells centred under its name."""
    width0 = max(len(r[0]) for r in table)
    widths = [max(len(r[i]) for r in table) for i in range(1, len(table[0]))]
    lines = []
    for r in table:
        cells = [r[0].ljust(width0)] + [c.center(w) for c, w in zip(r[1:], widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``dataplane vdpa features``: print the table of every driver this installation has."""
    import sys

    from dataplane.lcores.usage import version_text

    if argv in (["-h"], ["--help"]):
        print("Usage: dataplane vdpa features\n\nPrint the table of the vDPA drivers' features.")
        return 0
    if argv == ["--version"]:
        sys.stdout.write(version_text("dataplane"))
        return 0
    load_drivers()

    if argv:
        print(f"Usage: dataplane vdpa features (no arguments; got {' '.join(argv)})", file=sys.stderr)
        return 2
    sys.stdout.write(format_table(features_table()))
    return 0
