"""Linux guests switched by the forwarding engine: two QEMU guests on two ``net_vhost`` ports.

The guests keep QEMU's default virtio-net offloads (checksum both ways, TSO,
mergeable Rx buffers), so a guest's checksum request has to cross the engine
(dequeue on one port, enqueue on the other) for TCP to work at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import pytest

from dataplane.testing.linux_guest import Guest, Nic, run_guests
from dataplane.testing.testpmd import dataplane_shell

pytestmark = pytest.mark.timeout(900)

_UP = """
ip addr add $ip/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 $peer || fail "no ping reply from $peer"
ping -c 3 -W 5 $peer | grep -q "3 packets received" || fail "ping lost replies"
"""

# Each guest listens, then sends its own random file to the other (from the vCPUs
# in $cpus); the md5 sums of what it sent and received come back in the result line.
TRANSFER = _UP + """
dd if=/dev/urandom of=tx bs=1M count=$mib 2>/dev/null
nc_listen 5001 rx
wait_until 60 taskset $cpus nc -w 10 $peer 5001 < tx || fail "cannot send to $peer"
wait_pid 120 $NC_PID || fail "received $(wc -c < rx) bytes of $mib MiB"
result sent=$(md5sum < tx | cut -d" " -f1) received=$(md5sum < rx | cut -d" " -f1)
"""

# With two queue pairs and two vCPUs, virtio-net's XPS sends from vCPU k on Tx queue k:
# after the transfer, 20 pings go from each vCPU (ping sends from its process; TCP
# also sends from the softirq of whichever vCPU takes the interrupt).
TRANSFER_2Q = """
[ "$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)" = 2 ] || fail "the guest uses one queue pair"
""" + TRANSFER + """
for k in 1 2; do
    taskset $k ping -c 20 -s 1000 -W 5 $peer | grep -q "20 packets received" || fail "pings from cpu mask $k lost"
done
barrier $peer 5002 || fail "the peer never finished"
"""


@contextlib.contextmanager
def engine(mode: str = "io", ports: int = 2, queues: int = 1, devargs: str = ""):
    """``dataplane -i`` with ``ports`` net_vhost ports of ``queues`` queue pairs (and ``devargs``), forwarding started."""
    d = tempfile.mkdtemp(prefix="eng", dir="/tmp")  # socket paths must stay short
    socks = [os.path.join(d, f"p{i}.sock") for i in range(ports)]
    eal = [a for i, s in enumerate(socks) for a in ("--vdev", f"net_vhost{i},iface={s},queues={queues}{devargs}")]
    app = [f"--forward-mode={mode}", f"--rxq={queues}", f"--txq={queues}"]
    try:
        with dataplane_shell(eal, app, timeout=900) as dp:  # the first start may compile for minutes
            dp.cmd("start")
            yield dp, socks
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _xstats(dp, port: int) -> dict[str, int]:
    return dp.port_xstats(port)


def _pair(image, socks, script, *, mib: int, nic=None, smp: int = 1, nics=None):
    """Two guests, one per socket; ``nic`` are Nic options for both, ``nics`` per guest."""
    nics = nics or [nic or {}, nic or {}]
    return [
        Guest(image, script, name=f"g{i}", smp=smp, script_timeout=240,
              params={"ip": f"10.0.0.{i + 1}", "peer": f"10.0.0.{2 - i}", "mib": mib, "cpus": 1},
              nics=[Nic(sock, **nics[i])])
        for i, sock in enumerate(socks)
    ]


def _check_transfer(results):
    a, b = results
    for r in results:
        assert r.passed, r.console[-4000:]
    assert a.values["sent"] == b.values["received"] and b.values["sent"] == a.values["received"], (a.line, b.line)


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_two_guests_ping_and_exchange_4mib_with_default_offloads(image, packed):
    with engine() as (dp, socks):
        guests = _pair(image, socks, TRANSFER, mib=4, nic={"packed": packed})
        with contextlib.ExitStack() as stack:
            for g in guests:
                stack.enter_context(g)
            _check_transfer(run_guests(*guests))
        for p in (0, 1):  # each port received its guest's 4 MiB and sent it on
            s = dp.port_stats(p)
            assert s["RX-bytes"] > 4 * 2**20 and s["TX-bytes"] > 4 * 2**20, s


def test_tso_handed_on_or_cut_in_software(image):
    """With ``tso=1`` the guests send 64 KiB TSO packets. Guest 1 takes them as they are
    (GUEST_TSO4); guest 0 did not negotiate GUEST_TSO4/6, so the port cuts what guest 1
    sends it into MSS-sized frames in software. Both transfers complete, md5-checked."""
    no_tso = {"device": {"guest_tso4": "off", "guest_tso6": "off", "guest_ecn": "off", "guest_ufo": "off"}}
    with engine(devargs=",tso=1") as (dp, socks):
        guests = _pair(image, socks, TRANSFER, mib=4, nics=[no_tso, {}])
        with contextlib.ExitStack() as stack:
            for g in guests:
                stack.enter_context(g)
            _check_transfer(run_guests(*guests))
            x = [_xstats(dp, p) for p in (0, 1)]
    big = "size_1519_to_max_packets"
    # TSO packets came from both guests; guest 1 got them as they were, guest 0 only frames
    assert x[0][f"rx_{big}"] > 0 and x[1][f"rx_{big}"] > 0, x
    assert x[1][f"tx_{big}"] > 0 and x[0][f"tx_{big}"] == 0, x
    assert x[0]["tx_good_packets"] > x[1]["rx_good_packets"], x  # guest 1's packets, cut


def test_two_guests_two_queue_pairs_both_carry_traffic(image):
    with engine(queues=2) as (dp, socks):
        guests = _pair(image, socks, TRANSFER_2Q, mib=4, nic={"queues": 2}, smp=2)
        with contextlib.ExitStack() as stack:
            for g in guests:
                stack.enter_context(g)
            _check_transfer(run_guests(*guests))
        for p in (0, 1):
            x = _xstats(dp, p)
            for q in (0, 1):  # at least the pings from vCPU q, and the peer's
                assert x[f"rx_q{q}_good_packets"] >= 20 and x[f"tx_q{q}_good_packets"] >= 20, (p, x)
            assert x["rx_good_bytes"] > 4 * 2**20, (p, x)


def test_guest_pings_the_engine_in_icmpecho_mode(image):
    script = """
        ip addr add 10.0.0.1/24 dev eth0
        ip link set eth0 up
        wait_until 60 ping -c 1 -W 1 10.0.0.254 || fail "no echo reply"
        ping -c 5 -W 5 10.0.0.254 | grep -q "5 packets received" || fail "echo replies lost"
    """
    with engine("icmpecho", ports=1) as (dp, socks), Guest(image, script, nics=[Nic(socks[0])]) as g:
        r = g.wait()
        assert r.passed, r.console[-4000:]
        s = dp.port_stats(0)
        assert s["RX-packets"] >= 6 and s["TX-packets"] >= 6, s  # ARP + echo requests, and their answers
