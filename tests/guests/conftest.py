"""Linux guests in QEMU (TCG): one guest image for the whole session (dataplane.testing.linux_guest)."""

import pytest

from dataplane.testing.linux_guest import QEMU, guest_image


@pytest.fixture(scope="session")
def image():
    """The cached guest image, built on first use (a few seconds plus the kernel package download)."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
    return guest_image()
