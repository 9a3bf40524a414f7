"""Sockets: client reconnects, server lifecycle, resource release across connections."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import structlog

from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.vhost.library import CLIENT, NO_RECONNECT, VhostBusy, VhostDeviceOps, VhostError, VhostLibrary
from dataplane.vhost_user import VirtioFeature as VF, bit
from dataplane.testing.clock import ManualClock
from dataplane.vhost.transport import RECONNECT_INTERVAL, EventLoop

from dataplane.testing.vhost_support import wait_until

BASE = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)


def _client(lib, path, recorder, flags=0):
    lib.driver_register(path, CLIENT | flags)
    lib.driver_callback_register(path, recorder)


def test_client_retries_every_second_until_the_server_appears(sock_path, recorder):
    """Client mode: one connect attempt per RECONNECT_INTERVAL of the loop's clock (a manual
    clock here, so the interval is checked exactly), "waiting" logged once, none after connecting."""
    assert RECONNECT_INTERVAL == 1.0  # DPDK's vhost-user client retries every second
    clock = ManualClock()
    loop = EventLoop(clock=clock)
    lib = VhostLibrary(loop)
    eps = 2.0**-10  # exact in binary: the timers' sums stay exact

    def after(seconds):
        clock.advance(seconds)
        loop.turn()  # the timers due by now have run
        return lib._sockets[sock_path].endpoint.attempts

    try:
        _client(lib, sock_path, recorder)
        with structlog.testing.capture_logs() as logs:
            lib.driver_start(sock_path)  # nobody listens yet: returns, retries in the background
            assert lib._sockets[sock_path].endpoint.attempts == 1
            for attempt in (2, 3):
                assert after(RECONNECT_INTERVAL - eps) == attempt - 1  # not before a second
                assert after(eps) == attempt  # but at the second
            listener = VhostUserFrontend.listen(sock_path)
            try:
                assert after(RECONNECT_INTERVAL - eps) == 3
                assert "new_connection" not in recorder.names()
                assert after(eps) == 4  # the server is there: this attempt connects
                fe = listener.accept(timeout=10.0)
                recorder.wait(("new_connection", 0))
                assert after(10 * RECONNECT_INTERVAL) == 4  # connected: no more attempts
                waiting = [e for e in logs if e["event"].startswith("vhost-user client waiting")]
                fe.get_features()  # the connection works
                fe.close()
                recorder.wait(("destroy_connection", 0))
            finally:
                listener.close()
    finally:
        lib.close()
    assert len(waiting) == 1  # logged once, not at every attempt


def test_no_reconnect_gives_up(lib, sock_path, recorder):
    _client(lib, sock_path, recorder, NO_RECONNECT)
    with pytest.raises(VhostError, match="cannot connect to .*vhost.sock"):
        lib.driver_start(sock_path)
    assert lib._sockets[sock_path].endpoint is None
    # a later start works once the server is there
    with VhostUserFrontend.listen(sock_path) as listener:
        lib.driver_start(sock_path)
        fe = listener.accept()
        recorder.wait(("new_connection", 0))
        fe.close()
        recorder.wait(("destroy_connection", 0))
        # no reconnect after the peer went away
        listener.sock.settimeout(1.3)
        with pytest.raises(socket.timeout):
            listener.sock.accept()


def test_client_reconnects_after_the_peer_goes_away(lib, sock_path, recorder, guest):
    _client(lib, sock_path, recorder)
    with VhostUserFrontend.listen(sock_path) as listener:
        lib.driver_start(sock_path)
        fe = listener.accept(memory=guest)
        fe.start(features=BASE)
        recorder.wait(("new_device", 0))
        fe.close()  # the "QEMU" restarts
        recorder.wait(("destroy_connection", 0))
        fe2 = listener.accept(memory=guest, timeout=3.0)
        recorder.wait_count(("new_connection", 0), 2, timeout=3.0)
        fe2.get_features()
        fe2.close()
        recorder.wait_count(("destroy_connection", 0), 2)
    lib.driver_unregister(sock_path)


def _proc_state(name: str):
    fds = sorted(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as f:
        maps = [line for line in f if name in line]
    return fds, maps


def test_server_releases_everything_after_each_connection(lib, server, sock_path, recorder):
    """Five front-ends connect, run, quit: our fds and mappings return to the baseline each time."""
    VhostUserFrontend.connect(sock_path).close()  # warm-up: first-use allocations
    recorder.wait(("destroy_connection", 0))
    baseline = _proc_state("vhost-frontend-guest")
    for i in range(5):
        mem = GuestMemoryLayout.simple(1 << 20, nregions=2) if i % 2 else GuestMemoryLayout.simple(2 << 20)
        fe = VhostUserFrontend.connect(sock_path, memory=mem)
        fe.start(features=BASE | bit(VF.VIRTIO_F_RING_PACKED) * (i % 2))
        recorder.wait(("new_device", 0))
        assert len(lib.get_mem_table(0)) == len(mem.regions)
        fe.close()
        mem.close()
        recorder.wait(("destroy_connection", 0))
        assert wait_until(lambda: lib.list_vids() == [])
        recorder.clear()
        state = _proc_state("vhost-frontend-guest")  # the memfds' mappings, ours and the front-end's
        extra = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(state[0]) - set(baseline[0]) if os.path.exists(f"/proc/self/fd/{fd}")}
        assert state == baseline, f"cycle {i}: leak {extra} {state[1]}"
    assert lib.driver_stats(sock_path)["connections"] == 6
    assert lib.driver_stats(sock_path).get("errors", 0) == 0


def test_each_connection_is_a_device(lib, server, sock_path, recorder):
    mems = [GuestMemoryLayout.simple(1 << 20) for _ in range(2)]
    fes = [VhostUserFrontend.connect(sock_path, memory=m) for m in mems]
    try:
        for fe in fes:
            fe.start(features=BASE)
        recorder.wait(("new_device", 0))
        recorder.wait(("new_device", 1))
        assert lib.list_vids() == [0, 1]
        assert lib.get_ifname(0) == lib.get_ifname(1) == sock_path
        fes[0].close()
        recorder.wait(("destroy_connection", 0))
        assert lib.list_vids() == [1]
        fes[0] = VhostUserFrontend.connect(sock_path)  # the smallest free vid is reused
        recorder.wait_count(("new_connection", 0), 2)
        assert lib.list_vids() == [0, 1]
    finally:
        for fe in fes:
            fe.close()
        for m in mems:
            m.close()


def test_stale_socket_file_is_replaced_live_one_and_regular_file_refused(lib, sock_dir):
    stale = os.path.join(sock_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # the file stays, nobody listens
    lib.driver_register(stale, 0)
    lib.driver_start(stale)
    VhostUserFrontend.connect(stale).close()

    other = os.path.join(sock_dir, "other.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(other)
    live.listen(1)
    try:
        lib.driver_register(other, 0)
        with pytest.raises(VhostError, match="in use by a live server"):
            lib.driver_start(other)
    finally:
        live.close()
        os.unlink(other)

    regular = os.path.join(sock_dir, "file.sock")
    with open(regular, "w") as f:
        f.write("precious")
    lib.driver_register(regular, 0)
    with pytest.raises(VhostError, match="exists and is not a socket"):
        lib.driver_start(regular)
    assert open(regular).read() == "precious"


def test_unregister_closes_connections_and_unlinks_the_socket(lib, server, sock_path, recorder, guest, datapath):
    fe = VhostUserFrontend.connect(sock_path, memory=guest)
    try:
        fe.start(features=BASE)
        recorder.wait(("new_device", 0))
        assert os.path.exists(sock_path)
        lib.driver_unregister(sock_path)
        assert not os.path.exists(sock_path)
        assert recorder.names()[-2:] == ["destroy_device", "destroy_connection"]
        assert datapath.started == set()
        assert fe.wait_closed()
        with pytest.raises(VhostError):
            lib.driver_start(sock_path)
    finally:
        fe.close()


def test_unregister_from_a_callback_does_not_deadlock(lib, sock_path):
    done = threading.Event()

    def new_connection(vid):
        lib.driver_unregister(sock_path)  # runs on the vhost-events thread
        done.set()

    lib.driver_register(sock_path, 0)
    lib.driver_callback_register(sock_path, VhostDeviceOps(new_connection=new_connection))
    lib.driver_start(sock_path)
    fe = VhostUserFrontend.connect(sock_path)
    try:
        assert done.wait(5)
        assert fe.wait_closed()
        assert not os.path.exists(sock_path) and lib.driver_paths() == []
    finally:
        fe.close()


def test_new_connection_can_refuse(lib, sock_path):
    lib.driver_register(sock_path, 0)
    lib.driver_callback_register(sock_path, {"new_connection": lambda vid: -1})
    lib.driver_start(sock_path)
    fe = VhostUserFrontend.connect(sock_path)
    try:
        assert fe.wait_closed()
    finally:
        fe.close()


def test_double_start_and_register(lib, server, sock_path):
    with pytest.raises(VhostBusy):
        lib.driver_start(sock_path)
    with pytest.raises(VhostBusy):
        lib.driver_register(sock_path, 0)
