"""virtio-user PMD (``net_virtio_user``): a virtio-net driver in this process over a vhost-user back-end.

* :mod:`~dataplane.virtio.devargs` -- the seed's devargs, parsed and checked
* :mod:`~dataplane.virtio.vhost_user` -- the vhost-user front-end (negotiation, mem table, vrings)
* :mod:`~dataplane.virtio.paths` -- the seed's Rx/Tx callback selection rules
* :mod:`~dataplane.virtio.rxtx` -- Rx/Tx burst kernels (numba)
* :mod:`~dataplane.virtio.queue` -- one virtqueue's memory and state
* :mod:`~dataplane.virtio.virtio_user` -- :class:`VirtioUser`, the port object
"""

from dataplane.virtio.devargs import DevargsError, VirtioUserArgs, parse_virtio_user_devargs
from dataplane.virtio.virtio_user import VirtioUser, VirtioUserError

__all__ = ["VirtioUser", "VirtioUserError", "DevargsError", "VirtioUserArgs", "parse_virtio_user_devargs"]
