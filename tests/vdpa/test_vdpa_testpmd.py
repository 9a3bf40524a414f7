"""DPDK's testpmd (net_virtio_user) on a vdpasim_net socket of ``dataplane-vdpa``: frames loop back through the
simulator, and testpmd's counters agree with the device's."""

from __future__ import annotations

import time

import pytest

from dataplane.testing.testpmd import TESTPMD, Testpmd
from dataplane.testing.vdpa_proc import VdpaProcess

pytestmark = [pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed (.ci/setup installs it)"),
              pytest.mark.timeout(600)]

MAC = "52:54:00:12:34:56"


def _vstats(app, qidx):
    out = app.tool("-j", "dev", "vstats", "show", "vdpa0", "qidx", str(qidx)).stdout
    import json

    return json.loads(out)["vstats"]["vdpa0"]


def test_testpmd_virtio_user_loops_through_vdpasim_net_and_counters_agree():
    with VdpaProcess([f"vdpasim_net0,name=vdpa0,mac={MAC}"]) as app:
        sock = app.socket(0)
        with Testpmd(["--vdev", f"net_virtio_user0,path={sock},queues=1"], ["--eth-peer=0," + MAC], cpus="1") as tp:
            app.wait_output("new port", 60)
            tp.cmd("set fwd rxonly")
            tp.cmd("start tx_first 4")  # 4 bursts of 32 frames to MAC: the device loops them back
            deadline = time.monotonic() + 60
            while _vstats(app, 0)["rx packets"] < 128 and time.monotonic() < deadline:
                time.sleep(0.2)
            fwd = tp.stop()
            stats = tp.port_stats(0)
            tx, rx = _vstats(app, 1), _vstats(app, 0)
        app.wait_output("destroy port", 60)
    assert stats["TX-packets"] == 128 and tx["tx packets"] == 128
    assert rx["rx packets"] == stats["RX-packets"] == 128, (rx, stats, fwd)
    assert rx["rx drops"] == rx["rx overruns"] == rx["rx errors"] == 0
    assert rx["rx bytes"] == tx["tx bytes"]  # header included, frames unchanged


def test_frames_for_another_mac_are_dropped_and_counted():
    with VdpaProcess([f"vdpasim_net0,name=vdpa0,mac={MAC}"]) as app:
        with Testpmd(["--vdev", f"net_virtio_user0,path={app.socket(0)},queues=1"], ["--eth-peer=0,02:00:00:00:00:99"],
                     cpus="1") as tp:
            app.wait_output("new port", 60)
            tp.cmd("set fwd rxonly")
            tp.cmd("start tx_first 2")
            deadline = time.monotonic() + 60
            while _vstats(app, 0)["rx drops"] < 64 and time.monotonic() < deadline:
                time.sleep(0.2)
            tp.stop()
            stats = tp.port_stats(0)
            rx = _vstats(app, 0)
    assert rx["rx drops"] == 64 and rx["rx packets"] == 0
    assert stats["TX-packets"] == 64 and stats["RX-packets"] == 0
