"""The same path matrix against our own vhost back-end: ``dataplane.apps.vhost_echo`` in io mode,
in its own process (like testpmd), serving ``net_vhost0,iface=SOCK,queues=2``."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

from dataplane.memory import Memory
from dataplane.memory.units import MiB

from _virtio_support import PATHS, round_trip_matrix

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dataplane.apps.vhost_echo") is None,
                                reason="dataplane.apps.vhost_echo is not there")
QUEUES = 2


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("vue") / "vhost.sock")
    prefix = f"vue{os.getpid()}"
    p = subprocess.Popen(
        [sys.executable, "-m", "dataplane.apps.vhost_echo", "-l", "0-1", "--no-huge", "-m", "256", "--file-prefix", prefix,
         "--vdev", f"net_vhost0,iface={sock},queues={QUEUES}", "--", "--mode", "io"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(sock):
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline, "vhost_echo made no socket"
            time.sleep(0.05)
        yield sock
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


@pytest.fixture
def memory():
    with Memory(192 * MiB, huge=False, file_prefix=f"vuo{os.getpid()}") as m:
        yield m


@pytest.mark.parametrize("devargs,rx_path,tx_path", PATHS, ids=[p[0] for p in PATHS])
def test_every_path_round_trips_through_our_vhost(echo_server, memory, devargs, rx_path, tx_path):
    # the first connection may wait for the echo lcore's numba compile
    round_trip_matrix(echo_server, memory, devargs, rx_path, tx_path, QUEUES, warmup_timeout=300)
