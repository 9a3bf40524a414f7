"""The simulators' hardware process itself (dataplane.vdpa.sim.hw): lifecycle, refused requests, clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dataplane.testing.leaks import fd_targets, leaked_fds, memfd_maps
from dataplane.testing.vdpa_sim_guest import SimGuest
from dataplane.vdpa.sim import SimHardware, SimHardwareError
from dataplane.vdpa.sim.spec import VDPASIM_BLK_FEATURES, VDPASIM_NET_FEATURES

T_GET_ID = 8


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def _get_id(hw, q) -> bytes:
    s = q.drv.submit(T_GET_ID, 0, read_len=20)
    q.kick()
    assert q.wait_used(1) == [(s, 21)]
    return q.drv.read_id(s)


def test_close_leaves_no_process_fd_or_shm():
    before = fd_targets()
    hw = SimHardware("blk", "tleak", capacity=64)
    hw.start()
    hw.start()  # idempotent: the same process
    pid = hw.pid
    guest = SimGuest([0])
    hw.attach(*guest.attach_args(VDPASIM_BLK_FEATURES))
    assert _get_id(hw, guest.q[0]) == b"vdpa_blk_sim" + bytes(8)
    assert hw.pid == pid and hw.alive()
    assert any("vdpasim-tleak" in t for t in fd_targets().values())
    hw.close()
    hw.close()  # idempotent
    assert not hw.alive() and _gone(pid)
    guest.close()
    assert leaked_fds(before, kinds=("anon_inode:[eventfd]", "socket:", "/memfd:")) == {}
    assert not any("vdpasim-" in k for k in memfd_maps())
    with pytest.raises(SimHardwareError):
        hw.attach(0, [], [], [])


def test_detach_unmaps_guest_memory_in_the_hardware():
    with SimHardware("net", "tunmap") as hw:
        hw.start()
        guest = SimGuest([0, 1])
        try:
            hw.attach(*guest.attach_args(VDPASIM_NET_FEATURES))
            assert sum(c for k, c in memfd_maps(hw.pid).items() if "vhost-frontend-guest" in k) >= 1
            assert set(hw.detach()) == {0, 1}
            assert not any("vhost-frontend-guest" in k for k in memfd_maps(hw.pid))
            assert hw.detach() == {}  # nothing attached: nothing to give back
        finally:
            guest.close()


def test_refused_requests_leave_the_hardware_working():
    with SimHardware("blk", "trefuse", capacity=64) as hw:
        hw.start()
        guest = SimGuest([0, 1])
        try:
            q0 = guest.q[0].spec()
            bad = dict(guest.q[1].spec(), desc_gpa=1 << 40)  # ring outside guest memory
            regions, fds = guest.regions(), guest.memory.fds()
            with pytest.raises(ValueError, match="outside guest memory"):
                hw.attach(0, regions, fds, [q0, bad])
            efd = os.eventfd(0)
            try:
                with pytest.raises(ValueError, match="guest memory"):  # an eventfd is no memory
                    hw.attach(0, regions, [efd], [q0])
            finally:
                os.close(efd)
            with pytest.raises(ValueError):
                hw.attach(0, regions, fds, [dict(q0, qid=64)])
            assert hw.alive()
            # a disabled queue with bad rings is accepted; enabling it is refused and recorded
            hw.attach(0, regions, fds, [q0, dict(bad, enabled=False)])
            with pytest.raises(ValueError, match="outside guest memory"):
                hw.set_vring_state(1, True)
            assert hw.queue_errors() == {1: "ring_address"}
            with pytest.raises(ValueError, match="not attached"):
                hw.set_vring_state(5, True)
            with pytest.raises(ValueError, match="already attached"):
                hw.attach(0, regions, fds, [q0])
            assert _get_id(hw, guest.q[0])[:12] == b"vdpa_blk_sim"
            assert hw.detach() == {0: (1, 0, 1, 0)}
        finally:
            guest.close()


def test_a_dead_hardware_is_reported_and_replaced():
    hw = SimHardware("net", "tdead")
    try:
        with pytest.raises(SimHardwareError):
            hw.detach()  # never started
        hw.start()
        pid = hw.pid
        hw.sync()
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        # a thread-group leader shows Z while its other threads still exit: waitpid reaps it only after
        deadline = time.monotonic() + 10
        while hw.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not hw.alive()
        with pytest.raises(SimHardwareError):
            hw.sync()
        hw.start()  # a dead process is replaced
        assert hw.pid != pid and hw.alive()
        hw.sync()
    finally:
        hw.close()


def test_the_hardware_ends_with_its_main_process():
    code = ("import os, sys; from dataplane.vdpa.sim import SimHardware\n"
            "hw = SimHardware('blk', 'torphan', capacity=8); hw.start(); hw.sync()\n"
            "print(hw.pid, flush=True); os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    pid = int(out.stdout.split()[0])
    assert _gone(pid), "the hardware outlived its main process"


def test_mac_and_arguments():
    with pytest.raises(ValueError):
        SimHardware("scsi", "x")
    with pytest.raises(ValueError):
        SimHardware("net", "x", mac=b"\x00" * 5)
    with pytest.raises(ValueError):
        SimHardware("net", "x", mtu=67)
    with SimHardware("net", "tmac") as hw:  # shared memory works before the process is started
        assert hw.mac == bytes(6) and hw.config_space()[:6] == bytes(6)
        assert [v for _, v in hw.stats(0)] == [0] * 5
        hw.set_mac(bytes.fromhex("02000000beef"))
        assert hw.mac == bytes.fromhex("02000000beef")
        with pytest.raises(ValueError):
            hw.set_mac(b"\x01")
    with SimHardware("blk", "tcap", capacity=12345) as hw:
        assert int.from_bytes(hw.config_space()[:8], "little") == 12345
