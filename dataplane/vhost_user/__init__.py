"""vhost-user, the protocol both sides speak: the back-end (:mod:`dataplane.vhost`) and the
virtio-user front-end (:mod:`dataplane.virtio`) and every test double use this package, and
nothing else reads or writes the wire.

* :mod:`~dataplane.vhost_user.features` -- virtio and protocol feature bits, the status byte
* :mod:`~dataplane.vhost_user.payloads` -- payload types that parse and validate themselves
* :mod:`~dataplane.vhost_user.messages` -- the header, request numbers, the message table
  (one row per request: payload, reply, fds, gating feature, handler), :class:`Message`
* :mod:`~dataplane.vhost_user.endpoint` -- :class:`Endpoint`: framing over a unix socket,
  both directions (header, payload, SCM_RIGHTS fds, truncation, oversize, timeouts)
* :mod:`~dataplane.vhost_user.errors` -- the error hierarchy

Models: rust-vmm vhost's ``message.rs`` / ``connection.rs``; DPDK's one-row-per-message
handler table in ``vhost_user.c``.  Facts: QEMU ``docs/interop/vhost-user.rst``, DESIGN.md §3.

Every module's public names are importable from the package itself.
"""

from dataplane.vhost_user import endpoint, errors, features, messages, payloads
from dataplane.vhost_user.endpoint import *  # noqa: F401,F403
from dataplane.vhost_user.errors import *  # noqa: F401,F403
from dataplane.vhost_user.features import *  # noqa: F401,F403
from dataplane.vhost_user.messages import *  # noqa: F401,F403
from dataplane.vhost_user.payloads import *  # noqa: F401,F403

__all__ = [*endpoint.__all__, *errors.__all__, *features.__all__, *messages.__all__, *payloads.__all__]
