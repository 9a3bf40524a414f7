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
