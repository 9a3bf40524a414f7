"""Postcopy live migration on the back-end side (``VHOST_USER_PROTOCOL_F_PAGEFAULT``).

Offered only on sockets registered with ``RTE_VHOST_USER_POSTCOPY_SUPPORT``
(as in DPDK).  With postcopy, the destination guest runs before all of its
memory has arrived: a page not yet migrated is *missing* in the shared memory
file, and whoever touches it must wait until QEMU has fetched it from the
source.  Touching it through a mapping nobody watches instead allocates a
zero page, which QEMU can then no longer fill (``UFFDIO_COPY`` fails with
EEXIST): the guest's data is silently lost.

**The protocol** (vhost-user spec; QEMU is the destination front-end):

1. ``POSTCOPY_ADVISE``: the back-end opens a userfaultfd and returns it with
   the (empty) reply.  QEMU's fault thread reads faults from it.
2. ``POSTCOPY_LISTEN`` (NEED_REPLY): postcopy is on; no mem table may be
   mapped yet (it would not be watched).
3. ``SET_MEM_TABLE`` (no NEED_REPLY): the back-end maps the regions and
   replies with the same table, each ``userspace_addr`` replaced by the
   back-end's address of the region -- the addresses QEMU will see in faults.
   QEMU then sends an acknowledgement (a ``SET_MEM_TABLE`` header with a u64
   0); only after it may the back-end register the regions on the
   userfaultfd and touch guest memory.
4. A fault: QEMU reads back-end address A from the userfaultfd, fetches the
   page, places it in its own mapping of the shared file and wakes A
   (``UFFDIO_WAKE``); the back-end's access completes with the page's data.
5. ``POSTCOPY_END`` (NEED_REPLY): every page has arrived; the userfaultfd
   is closed and the reply is a u64 0.

QEMU sends ADVISE, LISTEN and END once per vhost device of the connection
(a multi-queue net device has several): a repeated ADVISE hands out the same
userfaultfd, and postcopy ends with the last END.

**Many processes, one userfaultfd.**  Here guest memory is mapped by the
main process (the control plane reads ring indices) and, separately, by each
lcore process that polls a vring (:func:`~dataplane.vhost.handoff.map_vring`).
A userfaultfd is bound to the memory of the process that created it: ranges
registered on it are that process's addresses, and an lcore's mapping
cannot be registered on a userfaultfd of the main process.  Yet QEMU takes
exactly one userfaultfd per device, and one address per region.

The relay: one helper process, the **fault relay** (:class:`FaultRelay`,
started at ADVISE, ended at END), creates the userfaultfd QEMU gets, maps
every region itself and registers its mappings on it: its addresses are the
ones in the ``SET_MEM_TABLE`` reply.  Every other mapping of guest memory,
in any process -- the main process's, each lcore's -- is registered on a
userfaultfd of its own (:func:`register_client`) before anything touches
it, and that fd is handed to the relay (SCM_RIGHTS on the relay's socket).
When a process faults on page P, the relay reads the fault, touches P
through its own mapping -- which faults on QEMU's userfaultfd, so QEMU
fetches P and wakes the relay -- and then wakes the faulting process, whose
access retries and finds P in the shared file.  No mapping of guest memory
is ever left unwatched while postcopy is on; if registering fails, the
mapping is refused (the queue does not start) rather than used.

The relay is a process, not a thread of the main process, because the main
process's threads fault with the GIL held (a ring index read in Python):
a relay thread there could not run to serve them.

Failure modes kept in mind: a fault the relay cannot translate (an address
outside every region) is logged and left blocked -- waking it would retry
into the same fault, and filling it would invent data; a relay that dies
leaves faults blocked (never zero-filled); the relay exits with the main
process (``PR_SET_PDEATHSIG``) and when its control socket closes.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Sequence

from dataplane import log as dplog
from dataplane.lcores.launch import recv_message, send_message
from dataplane.rings.handoff import close_fds
from dataplane.vhost.guest_memory import GuestMemory, GuestMemoryError
from dataplane.vhost.userfaultfd import Userfaultfd, UserfaultfdError
from dataplane.vhost_user import payloads as P
from dataplane.vhost_user.errors import RequestError
from dataplane.vhost_user.messages import Message, VhostUserRequest as R

__all__ = [
    "RELAY_TIMEOUT",
    "RelayError",
    "FaultRelay",
    "register_client",
    "Postcopy",
]

log = dplog.get_logger("dataplane.vhost.postcopy")

#: Seconds the main process waits for the relay to start or answer a command.
RELAY_TIMEOUT = 30.0
#: Seconds a stopping relay gets before it is killed (it may be blocked on a page that never comes).
RELAY_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


class RelayError(RuntimeError):
    """The fault relay failed, or refused a command (the message says why)."""


# ---------------------------------------------------------------------------
# Client side: any process mapping guest memory while postcopy is on.
# ---------------------------------------------------------------------------


def register_client(mem: GuestMemory, address: str) -> None:
    """Register every region of ``mem`` (mapped in this process, not touched yet) on a new
    userfaultfd and hand it to the fault relay at ``address``, which serves its faults.

    Raises :class:`UserfaultfdError` or :class:`OSError` (relay gone); the caller must
    then not touch ``mem``.  Our copy of the fd is closed: the relay holds the only one.
    """
    with Userfaultfd.create() as uffd:
        for m in mem:
            uffd.register(m.mmap_addr, m.mmap_size)
        regions = [(m.guest_phys_addr, m.host_user_addr, m.size, m.block_size) for m in mem]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            send_message(s, {"op": "client", "pid": os.getpid(), "regions": regions}, [uffd.fd])


# ---------------------------------------------------------------------------
# The relay process
# ---------------------------------------------------------------------------


@dataclass
class _Client:
    """A registered mapping of another process: its userfaultfd and (gpa, address, size, block) per region."""

    uffd: Userfaultfd
    pid: int
    regions: list[tuple[int, int, int, int]]

    def fileno(self) -> int:
        return self.uffd.fd

    def gpa_of(self, addr: int) -> tuple[int, int] | None:
        """(guest-physical address, mapping granularity) of an address of this client, or None."""
        for gpa, hva, size, block in self.regions:
            if hva <= addr < hva + size:
                return gpa + addr - hva, block
        return None


class _Relay:
    """The relay process's state (see the module docstring)."""

    def __init__(self, ctl: socket.socket):
        self.ctl = ctl
        self.uffd = Userfaultfd.create()
        self.clients_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # a private directory (0700): only our user can register a client (messages are pickles)
        self.address = os.path.join(tempfile.mkdtemp(prefix="dp-postcopy-"), "relay.sock")
        self.clients_sock.bind(self.address)
        self.memory: GuestMemory | None = None  # registered on self.uffd: faults here go to QEMU
        self.pending: GuestMemory | None = None  # mapped, not registered yet (QEMU has not acknowledged)
        self.clients: dict[int, _Client] = {}
        self.deferred: list[tuple[_Client, int]] = []
        self.served = 0

    # -- commands from the main process --

    def command(self, msg: dict, fds: list[int]) -> dict:
        op = msg.get("op")
        if op == "uffd":
            return {"ok": True}
        if op == "map":
            if self.pending is not None:
                self.pending.unmap()
            self.pending = None
            regions = [P.MemoryRegion(*r) for r in msg["regions"]]
            self.pending = GuestMemory.map_table(regions, fds, max_regions=max(len(regions), 1))
            return {"ok": True, "bases": [m.host_user_addr for m in self.pending]}
        if op == "register":
            if self.pending is None:
                return {"error": "no mem table mapped to register"}
            new, self.pending = self.pending, None
            try:
                for m in new:
                    self.uffd.register(m.mmap_addr, m.mmap_size)
            except UserfaultfdError:
                new.unmap()
                raise
            old, self.memory = self.memory, new
            if old is not None:
                old.unmap()  # unmapping a registered range unregisters it
            deferred, self.deferred = self.deferred, []
            for client, addr in deferred:
                self.serve(client, addr)
            return {"ok": True}
        close_fds(fds)
        return {"error": f"unknown relay command {op!r}"}

    # -- faults --

    def add_client(self, msg: dict, fds: list[int]) -> None:
        if msg.get("op") != "client" or len(fds) != 1:
            log.error("postcopy relay: bad client registration ignored", message=repr(msg)[:120], fds=len(fds))
            close_fds(fds)
            return
        c = _Client(Userfaultfd(fds[0]), int(msg["pid"]), [tuple(map(int, r)) for r in msg["regions"]])
        self.clients[c.uffd.fd] = c
        log.info("postcopy relay: mapping registered", pid=c.pid, regions=len(c.regions))

    def faults(self, client: _Client) -> None:
        for addr, _flags in client.uffd.read_faults():
            if self.memory is None:
                self.deferred.append((client, addr))  # our own mapping is not registered yet: never touch it
            else:
                self.serve(client, addr)

    def serve(self, client: _Client, addr: int) -> None:
        """Fetch the page through our registered mapping (QEMU serves that fault), then wake the client."""
        found = client.gpa_of(addr)
        hva = 0 if found is None or self.memory is None else self.memory.gpa_to_hva(found[0], 1)
        if not hva:
            log.error("postcopy relay: fault outside the guest memory; left blocked", pid=client.pid, address=hex(addr))
            return
        ctypes.string_at(hva, 1)  # blocks until QEMU has placed the page (if it was missing)
        block = found[1]
        client.uffd.wake(addr & ~(block - 1), block)
        self.served += 1

    def run(self) -> None:
        send_message(self.ctl, {"address": self.address, "pid": os.getpid()}, [self.uffd.fd])
        while True:
            readable, _, _ = select.select([self.ctl, self.clients_sock, *self.clients.values()], [], [])
            for r in readable:
                if r is self.ctl:
                    msg, fds = recv_message(self.ctl)
                    if msg is None or msg.get("op") == "stop":
                        close_fds(fds)
                        if msg is not None:
                            send_message(self.ctl, {"ok": True, "served": self.served})
                        return
                    try:
                        reply = self.command(msg, fds)
                    except (GuestMemoryError, UserfaultfdError, OSError, KeyError, TypeError, ValueError) as e:
                        reply = {"error": str(e)}
                    send_message(self.ctl, reply, [self.uffd.fd] if msg.get("op") == "uffd" and "ok" in reply else ())
                elif r is self.clients_sock:
                    msg, fds = recv_message(self.clients_sock)
                    if msg is not None:
                        self.add_client(msg, fds)
                else:
                    self.faults(r)

    def close(self) -> None:
        for c in self.clients.values():
            c.uffd.close()  # the last reference: the client's ranges are unregistered
        self.clients.clear()
        for mem in (self.memory, self.pending):
            if mem is not None:
                mem.unmap()
        self.uffd.close()
        self.clients_sock.close()
        shutil.rmtree(os.path.dirname(self.address), ignore_errors=True)
        self.ctl.close()


def _relay_main(ctl_fd: int) -> int:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    relay = _Relay(socket.socket(fileno=ctl_fd))
    try:
        relay.run()
    finally:
        log.info("postcopy relay: done", faults_served=relay.served)
        relay.close()
    return 0


class FaultRelay:
    """Main-process handle of a fault relay process (see the module docstring).

    ``address``: where clients register (:func:`register_client`); ``pid``.
    """

    def __init__(self, name: str = "", timeout: float = RELAY_TIMEOUT):
        self.name = name
        self.timeout = timeout
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # the relay imports the same dataplane as this process, wherever that comes from
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above dataplane/
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dataplane.vhost.postcopy", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        try:
            hello, fds = self._reply()
            close_fds(fds)  # the uffd is handed out by uffd()
        except BaseException:
            self.stop()
            raise
        self.address: str = hello["address"]
        self.pid: int = hello["pid"]
        log.info("postcopy fault relay started", path=name, pid=self.pid)

    def _reply(self) -> tuple[dict, list[int]]:
        if not select.select([self.sock], [], [], self.timeout)[0]:
            raise RelayError(f"postcopy fault relay did not answer within {self.timeout:.0f}s")
        msg, fds = recv_message(self.sock)
        if msg is None:
            raise RelayError("postcopy fault relay exited")
        if "error" in msg:
            close_fds(fds)
            raise RelayError(f"postcopy fault relay: {msg['error']}")
        return msg, fds

    def _call(self, msg: dict, fds: Sequence[int] = ()) -> tuple[dict, list[int]]:
        try:
            send_message(self.sock, msg, fds)
        except OSError as e:
            raise RelayError(f"postcopy fault relay unreachable: {e}") from None
        return self._reply()

    def uffd(self) -> int:
        """A new fd of the relay's userfaultfd (the one for QEMU); the caller owns it."""
        _, fds = self._call({"op": "uffd"})
        if len(fds) != 1:
            close_fds(fds)
            raise RelayError("postcopy fault relay sent no userfaultfd")
        return fds[0]

    def map(self, mem: GuestMemory) -> list[int]:
        """Have the relay map the regions of ``mem`` (not registered yet); returns its region addresses."""
        regions = [(m.guest_phys_addr, m.size, m.userspace_addr, m.mmap_offset) for m in mem]
        reply, _ = self._call({"op": "map", "regions": regions}, [m.fd for m in mem])
        return [int(b) for b in reply["bases"]]

    def register(self) -> None:
        """Register the relay's mapped table on QEMU's userfaultfd (after QEMU acknowledged it)."""
        self._call({"op": "register"})

    def stop(self) -> int | None:
        """End the relay (its userfaultfds close: every registered range, in every process, is released).

        Returns how many faults it served (None if it could not tell)."""
        served = None
        if self.sock is not None:
            try:
                send_message(self.sock, {"op": "stop"})
                if select.select([self.sock], [], [], RELAY_STOP_TIMEOUT)[0]:
                    served = (recv_message(self.sock)[0] or {}).get("served")
            except OSError:
                pass
        try:
            self.proc.wait(RELAY_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("postcopy fault relay did not stop; killed", path=self.name, pid=self.proc.pid)
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
        if getattr(self, "address", None):  # a killed relay leaves its directory behind
            shutil.rmtree(os.path.dirname(self.address), ignore_errors=True)
        return served


# ---------------------------------------------------------------------------
# The device's postcopy state machine
# ---------------------------------------------------------------------------


class Postcopy:
    """Postcopy state of one vhost-user device (``VhostUserDevice.postcopy``).

    Counts the ADVISE / LISTEN / END of the connection's vhost devices; a
    relay runs from the first ADVISE to the last END (``faults_served``: how
    many faults of our processes the last one served).  While a SET_MEM_TABLE
    reply awaits QEMU's acknowledgement, ``awaiting_ack`` is true and the
    new table is mapped but not yet in use (:meth:`take_ack`).
    """

    def __init__(self, name: str):
        self.name = name
        self.relay: FaultRelay | None = None
        self.advised = 0
        self.listening = 0
        self.ended = 0
        self.awaiting_ack = False
        self.pending: GuestMemory | None = None
        self.bases: list[int] = []  # the relay's region addresses, as last replied
        self.faults_served: int | None = None  # by the last relay, when it stopped

    @property
    def active(self) -> bool:
        """LISTEN received and not ended: every mapping of guest memory must be registered."""
        return self.listening > 0

    @property
    def client_address(self) -> str | None:
        """Where a process mapping guest memory registers it (:func:`register_client`); None when postcopy is off."""
        return self.relay.address if self.active and self.relay is not None else None

    # -- requests --

    def advise(self) -> int:
        """POSTCOPY_ADVISE: start the relay (first time); returns the userfaultfd for the reply (caller closes)."""
        if self.listening:
            raise RequestError("POSTCOPY_ADVISE after POSTCOPY_LISTEN (postcopy is already running)")
        if self.relay is None:
            try:
                self.relay = FaultRelay(self.name)
            except (OSError, RelayError) as e:
                raise RequestError(f"cannot start the postcopy fault relay: {e}") from None
        try:
            fd = self.relay.uffd()
        except RelayError as e:
            self.close()
            raise RequestError(str(e)) from None
        self.advised += 1
        return fd

    def listen(self, memory_mapped: bool) -> None:
        """POSTCOPY_LISTEN: refused without ADVISE, beyond one per ADVISE, and once memory is mapped unwatched."""
        if not self.advised:
            raise RequestError("POSTCOPY_LISTEN without POSTCOPY_ADVISE (no userfaultfd)")
        if self.listening >= self.advised:
            raise RequestError(f"POSTCOPY_LISTEN #{self.listening + 1} after only {self.advised} POSTCOPY_ADVISE")
        if memory_mapped and not self.listening:
            raise RequestError("POSTCOPY_LISTEN with guest memory already mapped (it would not be watched)")
        self.listening += 1
        log.info("postcopy listening", path=self.name)

    def end(self) -> P.U64:
        """POSTCOPY_END: the last one ends the relay.  END without LISTEN is refused (and withdraws an ADVISE)."""
        if not self.listening:
            advised = self.advised
            self.close()
            raise RequestError("POSTCOPY_END without POSTCOPY_LISTEN" + (" (advise withdrawn)" if advised else ""))
        if self.awaiting_ack:
            raise RequestError("POSTCOPY_END while a SET_MEM_TABLE acknowledgement is awaited")
        self.ended += 1
        if self.ended >= self.listening:
            self.close()
            log.info("postcopy ended", path=self.name)
        return P.U64(0)

    def not_entered(self) -> None:
        """A mem table is mapped the ordinary way after ADVISE without LISTEN: the migration completed
        in precopy (QEMU then sends no END), so the advise is withdrawn and the relay stopped."""
        if self.advised and not self.listening:
            log.info("postcopy advised but not entered (the migration completed in precopy)", path=self.name)
            self.close()

    def set_mem_table(self, current: GuestMemory | None, regions: list[P.MemoryRegion], fds: list[int],
                      size: int) -> bytes:
        """SET_MEM_TABLE while listening: map (here and in the relay) without touching; the reply
        carries the relay's addresses.  ``size``: the request's payload size (the reply has the same)."""
        assert self.relay is not None
        if current is not None and current.same_table(regions):
            close_fds(fds)
            self.pending = None
        else:
            new = GuestMemory.map_table(regions, fds)  # GuestMemoryError: refused
            try:
                self.bases = self.relay.map(new)
            except RelayError as e:
                new.unmap()
                raise RequestError(str(e)) from None
            if self.pending is not None:
                self.pending.unmap()
            self.pending = new
        self.awaiting_ack = True
        reply = P.Memory([P.MemoryRegion(r.guest_phys_addr, r.memory_size, b, r.mmap_offset)
                          for r, b in zip(regions, self.bases)]).pack()
        return reply.ljust(size, b"\0")

    def take_ack(self, msg: Message) -> GuestMemory | None:
        """QEMU's acknowledgement of the reply: register the relay's mapping and ours; returns the
        table to put in use (None: the table did not change).  RequestError if ``msg`` is not it."""
        self.awaiting_ack = False
        pending, self.pending = self.pending, None
        try:
            if msg.request != R.VHOST_USER_SET_MEM_TABLE or len(msg.payload) != 8 or msg.fds:
                raise RequestError(
                    f"expected the front-end's SET_MEM_TABLE acknowledgement (8-byte u64, no fds), got request "
                    f"{msg.request} with {len(msg.payload)} bytes and {len(msg.fds)} fds"
                )
            if P.U64.parse(msg.payload).u64 != 0:
                raise RequestError(f"front-end reports failure {P.U64.parse(msg.payload).u64} for the postcopy mem table")
            if pending is None:
                return None
            assert self.relay is not None
            self.relay.register()
            register_client(pending, self.relay.address)
        except (RelayError, UserfaultfdError, OSError) as e:
            if pending is not None:
                pending.unmap()
            raise RequestError(f"postcopy registration failed: {e}") from None
        except BaseException:
            if pending is not None:
                pending.unmap()
            raise
        log.info("postcopy: guest memory registered", path=self.name, regions=len(pending),
                 relay_bases=[hex(b) for b in self.bases])
        return pending

    def close(self) -> None:
        """Stop the relay and forget everything (disconnect, reset, END)."""
        if self.pending is not None:
            self.pending.unmap()
            self.pending = None
        if self.relay is not None:
            self.faults_served = self.relay.stop()
            log.info("postcopy fault relay stopped", path=self.name, faults_served=self.faults_served)
            self.relay = None
        self.advised = self.listening = self.ended = 0
        self.awaiting_ack = False


if __name__ == "__main__":
    sys.exit(_relay_main(int(sys.argv[1])))
