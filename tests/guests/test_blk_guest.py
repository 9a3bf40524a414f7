"""Linux guests (QEMU, TCG) on ``dataplane-vhost-blk``: ``-device vhost-user-blk-pci`` against our back-end.

The guest's virtio_blk driver sees the disk as ``/dev/vda``; every check
runs inside the guest and reports through its PASS/FAIL line, and the host
checks what the back-end counted and what is in the disk file.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time

import numpy as np
import pytest

from dataplane.testing.linux_guest import Disk, Guest
from dataplane.testing.vhost_blk_proc import BlkProcess

pytestmark = pytest.mark.timeout(900)

SIZE = 32 << 20
SECTORS = SIZE // 512

# Capacity and serial as the guest sees them; 8 MiB of random data written, caches dropped, read back;
# the last sector written and read back.  The md5s go to the result line for a second guest to compare.
WRITE_AND_CHECK = r"""
[ "$(cat /sys/block/vda/size)" = "$sectors" ] || fail "capacity $(cat /sys/block/vda/size) sectors"
[ "$(cat /sys/block/vda/serial)" = "$serial" ] || fail "serial '$(cat /sys/block/vda/serial)'"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
dd if=/tmp/data of=/dev/vda bs=1M count=8 conv=fsync 2>/dev/null || fail "write"
dd if=/dev/urandom of=/tmp/last bs=512 count=1 2>/dev/null
dd if=/tmp/last of=/dev/vda bs=512 seek=$(( sectors - 1 )) conv=fsync 2>/dev/null || fail "write last sector"
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=1M count=8 2>/dev/null || fail "read"
cmp /tmp/data /tmp/back || fail "8 MiB read back differ"
dd if=/dev/vda of=/tmp/last2 bs=512 skip=$(( sectors - 1 )) count=1 2>/dev/null || fail "read last sector"
cmp /tmp/last /tmp/last2 || fail "last sector differs"
result md5=$(md5sum /tmp/data | cut -d' ' -f1) last=$(md5sum /tmp/last | cut -d' ' -f1)
"""

READ_BACK = r"""
dd if=/dev/vda of=/tmp/back bs=1M count=8 2>/dev/null || fail "read"
dd if=/dev/vda of=/tmp/last bs=512 skip=$(( sectors - 1 )) count=1 2>/dev/null || fail "read last sector"
result md5=$(md5sum /tmp/back | cut -d' ' -f1) last=$(md5sum /tmp/last | cut -d' ' -f1)
"""


def _run(image, script, sock, *, params=None, num_queues=1, smp=1, device=None):
    disk = Disk(sock, num_queues=num_queues, device=device or {})
    with Guest(image, script, params=params, disks=[disk], smp=smp) as g:
        r = g.wait(600)
    assert r.passed, r.console[-3000:]
    return r.values


def test_guest_writes_reads_back_and_a_second_guest_sees_it(image, tmp_path):
    sock = str(tmp_path / "blk.sock")
    params = {"sectors": SECTORS, "serial": "dp-disk-42"}
    with BlkProcess(sock, size=SIZE, serial="dp-disk-42") as p:
        first = _run(image, WRITE_AND_CHECK, sock, params=params)
        second = _run(image, READ_BACK, sock, params=params)
        stats = p.stop()["queues"][0]
    assert second == first
    assert stats["writes"] > 0 and stats["reads"] > 0 and stats["get_ids"] >= 1
    assert stats["ioerr"] == stats["unsupp"] == stats["bad_chains"] == stats["no_status"] == 0


def test_packed_ring_guest(image, tmp_path):
    sock = str(tmp_path / "blk.sock")
    params = {"sectors": SECTORS, "serial": "packed"}
    with BlkProcess(sock, size=SIZE, serial="packed") as p:
        _run(image, WRITE_AND_CHECK, sock, params=params, device={"packed": "on"})
        stats = p.stop()["queues"][0]
        negotiated = [line for line in p.output.splitlines() if "negotiated virtio features" in line]
    assert negotiated and "VIRTIO_F_RING_PACKED" in negotiated[-1], negotiated
    assert stats["writes"] > 0 and stats["reads"] > 0 and stats["ioerr"] == 0


def test_readonly_disk_refuses_guest_writes(image, tmp_path):
    img = tmp_path / "ro.img"
    content = bytes(range(256)) * (SIZE // 256)
    img.write_bytes(content)
    sock = str(tmp_path / "blk.sock")
    script = r"""
    [ "$(cat /sys/block/vda/ro)" = 1 ] || fail "not read-only"
    if dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; then fail "a write succeeded"; fi
    result md5=$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)
    """
    with BlkProcess(sock, file=str(img), readonly=True) as p:
        values = _run(image, script, sock)
        stats = p.stop()["queues"][0]
    assert values["md5"] == hashlib.md5(content[: 1 << 20]).hexdigest()
    assert stats["writes"] == 0
    assert img.read_bytes() == content


def test_file_disk_holds_the_guest_data_after_it_exits(image, tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(SIZE))
    sock = str(tmp_path / "blk.sock")
    script = r"""
    dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
    dd if=/tmp/data of=/dev/vda bs=1M seek=3 conv=fsync 2>/dev/null || fail "write"
    result md5=$(md5sum /tmp/data | cut -d' ' -f1)
    """
    with BlkProcess(sock, file=str(img)) as p:
        values = _run(image, script, sock)
        stats = p.stop()["queues"][0]
    raw = img.read_bytes()
    assert hashlib.md5(raw[3 << 20 : 7 << 20]).hexdigest() == values["md5"]
    assert not any(raw[: 3 << 20]) and not any(raw[7 << 20 :])
    assert stats["flushes"] >= 1


def test_two_queues_both_carry_requests(image, tmp_path):
    sock = str(tmp_path / "blk.sock")
    # blk-mq maps each vCPU to its own hardware queue: a writer pinned on each cpu, with O_DIRECT so the
    # requests are submitted from its cpu (not from a writeback worker), uses both queues.
    script = r"""
    [ "$(ls /sys/block/vda/mq | wc -l)" = 2 ] || fail "hardware queues: $(ls /sys/block/vda/mq)"
    taskset 1 dd if=/dev/urandom of=/dev/vda bs=64k count=32 oflag=direct 2>/dev/null &
    a=$!
    taskset 2 dd if=/dev/urandom of=/dev/vda bs=64k count=32 seek=64 oflag=direct 2>/dev/null &
    b=$!
    wait $a || fail "writer on cpu 0"
    wait $b || fail "writer on cpu 1"
    """
    with BlkProcess(sock, size=SIZE, queues=2) as p:
        _run(image, script, sock, num_queues=2, smp=2)
        q0, q1 = p.stop()["queues"]
    assert q0["requests"] > 0 and q1["requests"] > 0, (q0, q1)
    assert q0["writes"] > 0 and q1["writes"] > 0, (q0, q1)


# The guest checks the capacity, says it is ready, waits until the capacity grows (the host resizes the
# disk meanwhile), then writes the new last sector, drops its caches and reads it back.
GROW = r"""
[ "$(cat /sys/block/vda/size)" = "$sectors" ] || fail "capacity $(cat /sys/block/vda/size) sectors before"
grown() { [ "$(cat /sys/block/vda/size)" = "$new_sectors" ]; }
echo "GUEST-READY-FOR-RESIZE"
wait_until 240 grown || fail "capacity $(cat /sys/block/vda/size) after"
dd if=/dev/urandom of=/tmp/last bs=512 count=1 2>/dev/null
dd if=/tmp/last of=/dev/vda bs=512 seek=$(( new_sectors - 1 )) conv=fsync 2>/dev/null || fail "write new last sector"
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=512 skip=$(( new_sectors - 1 )) count=1 2>/dev/null || fail "read new last sector"
cmp /tmp/last /tmp/back || fail "new last sector differs"
if dd if=/dev/vda of=/dev/null bs=512 skip=$new_sectors count=1 2>/dev/null; then
  [ "$(dd if=/dev/vda bs=512 skip=$new_sectors count=1 2>/dev/null | wc -c)" = 0 ] || fail "read past the new end"
fi
result last=$(md5sum /tmp/last | cut -d' ' -f1) dmesg=$(dmesg | grep -c 'detected capacity change')
"""


def test_disk_grows_while_the_guest_runs_and_the_guest_sees_it(image, tmp_path):
    """``resize`` in dataplane-vhost-blk's shell: CONFIG_CHANGE_MSG on the back-end channel, QEMU re-reads
    the config space and interrupts the guest, Linux updates /sys/block/vda/size and uses the new end."""
    img = tmp_path / "grow.img"
    img.write_bytes(bytes(SIZE))
    sock = str(tmp_path / "blk.sock")
    new_size = 2 * SIZE
    params = {"sectors": SECTORS, "new_sectors": new_size // 512}
    with BlkProcess(sock, file=str(img), interactive=True) as p:
        with Guest(image, GROW, params=params, disks=[Disk(sock)]) as g:
            deadline = time.monotonic() + 600
            while "GUEST-READY-FOR-RESIZE" not in g.console:
                assert g.proc.poll() is None and time.monotonic() < deadline, g.console[-3000:]
                time.sleep(0.2)
            out = p.resize(new_size)
            r = g.wait(600)
        p.stop()
    assert "vhost-blk: resized sectors=131072" in out and "vid=0 config change acknowledged" in out, out
    assert r.passed, r.console[-3000:]
    assert int(r.values["dmesg"]) >= 1
    raw = img.read_bytes()
    assert len(raw) == new_size and hashlib.md5(raw[-512:]).hexdigest() == r.values["last"]


# The guest writes 8 MiB of random data with O_DIRECT, 256 KiB at a time, each followed by an fsync (a
# FLUSH: requests stay in the back-end a while), over and over until the host says stop; meanwhile the
# host SIGKILLs the back-end and starts a new one on the same socket and file, and QEMU (reconnect-ms)
# reconnects and hands the inflight area back (SET_INFLIGHT_FD).  Then caches are dropped and the data
# read back: its md5 must be what was written.
WRITE_THROUGH_CRASHES = r"""
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
write_pass() {
  i=0
  while [ $i -lt 32 ]; do
    dd if=/tmp/data of=/dev/vda bs=64k count=4 skip=$(( i * 4 )) seek=$(( i * 4 )) oflag=direct conv=fsync \
      2>/tmp/err || fail "pass $1, write $i: $(cat /tmp/err)"
    i=$(( i + 1 ))
  done
}
rounds write_pass 500 1
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=64k count=128 iflag=direct 2>/dev/null || fail "read"
result md5=$(md5sum /tmp/data | cut -d' ' -f1) back=$(md5sum /tmp/back | cut -d' ' -f1) rounds=$ROUNDS
"""

KILLS = 3


def _round(console: str) -> int:
    done = re.findall(r"round (\d+) ok", console)
    return int(done[-1]) if done else 0


def _process_tree(pid: int) -> list[int]:
    """The back-end we started and its worker processes (by pid), the workers first."""
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return [p for c in children for p in _process_tree(c)] + [pid]


def _sigkill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _QemuInflight:
    """The inflight areas QEMU holds, mapped here through its fds (``/proc/PID/fd``): how many requests
    they mark in flight.  (An area of an earlier start, e.g. the firmware's split ring, may still be
    open: it marks nothing.)"""

    def __init__(self, qemu_pid: int, packed: bool):
        self.pid, self.packed, self.maps = qemu_pid, packed, []

    def _map(self):
        import mmap

        for m in self.maps:
            m.close()
        self.maps = []
        d = f"/proc/{self.pid}/fd"
        for name in os.listdir(d):
            try:
                if "vhost-inflight" not in os.readlink(f"{d}/{name}"):
                    continue
                with open(f"{d}/{name}", "rb") as f:
                    self.maps.append(mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED, mmap.PROT_READ))
            except (OSError, ValueError):
                continue

    def marked(self) -> int:
        if not self.maps:
            self._map()
        first, stride = (32, 32) if self.packed else (16, 16)  # DescStatePacked / DescStateSplit inflight bytes
        return sum(int(np.frombuffer(m, np.uint8)[first::stride].sum()) for m in self.maps)

    def close(self):
        for m in self.maps:
            m.close()
        self.maps = []


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_backend_killed_mid_request_resubmits_inflight_after_reconnect(image, tmp_path, packed):
    """``kill -9`` of ``dataplane-vhost-blk`` during guest writes, twice, each time a new back-end on the
    same socket and disk file: after the reconnects the guest reads back exactly what it wrote."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(SIZE))
    sock = str(tmp_path / "blk.sock")
    device = {"packed": "on"} if packed else {}
    p = BlkProcess(sock, file=str(img))
    outputs = []
    caught = []  # requests marked in flight when each back-end died
    try:
        with Guest(image, WRITE_THROUGH_CRASHES, disks=[Disk(sock, reconnect=1, device=device)],
                   script_timeout=900) as g:
            for k in range(KILLS):
                # a pass completed on this back-end: the guest is writing through it
                seen = _round(g.console)
                deadline = time.monotonic() + 600
                while _round(g.console) <= seen:
                    assert g.proc.poll() is None and time.monotonic() < deadline, g.console[-3000:]
                    time.sleep(0.05)
                # kill it the moment the area shows a request in flight (what the back-end marked)
                areas = _QemuInflight(g.proc.pid, packed)
                pids = _process_tree(p.proc.pid)  # the lcore workers first: they would outlive the main a moment
                deadline = time.monotonic() + 30
                while not areas.marked() and time.monotonic() < deadline:
                    pass
                _sigkill(pids)
                p.kill()
                caught.append(areas.marked())
                areas.close()
                outputs.append(p.output)
                p = BlkProcess(sock, file=str(img))
                # QEMU reconnects within a second and starts the device again with the area it kept
                deadline = time.monotonic() + 120
                while "inflight area mapped" not in p.output:
                    assert time.monotonic() < deadline, p.output[-3000:]
                    assert g.proc.poll() is None, g.console[-3000:]
                    time.sleep(0.1)
            seen = _round(g.console)
            deadline = time.monotonic() + 600
            while _round(g.console) <= seen:  # a pass through the last back-end
                assert g.proc.poll() is None and time.monotonic() < deadline, \
                    f"caught {caught}\n{g.console[-2000:]}\n{p.output[-4000:]}"
                time.sleep(0.05)
            g.tell("stop")
            r = g.wait(900)
        stats = p.stop()["queues"][0]
        outputs.append(p.output)
    finally:
        p.close()
    assert r.passed, r.console[-3000:]
    assert r.values["md5"] == r.values["back"], r.values
    assert hashlib.md5(img.read_bytes()[: 8 << 20]).hexdigest() == r.values["md5"]
    assert stats["ioerr"] == stats["bad_chains"] == stats["no_status"] == 0 and stats["flushes"] > 0
    # every back-end got the area: the first from GET_INFLIGHT_FD, the restarted ones back from QEMU
    assert all("inflight area mapped" in out for out in outputs)
    # requests were in flight when a back-end died, and the next one resubmitted them (those of a
    # batch published just before the kill excepted: they completed)
    assert any(caught), caught
    resubmitted = [sum(int(c) for c in re.findall(r"inflight requests to resubmit .*?count=(\d+)", out))
                   for out in outputs[1:]]
    assert all(r <= n for r, n in zip(resubmitted, caught)), (resubmitted, caught)
    assert any(resubmitted), (resubmitted, caught)
    negotiated = [line for line in outputs[0].splitlines() if "negotiated virtio features" in line]
    assert negotiated and ("VIRTIO_F_RING_PACKED" in negotiated[-1]) == packed
