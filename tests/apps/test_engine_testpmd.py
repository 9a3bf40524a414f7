"""The engine behind ``dataplane -i`` forwards between a real DPDK virtio-user and our net_vhost port."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from dataplane.testing.testpmd import TESTPMD, Testpmd, dataplane_shell

pytestmark = pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed")


@pytest.fixture
def sock():
    d = tempfile.mkdtemp(prefix="eng", dir="/tmp")
    path = os.path.join(d, "vh.sock")
    yield path
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


def _virtio_user(sock: str, cpus: str = "1") -> Testpmd:
    return Testpmd(["--vdev", f"net_virtio_user0,path={sock},queues=1,mrg_rxbuf=1,in_order=0"],
                   ["--enable-scatter", "--nb-cores=1"], cpus=cpus, mbufs=4096)


def _wait_back(tp: Testpmd, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = tp.port_stats(0)
        if s["TX-packets"] and s["RX-packets"] >= s["TX-packets"]:
            break
        time.sleep(0.1)
    return tp.stop()


@pytest.mark.parametrize("mode", ["io", "macswap"])
def test_dataplane_shell_forwards_for_dpdk_virtio_user(sock, mode):
    with dataplane_shell(["--vdev", f"net_vhost0,iface={sock},queues=1"], [f"--forward-mode={mode}"]) as dp:
        dp.cmd("start")
        with _virtio_user(sock) as tp:
            tp.wait_link(0)
            tp.cmd("set fwd rxonly")
            tp.cmd("set txpkts 128")
            tp.cmd("start tx_first 4")
            fwd = _wait_back(tp)
            assert fwd["TX-packets"] == 128 and fwd["RX-packets"] == 128, fwd
            ours = dp.port_stats(0)
            assert ours["RX-packets"] == ours["TX-packets"] == 128 and ours["RX-bytes"] == 128 * 128
        out = dp.cmd("stop")
        acc = out.split("Accumulated forward statistics")[1]
        assert "RX-packets: 128" in acc and "TX-packets: 128" in acc and "TX-dropped: 0" in acc


def _rx_packets(dp: Testpmd, port: int = 0) -> int:
    """RX-packets of ``show port stats all`` (testpmd's own figure)."""
    block = dp.cmd("show port stats all").split(f"NIC statistics for port {port}")[1]
    return int(block.split("RX-packets:")[1].split()[0])


def _rx_moves(dp: Testpmd, more: int = 1_000, timeout: float = 120.0) -> bool:
    """Whether RX-packets grows by ``more`` before ``timeout`` (a condition, not a rate: it holds on a
    loaded machine, where another process may be compiling on the forwarding lcore's cpu)."""
    start = _rx_packets(dp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _rx_packets(dp) - start >= more:
            return True
        time.sleep(0.2)
    return False


def _dts_port_restart(dp: Testpmd) -> None:
    """The DTS loopback_multi_paths_port_restart steps, typed into ``dp`` as into testpmd."""
    dp.wait_link(0)
    assert "Set mac packet forwarding mode" in dp.cmd("set fwd mac")
    dp.cmd("start tx_first 32")
    assert _rx_moves(dp), dp.cmd("stop") + dp.output[-3000:]  # the loop carries traffic
    dp.cmd("stop")
    dp.cmd("port stop 0")
    stopped = _rx_packets(dp)
    assert not _rx_moves(dp, more=1, timeout=1.0) and _rx_packets(dp) == stopped  # a stopped port receives nothing
    dp.cmd("port start 0")
    dp.cmd("set burst 1")
    dp.cmd("start tx_first 1")
    assert _rx_moves(dp), dp.cmd("stop") + dp.output[-3000:]
    assert "Accumulated forward statistics" in dp.cmd("stop")


def test_dts_loopback_port_restart_script(sock):
    """DTS loopback_multi_paths_port_restart, with dataplane in testpmd's place on the vhost side."""
    with dataplane_shell(["--vdev", f"net_vhost0,iface={sock},queues=1"], ["--nb-cores=1"]) as dp:
        with _virtio_user(sock, cpus="0") as tp:  # our forwarding lcore has cpu 1
            tp.wait_link(0)
            tp.cmd("set fwd mac")
            tp.cmd("start")
            _dts_port_restart(dp)
            tp.cmd("stop")


def test_vhost_pmd_xstats_buckets_and_casts(sock):
    """DTS vhost_pmd_xstats shape: 1000 packets of 1028 B over two queues land in the
    1024-1518 buckets; broadcast and multicast counters match what was sent."""
    with dataplane_shell(["--vdev", f"net_vhost0,iface={sock},queues=2"],
                         ["--rxq=2", "--txq=2", "--forward-mode=rxonly"]) as dp:
        dp.cmd("start")
        for dst, counter in (("FF:FF:FF:FF:FF:FF", "rx_broadcast_packets"), ("01:00:5E:00:00:01", "rx_multicast_packets")):
            dp.cmd("clear port stats all")
            # a fresh virtio-user per round; 1024-entry rings hold each queue's 500 packets
            with Testpmd(["--vdev", f"net_virtio_user0,path={sock},queues=2,mrg_rxbuf=1,in_order=0,queue_size=1024"],
                         ["--enable-scatter", "--nb-cores=1", "--rxq=2", "--txq=2", "--txd=1024", "--rxd=1024"],
                         cpus="0", mbufs=4096) as tp:
                tp.wait_link(0)
                tp.cmd("set fwd rxonly")
                tp.cmd("set txpkts 1028")
                tp.cmd("set burst 25")
                tp.cmd(f"set eth-peer 0 {dst}")
                tp.cmd("start tx_first 20")  # 2 streams x 20 bursts x 25 packets
                deadline = time.monotonic() + 20
                while _xstats(dp)["rx_good_packets"] < 1000 and time.monotonic() < deadline:
                    time.sleep(0.1)
                fwd = tp.stop()
            assert fwd["TX-packets"] == 1000
            x = _xstats(dp)
            assert x["rx_good_packets"] == 1000, x
            assert x["rx_q0_size_1024_to_1518_packets"] + x["rx_q1_size_1024_to_1518_packets"] == 1000
            assert x["rx_q0_good_packets"] > 0 and x["rx_q1_good_packets"] > 0
            assert x[counter] == 1000 and x["rx_unicast_packets"] == 0
        dp.cmd("stop")


def _xstats(dp: Testpmd) -> dict[str, int]:
    return dp.port_xstats(0)


def test_dts_loopback_script_with_dataplane_as_the_virtio_user_side(sock):
    """The same DTS script with dataplane in the virtio-user testpmd's place (DPDK's vhost opposite)."""
    with Testpmd(["--vdev", f"net_vhost0,iface={sock},queues=1"], ["--nb-cores=1"], cpus="0", mbufs=8192) as vh:
        vh.cmd("set fwd mac")
        vh.cmd("start")
        with dataplane_shell(["--vdev", f"net_virtio_user0,path={sock},queues=1,mrg_rxbuf=1,in_order=1"],
                             ["--nb-cores=1"]) as dp:
            dp.wait_link(0)
            # DPDK's vhost PMD drops what it is asked to send for a moment after a device
            # appears (its queues are enabled asynchronously): let it settle before seeding the loop
            time.sleep(1.0)
            _dts_port_restart(dp)
        vh.cmd("stop")


def test_5tswap_set_in_the_shell_sends_each_frame_back_swapped(sock, tmp_path):
    """``set fwd 5tswap`` in our shell, then frames from a pcap file through DPDK's virtio-user:
    testpmd forwards its pcap port into the virtio-user port and what comes back into a second
    pcap file. Every frame returns with MACs, IP addresses and ports swapped (and the rest as it was)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.packet import Raw
    from scapy.utils import rdpcap, wrpcap

    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"
    frames = [Ether(src=a, dst=b) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000 + i, dport=5001) / Raw(b"t" * i)
              for i in range(8)]
    frames += [Ether(src=a, dst=b) / Dot1Q(vlan=5) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=7, dport=9 + i)
               for i in range(8)]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    out_pcap = tmp_path / "out.pcap"
    with dataplane_shell(["--vdev", f"net_vhost0,iface={sock},queues=1"]) as dp:
        assert "Set 5tswap packet forwarding mode" in dp.cmd("set fwd 5tswap")
        dp.cmd("start")
        with Testpmd(["--vdev", f"net_virtio_user0,path={sock},queues=1",
                      "--vdev", f"net_pcap0,rx_pcap={tmp_path / 'in.pcap'},tx_pcap={out_pcap}"],
                     ["--nb-cores=1", "--no-flush-rx"], cpus="0", mbufs=4096) as tp:  # start keeps the pcap's frames
            tp.wait_link(0)
            tp.cmd("start")
            deadline = time.monotonic() + 30
            while tp.port_stats(1)["TX-packets"] < len(frames) and time.monotonic() < deadline:
                time.sleep(0.1)
            tp.stop()
        # closing testpmd flushes out.pcap
        assert dp.port_stats(0)["RX-packets"] == len(frames)
    back = rdpcap(str(out_pcap))
    assert len(back) == len(frames)
    for f, r in zip(frames, back):
        want = Ether(bytes(f))
        want.src, want.dst = f.dst, f.src
        ip = IP if IP in f else IPv6
        want[ip].src, want[ip].dst = f[ip].dst, f[ip].src
        l4 = TCP if TCP in f else UDP
        want[l4].sport, want[l4].dport = f[l4].dport, f[l4].sport
        assert bytes(r) == bytes(want), (f.summary(), r.summary())
