"""VRING_HOST_NOTIFIER_MSG against a real QEMU: it maps our page as the guest's doorbell, and NOFD gives it back.

The vhost-user back-end is a :class:`VhostLibrary` in this process (a net
socket with no data path: only the control plane matters here).  The guest
brings its NIC up and arpings a silent neighbour once a second, so its virtio-net driver
keeps adding Tx buffers and kicking vring 1 (``event_idx=off``: with
EVENT_IDX a back-end that never publishes avail_event gets one kick only).
QEMU's device uses ``page-per-vq=on``, the layout that lets it map a host
page into the notify area.

What this proves: QEMU accepts the notifier (REPLY_ACK 0), the guest's kicks
then land in our page (the queue index written into it) instead of the kick
eventfd, and after the withdrawal (NOFD) they come back to the eventfd.  A
back-end that used such a page would have to poll it; ours only sends it
(the vDPA drivers hand out their doorbell pages this way).
"""

from __future__ import annotations

import mmap
import os
import select
import time

import pytest

from dataplane.testing.linux_guest import Guest, Nic
from dataplane.testing.vhost_frontend import eventfd_count
from dataplane.testing.vhost_support import Recorder
from dataplane.vhost.library import VhostLibrary
from dataplane.vhost_user import VhostUserProtocolFeature as PF

pytestmark = pytest.mark.timeout(900)

PAGE = mmap.PAGESIZE
TX = 1  # the guest's Tx vring

PINGER = r"""
ip link set eth0 up
ip addr add 10.0.0.1/24 dev eth0
echo GUEST-KICKING
arping -I eth0 -c 1000 10.0.0.2 >/dev/null 2>&1 || true
"""


def _until(cond, what: str, guest: Guest, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert guest.proc.poll() is None, f"QEMU exited while waiting for {what}:{guest.console[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:{guest.console[-3000:]}"
        time.sleep(0.05)


def test_qemu_maps_our_page_as_the_vring_doorbell_and_nofd_withdraws_it(image, tmp_path):
    sock = str(tmp_path / "net.sock")
    lib = VhostLibrary()
    rec = Recorder()
    page = os.memfd_create("doorbell")
    os.ftruncate(page, PAGE)
    bell = mmap.mmap(page, PAGE)
    bell[:] = b"\xff" * PAGE
    try:
        lib.driver_register(sock, 0)
        lib.driver_callback_register(sock, rec)
        lib.driver_start(sock)
        nic = Nic(sock, device={"page-per-vq": "on", "event_idx": "off"})
        with Guest(image, PINGER, nics=[nic], script_timeout=600) as g:
            rec.wait(("new_device", 0), timeout=600)
            dev = lib.get_device(0)
            assert dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER)
            assert dev.has_protocol_feature(PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD)
            kick = dev.vrings[TX].kick_fd
            _until(lambda: "GUEST-KICKING" in g.console, "guest traffic", g)

            assert lib.backend_vring_host_notifier(0, TX, page, 0, PAGE).result(60) == 0
            _until(lambda: bell[:2] == TX.to_bytes(2, "little"), "kick in the notifier page", g)
            eventfd_count(kick)  # kicks from before the mapping
            bell[:2] = b"\xff\xff"
            _until(lambda: bell[:2] == TX.to_bytes(2, "little"), "second kick in the page", g)
            assert eventfd_count(kick) == 0  # while mapped, kicks skip the eventfd

            assert lib.backend_vring_host_notifier(0, TX, None).result(60) == 0
            bell[:2] = b"\xff\xff"
            eventfd_count(kick)
            assert select.select([kick], [], [], 240)[0], "no kick on the eventfd after the withdrawal"
            assert eventfd_count(kick) > 0
            assert bell[:2] == b"\xff\xff"  # the page is not written any more
            assert dev.backend_channel.stats["acked"] == 2
    finally:
        lib.close()
        bell.close()
        os.close(page)
