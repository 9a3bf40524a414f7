"""Memzones: reserve / lookup / free, placement, and sharing across processes."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from dataplane.memory import Memory, MemzoneExists, MemzoneNotFound, OutOfMemory
from dataplane.memory.memory import table_size
from dataplane.memory.units import MiB


def test_reserve_lookup_free(backend):
    with Memory(4 * MiB, file_prefix="mz", **backend) as mem:
        a = mem.memzone_reserve("ring-a", 1000)
        assert (a.name, a.size) == ("ring-a", 1000)
        assert a.addr == a.segment.addr + a.offset and a.iova == mem.virt_to_iova(a.addr)
        assert mem.iova_to_virt(a.iova) == a.addr and mem.segment_of(a.addr) is a.segment
        assert a.offset >= table_size() and a.iova % 64 == 0
        view = a.view()
        assert view.shape == (1000,) and view.dtype == np.uint8 and not view.any()
        view[:] = 0x5A
        found = mem.memzone_lookup("ring-a")
        assert found == a
        assert (found.view() == 0x5A).all()
        b = mem.memzone_reserve("ring-b", 64)
        assert b.offset == a.offset + 1024  # 1000 rounded up to a cache line
        assert [z.name for z in mem.memzones()] == ["ring-a", "ring-b"]
        mem.memzone_free("ring-a")
        assert [z.name for z in mem.memzones()] == ["ring-b"]
        with pytest.raises(MemzoneNotFound, match="no memzone named 'ring-a'"):
            mem.memzone_lookup("ring-a")
        del view


def test_lookup_error_is_a_clear_key_error():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        with pytest.raises(KeyError) as info:
            mem.memzone_lookup("nope")
        assert str(info.value) == "no memzone named 'nope'"
        with pytest.raises(KeyError, match="cannot free memzone 'nope'"):
            mem.memzone_free("nope")


def test_duplicate_name_refused():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        mem.memzone_reserve("dup", 128)
        with pytest.raises(MemzoneExists, match="memzone 'dup' already exists"):
            mem.memzone_reserve("dup", 64)


@pytest.mark.parametrize("name", ["", "x" * 32, "a\0b"])
def test_bad_names_refused(name):
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        with pytest.raises(ValueError, match="invalid memzone name"):
            mem.memzone_reserve(name, 64)


def test_bad_size_and_align_refused():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        with pytest.raises(ValueError, match="size must be positive"):
            mem.memzone_reserve("z", 0)
        with pytest.raises(ValueError, match="power of two"):
            mem.memzone_reserve("z", 64, align=48)


def test_alignment_honoured():
    with Memory(4 * MiB, huge=False, in_memory=True) as mem:
        mem.memzone_reserve("small", 100)
        big = mem.memzone_reserve("aligned", 4096, align=1 << 16)
        assert big.iova % (1 << 16) == 0 and big.addr % (1 << 16) == 0


def test_out_of_memory_is_clear():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        mem.memzone_reserve("most", 600 * 1024)
        with pytest.raises(OutOfMemory, match=r"cannot reserve memzone 'more' of 409600 bytes .*largest free block is \d+ bytes"):
            mem.memzone_reserve("more", 400 * 1024)
        mem.memzone_free("most")
        mem.memzone_reserve("more", 400 * 1024)


def test_table_full_is_clear():
    with Memory(1 * MiB, huge=False, in_memory=True, max_memzones=4) as mem:
        for i in range(4):
            mem.memzone_reserve(f"z{i}", 64)
        with pytest.raises(OutOfMemory, match=r"memzone table is full \(4 entries\)"):
            mem.memzone_reserve("z4", 64)


def test_freed_space_reused_first_fit_and_zeroed():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        a = mem.memzone_reserve("a", 4096)
        mem.memzone_reserve("b", 4096)
        a.view()[:] = 0xFF
        mem.memzone_free("a")
        c = mem.memzone_reserve("c", 2048)
        assert c.offset == a.offset
        assert not c.view().any()


def test_views_with_dtype_and_shape():
    with Memory(1 * MiB, huge=False, in_memory=True) as mem:
        z = mem.memzone_reserve("typed", 4096)
        words = z.view(np.uint64)
        assert words.shape == (512,)
        grid = z.view(np.uint32, shape=(4, 8))
        grid[1, 0] = 0xDEADBEEF
        assert z.view(np.uint32)[8] == 0xDEADBEEF
        with pytest.raises(ValueError, match="needs 8192 bytes"):
            z.view(np.uint64, shape=1024)
        odd = mem.memzone_reserve("odd", 10)
        with pytest.raises(ValueError, match="not a whole number"):
            odd.view(np.uint32)
        del words, grid


def test_multiple_segments():
    with Memory(3 * MiB, huge=False, segment_size=1 * MiB, in_memory=True) as mem:
        assert [s.size for s in mem.segments] == [MiB] * 3
        assert len(mem.segments_table()) == 3
        zones = [mem.memzone_reserve(f"half{i}", 600 * 1024) for i in range(3)]
        assert sorted({mem.segments.index(z.segment) for z in zones}) == [0, 1, 2]
        for z in zones:
            assert mem.virt_to_iova(z.addr + 5) == z.iova + 5
        with pytest.raises(OutOfMemory):
            mem.memzone_reserve("too-big", 2 * MiB)
        with pytest.raises(ValueError, match="not in any memory segment"):
            mem.iova_to_virt(1)
        assert mem.segment_of(1) is None


# -- across processes --------------------------------------------------------------------


def _reserve_in_child(conn, mem):
    z = mem.memzone_reserve("from-child", 4096)
    z.view(np.uint64)[:] = 0xC0FFEE
    return (z.iova, z.addr, z.offset)


def _lookup_in_child(conn, mem):
    assert conn.recv() == "go"
    z = mem.memzone_lookup("from-parent")
    values = z.view(np.uint32)
    assert (values == 0xFEED).all(), values[:4]
    values[:] = 0xBEEF  # the parent checks it sees this
    return (z.iova, z.addr)


def test_memzone_reserved_in_child_found_in_parent(backend, fork):
    with Memory(4 * MiB, file_prefix="share", **backend) as mem:
        iova, addr, offset = fork(_reserve_in_child, mem).join()
        z = mem.memzone_lookup("from-child")
        assert (z.iova, z.addr, z.offset) == (iova, addr, offset)
        assert (z.view(np.uint64) == 0xC0FFEE).all()
        assert [m.name for m in mem.memzones()] == ["from-child"]


def test_memzone_reserved_in_parent_after_fork_found_in_child(backend, fork):
    with Memory(4 * MiB, file_prefix="share", **backend) as mem:
        child = fork(_lookup_in_child, mem)
        z = mem.memzone_reserve("from-parent", 4096)
        z.view(np.uint32)[:] = 0xFEED
        child.send("go")
        assert child.join() == (z.iova, z.addr)
        assert (z.view(np.uint32) == 0xBEEF).all()


def _reserve_many(conn, mem, tag, n):
    for i in range(n):
        mem.memzone_reserve(f"{tag}-{i}", 64 + 64 * (i % 5))
    return n


@pytest.mark.parametrize("mode", [{"huge": False}, {"huge": False, "in_memory": True}])
def test_concurrent_reservations_do_not_collide(mode, fork):
    with Memory(4 * MiB, file_prefix="race", **mode) as mem:
        children = [fork(_reserve_many, mem, tag, 150) for tag in ("a", "b")]
        _reserve_many(None, mem, "p", 150)
        assert [c.join(timeout=60) for c in children] == [150, 150]
        zones = mem.memzones()
        assert len(zones) == 450 and len({z.name for z in zones}) == 450
        ends = [(z.offset, z.offset + z.size) for z in zones]
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(ends, ends[1:])), "overlapping memzones"


def test_threads_reserving_concurrently():
    with Memory(2 * MiB, huge=False, file_prefix="threads") as mem:
        def work(tag):
            for i in range(100):
                mem.memzone_reserve(f"{tag}-{i}", 128)

        threads = [threading.Thread(target=work, args=(t,)) for t in "abcd"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        zones = mem.memzones()
        assert len(zones) == 400
        offsets = [z.offset for z in zones]
        assert all(b - a >= 128 for a, b in zip(offsets, offsets[1:]))


def _close_in_child(conn, mem):
    mem.close()
    return True


def test_close_in_forked_child_keeps_the_primary_files(fork, no_leaks):
    with Memory(2 * MiB, huge=False, file_prefix="keep") as mem:
        assert fork(_close_in_child, mem).join()
        assert os.path.exists(mem.runtime.lock_path)
        assert mem.memzone_reserve("still-works", 64).size == 64
    assert not os.path.exists(no_leaks / "keep")
