"""A running Linux guest outlives its net back-end: ``kill -9`` of ``dataplane`` while the guest
sends TCP data through it, then a new back-end on the same socket.

QEMU connects as the vhost-user client with ``reconnect=1``: it sees the socket close, keeps the
guest running (its NIC's link drops), connects again once the new back-end listens, and restores
each ring from the ring itself (SET_VRING_BASE from the split ring's used index in guest memory).
The guest runs :data:`~dataplane.testing.linux_guest.SELF_TCP_ROUNDS` through a ``5tswap``
back-end: rounds of 4 MiB, each md5-checked; TCP retransmits what the dead back-end dropped.

A packed ring keeps no index in guest memory, and QEMU's net device does no inflight tracking
(GET/SET_INFLIGHT_FD, which vhost-user-blk uses for this), so QEMU (10.0 as 7.2) gives the
successor the initial base again. The successor finds where the ring really is from the
descriptors' flags (``rings.packed.packed_position_from_flags``); without that the guest's next
round never got through (``nc: timed out``).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from dataplane.testing.linux_guest import MIGRATION_CPU, PROGRESS, SELF_TCP_ROUNDS, Guest, Nic
from dataplane.testing.testpmd import swap_backend

pytestmark = pytest.mark.timeout(900)

MIB = 4
AFTER = 2


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_guest_survives_a_killed_backend_and_goes_on_with_its_successor(image, ring):
    d = tempfile.mkdtemp(prefix="rst", dir="/tmp")  # socket paths must stay short
    sock = os.path.join(d, "a.sock")
    nic = Nic(sock, packed=ring == "packed", reconnect=1)
    params = {"mib": MIB, "max_rounds": 60, "after": AFTER}
    try:
        first = swap_backend("dataplane", sock, cpus="0-1")
        try:
            with Guest(image, SELF_TCP_ROUNDS, params=params, nics=[nic], name="rst", script_timeout=400,
                       cpu=MIGRATION_CPU) as g:
                g.wait_console(PROGRESS)  # two rounds through the first back-end
                before = first.port_stats(0)
                first.proc.kill()  # SIGKILL: no quit, no clean-up of its own; its lcores die with it
                first.proc.wait()
                first.close()  # only our harness's leftovers (its runtime directory)
                with swap_backend("dataplane", sock, cpus="0-1") as second:
                    g.tell("stop")
                    r = g.wait()
                    after = second.port_stats(0)
                    log = second.output
        finally:
            first.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert r.passed, r.console[-4000:]
    assert int(r.values["rounds"]) >= 2 + AFTER, r.line
    assert before["RX-bytes"] >= 2 * MIB << 20, before
    # the successor carried the last rounds both ways, on the ring kind the guest negotiated
    assert after["RX-bytes"] >= AFTER * MIB << 20 and after["TX-bytes"] >= AFTER * MIB << 20, after
    negotiated = [line for line in log.splitlines() if "negotiated virtio features" in line]
    assert negotiated and (("VIRTIO_F_RING_PACKED" in negotiated[-1]) == (ring == "packed")), negotiated
    if ring == "packed":
        assert "resuming there" in log, log[-4000:]  # the successor did not start from slot 0
