"""Mapping mem tables: size + mmap_offset from offset 0, validation, translation, release."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dataplane.testing.vhost_frontend import GuestMemoryLayout, GuestRegion
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError
from dataplane.vhost_user import MemoryRegion

MiB = 1 << 20


def _maps_with(name: str) -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if name in line]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _memfd(size: int, name: str = "vh-test-mem") -> int:
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    return fd


def test_region_is_mapped_size_plus_offset_from_file_offset_0():
    region = GuestRegion(gpa=0x10000, size=MiB, qva=0x7F00_0001_0000, mmap_offset=3 * 4096, name="vh-test-off")
    try:
        region.mem[:4] = [1, 2, 3, 4]  # first byte of the region = file offset 3 * 4096
        dup = os.dup(region.fd)
        mem = GuestMemory.map_table([region.spec()], [dup])
        (m,) = mem.regions
        assert m.mmap_size == MiB + 3 * 4096
        assert m.host_user_addr == m.mmap_addr + 3 * 4096
        assert m.block_size == 4096
        hva = mem.gpa_to_hva(0x10000, 4)
        assert hva == m.host_user_addr
        view = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * 4).from_address(hva))
        assert list(view) == [1, 2, 3, 4]
        assert mem.qva_to_hva(0x7F00_0001_0000, 4) == hva
        assert mem.qva_to_gpa(0x7F00_0001_0002, 2) == 0x10002
        # ranges must be wholly inside one region
        assert mem.gpa_to_hva(0x10000 + MiB - 2, 4) == 0
        assert mem.gpa_to_hva(0x10000 - 1, 1) == 0
        assert mem.qva_to_hva(0x7F00_0001_0000 + MiB, 1) == 0
        table = mem.region_table()
        assert table.dtype == np.uint64 and table.shape == (1, 3)
        assert [int(x) for x in table[0]] == [0x10000, MiB, hva]
        assert mem.describe()[0]["fd"] == dup
        mem.unmap()
        assert not _is_open(dup)
    finally:
        region.close()


def test_identical_table_is_detected():
    layout = GuestMemoryLayout.simple(MiB, nregions=2)
    try:
        mem = GuestMemory.map_table(layout.table(), [os.dup(fd) for fd in layout.fds()])
        assert mem.same_table(layout.table())
        changed = layout.table()
        changed[1] = MemoryRegion(changed[1].guest_phys_addr, changed[1].memory_size // 2, changed[1].userspace_addr, 0)
        assert not mem.same_table(changed)
        assert not mem.same_table(layout.table()[:1])
        mem.unmap()
    finally:
        layout.close()


def _expect_refused(regions, fds, *words, max_regions=8):
    with pytest.raises(GuestMemoryError) as ei:
        GuestMemory.map_table(regions, fds, max_regions=max_regions)
    for w in words:
        assert w in str(ei.value)
    for fd in fds:
        assert not _is_open(fd), "fds of a refused table must be closed"


def test_validation_errors_close_every_fd():
    _expect_refused([MemoryRegion(0, 0, 0, 0)], [_memfd(4096)], "region 0: memory_size is 0")
    _expect_refused(
        [MemoryRegion(0, MiB, 0, 0), MemoryRegion(MiB // 2, MiB, 0x10_0000_0000, 0)],
        [_memfd(MiB), _memfd(MiB)],
        "regions 0 and 1 overlap in guest physical addresses",
    )
    _expect_refused(
        [MemoryRegion(0, MiB, 0x5000_0000, 0), MemoryRegion(4 * MiB, MiB, 0x5000_0000 + 4096, 0)],
        [_memfd(MiB), _memfd(MiB)],
        "overlap in user (QVA) addresses",
    )
    _expect_refused([MemoryRegion(2**64 - 4096, 8192, 0, 0)], [_memfd(8192)], "overflows 64 bits")
    _expect_refused(
        [MemoryRegion(i * MiB, 4096, i * MiB, 0) for i in range(3)], [_memfd(4096) for _ in range(3)],
        "too many regions: 3 > 2", max_regions=2,
    )
    _expect_refused([MemoryRegion(0, 4096, 0, 0)], [_memfd(4096), _memfd(4096)], "1 regions but 2 fds")


def test_unmappable_fds_are_refused():
    r, w = os.pipe()
    os.close(w)
    _expect_refused([MemoryRegion(0, 4096, 0, 0)], [r], "region 0: fd cannot be mapped as memory: a pipe")
    efd = os.eventfd(0)
    _expect_refused([MemoryRegion(0, 4096, 0, 0)], [efd], "region 0: fd cannot be mapped", "eventfd")
    # a file smaller than mmap_offset + memory_size would SIGBUS on access
    _expect_refused([MemoryRegion(0, MiB, 0, 4096)], [_memfd(MiB)], "region 0: file is 0x100000 bytes",
                    "smaller than mmap_offset + memory_size = 0x101000")
    # the second region fails: the first one is unmapped again
    _expect_refused(
        [MemoryRegion(0, MiB, 0, 0), MemoryRegion(MiB, MiB, MiB, 0)], [_memfd(MiB, "vh-test-first"), os.eventfd(0)],
        "region 1",
    )
    assert not _maps_with("vh-test-first")


def test_unmap_releases_mappings_and_fds():
    layout = GuestMemoryLayout([GuestRegion(0, MiB, name="vh-test-release"), GuestRegion(1 << 30, MiB, name="vh-test-release")])
    fds = [os.dup(fd) for fd in layout.fds()]
    mem = GuestMemory.map_table(layout.table(), fds)
    assert len(_maps_with("vh-test-release")) == 4  # ours and the front-end's
    mem.unmap()
    assert len(_maps_with("vh-test-release")) == 2
    assert not any(_is_open(fd) for fd in fds)
    layout.close()
    assert not _maps_with("vh-test-release")


def test_add_and_remove_regions():
    mem = GuestMemory()
    a = _memfd(MiB)
    mem.add_region(MemoryRegion(0, MiB, 0x1000_0000, 0), a, max_regions=2)
    with pytest.raises(GuestMemoryError, match="overlap"):
        mem.add_region(MemoryRegion(4096, 4096, 0x2000_0000, 0), _memfd(4096), max_regions=2)
    mem.add_region(MemoryRegion(MiB, MiB, 0x2000_0000, 0), _memfd(MiB), max_regions=2)
    c = _memfd(MiB)
    with pytest.raises(GuestMemoryError, match="no free memory slot"):
        mem.add_region(MemoryRegion(4 * MiB, MiB, 0x3000_0000, 0), c, max_regions=2)
    assert not _is_open(c)
    assert mem.gpa_to_hva(MiB + 10, 1)
    mem.remove_region(MemoryRegion(MiB, MiB, 0x2000_0000, 12345))  # mmap_offset is ignored
    assert mem.gpa_to_hva(MiB + 10, 1) == 0 and len(mem) == 1
    with pytest.raises(GuestMemoryError, match="no region with guest_phys_addr 0x100000"):
        mem.remove_region(MemoryRegion(MiB, MiB, 0x2000_0000, 0))
    mem.unmap()
    assert not _is_open(a)


def test_hugetlbfs_mapping_length_is_aligned_to_the_huge_page():
    from dataplane.testing.hugepages import HugepagesUnavailable, hugepages_mounted

    try:
        ctx = hugepages_mounted(nr=2)
        huge_dir = ctx.__enter__()
    except HugepagesUnavailable as e:
        pytest.skip(f"no hugepages: {e}")
    try:
        path = os.path.join(huge_dir, "guest")
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.unlink(path)
        os.ftruncate(fd, 2 * MiB)
        mem = GuestMemory.map_table([MemoryRegion(0, 4096, 0, 4096)], [fd])  # 8 KiB asked, one huge page mapped
        (m,) = mem.regions
        assert m.block_size == 2 * MiB and m.mmap_size == 2 * MiB
        mem.unmap()
    finally:
        ctx.__exit__(None, None, None)
