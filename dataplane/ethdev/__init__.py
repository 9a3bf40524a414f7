"""Ports (DPDK's ethdev layer): virtual devices named by ``--vdev`` devargs.

* :mod:`dataplane.ethdev.port` -- the port interface (main process and lcore side).
* :mod:`dataplane.ethdev.registry` -- the drivers, one registration per port kind.
* :mod:`dataplane.ethdev.queue` -- one port queue as a forwarding loop sees it, whatever the kind.
* :mod:`dataplane.ethdev.vhost` -- ``net_vhost``: a vhost-user socket as a port.
* :mod:`dataplane.ethdev.virtio_user` -- ``net_virtio_user``: a virtio-user device as a port.
* :mod:`dataplane.ethdev.ring` -- ``net_ring``: shared-memory rings as a port.
"""

from dataplane.ethdev.errors import EthdevError

__all__ = ["EthdevError"]
