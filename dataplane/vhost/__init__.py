"""vhost-user back-end: DPDK's vhost library.

The control plane, one concern per module:

* :mod:`dataplane.vhost_user` (its own package, shared with the front-end) -- the wire protocol
* :mod:`~dataplane.vhost.transport` -- unix sockets: the vhost-events thread, server/client endpoints
* :mod:`~dataplane.vhost.guest_memory` -- mapping mem tables, address translation
* :mod:`~dataplane.vhost.device` -- the per-connection state machine (device-generic) and the data-path hooks
* :mod:`~dataplane.vhost.device_class` -- what a device type adds (the interface); :mod:`~dataplane.vhost.net` -- the net device
* :mod:`~dataplane.vhost.backend_channel` -- back-end → front-end requests (SET_BACKEND_REQ_FD): CONFIG_CHANGE_MSG,
  VRING_HOST_NOTIFIER_MSG, REPLY_ACK answers matched on the event loop (never waited for on it)
* :mod:`~dataplane.vhost.library` -- the public API (``driver_register``, ``driver_start``, ...)
* :mod:`~dataplane.vhost.postcopy` -- postcopy live migration (PAGEFAULT): the fault relay that serves every
  process's mappings through the one userfaultfd QEMU gets (:mod:`~dataplane.vhost.userfaultfd`: the kernel ABI)

The data path (:mod:`~dataplane.vhost.virtio_net`, :mod:`~dataplane.vhost.net_hdr`) plugs into the
control plane through the net device class's :class:`~dataplane.vhost.net.NetDataPathHooks`.
"""
