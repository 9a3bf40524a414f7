"""The ``net_virtio_user`` devargs (seed 003, "Virtio PMD arguments"), parsed and checked.

Keys and defaults (DPDK's virtio-user vdev)::

    path=SOCKET      vhost-user socket (or /dev/vhost-net for the vhost-kernel backend)  required
    mac=XX:..:XX     MAC address                                    random, locally administered
    cq=0|1           control queue (emulated in the driver, as DPDK  0
                     does for vhost-user back-ends)
    queue_size=N     descriptors per virtqueue                      256
    queues=N         queue pairs                                    1
    iface=NAME       tap interface of the vhost-kernel backend      (none)
    server=0|1       we listen on ``path``, the back-end connects   0
    mrg_rxbuf=0|1    offer VIRTIO_NET_F_MRG_RXBUF                   1
    in_order=0|1     offer VIRTIO_F_IN_ORDER                        1
    packed_vq=0|1    offer VIRTIO_F_RING_PACKED                     0
    vectorized=0|1   allow the vector Rx path (split rings; with    0
                     packed_vq=1 the packed scalar path is used and
                     a log line says so, as DPDK does on a CPU
                     without AVX-512)
    speed=MBPS       link speed reported                            10000

Every impossible value or combination is a :class:`DevargsError` naming the
key, raised at probe time (before any socket is touched).
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass

from dataplane import log as dplog
from dataplane.lcores.eal_args import EalArgsError, parse_devargs
from dataplane.rings.virtqueue import MAX_QUEUE_SIZE

__all__ = ["DevargsError", "VirtioUserArgs", "parse_virtio_user_devargs", "VALID_KEYS", "VALID_SPEEDS", "MAX_QUEUE_PAIRS"]

log = dplog.get_logger("dataplane.virtio")

#: DPDK's VIRTIO_MAX_VIRTQUEUE_PAIRS.
MAX_QUEUE_PAIRS = 128
#: Speeds (Mbps) DPDK's virtio driver accepts for ``speed`` (RTE_ETH_SPEED_NUM_*).
VALID_SPEEDS = (10, 100, 1000, 2500, 5000, 10000, 20000, 25000, 40000, 50000, 56000, 100000, 200000)
VALID_KEYS = (
    "path",
    "mac",
    "cq",
    "queue_size",
    "queues",
    "iface",
    "server",
    "mrg_rxbuf",
    "in_order",
    "packed_vq",
    "vectorized",
    "speed",
)
VHOST_NET_DEV = "/dev/vhost-net"


class DevargsError(ValueError):
    """A bad ``net_virtio_user`` devargs string; ``key`` names the culprit when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class VirtioUserArgs:
    """Checked devargs of one virtio-user port."""

    name: str
    path: str
    mac: bytes
    cq: bool = False
    queue_size: int = 256
    queues: int = 1
    iface: str | None = None
    server: bool = False
    mrg_rxbuf: bool = True
    in_order: bool = True
    packed_vq: bool = False
    vectorized: bool = False
    speed: int = 10000

    @property
    def mac_str(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)


def _bool(args: dict, key: str, default: bool) -> bool:
    if key not in args:
        return default
    v = args[key]
    if v not in ("0", "1"):
        raise DevargsError(f"virtio_user: {key}={v!r} must be 0 or 1", key)
    return v == "1"


def _int(args: dict, key: str, default: int) -> int:
    if key not in args:
        return default
    v = args[key]
    try:
        return int(v, 0)
    except ValueError:
        raise DevargsError(f"virtio_user: {key}={v!r} is not an integer", key) from None


def _mac(text: str | None) -> bytes:
    if text is None:
        b = bytearray(random.getrandbits(8) for _ in range(6))
        b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered (rte_eth_random_addr)
        return bytes(b)
    t = text.strip("[]")
    parts = t.replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise DevargsError(f"virtio_user: mac={text!r} is not a MAC address (XX:XX:XX:XX:XX:XX)", "mac") from None
    if mac[0] & 1:
        raise DevargsError(f"virtio_user: mac={text!r} is a multicast address", "mac")
    return mac


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def parse_virtio_user_devargs(text: str) -> VirtioUserArgs:
    """Parse and check ``net_virtio_userN,path=...,...``; :class:`DevargsError` on anything wrong."""
    try:
        d = parse_devargs(text)
    except EalArgsError as e:
        raise DevargsError(str(e)) from None
    if not d.name.startswith("net_virtio_user"):
        raise DevargsError(f"virtio_user: device name {d.name!r} must start with 'net_virtio_user'")
    args = dict(d.args)
    unknown = [k for k in args if k not in VALID_KEYS]
    if unknown:
        raise DevargsError(f"virtio_user: unknown key(s) {', '.join(unknown)}; valid: {', '.join(VALID_KEYS)}", unknown[0])
    path = args.get("path")
    if not path:
        raise DevargsError("virtio_user: 'path' is mandatory (vhost-user socket, or /dev/vhost-net with iface=)", "path")
    queues = _int(args, "queues", 1)
    if not 1 <= queues <= MAX_QUEUE_PAIRS:
        raise DevargsError(f"virtio_user: queues={queues} must be in 1..{MAX_QUEUE_PAIRS}", "queues")
    qsize = _int(args, "queue_size", 256)
    if not 1 <= qsize <= MAX_QUEUE_SIZE or qsize & (qsize - 1):
        raise DevargsError(f"virtio_user: queue_size={qsize} must be a power of two in 1..{MAX_QUEUE_SIZE}", "queue_size")
    speed = _int(args, "speed", 10000)
    if speed not in VALID_SPEEDS:
        raise DevargsError(f"virtio_user: speed={speed} is not one of {', '.join(map(str, VALID_SPEEDS))} (Mbps)", "speed")
    cq = _bool(args, "cq", False)
    server = _bool(args, "server", False)
    mrg = _bool(args, "mrg_rxbuf", True)
    in_order = _bool(args, "in_order", True)
    packed = _bool(args, "packed_vq", False)
    vectorized = _bool(args, "vectorized", False)
    iface = args.get("iface")
    if "iface" in args and not iface:
        raise DevargsError("virtio_user: iface= needs an interface name", "iface")
    mac = _mac(args.get("mac"))

    kernel_backend = iface is not None or path == VHOST_NET_DEV or _is_char_device(path)
    if kernel_backend:
        if server:
            raise DevargsError("virtio_user: server=1 is for vhost-user sockets, not the vhost-kernel backend (iface/vhost-net)", "server")
        if not os.path.exists(VHOST_NET_DEV):
            raise DevargsError(
                f"virtio_user: iface={iface!r} needs the vhost-kernel backend, but {VHOST_NET_DEV} does not exist "
                "(load the vhost_net module, or use a vhost-user socket path)",
                "iface",
            )
        raise DevargsError(
            "virtio_user: the vhost-kernel backend (iface / /dev/vhost-net) is not implemented; use a vhost-user socket path",
            "iface",
        )
    if vectorized and packed:
        log.info("packed ring vectorized path not available, using the packed scalar path", port=d.name,
                 devargs="packed_vq=1,vectorized=1", rx="virtio_recv_pkts_packed", tx="virtio_xmit_pkts_packed")
    return VirtioUserArgs(
        name=d.name,
        path=path,
        mac=mac,
        cq=cq,
        queue_size=qsize,
        queues=queues,
        iface=iface,
        server=server,
        mrg_rxbuf=mrg,
        in_order=in_order,
        packed_vq=packed,
        vectorized=vectorized,
        speed=speed,
    )
