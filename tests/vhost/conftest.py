"""Fixtures of the vhost control-plane tests.

- ``lib``: a private :class:`VhostLibrary` (its own vhost-events thread), closed after the test.
- ``sock_dir`` / ``sock_path``: a short directory for unix sockets (paths must stay < 108 bytes).
- ``server``: ``sock_path`` registered in server mode with a :class:`Recorder`
  as callbacks and a :class:`RecordingDataPath` as data path, started.
- ``guest``: front-end guest memory (one 4 MiB memfd region), unmapped after the test.
- ``connect``: ``connect()`` makes a :class:`VhostUserFrontend` on ``sock_path`` (closed after).
- ``mem`` / ``mp`` / ``pool``: data-path tests' dataplane memory (64 MiB, one per module), a
  4096-mbuf pool in it, and that pool checked to be whole again after each test.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from dataplane.memory import Memory
from dataplane.memory.mempool import mempool_create
from dataplane.memory.units import MiB

from dataplane.testing.leaks import fd_targets, leaked_fds, memfd_maps
from dataplane.testing.vhost_frontend import GuestMemoryLayout, VhostUserFrontend
from dataplane.vhost.library import VhostLibrary

from dataplane.testing.vhost_support import Recorder, RecordingDataPath


@pytest.fixture(autouse=True)
def no_vhost_leaks():
    """After each test (and its library's close): no new memfd mapping, memfd, eventfd or socket open."""
    maps, fds = memfd_maps(), fd_targets()
    yield
    leaked_maps = memfd_maps() - maps
    leaked = leaked_fds(fds, ("/memfd:", "anon_inode:[eventfd]", "socket:"))
    assert not leaked_maps, f"guest memory still mapped: {leaked_maps}"
    assert not leaked, f"fds left open: {leaked}"


@pytest.fixture(scope="module")
def mem(request):
    tag = request.module.__name__.rsplit(".", 1)[-1][-6:]
    with Memory(64 * MiB, huge=False, file_prefix=f"vh{os.getpid()}{tag}") as m:
        yield m


@pytest.fixture(scope="module")
def mp(mem):
    return mempool_create(mem, "vhost_test_pool", 4096, cache_size=0)


@pytest.fixture
def pool(mp):
    """The module's pool, checked to be whole again after the test."""
    yield mp
    a = mp.audit()
    assert a.in_use == 0, f"mbufs leaked: {a.out[:10]}"


@pytest.fixture
def lib():
    library = VhostLibrary()
    yield library
    library.close()


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="vh")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir):
    return os.path.join(sock_dir, "vhost.sock")


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def datapath():
    return RecordingDataPath()


@pytest.fixture
def server(lib, sock_path, recorder, datapath):
    lib.driver_register(sock_path, 0)
    lib.driver_callback_register(sock_path, recorder)
    lib.driver_datapath_register(sock_path, datapath)
    lib.driver_start(sock_path)
    return sock_path


@pytest.fixture
def guest():
    mem = GuestMemoryLayout.simple(4 << 20)
    yield mem
    mem.close()


@pytest.fixture
def connect(sock_path):
    made: list[VhostUserFrontend] = []

    def _connect(memory=None, path=None, timeout=5.0):
        fe = VhostUserFrontend.connect(path or sock_path, memory=memory, timeout=timeout)
        made.append(fe)
        return fe

    yield _connect
    for fe in made:
        fe.close()
