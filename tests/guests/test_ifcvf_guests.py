"""Two Linux guests (QEMU, TCG) on two VFs of the emulated IFC card, driven by the ifcvf vDPA driver of
``dataplane-vdpa``: the card's switch carries their traffic; they ping each other and each sends 4 MiB to
the other, md5-checked.  The card's counters prove the path (its queues moved the bytes) and which kick
path was used (the driver's relay, or the guest writing the doorbell page through a host notifier)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import tempfile

import pytest

from dataplane.nic.kernels import Q_BYTES, Q_KICKS
from dataplane.nic.shm import CardShm
from dataplane.testing.linux_guest import FETCH_ROUNDS, FETCH_SERVER, Guest, Nic, fetch_migration, run_guests
from dataplane.testing.nic_card import card_in_runtime
from dataplane.testing.vdpa_proc import VdpaProcess

pytestmark = pytest.mark.timeout(1200)

VF1, VF2, VF3 = "0000:00:05.1", "0000:00:05.2", "0000:00:05.3"

TRANSFER = """
ip addr add $ip/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 $peer || fail "no ping reply from $peer"
ping -c 3 -W 5 $peer | grep -q "3 packets received" || fail "ping lost replies"
dd if=/dev/urandom of=tx bs=1M count=$mib 2>/dev/null
nc_listen 5001 rx
wait_until 60 nc -w 10 $peer 5001 < tx || fail "cannot send to $peer"
wait_pid 180 $NC_PID || fail "received $(wc -c < rx) bytes of $mib MiB"
result sent=$(md5sum < tx | cut -d" " -f1) received=$(md5sum < rx | cut -d" " -f1)
"""

TWO_PAIRS = """
ethtool -L eth0 combined 2 2>/dev/null || true
[ "$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)" = 2 ] || fail "the guest uses one queue pair"
"""


@contextlib.contextmanager
def _card_and_driver(vfs: int = 2, sw_lm: bool = False):
    with card_in_runtime(vfs=vfs, prefix="ifg") as card:
        lm = ",sw-live-migration=1" if sw_lm else ""
        with VdpaProcess(allow=[f"{bdf},vdpa=1{lm}" for bdf in (VF1, VF2, VF3)[:vfs]]) as app:
            yield card, app


@pytest.mark.parametrize("packed,page_per_vq,pairs", [
    (False, False, 1), (True, True, 1), (False, True, 1), (True, False, 1), (False, True, 2)],
    ids=["split-relay", "packed-notifier", "split-notifier", "packed-relay", "split-notifier-2qp"])
def test_two_guests_on_two_vfs_ping_and_exchange_4mib(image, packed, page_per_vq, pairs):
    with _card_and_driver() as (card, app):
        figures = None
        device = {"page-per-vq": "on"} if page_per_vq else {}
        script = TRANSFER if pairs == 1 else TWO_PAIRS + TRANSFER
        guests = [Guest(image, script, name=f"g{i}", script_timeout=400, smp=pairs,
                        params={"ip": f"10.0.0.{i + 1}", "peer": f"10.0.0.{2 - i}", "mib": 4},
                        nics=[Nic(app.socket(i), packed=packed, device=device, queues=pairs)])
                  for i in range(2)]
        with contextlib.ExitStack() as stack:
            for g in guests:
                stack.enter_context(g)
            results = run_guests(*guests)
        for r in results:
            assert r.passed, r.console[-4000:]
        a, b = results
        assert a.values["sent"] == b.values["received"] and b.values["sent"] == a.values["received"]
        shm = CardShm(os.path.join(card.dir, "counters"))
        try:
            for vf in (0, 1):  # each VF's TX queue carried its guest's 4 MiB, its RX queue the peer's
                tx_q, rx_q = range(1, 2 * pairs, 2), range(0, 2 * pairs, 2)
                assert sum(int(shm.queues[vf][q, Q_BYTES]) for q in tx_q) > 4 * 2**20
                assert sum(int(shm.queues[vf][q, Q_BYTES]) for q in rx_q) > 4 * 2**20
                assert sum(int(shm.queues[vf][q, Q_KICKS]) for q in tx_q) > 0
            pair_bytes = [int(shm.queues[vf][q, Q_BYTES]) for vf in (0, 1) for q in range(2 * pairs)]
            kicks = [sum(int(shm.queues[vf][q, Q_KICKS]) for q in range(2 * pairs)) for vf in (0, 1)]
        finally:
            shm.close()
        figures = app.stop()["devices"]
    if pairs == 2:  # both pairs ran on the card
        assert all(b > 0 for b in pair_bytes), pair_bytes
    for vf, bdf in enumerate((VF1, VF2)):
        f = figures[bdf]
        if page_per_vq:  # QEMU mapped the doorbell pages: the guest's kicks reach the card directly
            assert f["host_notifiers"] == list(range(2 * pairs)), f
            assert kicks[vf] > f["relayed_kicks"], (kicks, f)
        else:  # every kick the card counted came through the driver's notify relay
            assert kicks[vf] <= f["relayed_kicks"], (kicks, f)


@pytest.mark.parametrize("sw_lm", [False, True], ids=["hw-logging", "sw-relay"])
def test_live_migration(image, sw_lm):
    """The client guest migrates from VF1 to VF3 while it fetches data from the server on VF2: while QEMU
    logs (LOG_ALL) the card marks the pages it writes (hw-logging), or the driver's relay copies the card's
    used entries from mediated rings and marks the buffers (sw-relay, ``sw-live-migration=1``), so what the
    card wrote reaches the destination: md5-checked rounds."""
    with _card_and_driver(vfs=3, sw_lm=sw_lm) as (card, app):
        r, mig = fetch_migration(image, server=app.socket(1), src=app.socket(0), dst=app.socket(2))
        assert mig.status == "completed", mig
        assert r.passed, r.console[-4000:]
        assert int(r.values["rounds"]) >= 3
        shm = CardShm(os.path.join(card.dir, "counters"))
        try:
            assert int(shm.queues[2][0, Q_BYTES]) > 0  # the destination VF received after the migration
        finally:
            shm.close()
        figures = app.stop()["devices"]
        log = app.output
    if sw_lm:
        assert figures[VF1]["relayed_used"] > 0, figures  # the relay copied the card's RX completions  # the source VF switched to the relay when QEMU turned logging on
        assert re.search(rf"mediated used rings relayed .*bdf={VF1}", log), log[-3000:]
        assert "hardware dirty logging" not in log
    else:  # the source VF's card logged while QEMU migrated, and stopped when the source stopped
        assert re.search(rf"hardware dirty logging on .*bdf={VF1}", log), log[-3000:]
        assert re.search(rf"hardware dirty logging off .*bdf={VF1}", log), log[-3000:]


def test_driver_killed_and_restarted_while_the_card_and_qemu_keep_running(image):
    """``dataplane-vdpa`` is killed (SIGKILL) while two guests talk through the card: the card sees its
    control channels close and drops every DMA mapping and interrupt; a new ``dataplane-vdpa`` probes the
    VFs again, QEMU reconnects (``reconnect=1``) and the md5-checked rounds go on."""
    from dataplane.nic.shm import V_CONNECTED, V_DMA_MAPS

    d = tempfile.mkdtemp(prefix="ifr", dir="/tmp")
    sockets = os.path.join(d, "vf")
    allow = [f"{VF1},vdpa=1", f"{VF2},vdpa=1"]
    with _card_and_driver(vfs=2) as (card, unused):
        unused.close()  # this test runs its own driver processes, on fixed socket paths
        first = VdpaProcess(allow=allow, iface=False, extra=["--iface", sockets])
        try:
            server = Guest(image, FETCH_SERVER, name="server", params={"mib": 4},
                           nics=[Nic(sockets + "1", reconnect=1)], script_timeout=600)
            client = Guest(image, FETCH_ROUNDS, name="client", params={"max_rounds": 60, "after": 2, "mib": 4},
                           nics=[Nic(sockets + "0", reconnect=1)], script_timeout=600)
            with server, client:
                server.wait_console("serving", 300)
                client.wait_console(r"^round 2 ok", 300)
                first.kill()
                shm = CardShm(os.path.join(card.dir, "counters"))
                try:
                    deadline = time.monotonic() + 30
                    while any(shm.vf[i][V_CONNECTED] or shm.vf[i][V_DMA_MAPS] for i in (0, 1)):
                        assert time.monotonic() < deadline, "the card kept a dead driver's mappings"
                        time.sleep(0.05)
                    for n in (0, 1):  # the killed process left its socket files (server mode refuses them)
                        os.unlink(f"{sockets}{n}")
                    with VdpaProcess(allow=allow, iface=False, extra=["--iface", sockets]) as second:
                        client.tell("stop")
                        r = client.wait(600)
                        server.tell("done")
                        server.wait(120)
                        assert all(shm.vf[i][V_CONNECTED] == 1 for i in (0, 1))
                        log = second.output
                finally:
                    shm.close()
        finally:
            first.close()
            shutil.rmtree(d, ignore_errors=True)
    assert r.passed, r.console[-4000:]
    assert int(r.values["rounds"]) >= 4, r.line
    assert "ifcvf: datapath started" in log, log[-3000:]
