"""Carry the MAC a guest sets through its control queue to a vDPA device, as libvirt does.

QEMU's virtio-net keeps the control queue of a ``vhost-user`` netdev for itself: only
``vhost-vdpa`` netdevs get theirs forwarded.  A guest's ``VIRTIO_NET_CTRL_MAC_ADDR_SET``
therefore changes QEMU's NIC and never reaches the back-end.  QEMU announces such a change
with the QMP event ``NIC_RX_FILTER_CHANGED`` (sent once, then again only after a
``query-rx-filter`` of that NIC), and a management agent applies the new filter to the
host device: libvirt does it for macvtap with ``trustGuestRxFilters``.

:class:`GuestMacFollower` is that agent for vDPA devices: for each followed NIC it reads
``query-rx-filter``'s ``main-mac`` and sets it on the device with ``DEV_ATTR_SET`` (what
``vdpa dev set name DEV mac MAC`` sends), once at start and on every event.

    dataplane vdpa [--file-prefix P] follow-guest-mac --qmp QMP_SOCKET NIC_ID=DEV [NIC_ID=DEV ...]
"""

from __future__ import annotations

import json
import re
import select
import socket
import time

from dataplane import log as dplog

from .attrs import VdpaAttr, VdpaCmd

__all__ = ["GuestMacFollower", "QmpClient", "QmpError", "main"]

log = dplog.get_logger("dataplane.vdpa.mgmt")

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
#: a QMP line longer than this is refused (QEMU's replies here are a few hundred bytes)
MAX_QMP_LINE = 1 << 20


class QmpError(Exception):
    """QMP said something unexpected, returned an error, or closed."""


class QmpClient:
    """A QMP connection on a unix socket: :meth:`execute` a command, :meth:`event` the next event."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self._buf = b""
            self.events: list[dict] = []
            greeting = self._read(timeout)
            if "QMP" not in greeting:
                raise QmpError(f"not a QMP greeting: {greeting!r:.200}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def _read(self, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_QMP_LINE:
                raise QmpError("a QMP line of more than 1 MiB")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("QMP said nothing")
            if not select.select([self.sock], [], [], left)[0]:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpError("QMP closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpError(f"not JSON: {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise QmpError(f"not a QMP object: {line[:200]!r}")
        return msg

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 30.0):
        """Run ``command``; its ``return`` value (events read meanwhile are kept for :meth:`event`)."""
        req = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read(timeout)
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise QmpError(f"{command}: {msg['error']}")
            elif "return" in msg:
                return msg["return"]

    def event(self, timeout: float | None = None) -> dict:
        """The next event (TimeoutError after ``timeout`` seconds)."""
        if self.events:
            return self.events.pop(0)
        while True:
            msg = self._read(timeout)
            if "event" in msg:
                return msg

    def close(self) -> None:
        self.sock.close()


class GuestMacFollower:
    """Follow NICs of one QEMU (``nics``: QEMU NIC id → vDPA device name) into the vDPA
    management service at ``service_path`` (the ``vdpa.sock`` of a ``dataplane-vdpa``)."""

    def __init__(self, qmp_path: str, nics: dict[str, str], service_path: str):
        self.qmp = QmpClient(qmp_path)
        self.nics = dict(nics)
        self.service_path = service_path
        self.applied: dict[str, str] = {}  # device -> the MAC last set on it

    def sync(self, nic: str) -> str | None:
        """Read ``nic``'s filter (which re-arms QEMU's event) and give its main MAC to the device."""
        filters = self.qmp.execute("query-rx-filter", {"name": nic})
        mac = filters[0].get("main-mac") if isinstance(filters, list) and filters else None
        if not isinstance(mac, str) or not _MAC.match(mac):
            log.error("guest-mac: query-rx-filter gave no usable main-mac", nic=nic, reply=str(filters)[:200])
            return None
        dev = self.nics[nic]
        if self.applied.get(dev) == mac:
            return mac
        from .transport import MgmtClient

        with MgmtClient(self.service_path) as client:
            reply = client.request(VdpaCmd.DEV_ATTR_SET, [(VdpaAttr.DEV_NAME, dev),
                                                          (VdpaAttr.DEV_NET_CFG_MACADDR, bytes.fromhex(mac.replace(":", "")))])
        if reply.error:
            log.error("guest-mac: the device refused the MAC", nic=nic, dev=dev, mac=mac, error=reply.error,
                      message=reply.extack)
            return None
        self.applied[dev] = mac
        log.info("guest-mac: device MAC follows the guest", nic=nic, dev=dev, mac=mac)
        return mac

    def run(self, ready=None) -> None:
        """Sync every NIC, call ``ready()``, then follow events until QEMU closes QMP."""
        for nic in self.nics:
            self.sync(nic)
        if ready is not None:
            ready()
        while True:
            try:
                ev = self.qmp.event()
            except QmpError as exc:
                log.info("guest-mac: QMP ended", reason=str(exc))
                return
            data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
            if ev.get("event") == "NIC_RX_FILTER_CHANGED" and data.get("name") in self.nics:
                self.sync(data["name"])

    def close(self) -> None:
        self.qmp.close()


USAGE = "Usage: dataplane vdpa [--file-prefix P] follow-guest-mac --qmp QMP_SOCKET NIC_ID=DEV [NIC_ID=DEV ...]\n"


def main(argv: list[str], file_prefix: str | None) -> int:
    """``follow-guest-mac``: runs until QEMU closes its QMP socket (or SIGINT/SIGTERM)."""
    import sys

    from dataplane.memory.runtime import RuntimeDir

    from .service import SOCKET_NAME, default_file_prefix

    args = list(argv)
    if len(args) < 3 or args[0] != "--qmp" or any(a.count("=") != 1 or a.startswith("=") or a.endswith("=")
                                                  for a in args[2:]):
        sys.stderr.write(USAGE)
        return 1
    nics = dict(a.split("=", 1) for a in args[2:])
    try:
        service = RuntimeDir(file_prefix or default_file_prefix()).file(SOCKET_NAME)
        follower = GuestMacFollower(args[1], nics, service)
    except (OSError, QmpError, ValueError) as exc:
        sys.stderr.write(f"vdpa: follow-guest-mac: {exc}\n")
        return 1
    try:
        follower.run(ready=lambda: print("following " + " ".join(f"{n}={d}" for n, d in nics.items()), flush=True))
    except (OSError, QmpError) as exc:
        sys.stderr.write(f"vdpa: follow-guest-mac: {exc}\n")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
    return 0
