"""The IFC VF as the driver sees it: config space, capability list, BARs, the VFIO-like control channel.

:class:`IfcvfHw` is DPDK's ``struct ifcvf_hw`` plus the bits of ``ifcvf.c`` that touch registers
(reset, status, features, ring programming, stop with the BAR4 ring state).  The emulated card
polls its registers, so every write whose effect is relied on is followed by :meth:`IfcvfHw.flush`
(docs/nic.md: bump ``WRITE_SEQ``, wait for ``ACK_SEQ``).
"""

from __future__ import annotations

import struct
import time

from dataplane import log as dplog
from dataplane.vdpa import vfio
from dataplane.vdpa.ifcvf import regs as R
from dataplane.vdpa.vfio import Bar, VfioChannel, VfioError

__all__ = ["IfcvfHwError", "Bar", "IfcvfHw", "find_vf_dir"]

log = dplog.get_logger("dataplane.vdpa.ifcvf")


class IfcvfHwError(VfioError):
    """The function could not be probed or programmed, or the card refused a request."""


def find_vf_dir(bdf: str, parent: str | None = None) -> str:
    """The directory of PCI function ``bdf`` (:func:`dataplane.vdpa.vfio.find_vf_dir`)."""
    return vfio.find_vf_dir(bdf, parent, error=IfcvfHwError)


class IfcvfHw(VfioChannel):
    """One VF (``vf_dir``): probed through its capability list, its BARs mapped, its channel open."""

    error = IfcvfHwError

    def __init__(self, bdf: str, vf_dir: str, timeout: float = 10.0):
        super().__init__(bdf, vf_dir, timeout)
        self.bar0: Bar | None = None
        self.lm: Bar | None = None
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    # -- probe ------------------------------------------------------------------------
    def _probe(self) -> None:
        self.connect()
        self.info = self.request("get_device_info")
        with open(self.request("get_region_info", bar="config")["path"], "rb") as f:
            self.config = f.read()
        cs = self.config
        vendor, device = struct.unpack_from("<HH", cs, R.PCI_VENDOR_ID)
        sub_vendor, sub_device = struct.unpack_from("<HH", cs, R.PCI_SUBSYSTEM_VENDOR_ID)
        if vendor != R.VIRTIO_PCI_VENDOR or (device, sub_vendor, sub_device) not in R.IFCVF_IDS:
            raise IfcvfHwError(f"{self.bdf}: not an IFCVF function ({vendor:04x}:{device:04x} "
                               f"subsystem {sub_vendor:04x}:{sub_device:04x})")
        if not 0x1000 <= device <= 0x107F:
            raise IfcvfHwError(f"{self.bdf}: Probe device is not a virtio device")
        self.virtio_id = sub_device if device < 0x1040 else device - 0x1040
        self.net = self.virtio_id == R.VIRTIO_ID_NET
        bar_paths = {}
        for bar in (0, 4):
            try:
                bar_paths[bar] = self.request("get_region_info", bar=bar)["path"]
            except IfcvfHwError:
                if bar == 0:
                    raise
        self.bar0 = Bar(bar_paths[0])
        self.bar0_path = bar_paths[0]
        if 4 in bar_paths:
            self.lm = Bar(bar_paths[4])
        else:
            log.warning("HW support live migration not support!", bdf=self.bdf)
        self.caps = self._walk_caps({0: self.bar0.size})
        missing = [t for t in (R.COMMON_CFG, R.NOTIFY_CFG, R.ISR_CFG, R.DEVICE_CFG) if t not in self.caps]
        if missing:
            raise IfcvfHwError(f"{self.bdf}: capability incomplete (missing cfg types {missing})")
        self.common = self.caps[R.COMMON_CFG]["offset"]
        self.notify_base = self.caps[R.NOTIFY_CFG]["offset"]
        self.notify_mult = self.caps[R.NOTIFY_CFG]["multiplier"]
        self.isr = self.caps[R.ISR_CFG]["offset"]
        self.device_cfg = self.caps[R.DEVICE_CFG]["offset"]
        self.seq = self.bar0.r32(R.WRITE_SEQ)
        self.num_queues = self.r16(R.NUM_QUEUES)
        self.device_features = self.read_device_features()

    def _walk_caps(self, bar_sizes: dict[int, int]) -> dict[int, dict]:
        cs = self.config
        out: dict[int, dict] = {}
        pos = cs[R.PCI_CAPABILITY_LIST]
        seen = set()
        while pos and pos not in seen and pos + 16 <= len(cs):
            seen.add(pos)
            cap_id, nxt, cfg_type, bar = cs[pos], cs[pos + 1], cs[pos + 3], cs[pos + R.CAP_BAR]
            if cap_id == R.PCI_CAP_ID_VNDR:
                off, length = struct.unpack_from("<II", cs, pos + R.CAP_OFFSET)
                if bar > 5 or off + length > 0xFFFFFFFF or (bar in bar_sizes and off + length > bar_sizes[bar]):
                    log.warning("invalid capability ignored", bdf=self.bdf, pos=pos, bar=bar, offset=off, length=length)
                elif bar != 0:
                    log.warning("capability in a BAR this driver does not map ignored", bdf=self.bdf, pos=pos, bar=bar)
                else:
                    cap = {"pos": pos, "bar": bar, "offset": off, "length": length}
                    if cfg_type == R.NOTIFY_CFG:
                        cap["multiplier"] = struct.unpack_from("<I", cs, pos + R.CAP_NOTIFY_MULT)[0]
                    out.setdefault(cfg_type, cap)
            pos = nxt
        return out

    # -- registers ------------------------------------------------------------------------
    def r8(self, off: int) -> int: return self.bar0.r8(self.common + off)  # noqa: E704
    def r16(self, off: int) -> int: return self.bar0.r16(self.common + off)  # noqa: E704
    def r32(self, off: int) -> int: return self.bar0.r32(self.common + off)  # noqa: E704
    def w8(self, off: int, v: int) -> None: self.bar0.w8(self.common + off, v)  # noqa: E704
    def w16(self, off: int, v: int) -> None: self.bar0.w16(self.common + off, v)  # noqa: E704
    def w32(self, off: int, v: int) -> None: self.bar0.w32(self.common + off, v)  # noqa: E704

    def flush(self) -> None:
        """Every register write before this call has taken effect when it returns (docs/nic.md)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.bar0.w32(R.WRITE_SEQ, self.seq)
        deadline = time.monotonic() + self.timeout
        while self.bar0.r32(R.ACK_SEQ) != self.seq:
            if time.monotonic() > deadline:
                raise IfcvfHwError(f"{self.bdf}: the card did not acknowledge a register flush")
            time.sleep(0.0001)

    def read_device_features(self) -> int:
        self.w32(R.DEVICE_FEATURE_SELECT, 0)
        self.flush()
        lo = self.r32(R.DEVICE_FEATURE)
        self.w32(R.DEVICE_FEATURE_SELECT, 1)
        self.flush()
        return lo | self.r32(R.DEVICE_FEATURE) << 32

    @property
    def status(self) -> int:
        return self.r8(R.DEVICE_STATUS)

    def reset(self) -> None:
        self.w8(R.DEVICE_STATUS, R.S_RESET)
        self.flush()
        deadline = time.monotonic() + self.timeout
        while self.status != 0:
            if time.monotonic() > deadline:
                raise IfcvfHwError(f"{self.bdf}: reset did not complete")
            time.sleep(0.001)

    def add_status(self, s: int) -> int:
        if s != R.S_RESET:
            s |= self.status
        self.w8(R.DEVICE_STATUS, s)
        self.flush()
        return self.status

    def mac(self) -> bytes:
        return bytes(self.bar0.u8[self.device_cfg + R.NET_CFG_MAC:self.device_cfg + R.NET_CFG_MAC + 6])

    def net_status(self) -> int:
        return self.bar0.r16(self.device_cfg + R.NET_CFG_STATUS)

    def mtu(self) -> int:
        return self.bar0.r16(self.device_cfg + R.NET_CFG_MTU)

    def notify_addr(self, qid: int) -> int:
        """BAR0 offset of vring ``qid``'s doorbell (reads queue_notify_off: select first)."""
        self.w16(R.QUEUE_SELECT, qid)
        self.flush()
        return self.notify_base + self.r16(R.QUEUE_NOTIFY_OFF) * self.notify_mult

    def set_mq(self, value: int) -> None:
        if self.lm is not None:
            self.lm.w32(R.MQ_CFG, value)

    def ring_state(self, qid: int) -> int:
        return self.lm.r32(R.ring_state_off(qid, self.net)) if self.lm is not None else 0

    # -- start / stop (§2.3) ---------------------------------------------------------------
    def start(self, features: int, rings: list[dict]) -> dict[int, int]:
        """Reset, ACK, DRIVER, features, FEATURES_OK, msix_config 0, mq_cfg, the rings, DRIVER_OK.

        ``rings``: ``{qid, desc, avail, used, size, state}`` of the enabled vrings.  Returns each
        ring's doorbell offset in BAR0."""
        self.reset()
        self.add_status(R.S_ACK)
        self.add_status(R.S_DRIVER)
        features &= self.device_features
        self.w32(R.GUEST_FEATURE_SELECT, 0)
        self.flush()
        self.w32(R.GUEST_FEATURE, features & 0xFFFFFFFF)
        self.w32(R.GUEST_FEATURE_SELECT, 1)
        self.flush()
        self.w32(R.GUEST_FEATURE, features >> 32)
        self.flush()
        if not self.add_status(R.S_FEATURES_OK) & R.S_FEATURES_OK:
            raise IfcvfHwError(f"{self.bdf}: the device refused FEATURES_OK for features {features:#x}")
        self.w16(R.MSIX_CONFIG, 0)
        self.flush()
        if self.r16(R.MSIX_CONFIG) == R.NO_VECTOR:
            raise IfcvfHwError(f"{self.bdf}: msix vec alloc failed for device config")
        n = len(rings)
        self.set_mq(max(1, n // 2) if self.net else n)
        log.debug(f"{max(1, n // 2) if self.net else n} queue pairs are enabled", bdf=self.bdf)
        notify = {}
        for ring in rings:
            notify[ring["qid"]] = self.enable_ring(ring)
        self.add_status(R.S_DRIVER_OK)
        return notify

    def enable_ring(self, ring: dict) -> int:
        qid = ring["qid"]
        self.w16(R.QUEUE_SELECT, qid)
        self.flush()
        for off, v in ((R.QUEUE_DESC_LO, ring["desc"]), (R.QUEUE_AVAIL_LO, ring["avail"]),
                       (R.QUEUE_USED_LO, ring["used"])):
            self.w32(off, v & 0xFFFFFFFF)
            self.w32(off + 4, v >> 32)
        self.w16(R.QUEUE_SIZE, ring["size"])
        if self.lm is not None:
            self.lm.w32(R.ring_state_off(qid, self.net), ring["state"])
        self.w16(R.QUEUE_MSIX_VECTOR, qid + 1)
        self.flush()
        if self.r16(R.QUEUE_MSIX_VECTOR) == R.NO_VECTOR:
            raise IfcvfHwError(f"{self.bdf}: queue {qid}: msix vec alloc failed")
        addr = self.notify_base + self.r16(R.QUEUE_NOTIFY_OFF) * self.notify_mult
        self.w16(R.QUEUE_ENABLE, 1)
        self.flush()
        if not self.r16(R.QUEUE_ENABLE):
            raise IfcvfHwError(f"{self.bdf}: queue {qid}: the device refused to enable it")
        return addr

    def disable_ring(self, qid: int) -> int:
        """queue_enable = 0, vector off, wait for the queue to stop; the BAR4 ring state."""
        self.w16(R.QUEUE_SELECT, qid)
        self.flush()
        self.w16(R.QUEUE_ENABLE, 0)
        self.w16(R.QUEUE_MSIX_VECTOR, R.NO_VECTOR)
        self.flush()
        if self.lm is not None:
            for _ in range(10):
                if not self.r16(R.QUEUE_ENABLE):
                    break
                time.sleep(0.01)
                self.flush()
            else:
                log.warning(f"Failed to disable Q:{qid}, Saved state could be invalid", bdf=self.bdf)
        return self.ring_state(qid)

    def stop(self, qids: list[int]) -> dict[int, int]:
        """hw_disable: msix_config off, every ring disabled with its state read; then reset."""
        self.w16(R.MSIX_CONFIG, R.NO_VECTOR)
        self.flush()
        states = {q: self.disable_ring(q) for q in qids}
        self.reset()
        return states

    def close(self) -> None:
        self.close_channel()
        for b in (self.bar0, self.lm):
            if b is not None:
                b.close()
        self.bar0 = self.lm = None
