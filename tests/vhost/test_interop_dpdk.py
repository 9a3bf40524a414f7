"""Interop smoke test: DPDK's own virtio-user (dpdk-testpmd) negotiates with our back-end.

testpmd runs with ``--no-huge`` (its memory is a memfd it passes in SET_MEM_TABLE) and one
queue pair; we check that our device becomes ready with both rings translated, then quit
testpmd and check that the device is destroyed and everything released.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from dataplane.vhost_user import VirtioFeature as VF, bit
from dataplane.vhost.net import net_hdr_len

TESTPMD = shutil.which("dpdk-testpmd")
pytestmark = pytest.mark.skipif(TESTPMD is None, reason="dpdk-testpmd is not installed")


def _testpmd(sock_path: str, prefix: str, devargs: str = "") -> tuple[subprocess.Popen, list[str]]:
    cmd = [
        TESTPMD, "--no-huge", "-m", "512", "--lcores", "0@0,1@0", "--no-pci", "--file-prefix", prefix,
        "--vdev", f"net_virtio_user0,path={sock_path},queues=1{devargs}",
        "--", "-i", "--total-num-mbufs=2048",
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    return proc, out


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_dpdk_virtio_user_reaches_ready_and_goes_away_cleanly(lib, server, sock_path, recorder, datapath, packed):
    prefix = f"vhcp_{os.getpid()}_{'packed' if packed else 'split'}"
    proc, out = _testpmd(sock_path, prefix, ",packed_vq=1" if packed else "")
    try:
        deadline = time.monotonic() + 30
        while ("new_device", 0) not in recorder.events:
            assert proc.poll() is None, "testpmd exited:\n" + "".join(out)
            assert time.monotonic() < deadline, "no new_device; testpmd says:\n" + "".join(out)
            time.sleep(0.05)

        dev = lib.get_device(0)
        assert dev.running and dev.features & bit(VF.VIRTIO_F_VERSION_1)
        assert bool(dev.features & bit(VF.VIRTIO_F_RING_PACKED)) == packed and dev.packed == packed
        assert net_hdr_len(dev.features) == 12
        regions = lib.get_mem_table(0)
        assert regions and all(r["host_user_addr"] and r["size"] >= 256 << 20 for r in regions)
        assert len(dev.vrings) == 2
        for vq in dev.vrings:
            assert vq.ready and vq.started and vq.access_ok and vq.packed == packed and vq.size > 0
            assert vq.kick_fd >= 0 and vq.call_fd >= 0
            length = 16 * vq.size
            assert vq.desc_hva == dev.memory.qva_to_hva(vq.desc_user_addr, length) != 0
            assert vq.avail_hva and vq.used_hva and vq.desc_gpa
        assert datapath.started == {(0, 0), (0, 1)}

        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, "".join(out)
        recorder.wait(("destroy_connection", 0), timeout=10)
        assert "destroy_device" in recorder.names()
        assert datapath.started == set() and lib.list_vids() == []
        assert lib.driver_stats(sock_path).get("errors", 0) == 0, lib.driver_stats(sock_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
