"""The back-end request channel (SET_BACKEND_REQ_FD) against the scripted front-end.

The front-end reads the channel (``open_backend_channel`` / ``backend_recv`` /
``backend_ack``) the way QEMU's ``backend_read`` does; hostile front-ends
never answer, answer garbage, or close it.  Timeouts run on a manual clock.
"""

from __future__ import annotations

import os
import struct

import pytest

from dataplane.testing.clock import ManualClock
from dataplane.vhost import backend_channel as bc
from dataplane.vhost.library import VhostError, VhostLibrary, VhostNotSupported
from dataplane.vhost.transport import EventLoop
from dataplane.vhost_user import (
    VHOST_USER_VRING_NOFD_MASK,
    EndpointTimeout,
    PeerClosed,
    ProtocolError,
    RequestError,
    VhostUserBackendRequest as B,
    VhostUserProtocolFeature as PF,
    VhostUserRequest as R,
    VirtioFeature as VF,
    Header,
    Message,
    U64,
    bit,
)

BASE = bit(VF.VIRTIO_F_VERSION_1) | bit(VF.VHOST_USER_F_PROTOCOL_FEATURES)
CHANNEL = bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ) | bit(PF.VHOST_USER_PROTOCOL_F_REPLY_ACK)
CONFIG = bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)
NOTIFIER = bit(PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER) | bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD)
WAIT = 10.0  # generous: the box is loaded; never a measured interval


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def lib(clock):
    library = VhostLibrary(loop=EventLoop(clock=clock))
    yield library
    library.close()


@pytest.fixture
def server(lib, sock_path, recorder, datapath):
    """A net socket with CONFIG enabled (implemented, offered on request): CONFIG_CHANGE_MSG is the
    request these tests send."""
    lib.driver_register(sock_path, 0)
    lib.driver_set_protocol_features(sock_path, lib.driver_get_protocol_features(sock_path) | CONFIG)
    lib.driver_callback_register(sock_path, recorder)
    lib.driver_datapath_register(sock_path, datapath)
    lib.driver_start(sock_path)
    return sock_path


def _open(connect, guest, protocol=CHANNEL | CONFIG | NOTIFIER):
    fe = connect(guest)
    fe.negotiate(BASE, protocol)
    assert fe.open_backend_channel() == (0 if fe.reply_ack else None)
    if not fe.reply_ack:
        # nothing answers SET_BACKEND_REQ_FD: a request that is answered, handled after it, shows
        # the back-end has the channel (without it the test raced the back-end's event loop)
        fe.get_features()
    return fe


def _request(fe, name):
    spec, payload, msg = fe.backend_recv(WAIT)
    assert spec.name == f"VHOST_USER_BACKEND_{name}"
    return payload, msg


def test_config_change_is_acked_while_the_front_end_reads_the_config(lib, server, connect, guest):
    """QEMU answers CONFIG_CHANGE_MSG only after its GET_CONFIG on the front channel is answered:
    the back-end must serve the front channel while it waits for the ack (no deadlock)."""
    fe = _open(connect, guest)
    fut = lib.backend_config_change(0)
    _, msg = _request(fe, "CONFIG_CHANGE_MSG")
    assert msg.need_reply and msg.payload == b""
    assert len(fe.get_config(0, 6)) == 6  # served while the ack is pending
    assert not fut.done()
    fe.backend_ack(msg, 0)
    assert fut.result(WAIT) == 0
    ch = lib.get_device(0).backend_channel
    assert ch.pending == 0 and ch.stats["acked"] == 1


def test_refused_request_fails_its_future_and_keeps_the_channel(lib, server, connect, guest):
    fe = _open(connect, guest)
    fut = lib.backend_config_change(0)
    _, msg = _request(fe, "CONFIG_CHANGE_MSG")
    fe.backend_ack(msg, 1)
    with pytest.raises(RequestError, match="refused it"):
        fut.result(WAIT)
    fut = lib.backend_config_change(0)  # the channel still works
    _, msg = _request(fe, "CONFIG_CHANGE_MSG")
    fe.backend_ack(msg, 0)
    assert fut.result(WAIT) == 0


def test_requests_are_matched_in_order(lib, server, connect, guest):
    fe = _open(connect, guest)
    futs = [lib.backend_config_change(0) for _ in range(3)]
    msgs = [_request(fe, "CONFIG_CHANGE_MSG")[1] for _ in range(3)]
    for msg, status in zip(msgs, (0, 1, 0)):
        fe.backend_ack(msg, status)
    assert futs[0].result(WAIT) == 0 and futs[2].result(WAIT) == 0
    with pytest.raises(RequestError):
        futs[1].result(WAIT)


def test_without_reply_ack_nothing_is_awaited(lib, server, connect, guest):
    fe = _open(connect, guest, protocol=bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ) | CONFIG)
    fut = lib.backend_config_change(0)
    assert fut.result(WAIT) == 0
    _, msg = _request(fe, "CONFIG_CHANGE_MSG")
    assert not msg.need_reply


def test_no_answer_times_out_closes_the_channel_and_keeps_the_device(lib, server, connect, guest, clock):
    fe = _open(connect, guest)
    fut = lib.backend_config_change(0)
    _request(fe, "CONFIG_CHANGE_MSG")
    lib._event_loop().turn()
    assert not fut.done()
    clock.advance(bc.ACK_TIMEOUT)
    lib._event_loop().turn()
    with pytest.raises(EndpointTimeout, match="no answer to VHOST_USER_BACKEND_CONFIG_CHANGE_MSG"):
        fut.result(WAIT)
    dev = lib.get_device(0)
    assert dev.backend_channel.closed
    with pytest.raises(PeerClosed):
        fe.backend_recv(WAIT)  # our end sees the close
    assert fe.get_features()  # the front channel is untouched
    with pytest.raises(PeerClosed, match="back-end channel closed"):
        lib.backend_config_change(0).result(WAIT)


def _reply(request, payload=b"", flags=0x5) -> bytes:
    return Header(int(request), flags, len(payload)).pack() + payload


HOSTILE = {
    "other request": (_reply(B.VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, struct.pack("=Q", 0)), (), ProtocolError),
    "no reply flag": (_reply(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, struct.pack("=Q", 0), flags=0x1), (), ProtocolError),
    "short payload": (_reply(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, b"\0\0\0"), (), ProtocolError),
    "bad version": (_reply(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, struct.pack("=Q", 0), flags=0x6), (), PeerClosed),
    "oversized": (Header(2, 0x5, 1 << 20).pack(), (), PeerClosed),
    "fd with the answer": (_reply(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, struct.pack("=Q", 0)), ("fd",), ProtocolError),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_garbage_answer_closes_the_channel_with_a_clear_error(lib, server, connect, guest, case):
    data, fds, error = HOSTILE[case]
    fe = _open(connect, guest)
    fut = lib.backend_config_change(0)
    _request(fe, "CONFIG_CHANGE_MSG")
    extra = os.eventfd(0) if fds else -1
    try:
        fe.backend.send_bytes(data, [extra] if fds else [])
    finally:
        if extra >= 0:
            os.close(extra)
    with pytest.raises(error):
        fut.result(WAIT)
    dev = lib.get_device(0)
    assert dev.backend_channel.closed and dev.backend_channel.stats["errors"] == 1
    assert fe.get_features()  # the device keeps serving the front channel


def test_unsolicited_message_closes_the_channel(lib, server, connect, guest):
    fe = _open(connect, guest)
    fe.backend.send(Message.build(B.VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, U64(0), reply=True))
    with pytest.raises(PeerClosed):
        fe.backend_recv(WAIT)
    assert "unsolicited" in lib.get_device(0).backend_channel.close_reason
    assert fe.get_features()


def test_front_end_closing_the_channel_fails_pending_requests(lib, server, connect, guest):
    fe = _open(connect, guest)
    fut = lib.backend_config_change(0)
    _request(fe, "CONFIG_CHANGE_MSG")
    fe.backend.close()
    with pytest.raises(PeerClosed, match="front-end closed it"):
        fut.result(WAIT)


def test_too_many_unanswered_requests_are_refused(lib, server, connect, guest):
    fe = _open(connect, guest)
    futs = [lib.backend_config_change(0) for _ in range(bc.MAX_PENDING)]
    with pytest.raises(RequestError, match="wait for the front-end's answer"):
        lib.backend_config_change(0).result(WAIT)
    for _ in futs:
        fe.backend_ack(_request(fe, "CONFIG_CHANGE_MSG")[1], 0)
    assert all(f.result(WAIT) == 0 for f in futs)


def test_a_front_end_that_never_reads_loses_the_channel_without_blocking(lib, server, connect, guest):
    fe = _open(connect, guest, protocol=bit(PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ) | CONFIG)
    for _ in range(100000):
        fut = lib.backend_config_change(0)
        if fut.exception(WAIT) is not None:
            break
    assert isinstance(fut.exception(), PeerClosed)
    assert "does not read" in lib.get_device(0).backend_channel.close_reason
    assert fe.get_features()


def test_config_change_needs_config_negotiated(lib, server, connect, guest):
    fe = _open(connect, guest, protocol=CHANNEL)
    with pytest.raises(RequestError, match="CONFIG protocol feature not negotiated"):
        lib.backend_config_change(0).result(WAIT)
    fe.sync()


def test_no_channel_no_request(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE, CHANNEL | CONFIG)
    with pytest.raises(VhostNotSupported, match="no back-end channel"):
        lib.backend_config_change(0)


def test_channel_closed_by_reset_owner_and_by_disconnect(lib, server, connect, guest):
    fe = _open(connect, guest)
    ch = lib.get_device(0).backend_channel
    assert fe.request(R.VHOST_USER_RESET_OWNER, ack=True) == 0
    assert ch.closed and lib.get_device(0).backend_channel is None
    with pytest.raises(PeerClosed):
        fe.backend_recv(WAIT)
    fe.set_owner()
    fe.negotiate(BASE, CHANNEL, owner=False)
    fe.open_backend_channel()
    ch = lib.get_device(0).backend_channel
    fe.request(R.VHOST_USER_RESET_DEVICE, ack=True)
    assert not ch.closed  # RESET_DEVICE keeps ownership, protocol features and the channel
    fe.close()
    lib._event_loop().turn()
    assert ch.closed  # the leak check (conftest) sees its socket gone


def test_channel_fd_must_be_a_unix_stream_socket(lib, server, connect, guest):
    fe = connect(guest)
    fe.negotiate(BASE, CHANNEL)
    efd = os.eventfd(0)
    try:
        assert fe.request(R.VHOST_USER_SET_BACKEND_REQ_FD, b"", [efd], ack=True) == 1
    finally:
        os.close(efd)
    assert "not a socket" in lib.get_device(0).last_error


# -- VRING_HOST_NOTIFIER_MSG (BACKEND_SEND_FD: the channel carries fds) --------------------------


def test_host_notifier_carries_the_page_fd_and_nofd_withdraws_it(lib, server, connect, guest):
    fe = _open(connect, guest)
    fe.set_mem_table()
    fe.setup_vring(1, 64)
    fe.sync()
    page = os.memfd_create("notifier")
    os.ftruncate(page, 2 * 4096)
    try:
        fut = lib.backend_vring_host_notifier(0, 1, page, offset=4096, size=4096)
        area, msg = _request(fe, "VRING_HOST_NOTIFIER_MSG")
        assert (area.u64, area.size, area.offset) == (1, 4096, 4096) and msg.need_reply
        got = msg.take_fd(0)
        try:
            assert os.path.samestat(os.fstat(got), os.fstat(page))  # the same file: a doorbell page is shared
        finally:
            os.close(got)
        fe.backend_ack(msg, 0)
        assert fut.result(WAIT) == 0
        fut = lib.backend_vring_host_notifier(0, 1, None)
        area, msg = _request(fe, "VRING_HOST_NOTIFIER_MSG")
        assert area.u64 == 1 | VHOST_USER_VRING_NOFD_MASK and msg.fds == []
        fe.backend_ack(msg, 0)
        assert fut.result(WAIT) == 0
    finally:
        os.close(page)


def test_host_notifier_bad_arguments_are_refused_and_the_channel_stays(lib, server, connect, guest):
    fe = _open(connect, guest)
    fe.set_mem_table()
    fe.setup_vring(0, 64)
    fe.sync()
    page = os.memfd_create("notifier")
    os.ftruncate(page, 4096)
    closed = os.dup(page)
    os.close(closed)
    try:
        with pytest.raises(VhostError, match="no vring 5"):
            lib.backend_vring_host_notifier(0, 5, page, 0, 4096)
        with pytest.raises(RequestError, match="not an open fd"):
            lib.backend_vring_host_notifier(0, 0, closed, 0, 4096).result(WAIT)
        with pytest.raises(RequestError, match="bad area"):
            lib.backend_vring_host_notifier(0, 0, page, 0, 0).result(WAIT)
    finally:
        os.close(page)
    assert fe.backend.peek() is None and not lib.get_device(0).backend_channel.closed


@pytest.mark.parametrize("missing", ["HOST_NOTIFIER", "BACKEND_SEND_FD"])
def test_host_notifier_refused_unless_negotiated(lib, server, connect, guest, missing):
    fe = _open(connect, guest, protocol=(CHANNEL | NOTIFIER) & ~bit(PF[f"VHOST_USER_PROTOCOL_F_{missing}"]))
    fe.set_mem_table()
    fe.setup_vring(0, 64)
    fe.sync()
    page = os.memfd_create("notifier")
    os.ftruncate(page, 4096)
    try:
        with pytest.raises(RequestError, match=missing):
            lib.backend_vring_host_notifier(0, 0, page, 0, 4096).result(WAIT)
    finally:
        os.close(page)
    assert fe.backend.peek() is None  # nothing was sent
    fe.sync()
