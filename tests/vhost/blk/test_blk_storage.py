"""The disk behind the blk device: RAM disks in memfd segments, files mapped shared (or private when read-only)."""

from __future__ import annotations

import gc
import os

import pytest

from dataplane.vhost.blk.storage import Storage, StorageError, map_disk


def test_ram_disk_is_shared_through_its_fd():
    s = Storage.ram(1 << 20)
    try:
        assert (s.size, s.sectors, s.file_backed) == (1 << 20, 2048, False)
        other = map_disk(s.fd, s.map_size)
        other.array[4096:4100] = [1, 2, 3, 4]
        assert list(s.array[4096:4100]) == [1, 2, 3, 4]
        other.close()
    finally:
        gc.collect()
        s.close()


@pytest.mark.parametrize("size", [0, 511, 1000, -512])
def test_ram_disk_size_must_be_whole_sectors(size):
    with pytest.raises(StorageError, match="multiple of 512"):
        Storage.ram(size)


def test_file_disk_writes_reach_the_file(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(8192 + 100))  # the tail that is not a whole sector is not part of the disk
    s = Storage.open_file(str(p))
    try:
        assert (s.size, s.sectors, s.file_backed) == (8192, 16, True)
        lcore = map_disk(s.fd, s.map_size)
        lcore.array[512:1024] = 0x5A
        lcore.close()
        s.flush()
        assert p.read_bytes()[512:1024] == b"\x5a" * 512
    finally:
        gc.collect()
        s.close()


def test_readonly_file_is_never_changed(tmp_path):
    p = tmp_path / "ro.img"
    p.write_bytes(b"\x11" * 4096)
    os.chmod(p, 0o444)
    s = Storage.open_file(str(p), readonly=True)
    try:
        assert s.private
        view = map_disk(s.fd, s.map_size, private=s.private)
        view.array[:512] = 0  # a private copy: the file stays as it was
        view.close()
        assert p.read_bytes() == b"\x11" * 4096
        assert (s.array == 0x11).all()
    finally:
        gc.collect()
        s.close()


def test_bad_files_are_refused_clearly(tmp_path):
    with pytest.raises(StorageError, match="cannot open"):
        Storage.open_file(str(tmp_path / "missing.img"))
    (tmp_path / "small.img").write_bytes(b"x" * 100)
    with pytest.raises(StorageError, match="smaller than one"):
        Storage.open_file(str(tmp_path / "small.img"))
    with pytest.raises(StorageError, match="not a regular file"):
        Storage.open_file("/dev/null", readonly=True)


def test_ram_disk_grows_keeping_its_data_and_a_new_mapping_sees_the_new_end():
    s = Storage.ram(1 << 20)
    try:
        s.array[-512:] = 7
        s.grow(3 << 20)
        assert (s.size, s.sectors) == (3 << 20, 6144) and s.map_size >= 3 << 20
        assert (s.array[(1 << 20) - 512 : 1 << 20] == 7).all() and not s.array[1 << 20 :].any()
        other = map_disk(s.fd, s.map_size)  # what an lcore maps once its queue is handed out again
        try:
            other.array[(3 << 20) - 1] = 9
            assert s.array[-1] == 9
        finally:
            other.close()
        s.grow(3 << 20)  # the same size: nothing to do
        with pytest.raises(StorageError, match="cannot shrink"):
            s.grow(2 << 20)
        with pytest.raises(StorageError, match="multiple of 512"):
            s.grow((4 << 20) + 1)
        assert s.size == 3 << 20
    finally:
        s.close()


def test_file_disk_grows_the_file_and_sees_a_file_grown_from_outside(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(b"\x11" * (1 << 20))
    s = Storage.open_file(str(p))
    try:
        s.grow(2 << 20)
        assert p.stat().st_size == 2 << 20 and s.sectors == 4096
        s.array[-1] = 5
        with open(p, "r+b") as f:  # the user grows it: truncate -s 4M disk.img
            f.truncate(4 << 20)
        assert s.file_size() == 4 << 20 and s.size == 2 << 20
        s.grow(s.file_size())
        assert s.size == 4 << 20 and p.stat().st_size == 4 << 20
        s.flush()
    finally:
        s.close()
    data = p.read_bytes()
    assert data[: 1 << 20] == b"\x11" * (1 << 20) and data[(2 << 20) - 1] == 5


def test_readonly_disk_cannot_grow(tmp_path):
    p = tmp_path / "ro.img"
    p.write_bytes(bytes(1 << 20))
    s = Storage.open_file(str(p), readonly=True)
    try:
        with pytest.raises(StorageError, match="read-only"):
            s.grow(2 << 20)
    finally:
        s.close()
    assert p.stat().st_size == 1 << 20
