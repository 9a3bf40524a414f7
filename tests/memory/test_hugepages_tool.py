"""The dataplane-hugepages tool, on a fake sysfs and on the real system
(which every test leaves as it found it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from dataplane.memory import hugepages
from dataplane.memory.units import MiB
from dataplane.tools import hugepages as tool


@pytest.fixture(autouse=True)
def keep_logging_config(monkeypatch):
    """In-process runs must not reconfigure logging for the whole session."""
    monkeypatch.setattr(tool, "configure_logging", lambda: None)


def main(argv):
    with capture_logs():  # swallow the library's log lines
        return tool.main(argv)


@pytest.fixture
def real_pools():
    """Snapshot every real pool and restore it after the test."""
    before = {p.size: p.persistent for p in hugepages.page_sizes()}
    if not before:
        pytest.skip("no hugepage support")
    yield before
    for size, nr in before.items():
        if hugepages.page_size_info(size).persistent != nr:
            hugepages.reserve(nr, size)


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_show_fake(fake_system, capsys):
    fake_system({2048: (512, 500, 10, 0), 1048576: (2, 2, 0, 0)})
    status, out, err = run(["show"], capsys)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["Page", "size", "Total", "Free", "Reserved", "Surplus", "Memory"]
    assert lines[1].split() == ["2", "MiB", "512", "500", "10", "0", "1", "GiB", "(default)"]
    assert lines[2].split() == ["1", "GiB", "2", "2", "0", "0", "2", "GiB"]
    assert "hugetlbfs on /dev/hugepages with 2 MiB pages (rw,relatime,pagesize=2M)" in out
    assert "hugetlbfs on /mnt/huge 1G with 1 GiB pages" in out


def test_reserve_and_clear_fake(fake_system, capsys):
    sysfs = fake_system({2048: (0, 0, 0, 0), 1048576: (1, 1, 0, 0)}, "")
    assert run(["reserve", "1G"], capsys)[:2] == (0, "2 MiB pages: 512 reserved (1 GiB)\n")
    assert (sysfs / "hugepages-2048kB/nr_hugepages").read_text() == "512\n"
    assert run(["reserve", "3M", "-p", "2M"], capsys)[1] == "2 MiB pages: 2 reserved (4 MiB)\n"  # rounded up
    assert run(["reserve", "2G", "--pagesize", "1G"], capsys)[0] == 0
    assert (sysfs / "hugepages-1048576kB/nr_hugepages").read_text() == "2\n"
    status, out, _ = run(["clear"], capsys)
    assert status == 0 and out == "2 MiB pages: 0 reserved\n1 GiB pages: 0 reserved\n"
    assert (sysfs / "hugepages-1048576kB/nr_hugepages").read_text() == "0\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["reserve"], "the following arguments are required: SIZE"),
        (["reserve", "12X"], "invalid size '12X'"),
        (["reserve", "1G", "-p", "3M"], "hugepage size 3 MiB is not supported by this kernel"),
        (["mount", "-p", "7K"], "hugepage size 7 KiB is not supported"),
        (["show", "extra"], "unrecognized arguments: extra"),
        (["unmount", "/nonexistent/dir"], "/nonexistent/dir is not a hugetlbfs mount point"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("dataplane-hugepages: error: ") and message in err


def test_reserve_show_clear_real(real_pools, capsys):
    size = 2 * MiB
    old = real_pools[size]
    status, out, _ = run(["reserve", f"{(old + 3) * 2}M", "-p", "2M"], capsys)
    assert status == 0 and out == f"2 MiB pages: {old + 3} reserved ({(old + 3) * 2} MiB)\n"
    assert hugepages.page_size_info(size).nr == old + 3
    status, out, _ = run(["show"], capsys)
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith("2 MiB"))
    assert row.split()[2] == str(old + 3)
    if any(real_pools.values()):
        pytest.skip("other hugepages are reserved on this system: not clearing them")
    status, out, _ = run(["clear"], capsys)
    assert status == 0 and all(p.nr == 0 for p in hugepages.page_sizes())
    assert "2 MiB pages: 0 reserved" in out


def test_mount_unmount_real(tmp_path, capsys):
    target = str(tmp_path / "huge")
    status, out, _ = run(["mount", target, "-p", "2M"], capsys)
    try:
        assert status == 0 and out == f"mounted hugetlbfs with 2 MiB pages on {target}\n"
        assert hugepages.mount_of(target).page_size == 2 * MiB
        assert run(["mount", target], capsys)[1] == f"hugetlbfs with 2 MiB pages already mounted on {target}\n"
    finally:
        status, out, _ = run(["unmount", target], capsys)
    assert status == 0 and out == f"unmounted {target}\n"
    assert hugepages.mount_of(target) is None


def test_console_script_runs():
    exe = shutil.which("dataplane-hugepages")
    argv = [exe] if exe else [sys.executable, "-m", "dataplane.tools.hugepages"]
    proc = subprocess.run(argv + ["show"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Page size" in proc.stdout
    proc = subprocess.run(argv + ["reserve", "lots"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_permission_error_exits_1(fake_system, capsys):
    sysfs = fake_system({2048: (0, 0, 0, 0)}, "")
    nr = sysfs / "hugepages-2048kB" / "nr_hugepages"
    os.remove(nr)
    os.mkdir(nr)  # writing it now fails with an OSError
    status, out, err = run(["reserve", "4M"], capsys)
    assert status == 1 and err.startswith("dataplane-hugepages: error: ") and err.count("\n") == 1
