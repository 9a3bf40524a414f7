"""Hugetlbfs discovery against fake /sys and /proc trees, plus the real ones."""

from __future__ import annotations

import fcntl
import os

import pytest

from dataplane.memory import hugepages
from dataplane.memory.units import GiB, MiB, format_size, parse_size, short_size
from dataplane.testing.hugepages import HugepagesUnavailable, hugepages_mounted


def test_page_sizes_parsed(fake_system):
    fake_system({1048576: (2, 1, 0, 0), 2048: (512, 500, 10, 3)})
    pools = hugepages.page_sizes()
    assert [p.size for p in pools] == [2 * MiB, GiB]
    small = pools[0]
    assert (small.nr, small.free, small.resv, small.surplus, small.available) == (512, 500, 10, 3, 490)
    assert hugepages.page_size_info(GiB).nr == 2
    with pytest.raises(ValueError, match=r"hugepage size 4 MiB is not supported by this kernel \(supported: 2 MiB, 1 GiB\)"):
        hugepages.page_size_info(4 * MiB)


def test_mounts_parsed_with_page_sizes_and_escapes(fake_system):
    fake_system({2048: (0, 0, 0, 0), 1048576: (0, 0, 0, 0)}, default_kb=2048)
    ms = hugepages.mounts()
    assert [(m.path, m.page_size) for m in ms] == [
        ("/dev/hugepages", 2 * MiB),
        ("/mnt/huge 1G", GiB),
        ("/mnt/default", 2 * MiB),  # no pagesize= option: the default size
    ]
    assert ms[0].options == "rw,relatime,pagesize=2M"
    assert hugepages.default_page_size() == 2 * MiB


def test_find_huge_dir(fake_system, tmp_path):
    usable = tmp_path / "usable"
    usable.mkdir()
    text = f"hugetlbfs /nonexistent hugetlbfs rw,pagesize=2M 0 0\nhugetlbfs {usable} hugetlbfs rw,pagesize=2M 0 0\n"
    fake_system({2048: (0, 0, 0, 0), 1048576: (0, 0, 0, 0)}, text)
    assert hugepages.find_huge_dir() == str(usable)  # the first one we can write to
    assert hugepages.find_huge_dir(2 * MiB) == str(usable)
    assert hugepages.find_huge_dir(GiB) is None
    assert hugepages.mount_of(str(usable)).page_size == 2 * MiB
    assert hugepages.mount_of(str(tmp_path)) is None


def test_no_hugepage_support(tmp_path, monkeypatch):
    monkeypatch.setattr(hugepages, "SYSFS_HUGEPAGES", str(tmp_path / "absent"))
    monkeypatch.setattr(hugepages, "PROC_MEMINFO", str(tmp_path / "absent"))
    assert hugepages.page_sizes() == []
    with pytest.raises(ValueError, match="no hugepage support"):
        hugepages.default_page_size()


def test_reserve_writes_nr_hugepages(fake_system):
    sysfs = fake_system({2048: (0, 0, 0, 0)}, "")
    assert hugepages.reserve(64, 2 * MiB) == 64
    assert (sysfs / "hugepages-2048kB" / "nr_hugepages").read_text() == "64\n"
    assert hugepages.reserve(3) == 3  # default page size
    with pytest.raises(ValueError, match="not supported"):
        hugepages.reserve(1, GiB)
    with pytest.raises(ValueError, match="must not be negative"):
        hugepages.reserve(-1)


def test_clear_files_removes_only_unused_files_of_the_prefix(tmp_path):
    for name in ("appmap_0", "appmap_1", "appmap_12", "appmap_x", "appmap_1map_0", "otherappmap_0", "apmap_0"):
        (tmp_path / name).write_text("x")
    (tmp_path / "appmap_3").mkdir()
    held = os.open(tmp_path / "appmap_1", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)  # what a live segment does
    try:
        removed = hugepages.clear_files(str(tmp_path), "app")
    finally:
        os.close(held)
    assert sorted(os.path.basename(p) for p in removed) == ["appmap_0", "appmap_12"]
    assert sorted(os.listdir(tmp_path)) == ["apmap_0", "appmap_1", "appmap_1map_0", "appmap_3", "appmap_x", "otherappmap_0"]
    assert hugepages.clear_files(str(tmp_path / "absent"), "app") == []


def test_real_system_is_readable():
    """Whatever this machine has, discovery must not fail."""
    for p in hugepages.page_sizes():
        assert p.size >= 64 * 1024 and p.nr >= 0 and p.free <= p.nr + p.surplus
    hugepages.mounts()
    if hugepages.page_sizes():
        assert hugepages.default_page_size() in {p.size for p in hugepages.page_sizes()}


def test_hugepages_mounted_restores_the_system():
    before = hugepages.page_size_info(2 * MiB).persistent
    try:
        with hugepages_mounted(nr=4) as path:
            mount = hugepages.mount_of(path)
            assert mount is not None and mount.page_size == 2 * MiB
            assert hugepages.page_size_info(2 * MiB).persistent == before + 4
            assert hugepages.find_huge_dir(2 * MiB) is not None
            open(os.path.join(path, "forgotten"), "w").close()  # cleaned on exit too
    except HugepagesUnavailable as e:
        pytest.skip(str(e))
    assert hugepages.mount_of(path) is None and not os.path.exists(path)
    assert hugepages.page_size_info(2 * MiB).persistent == before


def test_mount_and_umount(tmp_path):
    target = tmp_path / "huge"
    m = hugepages.mount(str(target), 2 * MiB)
    try:
        assert hugepages.mount_of(str(target)) == hugepages.HugeMount(str(target), 2 * MiB, hugepages.mount_of(str(target)).options)
        assert m.page_size == 2 * MiB
    finally:
        hugepages.umount(str(target))
    assert hugepages.mount_of(str(target)) is None
    with pytest.raises(OSError, match="cannot unmount"):
        hugepages.umount(str(target))


@pytest.mark.parametrize(
    "text, value",
    [("4096", 4096), ("2M", 2 * MiB), ("2MB", 2 * MiB), ("2MiB", 2 * MiB), ("512m", 512 * MiB),
     ("1G", GiB), ("2048kB", 2 * MiB), ("2048K", 2 * MiB), (" 1g ", GiB), ("1T", 1 << 40), (7, 7)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1", "12X", "1 GB B", -5])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert [format_size(n) for n in (2 * MiB, GiB, 1536 * 1024, 100, 0)] == ["2 MiB", "1 GiB", "1536 KiB", "100 B", "0 B"]
    assert [short_size(n) for n in (2 * MiB, GiB, 1536 * 1024, 100)] == ["2M", "1G", "1536K", "100"]
