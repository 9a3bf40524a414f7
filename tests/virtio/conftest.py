"""virtio-user tests: every test closes the eventfds and sockets it opened."""

from __future__ import annotations

import pytest

from dataplane.testing.leaks import fd_targets, leaked_fds


@pytest.fixture(autouse=True)
def no_virtio_fd_leaks():
    before = fd_targets()
    yield
    leaked = leaked_fds(before)
    assert not leaked, f"fds left open: {leaked}"
