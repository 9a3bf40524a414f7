"""vDPA management: the netlink-like service behind ``dataplane vdpa`` and the tool itself.

* :mod:`.attrs` -- the ``vdpa`` generic netlink commands and attributes (ids and types);
* :mod:`.service` -- :class:`VdpaManagement` (the kernel vdpa netlink core's
  equivalent) and the two device protocols it talks to;
* :mod:`.transport` -- the JSON-lines unix socket it serves on;
* :mod:`.output` -- iproute2's text/JSON output engine;
* :mod:`.tool` -- the iproute2-compatible ``vdpa`` command line.
"""

from .attrs import VdpaAttr, VdpaCmd
from .service import (
    ManagedDevice,
    ManagementDevice,
    NlMessage,
    NlReply,
    VdpaManagement,
    VdpaMgmtError,
)

__all__ = [
    "ManagedDevice",
    "ManagementDevice",
    "NlMessage",
    "NlReply",
    "VdpaAttr",
    "VdpaCmd",
    "VdpaManagement",
    "VdpaMgmtError",
]
