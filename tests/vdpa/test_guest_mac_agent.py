"""``dataplane vdpa follow-guest-mac``: the agent that carries a guest's MAC from QEMU's QMP
(``NIC_RX_FILTER_CHANGED`` + ``query-rx-filter``) to a vDPA device, against a scripted QMP peer
and the real management service.  The Linux-guest proof is tests/guests/test_vdpa_guests.py."""

import os
import threading
import time

import pytest

from dataplane.testing.scripted_qmp import ScriptedQmp
from dataplane.vdpa.mgmt import VdpaAttr as A, VdpaCmd
from dataplane.vdpa.mgmt.guest_mac import GuestMacFollower, QmpError

OLD, NEW = "52:54:00:12:34:56", "52:54:00:ab:cd:ef"


def _mac(mgmt, dev="vdpa0") -> str:
    r = mgmt.request(VdpaCmd.DEV_CONFIG_GET, [(A.DEV_NAME, dev)])
    return ":".join(f"{b:02x}" for b in dict(r.messages[0].attrs)[A.DEV_NET_CFG_MACADDR])


def _wait(cond, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def qemu(mgmt, runtime):
    assert mgmt.request(VdpaCmd.DEV_NEW, [(A.DEV_NAME, "vdpa0"), (A.MGMTDEV_DEV_NAME, "vdpasim_net")]).error == 0
    q = ScriptedQmp(os.path.join(str(runtime), "qmp.sock"))
    yield q
    q.close()


def _follow(qemu, mgmt, nics):
    f = GuestMacFollower(qemu.path, nics, mgmt.socket_path)
    ready = threading.Event()
    t = threading.Thread(target=f.run, kwargs={"ready": ready.set}, daemon=True)
    t.start()
    assert ready.wait(10)
    return f, t


def test_the_device_takes_the_mac_at_start_and_on_each_rx_filter_event(qemu, mgmt):
    qemu.filters["nic0"] = OLD
    f, t = _follow(qemu, mgmt, {"nic0": "vdpa0"})
    assert _mac(mgmt) == OLD
    qemu.filters["nic0"] = NEW
    qemu.event("NIC_RX_FILTER_CHANGED", {"name": "nic0", "path": "/machine/peripheral/nic0/virtio-backend"})
    assert _wait(lambda: _mac(mgmt) == NEW)
    # each event is followed by a query-rx-filter (which re-arms QEMU's event)
    assert [r["arguments"]["name"] for r in qemu.requests if r["execute"] == "query-rx-filter"] == ["nic0", "nic0"]
    qemu.close()  # QEMU quits: the agent ends
    t.join(10)
    assert not t.is_alive()
    f.close()


def test_events_of_other_nics_and_other_events_are_ignored(qemu, mgmt):
    qemu.filters["nic0"] = OLD
    f, t = _follow(qemu, mgmt, {"nic0": "vdpa0"})
    qemu.filters["nic0"] = NEW
    qemu.event("NIC_RX_FILTER_CHANGED", {"name": "nic1"})
    qemu.event("RESUME", {})
    qemu.event("NIC_RX_FILTER_CHANGED", {"name": "nic0"})  # the barrier: handled after the two above
    assert _wait(lambda: _mac(mgmt) == NEW)
    assert sum(r["execute"] == "query-rx-filter" for r in qemu.requests) == 2
    qemu.close()
    t.join(10)
    f.close()


@pytest.mark.parametrize("bad", ["zz:54:00:12:34:56", "", 7, None])
def test_a_bad_main_mac_is_logged_and_the_device_keeps_its_mac(qemu, mgmt, bad, capsys):
    qemu.filters["nic0"] = OLD
    f, t = _follow(qemu, mgmt, {"nic0": "vdpa0"})
    qemu.filters["nic0"] = {"return": [{"name": "nic0", "main-mac": bad}]}
    qemu.event("NIC_RX_FILTER_CHANGED", {"name": "nic0"})
    assert _wait(lambda: sum(r["execute"] == "query-rx-filter" for r in qemu.requests) == 2)
    qemu.filters["nic0"] = NEW  # the agent is still following
    qemu.event("NIC_RX_FILTER_CHANGED", {"name": "nic0"})
    assert _wait(lambda: _mac(mgmt) == NEW)
    assert "no usable main-mac" in capsys.readouterr().err
    qemu.close()
    t.join(10)
    f.close()


def test_a_device_that_refuses_the_mac_is_logged(qemu, mgmt, capsys):
    qemu.filters["nic0"] = "01:00:5e:00:00:01"  # multicast: the core refuses it (EINVAL)
    f, t = _follow(qemu, mgmt, {"nic0": "vdpa0"})
    assert _mac(mgmt) == "00:00:00:00:00:00"
    assert "the device refused the MAC" in capsys.readouterr().err
    qemu.close()
    t.join(10)
    f.close()


def test_garbage_from_qmp_ends_the_agent_with_an_error(qemu, mgmt):
    qemu.filters["nic0"] = OLD
    f, t = _follow(qemu, mgmt, {"nic0": "vdpa0"})
    qemu.raw(b"{not json\n")
    t.join(10)
    assert not t.is_alive()
    f.close()


def test_no_qmp_peer_is_a_clear_error(runtime, mgmt):
    with pytest.raises(OSError):
        GuestMacFollower(os.path.join(str(runtime), "nothing.sock"), {"nic0": "vdpa0"}, mgmt.socket_path)


def test_unknown_nic_at_start_is_refused_with_qemus_error(qemu, mgmt):
    with pytest.raises(QmpError, match="invalid net client name"):
        f = GuestMacFollower(qemu.path, {"nic9": "vdpa0"}, mgmt.socket_path)
        try:
            f.run()
        finally:
            f.close()


def test_command_line_usage_and_errors(runtime, mgmt, capsys):
    from dataplane.vdpa.mgmt.tool import main

    assert main(["follow-guest-mac", "--qmp"]) == 1
    assert "Usage: dataplane vdpa" in capsys.readouterr().err
    assert main(["follow-guest-mac", "--qmp", "/nonexistent/qmp.sock", "nic0"]) == 1  # NIC=DEV expected
    assert main(["--file-prefix", "dataplane", "follow-guest-mac", "--qmp", "/nonexistent/qmp.sock", "nic0=vdpa0"]) == 1
    assert "follow-guest-mac: [Errno 2]" in capsys.readouterr().err
