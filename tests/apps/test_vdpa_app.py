"""``dataplane-vdpa``: dpdk-vdpa's command line and shell, devices probed from --vdev or added with the tool."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from dataplane.testing.vdpa_proc import VdpaProcess
from dataplane.vdpa.sim.spec import VDPASIM_BLK_FEATURES, VDPASIM_NET_FEATURES
from dataplane.vhost_user.features import VirtioFeature as VF, bit

pytestmark = pytest.mark.timeout(600)
PF_BIT = bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)


def test_list_create_stats_and_iface_sockets_in_probe_order():
    with VdpaProcess(["vdpasim_net0,name=vdpa0,mac=52:54:00:00:00:01", "vdpasim_blk0,name=blk0"]) as app:
        assert os.path.exists(app.socket(0)) and os.path.exists(app.socket(1))
        out = app.shell("list")
        assert out == ("device name\tqueue num\tsupported features\n"
                       f"vdpa0\t\t1\t\t0x{VDPASIM_NET_FEATURES | PF_BIT:x}\n"
                       f"blk0\t\t1\t\t0x{VDPASIM_BLK_FEATURES | PF_BIT:x}\n"), out
        assert app.shell("create /tmp/x nodev") == "Unable to find vdpa device id for nodev.\n"
        assert app.shell(f"create {app.socket(0)} vdpa0") == (
            f"{app.socket(0)} exists, please remove it or specify another file and try again.\n")
        extra = os.path.join(app.dir, "extra.sock")
        assert app.shell(f"create {extra} vdpa0") == ""
        assert os.path.exists(extra)
        stats = app.shell("stats vdpa0 65535")
        assert stats.startswith("\nDevice vdpa0:\n\tVirtq 0:\n"), stats
        assert "\tVirtq 2:\n" in stats and "\tVirtq 3:" not in stats
        rows = re.findall(r"^\t\t(.{64}) (.{16})$", stats, re.M)
        assert rows and rows[0] == ("rx packets".ljust(64), "0".ljust(16)), rows[:2]
        assert "Command not found" in app.shell("frobnicate")
        # a device added with the management tool gets the next socket
        app.tool("dev", "add", "name", "vdpa2", "mgmtdev", "vdpasim_net")
        assert "vdpa2\t\t1\t\t0x" in app.shell("list")
        assert os.path.exists(app.socket(2))
        app.tool("dev", "del", "vdpa2")
        assert "vdpa2" not in app.shell("list")
        assert not os.path.exists(app.socket(2))
        figures = app.stop()
    assert set(figures["devices"]) == {"vdpa0", "blk0"}
    assert dict(figures["devices"]["vdpa0"]["0"])["rx packets"] == 0


def test_bad_vdev_is_refused_with_exit_2():
    cmd = [sys.executable, "-m", "dataplane.apps.vdpa", "-l", "0", "--no-huge", "-m", "64", "--file-prefix",
           f"vdbad{os.getpid()}", "--vdev", "vdpasim_net0,bogus=1", "--", "--duration", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown key(s) bogus" in r.stderr, r.stderr[-2000:]


def test_tool_without_the_app_cannot_connect(tmp_path):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "dataplane.cli", "vdpa", "--file-prefix", "none", "dev", "show"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert (r.returncode, r.stdout + r.stderr) == (1, "Failed to connect to vdpa Netlink\n")
