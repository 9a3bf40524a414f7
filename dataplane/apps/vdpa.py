"""``dataplane-vdpa``: vDPA devices on vhost-user sockets, command-compatible with DPDK's ``dpdk-vdpa``.

::

    dataplane-vdpa [EAL options] -- [--iface PREFIX] [--client] [-i] [--duration S]

    dataplane-vdpa -l 0 --no-huge -m 64 --vdev vdpasim_net0,mac=52:54:00:12:34:56 \\
        --vdev vdpasim_blk0 -- --iface /tmp/vdpa -i
    qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/vdpa0 -netdev vhost-user,id=n0,chardev=c0 ...

* Devices: ``--vdev vdpasim_net<N>[,name=NAME][,mac=MAC][,mtu=MTU]`` and
  ``--vdev vdpasim_blk<N>[,name=NAME][,capacity=SECTORS]`` (Linux's
  simulators: :mod:`~dataplane.vdpa.vdpasim`; NAME defaults to the devargs
  name), probed in command-line order; or added while running with the
  management tool (``dataplane vdpa dev add name NAME mgmtdev vdpasim_net``,
  same ``--file-prefix``).
* PCI devices: ``-a 0000:00:05.1,vdpa=1[,sw-live-migration=1]`` probes an IFC VF with the
  ifcvf driver (:mod:`~dataplane.vdpa.ifcvf`; the function's files are found in the runtime
  parent, where ``dataplane-nic`` puts its cards); without ``vdpa=1`` the function is not
  ours and is skipped with a message.  ``-a 0000:00:06.1,class=vdpa[,event_mode=..,...]`` probes
  a ConnectX VF with the mlx5 driver (:mod:`~dataplane.vdpa.mlx5`); a ``class`` without vdpa
  leaves the function to another class driver.  Either's management device is ``pci/<bdf>``.
* ``--iface PREFIX``: each device gets socket ``PREFIX<n>`` (n from 0, in
  probe order; devices added with the tool continue the numbering);
  without it, ``create SOCKET DEV`` makes one.  ``--client``: connect to the
  sockets (QEMU listens) instead of listening.
* ``-i``: dpdk-vdpa's commands on stdin (prompt ``vdpa> ``): ``help``,
  ``list``, ``create SOCKET DEV``, ``stats DEV QID`` (QID 65535: every
  vring) and ``quit``, with its output formats.
* ``--duration S``: stop after S seconds (default: at SIGINT/SIGTERM, or
  ``quit`` / end of input with ``-i``).

A front-end connecting prints ``new port <socket>, device : <dev>``, a
disconnection ``destroy port <socket>, device: <dev>``, as dpdk-vdpa does.
The management service listens on ``vdpa.sock`` in the runtime directory of
the file prefix while the application runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from dataplane import log as dplog
from dataplane.lcores.usage import UsageParser
from dataplane.apps.eal_app import StdinShell, eal_main, wait_for_stop
from dataplane.net.ether import mac_to_int
from dataplane.vdpa import device as vdpa
from dataplane.vdpa.device import RTE_VHOST_QUEUE_ALL, VdpaError
from dataplane.vdpa.vdpasim import SimDevice, SimMgmtDev
from dataplane.vhost.library import CLIENT, VhostDeviceOps, VhostError, VhostLibrary

__all__ = ["VdpaApp", "main"]

PROG = "dataplane-vdpa"
PROMPT = "vdpa> "
log = dplog.get_logger("dataplane.apps")

HELP = """\
----------------------------------------------------------------------
                    vDPA Sample App CLI (dataplane-vdpa)
----------------------------------------------------------------------
help                : show this help
list                : list all vdpa devices
create <socket> <dev>: create a new vdpa port on <socket> for device <dev>
stats <dev> <qid>   : show statistics of device <dev>, queue <qid> (65535: all)
quit                : exit the application
"""


def _parser() -> argparse.ArgumentParser:
    p = UsageParser(PROG, eal=True, app="vdpa", description="vDPA devices on vhost-user sockets (dpdk-vdpa compatible)")
    p.add_argument("--iface", metavar="PREFIX", help="socket path prefix: one socket PREFIX<n> per device")
    p.add_argument("--client", action="store_true", help="connect to the sockets instead of listening")
    p.add_argument("-i", "--interactive", action="store_true", help="read commands from stdin")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: run until stopped)")
    return p


class _Port:
    def __init__(self, ifname: str, dev: vdpa.VdpaDevice):
        self.ifname = ifname
        self.dev = dev
        self.vids: set[int] = set()


class VdpaApp:
    """The application's state: devices, their sockets, the shell's commands."""

    def __init__(self, lib: VhostLibrary, *, iface: str | None = None, client: bool = False, out=None):
        self.lib = lib
        self.iface = iface
        self.client = client
        self.out = out or sys.stdout
        self.ports: dict[str, _Port] = {}
        self.next_port = 0
        self.mgmtdevs = [AppMgmtDev(SimMgmtDev("net", lib), self), AppMgmtDev(SimMgmtDev("blk", lib), self)]
        self.devices: list = []  # SimDevice and IfcvfDevice
        self.pci_mgmtdevs: list = []
        self.service = None  # the management service, once started
        self._lock = threading.RLock()

    def print(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    # -- devices --------------------------------------------------------------------

    def probe_vdev(self, devargs) -> SimDevice:
        """Create a device from ``--vdev vdpasim_net0,...`` (of its management device, as ``vdpa dev add`` does)."""
        name = devargs.name
        for mgmt in self.mgmtdevs:
            if name.startswith(mgmt.name) and name[len(mgmt.name):].isdigit():
                break
        else:
            raise ValueError(f"--vdev {name}: not a vDPA simulator (vdpasim_net<N> or vdpasim_blk<N>)")
        args = dict(devargs.args)
        attrs: dict = {}
        allowed = {"name", "mac", "mtu"} if mgmt.inner.kind == "net" else {"name", "capacity"}
        unknown = set(args) - allowed
        if unknown:
            raise ValueError(f"--vdev {name}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
        if "mac" in args:
            attrs["mac"] = mac_to_int(args["mac"]).to_bytes(6, "big")
        if "mtu" in args:
            mtu = int(args["mtu"], 0)
            if not 68 <= mtu <= 0xFFFF:
                raise ValueError(f"--vdev {name}: mtu {mtu} out of range (68..65535)")
            attrs["mtu"] = mtu
        sim_kw = {}
        if "capacity" in args:
            cap = int(args["capacity"], 0)
            if cap <= 0:
                raise ValueError(f"--vdev {name}: capacity must be a positive number of 512-byte sectors")
            sim_kw["capacity"] = cap
        dev = SimDevice(mgmt.inner.kind, args.get("name", name), mgmt, self.lib, user_created=True,
                        **attrs, **sim_kw)
        dev.on_delete = self.device_deleted
        self.device_added(dev)
        return dev

    def probe_pci(self, devargs):
        """``-a BDF,vdpa=1[,sw-live-migration=1]`` (ifcvf) or ``-a BDF,class=vdpa[,key=value...]`` (mlx5): the
        device, or None when the function is not ours."""
        args = dict(devargs.args)
        if "class" in args:
            from dataplane.vdpa.mlx5.devargs import NotOurDevice
            from dataplane.vdpa.mlx5.driver import probe
            from dataplane.vdpa.vfio import VfioError as HwError
        else:
            from dataplane.vdpa.ifcvf import NotOurDevice, probe
            from dataplane.vdpa.ifcvf.hw import IfcvfHwError as HwError

        try:
            dev = probe(devargs.name, args, self.lib)
        except NotOurDevice as e:
            print(f"{PROG}: -a {devargs}: {e}", file=sys.stderr)
            return None
        except (HwError, VdpaError, ValueError) as e:
            raise ValueError(f"-a {devargs}: {e}") from None
        dev.on_delete = self.device_deleted
        self.pci_mgmtdevs.append(dev.mgmtdev)
        self.device_added(dev)
        return dev

    def device_added(self, dev: SimDevice) -> None:
        with self._lock:
            self.devices.append(dev)
            if self.iface is not None:
                path = f"{self.iface}{self.next_port}"
                self.next_port += 1
                err = self.create_port(path, dev.name)
                if err:
                    log.error("vDPA port not created", device=dev.name, socket=path, error=err.strip())

    def device_deleted(self, dev: SimDevice) -> None:
        with self._lock:
            for path, port in list(self.ports.items()):
                if port.dev is dev.vdev:
                    self.lib.driver_unregister(path)
                    del self.ports[path]
            if dev in self.devices:
                self.devices.remove(dev)
            if self.service is not None and dev in self.service.devices:
                self.service.unregister_device(dev)

    # -- ports ----------------------------------------------------------------------

    def create_port(self, path: str, devname: str) -> str:
        """``create SOCKET DEV``: '' on success, else the message to print."""
        dev = vdpa.find_device_by_name(devname)
        if dev is None:
            return f"Unable to find vdpa device id for {devname}.\n"
        if not self.client and os.path.exists(path):
            return f"{path} exists, please remove it or specify another file and try again.\n"
        with self._lock:
            if path in self.ports:
                return f"{path} exists, please remove it or specify another file and try again.\n"
            try:
                self.lib.driver_register(path, CLIENT if self.client else 0)
                port = _Port(path, dev)
                self.lib.driver_callback_register(path, VhostDeviceOps(
                    new_device=lambda vid, p=port: self._new_device(p, vid),
                    destroy_device=lambda vid, p=port: self._destroy_device(p, vid)))
                self.lib.driver_attach_vdpa_device(path, dev)
                self.lib.driver_start(path)
            except VhostError as e:
                try:
                    self.lib.driver_unregister(path)
                except VhostError:
                    pass
                return f"failed to create vdpa port on {path}: {e}\n"
            self.ports[path] = port
        log.info("vDPA port", socket=path, device=devname)
        return ""

    def _new_device(self, port: _Port, vid: int) -> int:
        port.vids.add(vid)
        self.print(f"\nnew port {port.ifname}, device : {port.dev.name}\n")
        return 0

    def _destroy_device(self, port: _Port, vid: int) -> None:
        port.vids.discard(vid)
        self.print(f"\ndestroy port {port.ifname}, device: {port.dev.name}\n")

    # -- the shell ------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        """One shell line: the text to print, or None for ``quit``."""
        words = line.split()
        if not words:
            return ""
        cmd, args = words[0], words[1:]
        if cmd == "quit":
            return None
        if cmd == "help":
            return HELP
        if cmd == "list":
            return self.list_devices()
        if cmd == "create" and len(args) == 2:
            return self.create_port(args[0], args[1])
        if cmd == "stats" and len(args) == 2:
            return self.stats(args[0], args[1])
        return f"Bad arguments\n" if cmd in ("create", "stats") else f"Command not found: {cmd}\n"

    def list_devices(self) -> str:
        out = ["device name\tqueue num\tsupported features\n"]
        for dev in vdpa.list_devices():
            try:
                qn, features = vdpa.get_queue_num(dev), vdpa.get_features(dev)
            except VdpaError as e:
                out.append(f"{dev.name}: {e}\n")
                continue
            out.append(f"{dev.name}\t\t{qn}\t\t0x{features:x}\n")
        return "".join(out)

    def stats(self, devname: str, qid_text: str) -> str:
        dev = vdpa.find_device_by_name(devname)
        if dev is None:
            return f"Unable to find vdpa device id for {devname}.\n"
        try:
            qid = int(qid_text, 0)
        except ValueError:
            return f"Invalid queue id {qid_text}.\n"
        try:
            names = vdpa.get_stats_names(dev)
        except VdpaError:
            return f"Failed to get names number of device {devname}.\n"
        nvrings = getattr(dev.device, "max_vqs", 1)
        qids = range(nvrings) if qid == RTE_VHOST_QUEUE_ALL else [qid]
        out = [f"\nDevice {devname}:\n"]
        for q in qids:
            try:
                stats = vdpa.get_stats(dev, q)
            except VdpaError:
                return "".join(out) + f"Failed to get vdpa queue statistics for device {devname} qid {q}.\n"
            out.append(f"\tVirtq {q}:\n")
            for sid, value in stats:
                out.append(f"\t\t{names[sid]:<64} {value:<16}\n")
        return "".join(out)

    def figures(self) -> dict:
        """Each device's vendor counters by queue index (net; blk has none)."""
        out = {}
        from dataplane.vdpa.mgmt.service import VdpaMgmtError

        for dev in list(self.devices):
            if hasattr(dev, "figures"):  # ifcvf: the driver's counts
                out[dev.name] = dev.figures()
            elif dev.kind == "net":
                try:
                    out[dev.name] = {str(q): dev.vendor_stats(q) for q in range(dev.max_vqs)}
                except (VdpaError, VdpaMgmtError):
                    out[dev.name] = {}
            else:
                out[dev.name] = {}
        return out

    def close(self) -> None:
        with self._lock:
            for path in list(self.ports):
                try:
                    self.lib.driver_unregister(path)
                except VhostError:
                    pass
            self.ports.clear()
            devices, self.devices = self.devices, []
        for dev in devices:
            dev.delete()


class AppMgmtDev:
    """A management device as the tool sees it: the simulator's, plus the app's port bookkeeping."""

    def __init__(self, inner: SimMgmtDev, app: VdpaApp):
        self.inner = inner
        self.app = app

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def dev_add(self, name: str, attrs: dict) -> SimDevice:
        dev = self.inner.dev_add(name, attrs)
        dev.on_delete = self.app.device_deleted
        self.app.device_added(dev)
        return dev


def run(eal, opts) -> int:
    lib = VhostLibrary()
    app = VdpaApp(lib, iface=opts.iface, client=opts.client)
    service = None
    try:
        try:
            for devargs in eal.cfg.vdevs:
                app.probe_vdev(devargs)
            for devargs in eal.cfg.allow:
                app.probe_pci(devargs)
        except (ValueError, VdpaError) as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        service = _start_service(eal, app)
        app.print(f"vdpa: ready devices={','.join(d.name for d in app.devices) or '-'} "
                  f"sockets={','.join(app.ports) or '-'}\n")
        shell = StdinShell(app.command, PROMPT, app.print) if opts.interactive else None
        tick = shell.tick if shell is not None else None
        wait_for_stop(eal, opts.duration, tick=tick)
    except KeyboardInterrupt:
        pass
    finally:
        if service is not None:
            service.stop()
        lib.close()
        figures = app.figures()
        app.close()
    print(json.dumps({"devices": figures}), flush=True)
    return 0


def _start_service(eal, app: VdpaApp):
    """The management service (``dataplane vdpa``) on ``vdpa.sock`` in the runtime directory."""
    from dataplane.vdpa.mgmt.service import VdpaManagement

    runtime = eal.memory.runtime if eal.memory is not None else None
    if runtime is None:
        log.warning("no runtime directory (--in-memory): the management tool cannot reach this process")
        return None
    service = VdpaManagement(eal.cfg.file_prefix)
    for mgmt in app.mgmtdevs + app.pci_mgmtdevs:
        service.add_mgmtdev(mgmt)
    for dev in app.devices:
        service.register_device(dev)
    app.service = service
    service.start()
    return service


def main(argv: list[str] | None = None) -> int:
    return eal_main(PROG, _parser(), run, argv)


if __name__ == "__main__":
    from dataplane.apps import vdpa as _app

    sys.exit(_app.main())
