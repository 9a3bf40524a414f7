"""Two Linux guests (QEMU, TCG) with ``mq=on`` and 2 queue pairs on two VFs of the emulated ConnectX-6 Dx, driven
by the mlx5 vDPA driver of ``dataplane-vdpa``: they ping each other, exchange 4 MiB md5-checked, and TCP flows
from chosen source ports (half of them predicted, by the reference Toeplitz of rss.py over scapy-built headers,
on each RX virtq) reach the receiver, counted by the card's per-queue byte counters."""

from __future__ import annotations

import contextlib
import os
import re
import time

import pytest

from dataplane.nic.kernels import Q_BYTES, Q_CSUM, Q_DROPS, Q_ERRORS, Q_LOGGED, Q_NOBUF, Q_PACKETS, Q_TSO, Q_TSO_SEGS
from dataplane.nic.shm import V_FAULTS, CardShm
from dataplane.testing.linux_guest import Guest, Nic, fetch_migration, run_guests
from dataplane.testing.nic_card import card_in_runtime
from dataplane.testing.vdpa_proc import VdpaProcess
from dataplane.vdpa.mlx5 import rss as RSS
from dataplane.vdpa.mlx5.stats import STATS_NAMES

pytestmark = pytest.mark.timeout(1200)

VF1, VF2, VF3 = "0000:00:06.1", "0000:00:06.2", "0000:00:06.3"
A, B, DPORT = "10.0.0.1", "10.0.0.2", 5001
FLOW_KIB = 512  # what each flow offers (busybox nc delivers about 100 KiB of it before it closes)

SCRIPT = """
ethtool -L eth0 combined 2 2>/dev/null || true
[ "$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)" = 2 ] || fail "the guest uses one queue pair"
ip addr add $ip/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 $peer || fail "no ping reply from $peer"
ping -c 3 -W 5 $peer | grep -q "3 packets received" || fail "ping lost replies"
if [ "$role" = server ]; then
    (while true; do nc -l -p 5001 | wc -c >> flows; done) &
    dd if=/dev/urandom of=tx bs=1M count=4 2>/dev/null
    nc_listen 5002 rx
    wait_until 60 nc -w 10 $peer 5002 < tx || fail "cannot send to $peer"
    wait_pid 180 $NC_PID || fail "received $(wc -c < rx) bytes"
    nc_listen 5003 fin  # up until the client's flows are done
    wait_pid 400 $NC_PID || fail "the client did not finish its flows"
    wait_until 10 sh -c "[ \\$(wc -l < flows) -ge $nflows ]" || fail "counted $(wc -l < flows) flows"
else
    dd if=/dev/urandom of=tx bs=1M count=4 2>/dev/null
    nc_listen 5002 rx
    wait_until 60 nc -w 10 -p $xport $peer 5002 < tx || fail "cannot send to $peer"
    wait_pid 180 $NC_PID || fail "received $(wc -c < rx) bytes"
    for sport in $sports; do
        # the server's listener is back between two connections: a refused one is tried again (a SYN, no data)
        wait_until 30 sh -c "dd if=/dev/zero bs=1K count=$kib 2>/dev/null | nc -w 10 -p $sport $peer 5001" \
            || fail "flow from $sport"
    done
    wait_until 30 sh -c "echo done | nc -w 5 $peer 5003" || fail "cannot tell the server"
fi
[ "$role" = server ] && flows=$(cat flows | tr '\\n' ,) || flows=none
result sent=$(md5sum < tx | cut -d" " -f1) received=$(md5sum < rx | cut -d" " -f1) flows=$flows
"""


XPORT = 19999  # the client's source port for its 4 MiB to the server (port 5002)


def _flow(sport: int, dport: int = DPORT) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src=A, dst=B)
                 / TCP(sport=sport, dport=dport))


def _sports(table, per_queue: int = 3) -> dict[int, list[int]]:
    """Source ports whose flows the reference hash puts on RX virtq 0 and on RX virtq 2, ``per_queue`` each."""
    out: dict[int, list[int]] = {0: [], 2: []}
    sport = 20000
    while min(len(v) for v in out.values()) < per_queue:
        q = RSS.predict(_flow(sport), table)
        if len(out[q]) < per_queue:
            out[q].append(sport)
        sport += 1
    return out


def _run_passing(guests, app):
    """Start ``guests``, run their scripts to the end, and assert each passed (with its console and the app's
    output when not)."""
    with contextlib.ExitStack() as stack:
        for g in guests:
            stack.enter_context(g)
        results = run_guests(*guests)
    for r in results:
        assert r.passed, r.console[-3000:] + "".join(app.output)[-3000:]
    return results


def test_two_guests_mq_2_pairs_through_mlx5_vfs(image):
    table = RSS.rqt_table([0, 2])
    sports = _sports(table)
    flows = sports[0] + sports[2]
    with card_in_runtime(vfs=2, prefix="m5g", model="mlx5") as card:
        with VdpaProcess(allow=[f"{bdf},class=vdpa,event_mode=2" for bdf in (VF1, VF2)]) as app:
            guests = [Guest(image, SCRIPT, name=f"g{i}", script_timeout=500, smp=2,
                            params={"ip": ip, "peer": peer, "role": role, "sports": " ".join(map(str, flows)),
                                    "kib": FLOW_KIB, "xport": XPORT, "nflows": len(flows)},
                            nics=[Nic(app.socket(i), queues=2)])
                      for i, (ip, peer, role) in enumerate(((A, B, "client"), (B, A, "server")))]
            results = _run_passing(guests, app)
            a, b = results
            assert a.values["sent"] == b.values["received"] and b.values["sent"] == a.values["received"]
            shm = CardShm(os.path.join(card.dir, "counters"))
            try:
                rx_bytes = {q: int(shm.queues[1][q, Q_BYTES]) for q in (0, 2)}  # the server's RX virtqs
            finally:
                shm.close()
            app.stop()
    # the server received the client's 4 MiB and the chosen flows (the bytes it counted per connection) on its two
    # RX virtqs, both in use.  Which RX virtq each took is not predictable: busybox nc ignores -p for a connection
    # (the source port is an ephemeral one); the ICMP test below chooses its flows.
    got = [int(n) for n in b.values["flows"].strip(",").split(",")]
    assert len(got) == len(flows) and all(n > 0 for n in got), got
    total = sum(got) + (4 << 20)
    assert total <= rx_bytes[0] + rx_bytes[2] <= total * 1.1 + (1 << 20), (rx_bytes, got)
    assert min(rx_bytes.values()) > 0, rx_bytes


PINGS = """
ethtool -L eth0 combined 2 2>/dev/null || true
[ "$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)" = 2 ] || fail "the guest uses one queue pair"
ip addr add $ip/24 dev eth0
for a in $extra; do ip addr add $a/24 dev eth0; done
ip link set eth0 up
if [ "$role" = client ]; then
    for a in $extra; do
        wait_until 60 ping -c 1 -W 1 -I $a $peer || fail "no ping reply from $peer to $a"
        ping -c $count -s $size -i 0.05 -W 5 -I $a $peer > /tmp/ping.out 2>&1
        grep -q "$count packets received" /tmp/ping.out || { cat /tmp/ping.out; cat /proc/interrupts; fail "ping from $a lost replies"; }
    done
    wait_until 30 sh -c "echo done | nc -w 5 $peer 5003" || fail "cannot tell the server"
else
    nc_listen 5003 fin
    wait_pid 400 $NC_PID || fail "the client did not finish"
fi
result done=1
"""

COUNT, SIZE = 30, 1400


def _icmp(src: str) -> bytes:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    return bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src=src, dst=B) / ICMP())


def test_two_guests_mq_icmp_flows_land_on_the_rx_virtq_rss_predicts(image):
    """ICMP flows (IPv4, hashed on the two addresses) from source addresses chosen so that three are predicted on
    each RX virtq (rss.py over scapy-built headers): the card's per-queue byte counters of both VFs (the echo
    requests on the server's, the replies on the client's: the hash is symmetric) say the same.  (TCP flows cannot
    be chosen from the guest: busybox nc takes no source port for a connection.)"""
    table = RSS.rqt_table([0, 2])
    picked: dict[int, list[str]] = {0: [], 2: []}
    host = 10
    while min(len(v) for v in picked.values()) < 3:
        src = f"10.0.0.{host}"
        q = RSS.predict(_icmp(src), table)
        if len(picked[q]) < 3:
            picked[q].append(src)
        host += 1
    extra = picked[0] + picked[2]
    with card_in_runtime(vfs=2, prefix="m5i", model="mlx5") as card:
        with VdpaProcess(allow=[f"{bdf},class=vdpa,event_mode=2" for bdf in (VF1, VF2)]) as app:
            guests = [Guest(image, PINGS, name=f"g{i}", script_timeout=300, smp=2,
                            params={"ip": ip, "peer": peer, "role": role, "extra": " ".join(extra) if i == 0 else "",
                                    "count": COUNT, "size": SIZE},
                            nics=[Nic(app.socket(i), queues=2)])
                      for i, (ip, peer, role) in enumerate(((A, B, "client"), (B, A, "server")))]
            with contextlib.ExitStack() as stack:
                for g in guests:
                    stack.enter_context(g)
                results = run_guests(*guests)
            if not all(r.passed for r in results) and os.environ.get("DP_DIAG_DIR"):
                import numpy as np
                d = os.environ["DP_DIAG_DIR"]
                shm = CardShm(os.path.join(card.dir, "counters"))
                try:
                    with open(os.path.join(d, f"fail-{time.time():.0f}.txt"), "w") as f:
                        for vf in (0, 1):
                            for q in range(4):
                                f.write(f"vf{vf} q{q} {np.asarray(shm.queues[vf][q]).tolist()}\n")
                        for r in results:
                            f.write(r.console + "\n=====\n")
                        f.write("".join(app.output))
                finally:
                    shm.close()
            for r in results:
                assert r.passed, r.console[-3000:] + "".join(app.output)[-3000:]
            shm = CardShm(os.path.join(card.dir, "counters"))
            try:
                rx = [{q: int(shm.queues[vf][q, Q_BYTES]) for q in (0, 2)} for vf in (0, 1)]
            finally:
                shm.close()
            app.stop()
    # each source address's echoes carry COUNT x SIZE bytes of payload (plus its first ping's): all on its queue
    for vf in (0, 1):
        for q in (0, 2):
            want = len(picked[q]) * COUNT * SIZE
            assert want <= rx[vf][q] <= want * 1.1 + (32 << 10), (vf, q, rx, picked)


def test_live_migration_with_the_hardware_dirty_bitmap(image):
    """The client guest migrates from VF1 to VF3 while it fetches data from the server on VF2 (the shared
    FETCH_SERVER / FETCH_ROUNDS scripts of the ifcvf test): while QEMU logs (LOG_ALL) the driver points every
    virtq of VF1 at the vhost log (DIRTY_BITMAP_PARAMS, DIRTY_BITMAP_DUMP_ENABLE) and the card marks the pages it
    writes, so what it wrote into the client reaches the destination: md5-checked TCP rounds before, across and
    after the migration.  The rounds alone do not prove the marking (a run with DIRTY_BITMAP_DUMP_ENABLE forced to 0
    in the driver passed them too: the guest's own writes dirty most pages the card writes), so the card's
    per-queue ``logged`` counters must show the source VF's virtqs marking, and no other VF's."""
    with card_in_runtime(vfs=3, prefix="m5m", model="mlx5") as card:
        with VdpaProcess(allow=[f"{bdf},class=vdpa,event_mode=2" for bdf in (VF1, VF2, VF3)]) as app:
            r, mig = fetch_migration(image, server=app.socket(1), src=app.socket(0), dst=app.socket(2))
            assert mig.status == "completed", mig
            assert r.passed, r.console[-4000:] + app.output[-3000:]
            shm = CardShm(os.path.join(card.dir, "counters"))
            try:
                dst_rx = int(shm.queues[2][0, Q_BYTES])
                faults = [int(shm.vf[i][V_FAULTS]) for i in range(3)]
                logged = [[int(shm.queues[vf][q, Q_LOGGED]) for q in (0, 1)] for vf in range(3)]
            finally:
                shm.close()
            app.stop()
            log = app.output
    assert int(r.values["rounds"]) >= 3, r.line
    assert dst_rx > 0  # the destination VF received after the migration
    # the source VF's virtqs logged while QEMU migrated, and stopped when the source stopped; no other VF logged
    assert re.search(rf"hardware dirty bitmap on .*bdf={VF1}", log), log[-3000:]
    assert re.search(rf"hardware dirty bitmap off .*bdf={VF1}", log), log[-3000:]
    assert not re.search(rf"hardware dirty bitmap on .*bdf=({VF2}|{VF3})", log), log[-3000:]
    # the card marked the pages it wrote for the client on VF1 (RX buffers and used ring; the TX virtq's used
    # ring), and only there: QEMU logs only the migrating guest, the destination (VF3) does not log
    assert logged[0][0] > 0 and logged[0][1] > 0, logged
    assert logged[1] == [0, 0] and logged[2] == [0, 0], logged
    assert faults == [0, 0, 0], faults  # no virtq fault (a bitmap or buffer outside the DMA map among them)


# Both guests: IPv6 off and the peer's ARP entry static (no frame but the pings); the client pings the server
# $count times once the host says go; both read their interface counters when the host says read.
COUNTED = r"""
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6 \
         /proc/sys/net/ipv6/conf/eth0/disable_ipv6; do
    [ -e $f ] && echo 1 > $f
done
ip addr add $ip/24 dev eth0
arp -i eth0 -s $peer $peer_mac
ip link set eth0 up
echo up
if [ "$role" = client ]; then
    until host_said go; do :; done
    ping -c $count -i 0.1 -W 5 $peer > ping.out
    grep -q "$count packets received" ping.out || fail "ping: $(tail -2 ping.out)"
    echo pinged
fi
until host_said read; do :; done
s=/sys/class/net/eth0/statistics
tx=$(cat $s/tx_packets) rx=$(cat $s/rx_packets)
echo "counters tx=$tx rx=$rx"
until host_said done; do :; done
result tx=$tx rx=$rx
"""

PINGS_SENT = 40
MACS = ("52:54:00:00:5a:01", "52:54:00:00:5a:02")


def _stats_command(app, dev: str, qid: int) -> dict[str, int]:
    """``stats DEV QID`` in dataplane-vdpa's shell: its rows, by name."""
    out = app.shell(f"stats {dev} {qid}")
    assert out.startswith(f"\nDevice {dev}:\n\tVirtq {qid}:\n"), out
    rows = re.findall(r"^\t\t(.{64}) (\d+) *$", out, re.M)
    return {name.rstrip(): int(v) for name, v in rows}


def _vstats(app, dev: str, qid: int) -> dict:
    """``dataplane vdpa -j dev vstats show DEV qidx QID``."""
    import json

    return json.loads(app.tool("-j", "dev", "vstats", "show", dev, "qidx", str(qid)).stdout)["vstats"][dev]


def test_stats_and_vstats_agree_with_what_the_guests_sent(image):
    """Two guests through mlx5 VFs; the client sends PINGS_SENT echo requests and the server answers them (and
    nothing else crosses: static ARP, no IPv6).  Once both are idle, ``stats DEV QID`` (DPDK's six counters) and
    ``vdpa dev vstats`` (mlx5_vnet's received_desc / completed_desc) of each VF's TX virtq (1) equal that guest's
    ``tx_packets``, of its RX virtq (0) its ``rx_packets`` (one chain per frame: no MRG_RXBUF, no indirect
    descriptors, so a descriptor chain the card takes is one frame), and every error counter is 0."""
    with card_in_runtime(vfs=2, prefix="m5s", model="mlx5"):
        with VdpaProcess(allow=[f"{bdf},class=vdpa,event_mode=2" for bdf in (VF1, VF2)]) as app:
            guests = [Guest(image, COUNTED, name=f"g{i}", script_timeout=400,
                            params={"ip": ip, "peer": peer, "peer_mac": MACS[1 - i], "role": role,
                                    "count": PINGS_SENT},
                            nics=[Nic(app.socket(i), mac=MACS[i])])
                      for i, (ip, peer, role) in enumerate(((A, B, "client"), (B, A, "server")))]
            with contextlib.ExitStack() as stack:
                for g in guests:
                    stack.enter_context(g)
                client, server = guests
                for g in guests:
                    g.wait_console(r"^up\r?$", 400)
                client.tell("go")
                client.wait_console(r"^pinged\r?$", 300)
                time.sleep(2)  # the last completions reach the guests (their TX reclaim, their RX poll)
                counted = {}
                for g in guests:
                    g.tell("read")
                    m = g.wait_console(r"^counters tx=(\d+) rx=(\d+)", 60)
                    counted[g.name] = {"tx": int(m.group(1)), "rx": int(m.group(2))}
                stats = {(bdf, q): _stats_command(app, bdf, q) for bdf in (VF1, VF2) for q in (0, 1)}
                vstats = {(bdf, q): _vstats(app, bdf, q) for bdf in (VF1, VF2) for q in (0, 1)}
                for g in guests:
                    g.tell("done")
                results = run_guests(*guests)
            for r in results:
                assert r.passed, r.console[-3000:] + app.output[-3000:]
            app.stop()
    # the guests saw exactly the pings: PINGS_SENT echo requests one way, as many replies back
    assert counted == {"g0": {"tx": PINGS_SENT, "rx": PINGS_SENT}, "g1": {"tx": PINGS_SENT, "rx": PINGS_SENT}}, \
        counted
    for bdf, name in ((VF1, "g0"), (VF2, "g1")):
        for q, queue_type, frames in ((0, "rx", counted[name]["rx"]), (1, "tx", counted[name]["tx"])):
            st = stats[bdf, q]
            assert list(st) == list(STATS_NAMES), st
            assert st == {"received_descriptors": frames, "completed_descriptors": frames,
                          "bad descriptor errors": 0, "exceed max chain": 0, "invalid buffer": 0,
                          "completion errors": 0}, (bdf, q, st, counted)
            assert vstats[bdf, q] == {"queue_type": queue_type, "received_desc": frames,
                                      "completed_desc": frames}, (bdf, q, vstats[bdf, q], counted)


OFFLOADS = """
# the virtio features the guest's driver negotiated, bit 0 first: CSUM 0, GUEST_CSUM 1, HOST_TSO4 11, HOST_TSO6 12
f=$(cat /sys/class/net/eth0/device/features)
ip addr add $ip/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 $peer || fail "no ping reply from $peer"
dd if=/dev/urandom of=tx bs=1M count=4 2>/dev/null
nc_listen 5002 rx
wait_until 60 nc -w 10 $peer 5002 < tx || fail "cannot send to $peer"
wait_pid 240 $NC_PID || fail "received $(wc -c < rx) bytes"
bad=$(awk '/^Tcp:/ { n++; if (n == 1) { for (i = 1; i <= NF; i++) if ($i == "InCsumErrors") c = i } else print $c }' \
      /proc/net/snmp)
result sent=$(md5sum < tx | cut -d" " -f1) received=$(md5sum < rx | cut -d" " -f1) \
       features=$(echo $f | cut -c1-13) csum_errors=${bad:-none}
"""


def test_tso_and_checksum_offload_between_two_guests(image):
    """Two guests (one on a packed ring, one split) negotiate CSUM, GUEST_CSUM and HOST_TSO4/6 with the mlx5 VFs
    and send each other 4 MiB, md5-checked: their TCP goes out as TSO frames with partial checksums, which the
    card cuts into MSS frames and completes (its per-queue counters say how many), and the receiving guest counts
    no checksum error."""
    with card_in_runtime(vfs=2, prefix="m5o", model="mlx5") as card:
        with VdpaProcess(allow=[f"{bdf},class=vdpa" for bdf in (VF1, VF2)]) as app:
            guests = [Guest(image, OFFLOADS, name=f"g{i}", script_timeout=400, params={"ip": ip, "peer": peer},
                            nics=[Nic(app.socket(i), packed=(i == 0))])
                      for i, (ip, peer) in enumerate(((A, B), (B, A)))]
            results = _run_passing(guests, app)
            shm = CardShm(os.path.join(card.dir, "counters"))
            try:
                tx = [shm.queues[v][1].copy() for v in (0, 1)]
                rx = [shm.queues[v][0].copy() for v in (0, 1)]
            finally:
                shm.close()
            app.stop()
    a, b = results
    assert a.values["sent"] == b.values["received"] and b.values["sent"] == a.values["received"]
    for r in results:
        f = r.values["features"]
        assert f[0] == f[1] == f[11] == f[12] == "1", f  # CSUM, GUEST_CSUM, HOST_TSO4, HOST_TSO6
        assert r.values["csum_errors"] == "0", r.values
    for v in (0, 1):
        # 4 MiB in TSO frames: many, each cut into several MSS frames; ACKs and short segments: checksums only
        assert tx[v][Q_TSO] >= 20 and tx[v][Q_TSO_SEGS] >= 2 * tx[v][Q_TSO], tx[v]
        assert tx[v][Q_CSUM] > 0 and tx[v][Q_ERRORS] == 0, tx[v]
        # at least 1 MiB of the 4 went through segmentation; every frame cut reached the peer's RX queue, which
        # took it or counted it (a full ring drops it, and TCP sends it again)
        peer = rx[1 - v]
        assert (1 << 20) // 1448 < tx[v][Q_TSO_SEGS] <= peer[Q_PACKETS] + peer[Q_NOBUF] + peer[Q_DROPS], (tx[v], peer)
        assert peer[Q_PACKETS] > tx[v][Q_TSO], (tx[v], peer)
        assert rx[1 - v][Q_BYTES] > 4 << 20, rx[1 - v]
        assert rx[1 - v][Q_ERRORS] == 0, rx[1 - v]
