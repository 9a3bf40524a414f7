"""The ifcvf vDPA driver (DPDK's ``drivers/vdpa/ifc``) for Intel IFC VFs, e.g. the emulated card of
``dataplane-nic``.  It meets the card only through files, the control socket, doorbells and eventfds."""

from dataplane.vdpa.ifcvf.driver import IfcvfDevice, IfcvfMgmtDev, IfcvfOps, NotOurDevice, parse_devargs, probe

__all__ = ["IfcvfDevice", "IfcvfMgmtDev", "IfcvfOps", "NotOurDevice", "parse_devargs", "probe"]
