"""Segments, and the segments table handed to another process over a socket."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import socket

import numpy as np
import pytest

from dataplane.memory import Memory, Segment
from dataplane.memory.units import MiB


def test_memfd_segment_basics():
    with Segment.create_memfd("seg-test", 10000) as seg:
        assert seg.size == 12288 and seg.page_size == mmap.PAGESIZE
        assert not seg.hugepage and seg.path is None and seg.offset == 0
        assert seg.iova == seg.addr == seg.array.ctypes.data
        assert os.readlink(f"/proc/self/fd/{seg.fd}").startswith("/memfd:seg-test")
        seg.array[:4] = [1, 2, 3, 4]
        assert ctypes.string_at(seg.addr, 4) == b"\x01\x02\x03\x04"
        assert seg.buf[:4] == b"\x01\x02\x03\x04"
        assert seg.contains_addr(seg.addr + seg.size - 1) and not seg.contains_addr(seg.addr + seg.size)
    assert seg.closed and seg.array is None
    seg.close()  # idempotent


def test_hugetlbfs_segment(huge_dir):
    seg = Segment.create_hugetlbfs(huge_dir, "segtest", 3 * MiB, 2 * MiB)
    try:
        assert seg.size == 4 * MiB and seg.page_size == 2 * MiB and seg.hugepage
        assert seg.path == os.path.join(huge_dir, "segtest") and os.path.exists(seg.path)
        assert seg.addr % (2 * MiB) == 0
        seg.array[-1] = 9
    finally:
        seg.close()
    assert not os.path.exists(seg.path)
    with pytest.raises(OSError, match="No space left"):
        Segment.create_hugetlbfs(huge_dir, "toolarge", 64 * MiB, 2 * MiB)
    assert os.listdir(huge_dir) == []


def test_hugetlb_memfd_segment(huge_dir):
    with Segment.create_memfd("hugefd", 1, hugetlb=True, page_size=2 * MiB) as seg:
        assert seg.size == 2 * MiB and seg.hugepage and seg.page_size == 2 * MiB
        with Segment.attach(os.dup(seg.fd)) as other:
            assert other.hugepage and other.page_size == 2 * MiB and other.size == 2 * MiB
        with pytest.raises(ValueError, match="not aligned to the page size 2 MiB"):
            Segment.attach(seg.fd, 4096, offset=4096)


def test_segment_closes_with_live_views():
    """Closing while numpy views exist must not crash; the mapping goes when
    the views do."""
    seg = Segment.create_memfd("views", 4096)
    view = seg.array[10:20]
    seg.close()
    view[:] = 1  # still mapped
    assert seg.closed
    del view


def test_attach_keeps_the_creators_iova():
    with Segment.create_memfd("iova", 8192) as seg:
        seg.array[100] = 77
        with Segment.attach(os.dup(seg.fd), 4096, offset=0, iova=seg.iova) as again:
            assert again.iova == seg.iova and again.addr != seg.addr
            assert again.array[100] == 77


def _receive_and_attach(conn, sock_fd):
    """In a process forked before the Memory existed: attach every segment
    received over the socket and check/write the agreed bytes."""
    sock = socket.socket(fileno=sock_fd)
    table, fds, _, _ = socket.recv_fds(sock, 4096, 16)
    table = json.loads(table)  # [(offset, size, iova, probe offset)] per fd
    seen = []
    for fd, (offset, size, iova, probe) in zip(fds, table):
        with Segment.attach(fd, size, offset, iova=iova) as seg:
            seen.append(bytes(seg.array[probe : probe + 8]))
            seg.array[probe + 8 : probe + 16] = np.frombuffer(b"REPLYOK!", np.uint8)
    sock.close()
    return seen


@pytest.mark.parametrize("segment_size", [None, 2 * MiB])
def test_segments_table_attached_in_another_process(backend, fork, segment_size):
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = fork(_receive_and_attach, child_sock.fileno())  # before the memory exists
    child_sock.close()
    with Memory(4 * MiB, file_prefix="table", segment_size=segment_size, **backend) as mem:
        entries = mem.segments_table()
        assert len(entries) == len(mem.segments) == (1 if segment_size is None else 2)
        probes = []
        for i, (fd, offset, size, iova) in enumerate(entries):
            seg = mem.segments[i]
            assert (fd, offset, size, iova) == (seg.fd, seg.offset, seg.size, seg.iova)
            assert offset % seg.page_size == 0
            probe = size - 64 if i else mem.memzone_reserve("probe", 64).offset
            seg.array[probe : probe + 8] = np.frombuffer(f"SEGMENT{i}".encode(), np.uint8)
            probes.append((offset, size, iova, probe))
        socket.send_fds(parent_sock, [json.dumps(probes).encode()], [e[0] for e in entries])
        assert child.join() == [f"SEGMENT{i}".encode() for i in range(len(entries))]
        for seg, (_, _, _, probe) in zip(mem.segments, probes):
            assert bytes(seg.array[probe + 8 : probe + 16]) == b"REPLYOK!"
    parent_sock.close()
