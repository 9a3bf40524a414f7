"""Linux guests (QEMU, TCG) on the vDPA simulators of ``dataplane-vdpa``: the guest's virtio drivers talk to
devices whose "hardware" walks their rings; the host checks with the management tool.

Net: ``virtio-net-pci`` on a vhost-user netdev.  QEMU's virtio-net answers the guest's control queue itself
(over vhost-user only the data queues reach a back-end; only vhost-vdpa netdevs get the control queue, and
this QEMU build cannot create the generic ``vhost-user-device-pci`` that would pass it through).  So a MAC the
guest sets through its control queue reaches the device the way libvirt carries it to a macvtap device: QEMU
emits ``NIC_RX_FILTER_CHANGED`` and ``dataplane vdpa follow-guest-mac`` (the agent) sets the ``main-mac`` of
``query-rx-filter`` on the device.  The device's own control queue (MAC_ADDR_SET) is exercised by
tests/vdpa/test_sim_net.py through a driver ring.
Blk: ``vhost-user-blk-pci``.
"""

from __future__ import annotations

import json
import time

import pytest

from dataplane.testing.linux_guest import Disk, Guest, Nic
from dataplane.testing.vdpa_proc import VdpaProcess

pytestmark = pytest.mark.timeout(900)

MAC = "52:54:00:12:34:56"
NEW_MAC = "52:54:00:ab:cd:ef"
OTHER = "02:00:00:00:00:99"

# Frames to our own MAC (a static ARP entry for an address that is not ours) come back: rx_packets rises.
# Frames to another MAC are dropped by the device's filter.  Then the MAC is changed: virtio-net sends
# VIRTIO_NET_CTRL_MAC_ADDR_SET on the control queue; once the host has seen the device take it, frames to
# the new MAC come back.
NET_SCRIPT = r"""
[ "$(cat /sys/class/net/eth0/address)" = "$mac" ] || fail "MAC $(cat /sys/class/net/eth0/address)"
ip link set eth0 up
ip addr add 10.0.0.1/24 dev eth0
wait_until 10 grep -q 1 /sys/class/net/eth0/carrier || fail "no carrier"
rx0=$(cat /sys/class/net/eth0/statistics/rx_packets)
arp -i eth0 -s 10.0.0.3 $mac
ping -c 5 -i 0.2 -W 1 10.0.0.3 >/dev/null 2>&1 || true
rx1=$(cat /sys/class/net/eth0/statistics/rx_packets)
[ $(( rx1 - rx0 )) -ge 5 ] || fail "frames to our own MAC did not come back: rx $rx0 -> $rx1"
arp -i eth0 -s 10.0.0.4 $other
ping -c 4 -i 0.2 -W 1 10.0.0.4 >/dev/null 2>&1 || true
rx2=$(cat /sys/class/net/eth0/statistics/rx_packets)
ip link set dev eth0 address $new_mac || fail "MAC change refused"
echo "mac changed"
n=0
until host_said done; do n=$(( n + 1 )); [ $n -lt 600 ] || fail "the host did not see the MAC change"; done
arp -i eth0 -s 10.0.0.5 $new_mac
ping -c 5 -i 0.2 -W 1 10.0.0.5 >/dev/null 2>&1 || true
rx3=$(cat /sys/class/net/eth0/statistics/rx_packets)
result back=$(( rx1 - rx0 )) other_rx=$(( rx2 - rx1 )) new_back=$(( rx3 - rx2 ))
"""

BLK_WRITE = r"""
[ "$(cat /sys/block/vda/size)" = "262144" ] || fail "capacity $(cat /sys/block/vda/size) sectors"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=1M seek=3 count=8 conv=fsync 2>/dev/null || fail "write"
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=1M skip=3 count=8 2>/dev/null || fail "read"
cmp /tmp/data /tmp/back || fail "8 MiB read back differ"
result md5=$(md5sum /tmp/data | cut -d' ' -f1)
"""

BLK_READ = r"""
dd if=/dev/vda of=/tmp/back bs=1M skip=3 count=8 2>/dev/null || fail "read"
result md5=$(md5sum /tmp/back | cut -d' ' -f1)
"""


def _vstats(app, qidx):
    return json.loads(app.tool("-j", "dev", "vstats", "show", "vdpa0", "qidx", str(qidx)).stdout)["vstats"]["vdpa0"]


def test_vdpasim_net_guest_loopback_filter_and_control_queue_mac(image):
    with VdpaProcess([f"vdpasim_net0,name=vdpa0,mac={MAC}"]) as app:
        params = {"mac": MAC, "new_mac": NEW_MAC, "other": OTHER}
        with Guest(image, NET_SCRIPT, params=params, nics=[Nic(app.socket(0), mac=MAC)]) as g:
            agent = app.follow_guest_mac(g.qmp_socket, {"nic0": "vdpa0"})
            try:
                g.wait_console(r"mac changed", 600)
                rx, tx = _vstats(app, 0), _vstats(app, 1)  # while the guest's driver holds FEATURES_OK
                deadline = time.monotonic() + 60
                while not (config := app.tool("dev", "config", "show", "vdpa0").stdout).startswith(
                        f"vdpa0: mac {NEW_MAC} "):
                    assert time.monotonic() < deadline, f"the device never took the guest's MAC: {config}"
                    time.sleep(0.2)
                g.tell("done")
                r = g.wait(600)
                assert r.passed, r.console[-3000:]
            finally:
                agent.terminate()
                agent_out = agent.communicate(timeout=10)[0]
        assert f"mac={NEW_MAC}" in agent_out, agent_out
    assert int(r.values["back"]) >= 5
    assert rx["rx packets"] >= 5 and rx["rx drops"] >= 4, rx
    assert tx["tx packets"] >= rx["rx packets"] + rx["rx drops"], (tx, rx)
    assert config.startswith(f"vdpa0: mac {NEW_MAC} link up"), config
    assert int(r.values["new_back"]) >= 5  # the device's filter now passes the new MAC


def test_vdpasim_blk_guest_writes_reads_back_and_a_second_guest_sees_it(image):
    with VdpaProcess(["vdpasim_blk0,name=blk0"]) as app:
        with Guest(image, BLK_WRITE, disks=[Disk(app.socket(0))]) as g:
            first = g.wait(600)
        assert first.passed, first.console[-3000:]
        with Guest(image, BLK_READ, disks=[Disk(app.socket(0))]) as g:
            second = g.wait(600)
        assert second.passed, second.console[-3000:]
    assert second.values["md5"] == first.values["md5"]
