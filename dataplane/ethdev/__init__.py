"""Ports (DPDK's ethdev layer): virtual devices named by ``--vdev`` devargs.

* :mod:`dataplane.ethdev.vhost` -- ``net_vhost``: a vhost-user socket as a port.
"""

from dataplane.ethdev.errors import EthdevError

__all__ = ["EthdevError"]
