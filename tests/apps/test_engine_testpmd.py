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


def _virtio_user(sock: str) -> Testpmd:
    return Testpmd(["--vdev", f"net_virtio_user0,path={sock},queues=1,mrg_rxbuf=1,in_order=0"],
                   ["--enable-scatter", "--nb-cores=1"], cpus="1", mbufs=4096)


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
