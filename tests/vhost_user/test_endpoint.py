"""The one framing code: messages and fds both ways, partial reads, and garbage refused."""

from __future__ import annotations

import os
import socket

import pytest

from dataplane.vhost_user.endpoint import RECV_MAX_FDS, Endpoint
from dataplane.vhost_user.errors import EndpointTimeout, FramingError, PeerClosed, ProtocolError
from dataplane.vhost_user.messages import Header, Message, VhostUserRequest as R, parse_request
from dataplane.vhost_user.payloads import U64, Memory, MemoryRegion


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ea, eb = Endpoint(a, timeout=2.0), Endpoint(b, timeout=2.0)
    yield ea, eb
    ea.close()
    eb.close()


def _same_file(a: int, b: int) -> bool:
    return os.path.samestat(os.fstat(a), os.fstat(b))


def test_message_with_fds_round_trip(pair):
    a, b = pair
    fds = [os.eventfd(0), os.eventfd(0)]
    try:
        table = Memory([MemoryRegion(0, 4096, 0x1000, 0), MemoryRegion(8192, 4096, 0x9000, 0)])
        a.send(Message.build(R.VHOST_USER_SET_MEM_TABLE, table, fds, need_reply=True))
        msg = b.recv()
        assert (msg.request, msg.flags, msg.need_reply, msg.fds_truncated) == (R.VHOST_USER_SET_MEM_TABLE, 0x9, True, False)
        spec, payload = parse_request(msg)
        assert payload == table and len(msg.fds) == 2
        assert all(_same_file(x, y) for x, y in zip(msg.fds, fds))
        msg.close_fds()
        b.send(Message.build(R.VHOST_USER_SET_MEM_TABLE, U64(0), reply=True))
        reply = a.recv()
        assert reply.is_reply and U64.parse(reply.payload).u64 == 0 and reply.fds == []
    finally:
        for fd in fds:
            os.close(fd)


def test_a_message_written_byte_by_byte_is_reassembled_with_its_fds(pair):
    a, b = pair
    efd = os.eventfd(0)
    try:
        data = Message.build(R.VHOST_USER_SET_VRING_KICK, U64(3)).encode()
        a.send_bytes(data[:1], [efd])
        assert b.read() is None
        for i in range(1, len(data)):
            assert b.read() is None
            a.send_bytes(data[i : i + 1])
        msg = b.read()
        assert msg is not None and U64.parse(msg.payload).u64 == 3 and len(msg.fds) == 1
        assert _same_file(msg.fds[0], efd)
        msg.close_fds()
    finally:
        os.close(efd)


def test_two_messages_in_one_write_keep_their_own_fds(pair):
    a, b = pair
    efd = os.eventfd(0)
    try:
        first = Message.build(R.VHOST_USER_SET_VRING_CALL, U64(0)).encode()
        second = Message.build(R.VHOST_USER_GET_FEATURES).encode()
        a.send_bytes(first + second, [efd])
        m1, m2 = b.recv(), b.recv()
        assert (m1.request, len(m1.fds)) == (R.VHOST_USER_SET_VRING_CALL, 1)
        assert (m2.request, m2.fds) == (R.VHOST_USER_GET_FEATURES, [])
        m1.close_fds()
    finally:
        os.close(efd)


def test_oversized_payload_is_a_framing_error(pair):
    a, b = pair
    a.send_bytes(Header(R.VHOST_USER_SET_FEATURES, 1, 1 << 20).pack())
    with pytest.raises(FramingError, match=r"VHOST_USER_SET_FEATURES: payload size 1048576 > 4096 \(stream unusable\)"):
        b.recv()


def test_bad_version_is_a_framing_error(pair):
    a, b = pair
    a.send_bytes(Header(R.VHOST_USER_GET_FEATURES, 2, 0).pack())
    with pytest.raises(FramingError, match="bad protocol version 2"):
        b.recv()


def test_too_many_fds_are_truncated_and_refused(pair):
    a, b = pair
    fds = [os.eventfd(0) for _ in range(RECV_MAX_FDS + 3)]
    before = set(os.listdir("/proc/self/fd"))
    try:
        a.send(Message.build(R.VHOST_USER_SET_OWNER, b"", fds))
        msg = b.recv()
        assert msg.fds_truncated and len(msg.fds) <= RECV_MAX_FDS
        with pytest.raises(ProtocolError, match="too many fds in the ancillary data"):
            parse_request(msg)
        msg.close_fds()
    finally:
        for fd in fds:
            os.close(fd)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_peer_closing_mid_message_and_between_messages(pair):
    a, b = pair
    a.send_bytes(Header(R.VHOST_USER_SET_FEATURES, 1, 8).pack() + b"\0" * 3)
    a.close()
    with pytest.raises(PeerClosed, match="in the middle of a message"):
        b.recv()
    c, d = socket.socketpair()
    ec, ed = Endpoint(c), Endpoint(d)
    assert ed.peek() is None
    ec.close()
    assert ed.peek() == b""
    with pytest.raises(PeerClosed, match="peer closed the connection$"):
        ed.recv()
    ed.close()


def test_receive_and_send_deadlines(pair):
    a, b = pair
    with pytest.raises(EndpointTimeout, match="nothing received"):
        b.recv(timeout=0.05)
    # a peer that never reads: the send gives up at its deadline instead of blocking
    big = Message.build(R.VHOST_USER_SET_FEATURES, U64(1)).encode() * 200_000
    with pytest.raises(EndpointTimeout, match="send timed out"):
        a.send_bytes(big, timeout=0.1)
