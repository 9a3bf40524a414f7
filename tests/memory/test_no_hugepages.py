"""Clear NoHugepages errors, and the --no-huge fallback being logged."""

from __future__ import annotations

import os

import pytest
from structlog.testing import capture_logs

from dataplane.memory import Memory, NoHugepages, hugepages
from dataplane.memory.units import MiB
from dataplane.testing.hugepages import HugepagesUnavailable, hugepages_mounted


@pytest.fixture
def no_mounts(tmp_path, monkeypatch):
    """Pretend no hugetlbfs is mounted anywhere."""
    fake = tmp_path / "mounts"
    fake.write_text("proc /proc proc rw 0 0\n")
    monkeypatch.setattr(hugepages, "PROC_MOUNTS", str(fake))


@pytest.fixture
def mount_without_pages():
    """A hugetlbfs mount with no hugepage added to the pool."""
    if hugepages.page_size_info(2 * MiB).available:
        pytest.skip("some 2 MiB hugepages are free on this system")
    try:
        with hugepages_mounted(nr=0) as path:
            yield path
    except HugepagesUnavailable as e:
        pytest.skip(str(e))


def test_no_mount(no_mounts, no_leaks):
    with pytest.raises(NoHugepages) as info:
        Memory(4 * MiB, file_prefix="nomount")
    msg = str(info.value)
    assert "no hugetlbfs mount for 2 MiB pages" in msg
    assert "--no-huge" in msg and "dataplane-hugepages mount" in msg
    assert not (no_leaks / "nomount").exists()


def test_no_free_pages(mount_without_pages, no_leaks):
    with pytest.raises(NoHugepages) as info:
        Memory(4 * MiB, huge_dir=mount_without_pages, file_prefix="nopages")
    msg = str(info.value)
    assert "not enough free 2 MiB hugepages: need 2 (4 MiB) but only 0 of" in msg
    assert "dataplane-hugepages reserve 4M -p 2M" in msg and "--no-huge" in msg
    assert os.listdir(mount_without_pages) == []
    assert not (no_leaks / "nopages").exists()


def test_not_enough_free_pages(huge_dir):
    with pytest.raises(NoHugepages, match=r"need 20 \(40 MiB\) but only 16 of \d+ are free"):
        Memory(40 * MiB, huge_dir=huge_dir, file_prefix="toomuch")


def test_allocation_failure_is_no_hugepages_not_sigbus(mount_without_pages, monkeypatch):
    """Even when the free-page check is fooled (pages taken meanwhile) the
    shortage is an exception at start, thanks to fallocate."""
    monkeypatch.setattr("dataplane.memory.memory._check_free_pages", lambda *a: None)
    with pytest.raises(NoHugepages, match=r"cannot allocate 4 MiB of 2 MiB hugepages for segment 0: No space left"):
        Memory(4 * MiB, huge_dir=mount_without_pages, file_prefix="race")
    assert os.listdir(mount_without_pages) == []


def test_in_memory_without_pages(mount_without_pages, monkeypatch):
    with pytest.raises(NoHugepages, match="not enough free 2 MiB hugepages"):
        Memory(4 * MiB, in_memory=True)
    monkeypatch.setattr("dataplane.memory.memory._check_free_pages", lambda *a: None)
    with pytest.raises(NoHugepages, match="cannot allocate 4 MiB"):
        Memory(4 * MiB, in_memory=True)


def test_huge_dir_not_a_mount(tmp_path):
    with pytest.raises(NoHugepages, match=rf"huge dir {tmp_path} is not a hugetlbfs mount point"):
        Memory(4 * MiB, huge_dir=str(tmp_path))


def test_unsupported_page_size():
    with pytest.raises(NoHugepages, match="hugepage size 4 MiB is not supported by this kernel"):
        Memory(4 * MiB, page_size=4 * MiB, in_memory=True)


def test_page_size_must_match_huge_dir(huge_dir):
    with pytest.raises(ValueError, match="has 2 MiB pages, not the 1 GiB asked for"):
        Memory(4 * MiB, huge_dir=huge_dir, page_size=1 << 30)


def test_no_huge_fallback_is_logged(no_mounts):
    with capture_logs() as logs:
        with Memory(2 * MiB, huge=False, file_prefix="nohuge") as mem:
            assert not mem.hugepage and mem.page_size == 4096
            assert all(not s.hugepage and s.path is None for s in mem.segments)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and "--no-huge" in warnings[0]["event"]
    assert "memfd" in warnings[0]["event"]


def test_hugepage_memory_uses_named_files(huge_dir):
    with Memory(5 * MiB, huge_dir=huge_dir, file_prefix="named", segment_size=4 * MiB) as mem:
        assert mem.size == 6 * MiB and [s.size for s in mem.segments] == [4 * MiB, 2 * MiB]
        assert sorted(os.listdir(huge_dir)) == ["namedmap_0", "namedmap_1"]
        assert all(s.hugepage and s.page_size == 2 * MiB for s in mem.segments)
    assert os.listdir(huge_dir) == []


def test_hugepage_dir_discovered(huge_dir, monkeypatch, tmp_path):
    """Without huge_dir the mount is found in /proc/mounts."""
    fake = tmp_path / "mounts"
    fake.write_text(f"hugetlbfs {huge_dir} hugetlbfs rw,relatime,pagesize=2M 0 0\n")
    monkeypatch.setattr(hugepages, "PROC_MOUNTS", str(fake))
    with Memory(2 * MiB, file_prefix="found") as mem:
        assert mem.huge_dir == huge_dir and mem.segments[0].path == os.path.join(huge_dir, "foundmap_0")
