"""Postcopy (PAGEFAULT): the protocol over the socket, with the test playing the destination QEMU,
including real userfaultfd rounds for a fault of the main process and of a separate lcore process."""

from __future__ import annotations

import ctypes
import os
import signal

import numpy as np
import pytest

from dataplane.testing.vhost_frontend import PAGE, PostcopyPager
from dataplane.vhost import library as vhost
from dataplane.vhost.handoff import map_vring, vring_spec
from dataplane.vhost.library import VhostNotSupported
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VhostUserRequest as R, VirtioFeature as VF, bit

V1 = bit(VF.VIRTIO_F_VERSION_1)
PROTO = bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
PAGEFAULT = bit(PF.VHOST_USER_PROTOCOL_F_PAGEFAULT)
REPLY_ACK = bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
#: Replies may wait for the fault relay to start (a Python process importing numba: seconds on a loaded box).
SLOW = 60.0


@pytest.fixture
def pc_server(lib, sock_path, recorder, datapath):
    """A socket registered with POSTCOPY_SUPPORT (recording callbacks and data path)."""
    lib.driver_register(sock_path, vhost.POSTCOPY_SUPPORT)
    lib.driver_callback_register(sock_path, recorder)
    lib.driver_datapath_register(sock_path, datapath)
    lib.driver_start(sock_path)
    return sock_path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _listening(lib, connect, guest):
    """Negotiate PAGEFAULT, ADVISE (-> the back-end's uffd) and LISTEN; returns (fe, uffd fd, device)."""
    fe = connect(guest, timeout=SLOW)
    fe.negotiate(V1 | PROTO, REPLY_ACK | PAGEFAULT)
    assert fe.protocol_features & PAGEFAULT
    uffd = fe.postcopy_advise()
    assert fe.postcopy_listen() == 0
    return fe, uffd, lib.get_device(0)


def test_pagefault_is_offered_only_with_postcopy_support(lib, sock_path, sock_dir):
    lib.driver_register(sock_path, 0)
    assert not lib.driver_get_protocol_features(sock_path) & PAGEFAULT
    with pytest.raises(VhostNotSupported, match="PAGEFAULT"):
        lib.driver_set_protocol_features(sock_path, lib.driver_get_protocol_features(sock_path) | PAGEFAULT)
    other = os.path.join(sock_dir, "pc.sock")
    lib.driver_register(other, vhost.POSTCOPY_SUPPORT)
    assert lib.driver_get_protocol_features(other) == lib.driver_get_protocol_features(sock_path) | PAGEFAULT


def test_postcopy_support_is_refused_for_a_device_whose_lcores_do_not_register_with_the_relay(lib, sock_path):
    """blk's lcores map guest memory without registering it with the fault relay: PAGEFAULT would
    be offered without being implemented, so POSTCOPY_SUPPORT is refused for a blk socket."""
    from dataplane.vhost.blk.device import BlkDevice

    with pytest.raises(VhostNotSupported, match="POSTCOPY_SUPPORT: the blk device's data path does not register"):
        lib.driver_register(sock_path, vhost.POSTCOPY_SUPPORT, device=BlkDevice(sectors=8))
    lib.driver_register(sock_path, 0, device=BlkDevice(sectors=8))
    with pytest.raises(VhostNotSupported, match="PAGEFAULT"):
        lib.driver_set_protocol_features(sock_path, lib.driver_get_protocol_features(sock_path) | PAGEFAULT)


def test_postcopy_requests_need_pagefault_negotiated(lib, pc_server, connect, guest):
    fe = connect(guest)
    fe.negotiate(V1 | PROTO, REPLY_ACK)
    fe.send(R.VHOST_USER_POSTCOPY_ADVISE, need_reply=True)
    assert fe.reply(R.VHOST_USER_POSTCOPY_ADVISE).payload == (1).to_bytes(8, "little")
    assert "PAGEFAULT protocol feature not negotiated" in lib.get_device(0).last_error


def test_main_process_fault_is_served_by_the_front_end(lib, pc_server, connect, guest):
    """A ring index read by the control plane, on a page not migrated yet: the fault reaches the
    front-end through the handed-over userfaultfd, at the address the SET_MEM_TABLE reply gave."""
    fe, uffd, dev = _listening(lib, connect, guest)
    bases = fe.set_mem_table_postcopy()
    region = guest.regions[0]
    assert bases[0] != region.qva and bases[0] % PAGE == 0  # the back-end's own address, not ours
    fe.sync()
    assert dev.memory is not None and dev.postcopy.relay is not None
    pager = PostcopyPager(uffd, guest, bases)
    try:
        vr = fe.alloc_vring(0, 256)
        source = bytes(guest.view(vr.used_gpa & ~(PAGE - 1), PAGE))  # the page as the source has it ...
        source = bytearray(source)
        off = vr.used_gpa % PAGE
        source[off + 2 : off + 4] = (7).to_bytes(2, "little")  # ... with used->idx 7
        guest.discard(vr.used_gpa & ~(PAGE - 1))  # not migrated yet
        fe.set_vring_num(0, 256)
        fe.set_vring_addr(0, guest.qva(vr.desc_gpa), guest.qva(vr.used_gpa), guest.qva(vr.avail_gpa))
        gpa, address = pager.wait_fault()
        assert gpa == vr.used_gpa & ~(PAGE - 1)
        assert address == pager.address_of(gpa)
        pager.place(address, bytes(source))
        fe.sync()
        vq = dev.vrings[0]
        assert vq.access_ok and vq.last_used_idx == 7  # the back-end read the placed page, not a zero page
        assert bytes(guest.view(gpa, PAGE)) == bytes(source)
        relay_pid = dev.postcopy.relay.pid
        assert fe.postcopy_end() == 0
        assert dev.postcopy.relay is None and not _alive(relay_pid)
        assert dev.postcopy.faults_served == 1 and len(pager.faults) == 1
    finally:
        pager.close()


def test_lcore_process_fault_is_relayed(lib, pc_server, connect, guest):
    """An lcore process maps guest memory itself (map_vring): its fault on a missing page reaches the
    front-end through the relay, and its read completes with the data the front-end placed --
    QEMU's way: written through the front-end's own mapping, then UFFDIO_WAKE."""
    fe, uffd, dev = _listening(lib, connect, guest)
    bases = fe.set_mem_table_postcopy()
    pager = PostcopyPager(uffd, guest, bases)
    buf_gpa = guest.alloc(PAGE, PAGE)
    vr = fe.setup_vring(0, 64)
    fe.sync()
    spec, fds = vring_spec(dev, 0)
    assert spec["postcopy"] == dev.postcopy.client_address
    guest.discard(buf_gpa)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the lcore
        try:
            os.close(r)
            mem, _ = map_vring(spec, [os.dup(fd) for fd in fds[: len(spec["regions"])]])
            hva = mem.gpa_to_hva(buf_gpa, 16)
            os.write(w, ctypes.string_at(hva, 16))  # blocks on the missing page until it is served
        finally:
            os._exit(0)
    os.close(w)
    try:
        gpa, address = pager.wait_fault()
        assert gpa == buf_gpa
        guest.view(buf_gpa, 16)[:] = np.frombuffer(b"migrated-page-16", np.uint8)  # QEMU places the page ...
        pager.wake(address)  # ... and wakes the back-end's address
        got = b""
        while len(got) < 16:
            chunk = os.read(r, 16)
            if not chunk:
                break
            got += chunk
        assert got == b"migrated-page-16"
    finally:
        os.close(r)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pager.close()
    assert vr is fe.vrings[0]
    assert fe.postcopy_end() == 0
    assert dev.postcopy.faults_served == 1  # the lcore's, through the relay


# -- hostile order -------------------------------------------------------------------


def _negotiated(lib, connect, guest):
    fe = connect(guest, timeout=SLOW)
    fe.negotiate(V1 | PROTO, REPLY_ACK | PAGEFAULT)
    return fe, lib.get_device(0)


def test_listen_without_advise_is_refused(lib, pc_server, connect, guest):
    fe, dev = _negotiated(lib, connect, guest)
    assert fe.postcopy_listen() == 1
    assert "POSTCOPY_LISTEN without POSTCOPY_ADVISE" in dev.last_error
    assert not dev.postcopy.active


def test_end_without_listen_is_refused_and_withdraws_the_advise(lib, pc_server, connect, guest):
    fe, dev = _negotiated(lib, connect, guest)
    assert fe.postcopy_end() == 1
    assert dev.last_error.endswith("POSTCOPY_END without POSTCOPY_LISTEN")
    os.close(fe.postcopy_advise())
    relay_pid = dev.postcopy.relay.pid
    assert fe.postcopy_end() == 1
    assert "POSTCOPY_END without POSTCOPY_LISTEN (advise withdrawn)" in dev.last_error
    assert dev.postcopy.relay is None and not _alive(relay_pid)
    assert fe.postcopy_listen() == 1  # the advise is gone


def test_advise_after_listen_and_listen_twice_are_refused(lib, pc_server, connect, guest):
    fe, uffd, dev = _listening(lib, connect, guest)
    os.close(uffd)
    fe.send(R.VHOST_USER_POSTCOPY_ADVISE, need_reply=True)
    assert fe.reply(R.VHOST_USER_POSTCOPY_ADVISE).payload == (1).to_bytes(8, "little")
    assert "POSTCOPY_ADVISE after POSTCOPY_LISTEN" in dev.last_error
    assert fe.postcopy_listen() == 1
    assert "POSTCOPY_LISTEN #2 after only 1 POSTCOPY_ADVISE" in dev.last_error
    assert fe.postcopy_end() == 0


def test_listen_with_memory_mapped_is_refused(lib, pc_server, connect, guest):
    fe, dev = _negotiated(lib, connect, guest)
    fe.set_mem_table()
    os.close(fe.postcopy_advise())
    assert fe.postcopy_listen() == 1
    assert "guest memory already mapped" in dev.last_error


def test_a_message_instead_of_the_mem_table_ack_closes_the_connection(lib, pc_server, connect, guest, recorder):
    fe, uffd, dev = _listening(lib, connect, guest)
    os.close(uffd)
    relay_pid = dev.postcopy.relay.pid
    fe.set_mem_table_postcopy(ack=None)
    fe.send(R.VHOST_USER_GET_FEATURES)
    assert fe.wait_closed()
    recorder.wait(("destroy_connection", 0))
    assert lib.list_vids() == []  # the library lock is held until the close is complete
    assert "expected the front-end's SET_MEM_TABLE acknowledgement" in dev.last_error
    assert dev.memory is None and dev.postcopy.relay is None and not _alive(relay_pid)


def test_disconnect_during_postcopy_stops_the_relay(lib, pc_server, connect, guest, recorder):
    fe, uffd, dev = _listening(lib, connect, guest)
    os.close(uffd)
    fe.set_mem_table_postcopy()
    fe.sync()
    relay_pid = dev.postcopy.relay.pid
    fe.close()
    recorder.wait(("destroy_connection", 0))
    assert lib.list_vids() == []  # the library lock is held until the close is complete
    assert dev.postcopy.relay is None and not _alive(relay_pid)


def test_one_advise_listen_end_per_vhost_device_of_the_connection(lib, pc_server, connect, guest):
    """QEMU sends ADVISE, LISTEN and END once per vhost device (a multi-queue net device has one per
    queue pair) and SET_MEM_TABLE once: postcopy ends with the last END."""
    fe, dev = _negotiated(lib, connect, guest)
    os.close(fe.postcopy_advise())
    os.close(fe.postcopy_advise())
    assert fe.postcopy_listen() == 0 and fe.postcopy_listen() == 0
    fe.set_mem_table_postcopy()
    relay_pid = dev.postcopy.relay.pid
    assert fe.postcopy_end() == 0
    assert dev.postcopy.active and _alive(relay_pid)
    assert fe.postcopy_end() == 0
    assert not dev.postcopy.active and not _alive(relay_pid)
    assert fe.postcopy_end() == 1  # nothing left to end


def test_advise_without_listen_is_withdrawn_by_an_ordinary_mem_table(lib, pc_server, connect, guest):
    """A migration that completes in precopy: QEMU advised postcopy but never listens, sends no END,
    and starts the device with an ordinary SET_MEM_TABLE; the relay stops then."""
    fe, dev = _negotiated(lib, connect, guest)
    os.close(fe.postcopy_advise())
    relay_pid = dev.postcopy.relay.pid
    fe.set_mem_table()
    fe.sync()
    assert dev.memory is not None and dev.postcopy.relay is None and not _alive(relay_pid)
    assert fe.postcopy_listen() == 1  # nothing advised any more


def test_a_mapping_the_relay_cannot_take_is_not_used(lib, pc_server, connect, guest):
    """An lcore handed a vring while postcopy was on, attaching after the relay is gone: its mapping
    cannot be registered, so map_vring refuses it (unmapped, fds closed) instead of touching it."""
    fe, uffd, dev = _listening(lib, connect, guest)
    os.close(uffd)
    fe.set_mem_table_postcopy()
    fe.setup_vring(0, 64)
    fe.sync()
    spec, fds = vring_spec(dev, 0)
    assert spec["postcopy"]
    assert fe.postcopy_end() == 0
    with pytest.raises(ValueError, match="postcopy: guest memory not registered with the fault relay, not used"):
        map_vring(spec, [os.dup(fd) for fd in fds[: len(spec["regions"])]])
