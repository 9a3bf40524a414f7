"""The guest harness itself: a Debian kernel boots our initramfs, runs a script and reports one line."""

import os
import shutil
import tempfile

import pytest

from dataplane.testing.linux_guest import Disk, Guest, GuestError
from dataplane.testing.storage_daemon import QSD, StorageDaemon


def test_guest_boots_runs_its_script_and_reports_pass(image):
    script = """
        [ "$(uname -r)" = "$version" ] || fail "kernel $(uname -r)"
        [ "$who" = "two words" ] || fail "params: who=$who"
        result who_len=${#who} cwd=$(pwd)
    """
    with Guest(image, script, params={"version": image.version, "who": "two words"}) as g:
        r = g.wait()
    assert r.passed, r.console[-3000:]
    assert r.values == {"who_len": "9", "cwd": "/tmp"}
    assert [line for line in r.console.splitlines() if line.startswith(("PASS", "FAIL"))] == [r.line]


def test_guest_reports_fail_with_its_reason(image):
    with Guest(image, 'lsmod | grep -q "^virtio_net " || fail "no virtio_net"; fail "on purpose"') as g:
        r = g.wait()
    assert not r.passed and r.line == "FAIL on purpose", r.console[-3000:]


def test_failing_command_fails_the_script(image):
    with Guest(image, "false; result never=1") as g:
        r = g.wait()
    assert r.line == "FAIL exit 1", r.console[-3000:]


def test_script_running_over_its_limit_is_killed_and_reported(image):
    with Guest(image, "sleep 600", script_timeout=3) as g:
        r = g.wait()
    assert r.line == "FAIL timeout: the script ran longer than 3 s", r.console[-3000:]


def test_qemu_that_cannot_start_is_reported(image):
    g = Guest(image, "true", extra=["-no-such-option"])
    with g, pytest.raises(GuestError, match="without a result"):
        g.wait()


@pytest.mark.skipif(QSD is None, reason="qemu-storage-daemon is not installed (qemu-system-common)")
def test_guest_disk_on_a_vhost_user_blk_back_end(image, tmp_path):
    """The Disk path of the harness, against the reference back-end: the guest sees the
    capacity and what it writes reaches the image file."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 << 20))
    d = tempfile.mkdtemp(prefix="qsd", dir="/tmp")  # socket paths must stay short
    script = """
        [ "$(cat /sys/block/vda/size)" = 16384 ] || fail "vda has $(cat /sys/block/vda/size) sectors"
        echo hello-from-the-guest | dd of=/dev/vda bs=512 seek=5 conv=sync 2>/dev/null
        sync
    """
    try:
        with StorageDaemon(str(disk), os.path.join(d, "blk.sock")) as qsd, \
                Guest(image, script, disks=[Disk(qsd.socket)]) as g:
            r = g.wait()
        assert r.passed, r.console[-3000:]
        assert disk.read_bytes()[5 * 512:5 * 512 + 21] == b"hello-from-the-guest\n"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_host_lines_and_the_monitor(image):
    """A line the host sends (Guest.tell) reaches the script's host_said, which reports it; the
    HMP monitor answers while the guest runs."""
    script = """
        n=0
        while ! host_said go; do n=$((n + 1)); [ $n -lt 1200 ] || fail "never heard the host"; done
        result heard=go
    """
    with Guest(image, script) as g:
        assert "VM status: running" in g.monitor().cmd("info status")
        g.tell("go")  # returns once the console shows "host said go"
        r = g.wait()
    assert r.passed and r.values == {"heard": "go"}, r.console[-3000:]
