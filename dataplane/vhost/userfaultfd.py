"""Linux userfaultfd, the few operations postcopy needs (uapi ``linux/userfaultfd.h``).

A userfaultfd is bound to the memory (mm) of the process that created it:
ranges registered on it (:meth:`Userfaultfd.register`) are that process's
addresses, and faults in them are queued on the fd until someone reads them
(:meth:`Userfaultfd.read_faults`) and resolves them -- :meth:`Userfaultfd.copy`
(fill the page and wake) or :meth:`Userfaultfd.wake` (the page was filled some
other way, e.g. through another mapping of the same shared memory).  The fd
can be handed to another process (SCM_RIGHTS), which then serves the
creator's faults; every ioctl still acts on the creator's memory.  When the
last reference to the fd is closed, its ranges are unregistered and blocked
faults are woken (they retry as ordinary faults).

Only what the kernel ABI defines is here; the postcopy design is in
:mod:`dataplane.vhost.postcopy`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

__all__ = [
    "UFFD_API",
    "UFFD_EVENT_PAGEFAULT",
    "UFFD_PAGEFAULT_FLAG_WRITE",
    "UFFDIO_REGISTER_MODE_MISSING",
    "UFFD_MSG_SIZE",
    "UserfaultfdError",
    "Userfaultfd",
]

_NR_USERFAULTFD = 323  # x86_64

UFFD_API = 0xAA
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
#: ``struct uffd_msg``: event u8, 7 bytes reserved, then for a page fault: flags u64, address u64, ptid u32 (+pad).
UFFD_MSG_SIZE = 32


def _iowr(nr: int, size: int) -> int:
    return 3 << 30 | size << 16 | 0xAA << 8 | nr


def _ior(nr: int, size: int) -> int:
    return 2 << 30 | size << 16 | 0xAA << 8 | nr


# ioctl numbers (type 0xAA) and their argument structs
UFFDIO_API = _iowr(0x3F, 24)  # struct uffdio_api {api, features, ioctls}
UFFDIO_REGISTER = _iowr(0x00, 32)  # struct uffdio_register {range{start, len}, mode, ioctls}
UFFDIO_UNREGISTER = _ior(0x01, 16)  # struct uffdio_range
UFFDIO_WAKE = _ior(0x02, 16)  # struct uffdio_range
UFFDIO_COPY = _iowr(0x03, 40)  # struct uffdio_copy {dst, src, len, mode, copy}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


class UserfaultfdError(OSError):
    """A userfaultfd call failed (``errno`` and the operation in the message)."""


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise UserfaultfdError(err, f"{what}: {os.strerror(err)}")


class Userfaultfd:
    """One userfaultfd (created here with :meth:`create`, or adopted from a received ``fd``).

    Non-blocking; the caller polls :meth:`fileno` for faults.
    """

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def create(cls) -> "Userfaultfd":
        """``userfaultfd(O_CLOEXEC | O_NONBLOCK)`` and the ``UFFDIO_API`` handshake (no extra features)."""
        fd = _libc.syscall(_NR_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            _raise("userfaultfd")
        u = cls(int(fd))
        buf = ctypes.create_string_buffer(struct.pack("=QQQ", UFFD_API, 0, 0), 24)
        if _libc.ioctl(u.fd, UFFDIO_API, buf) != 0:
            u.close()
            _raise("UFFDIO_API")
        return u

    def fileno(self) -> int:
        return self.fd

    def _ioctl(self, request: int, buf, what: str) -> None:
        if _libc.ioctl(self.fd, request, buf) != 0:
            _raise(what)

    def register(self, start: int, length: int) -> None:
        """Register ``[start, start + length)`` of the creator's memory for missing-page faults."""
        buf = ctypes.create_string_buffer(struct.pack("=QQQQ", start, length, UFFDIO_REGISTER_MODE_MISSING, 0), 32)
        self._ioctl(UFFDIO_REGISTER, buf, f"UFFDIO_REGISTER [{start:#x}, +{length:#x})")

    def unregister(self, start: int, length: int) -> None:
        buf = ctypes.create_string_buffer(struct.pack("=QQ", start, length), 16)
        self._ioctl(UFFDIO_UNREGISTER, buf, f"UFFDIO_UNREGISTER [{start:#x}, +{length:#x})")

    def wake(self, start: int, length: int) -> None:
        """Wake the threads faulting in ``[start, start + length)`` (they retry the access)."""
        buf = ctypes.create_string_buffer(struct.pack("=QQ", start, length), 16)
        self._ioctl(UFFDIO_WAKE, buf, f"UFFDIO_WAKE [{start:#x}, +{length:#x})")

    def copy(self, dst: int, src: int, length: int, wake: bool = True) -> None:
        """Fill the missing pages at ``dst`` (creator's memory) from ``src`` (ours), then wake unless told not to."""
        mode = 0 if wake else UFFDIO_COPY_MODE_DONTWAKE
        buf = ctypes.create_string_buffer(struct.pack("=QQQQq", dst, src, length, mode, 0), 40)
        self._ioctl(UFFDIO_COPY, buf, f"UFFDIO_COPY to [{dst:#x}, +{length:#x})")

    def read_faults(self) -> list[tuple[int, int]]:
        """Every queued page fault as ``(address, flags)``; [] when none is pending."""
        faults = []
        while True:
            try:
                data = os.read(self.fd, UFFD_MSG_SIZE * 16)
            except BlockingIOError:
                return faults
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return faults
                raise
            for off in range(0, len(data) - UFFD_MSG_SIZE + 1, UFFD_MSG_SIZE):
                if data[off] == UFFD_EVENT_PAGEFAULT:
                    flags, address = struct.unpack_from("=QQ", data, off + 8)
                    faults.append((address, flags))

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def __enter__(self) -> "Userfaultfd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
