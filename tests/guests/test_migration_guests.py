"""Live migration of running Linux guests between two vhost-user back-ends.

The guest sends TCP data to itself through its NIC while the back-end runs
``5tswap`` (:data:`~dataplane.testing.linux_guest.SELF_TCP_ROUNDS`): rounds of
4 MiB, each md5-checked inside the guest. After round 2 a destination QEMU
(the same command line plus ``-incoming``) starts on a second back-end and the
source's monitor runs ``migrate -d unix:...``; once the destination runs the
host tells the guest to do two more rounds and stop
(:func:`~dataplane.testing.linux_guest.net_migration`). Every round passes, the
guest reports from the destination, and both back-ends carried rounds.

The same scenario runs on two ``dpdk-testpmd`` back-ends (the reference, and the
proof that the harness is sound).

testpmd runs split rings only: a packed-ring guest migrated under traffic
between two DPDK 22.11 testpmd back-ends crashes on the destination (stale
memory: list corruption, garbage exception frames). DPDK logs its packed
descriptor writes at ``log_guest_addr`` + the descriptor's offset, while QEMU
7.2 passes the device event area there for packed rings, so those pages
would never be marked -- our reading, not confirmed.

The guests use ``-cpu qemu64`` (:data:`~dataplane.testing.linux_guest.MIGRATION_CPU`):
with ``-cpu max`` QEMU 7.2's TCG guests crash after a migration under interrupt load.
"""

from __future__ import annotations

import pytest

from dataplane.testing.linux_guest import net_migration
from dataplane.testing.testpmd import TESTPMD

pytestmark = pytest.mark.timeout(900)

MIB = 4
AFTER = 2


def check(n):
    assert n.migration.status == "completed", n.migration.info
    assert n.result.passed, n.result.console[-4000:]
    assert int(n.result.values["rounds"]) >= 2 + AFTER, n.result.line
    # the source carried the first two rounds, the destination at least the last AFTER, both ways
    assert n.source["RX-bytes"] >= 2 * MIB << 20 and n.source["TX-bytes"] >= 2 * MIB << 20, n.source
    assert n.destination["RX-bytes"] >= AFTER * MIB << 20 and n.destination["TX-bytes"] >= AFTER * MIB << 20, \
        n.destination


def check_announced_by_the_guest(n):
    """GUEST_ANNOUNCE negotiated: QEMU asks no back-end for a RARP; after the migration it tells the
    guest (config interrupt), and the guest's gratuitous ARPs reach the destination back-end. They are
    the guest's only broadcasts (its neighbour is static): none reached the source."""
    assert n.source_x["rx_q0_broadcast_packets"] == 0, (n.source_x, n.destination_x)
    assert n.destination_x["rx_q0_broadcast_packets"] >= 1, n.destination_x
    assert "RARP requested" not in n.destination_log and "SEND_RARP" not in n.destination_log


@pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed")
def test_guest_migrates_between_testpmd_backends_without_losing_a_byte(image):
    n = net_migration(image, "testpmd", mib=MIB, after=AFTER)
    check(n)
    check_announced_by_the_guest(n)
