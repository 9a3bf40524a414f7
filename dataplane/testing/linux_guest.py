"""Real Linux guests for tests: a small Debian guest image, built once and cached, and a QEMU launcher.

A test writes a shell script; the guest boots, runs it and prints exactly one
result line on its serial console, ``PASS ...`` or ``FAIL ...``, then powers
off. The launcher waits for that line and hands back the console log::

    from dataplane.testing.linux_guest import Guest, Nic, Disk, guest_image, run_guests

    image = guest_image()                     # built once, cached (see below)
    g = Guest(image, '''
        ip addr add $ip dev eth0 && ip link set eth0 up
        ping -c 3 -W 5 $peer || fail "no answer from $peer"
        result rtt=ok
    ''', params={"ip": "10.0.0.1/24", "peer": "10.0.0.2"},
        nics=[Nic("/tmp/vh0.sock")])
    with g:                                   # start() ... close(): QEMU killed by pid, files removed
        r = g.wait()                          # GuestResult; r.passed, r.line, r.values, r.console
        assert r.passed, r.console[-3000:]

    run_guests(g1, g2)                        # start several, wait for all, return their results

The image (:func:`guest_image`)
    Debian's ``linux-image-amd64`` (the kernel package it depends on, fetched
    with ``apt-get download`` and unpacked with ``dpkg-deb``), and a gzip'd
    cpio (newc) initramfs holding busybox-static, the virtio modules
    (``virtio_pci``, ``virtio_net``, ``virtio_blk`` and their dependencies, in
    the order ``modprobe --show-depends`` gives after ``depmod -b``) and a
    scripted ``/init``. Cached in ``$DATAPLANE_GUEST_CACHE`` or
    ``~/.cache/dataplane-guest/<kernel version>/<recipe>/`` (``recipe``: a
    hash of ``/init``, the helpers and the module list, so an edit of them
    builds a new image), rebuilt when missing; a
    build goes to a temporary directory renamed into place, so concurrent
    builders are safe (the loser discards its copy). Needs the Debian packages
    ``busybox-static``, ``kmod`` and ``qemu-system-x86`` (``.ci/setup``).

The guest's ``/init``
    mounts proc, sys, devtmpfs; inserts the modules one ``insmod`` each;
    brings ``lo`` up; sources ``/params`` (the ``params`` dict as shell
    variables: keys are shell names, values any text) and then runs the test
    script in a shell with ``set -e``, in ``/tmp`` (a tmpfs), killed after
    ``script_timeout`` seconds (``FAIL timeout: ...``). Helpers the script
    can call (from ``/lib/guest.sh``):

    * ``fail MESSAGE...`` — end the test now with ``FAIL MESSAGE``;
    * ``result KEY=VALUE`` — add ``KEY=VALUE`` to the result line (no spaces
      in VALUE), parsed into :attr:`GuestResult.values`;
    * ``wait_until SECONDS COMMAND...`` — retry COMMAND every 0.2 s until it
      succeeds (returns 0) or SECONDS pass (returns 1);
    * ``nc_listen PORT FILE`` — receive one TCP connection's bytes into FILE
      in the background (busybox ``nc -l``, its stdin held open on a FIFO:
      busybox nc half-closes its side when its stdin reaches EOF); the pid of
      the listener is in ``$NC_PID``; ``wait_pid SECONDS PID`` waits for it;
    * ``host_said WORD`` — 0 if the host sent the line WORD (:meth:`Guest.tell`)
      since the last call (and ``host said WORD`` on the console), else 1 (at
      once: it reads what is there);
    * ``rounds FUNC MAX AFTER`` — call ``FUNC 1``, ``FUNC 2``, ... (printing
      ``round N ok`` after each) until the host said ``stop``, then AFTER more;
      fails after MAX rounds; ``$ROUNDS`` is how many ran;
    * ``barrier PEER PORT`` — returns once the guest at address PEER called
      ``barrier`` with the same PORT too (so neither powers off while the
      other still needs it), 1 after a minute without the peer.

    The script's exit status decides: 0 prints ``PASS`` plus the ``result``
    values, anything else ``FAIL exit N`` (the console above it shows what
    ran). Kernel panics power off too (``panic=-1`` with ``-no-reboot``).
    Network interfaces are ``eth0``, ``eth1``... in the order of ``nics``;
    disks ``/dev/vda``, ``/dev/vdb``... in the order of ``disks``, after the NICs
    on the PCI bus.

Live migration (:func:`migrate`)
    Every guest has an HMP monitor on a unix socket (:meth:`Guest.monitor`),
    a QMP socket for management agents (:attr:`Guest.qmp_socket`; NIC ids ``nic0``...)
    and a second serial port, ``ttyS1``, for lines from the host
    (:meth:`Guest.tell`, read in the guest with ``host_said``).
    :meth:`Guest.destination` makes the guest that receives it: the same
    command line (the same initramfs file) on other back-end sockets, plus
    ``-incoming unix:PATH``::

        src = Guest(image, script, nics=[Nic(sock_a)]).start()
        src.wait_console(r"round 2 ok")           # the script prints its progress
        dst = src.destination(nics=[Nic(sock_b)]).start()
        m = migrate(src, dst)                     # MigrationResult: total_ms, downtime_ms, ...
        dst.tell("stop")                          # the script goes on until host_said stop
        r = dst.wait()                            # the result line comes from the destination

The script and ``/params`` travel in a second small cpio archive appended to
the cached initramfs (the kernel unpacks concatenated archives), so one image
serves every test and nothing is parsed from the kernel command line.

QEMU (:class:`Guest`)
    ``qemu-system-x86_64 -machine q35,accel=tcg -cpu max`` (KVM is unusably
    slow here and ``-cpu host`` aborts), ``-nodefaults``, serial console to a
    log file, guest RAM ``memory-backend-memfd,share=on`` named by ``-numa
    node,memdev=`` (vhost-user needs shared, fd-backed RAM). Each :class:`Nic`
    is a ``vhost-user`` netdev on a ``virtio-net-pci`` device and each
    :class:`Disk` a ``vhost-user-blk-pci`` device; both always use
    ``vectors=0`` (INTx), because QEMU 7.2 with TCG, vhost-user and MSI-X
    segfaulted when the driver enabled the device (kept with QEMU 10, which
    ``.ci/setup`` installs; see ``docs/guests.md``). QEMU connects as the
    vhost-user client; with ``reconnect=N`` (passed as ``reconnect-ms`` to QEMU
    >= 9.2: QEMU 10 ignores the old option) it waits for a socket that does
    not exist yet instead of exiting at once, and reconnects after the back-end
    goes away (vhost-user-blk then hands its inflight area back).
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import lzma
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

__all__ = ["Disk", "Guest", "GuestError", "GuestImage", "GuestResult", "MigrationResult", "Monitor", "Nic", "QEMU",
           "BLK_ROUNDS", "BlkMigration", "MIGRATION_CPU", "NetMigration", "SELF_TCP_ROUNDS", "blk_migration", "guest_image", "migrate", "migrate_midway", "net_migration", "run_guests"]

QEMU = shutil.which("qemu-system-x86_64")
BUSYBOX = "/bin/busybox"
KERNEL_PACKAGE = "linux-image-amd64"
MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
CACHE_ENV = "DATAPLANE_GUEST_CACHE"
BOOT_ALLOWANCE = 120.0  # seconds a guest may take to boot and power off, beyond its script
RESULT_RE = re.compile(r"^(PASS|FAIL)\b[^\r\n]*", re.MULTILINE)

_SEQ = itertools.count()
#: The CPU model of guests that live-migrate. With QEMU 7.2 (TCG) a guest migrated while its NIC
#: interrupts flow crashed on the destination (garbage RIPs in interrupt context, slab BUGs),
#: whatever the vhost-user back-end, more often with ``-cpu max``: 7.2's precopy loses guest pages
#: under that load (``docs/guests.md``). QEMU 10 does not; ``qemu64`` is kept as the plainest model.
MIGRATION_CPU = "qemu64"


class GuestError(RuntimeError):
    """The guest image cannot be built, or a guest did not report a result."""


# -- the image -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: the kernel and the base initramfs (gzip'd newc cpio)."""

    version: str
    kernel: str
    initrd: str


_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
while read m; do insmod "/lib/modules/$m" || echo "init: insmod $m failed"; done < /lib/modules/order
ip link set lo up
cd /tmp
limit=$(cat /timeout)
# the second serial port carries lines from the host (Guest.tell): fd 7 of the script, raw
exec 7<>/dev/ttyS1
stty raw -echo <&7
sh -c '. /lib/guest.sh; . /params; set -e; . /test.sh' &
test=$!
(sleep $limit; kill -9 $test) 2>/dev/null &
watchdog=$!
wait $test
rc=$?
kill $watchdog
if [ -e /tmp/.fail ]; then
    echo "FAIL $(cat /tmp/.fail)"
elif [ $rc -eq 137 ]; then
    echo "FAIL timeout: the script ran longer than $limit s"
elif [ $rc -ne 0 ]; then
    echo "FAIL exit $rc"
else
    echo "PASS$(cat /tmp/.result 2>/dev/null)"
fi
sync
poweroff -f
"""

_GUEST_SH = r"""# helpers for guest test scripts (see dataplane.testing.linux_guest)
fail() { echo "$*" > /tmp/.fail; exit 1; }
result() { printf ' %s' "$*" >> /tmp/.result; }
wait_until() {
    _t=$(( $1 * 5 )); shift
    while ! "$@" >/dev/null 2>&1; do
        _t=$(( _t - 1 )); [ $_t -gt 0 ] || return 1
        sleep 0.2
    done
}
wait_pid() {
    _t=$(( $1 * 5 ))
    while kill -0 "$2" 2>/dev/null; do
        _t=$(( _t - 1 )); [ $_t -gt 0 ] || return 1
        sleep 0.2
    done
    wait "$2"
}
nc_listen() {
    _fifo=/tmp/.nc_stdin_$1
    mkfifo $_fifo
    sleep 100000 > $_fifo &
    nc -l -p "$1" < $_fifo > "$2" &
    NC_PID=$!
}
host_said() {
    # a byte out makes the port interrupt, and the handler takes in what waits (after a migration
    # the receive interrupt can be lost)
    printf . >&7
    while read -t 0.1 _line <&7; do
        if [ "$_line" = "$1" ]; then echo "host said $1"; return 0; fi
    done
    return 1
}
rounds() {
    _i=0
    _left=-1
    while [ $_left -ne 0 ]; do
        _i=$((_i + 1))
        [ $_i -le $2 ] || fail "the host never said stop ($2 rounds)"
        "$1" $_i
        echo "round $_i ok"
        if [ $_left -gt 0 ]; then
            _left=$((_left - 1))
        elif host_said stop; then
            _left=$3
        fi
    done
    ROUNDS=$_i
}
barrier() {
    nc_listen $2 /tmp/.barrier_$2
    wait_until 60 sh -c "echo x | nc -w 5 $1 $2" || return 1
    wait_pid 60 $NC_PID
}
"""


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive of ``(name, mode, data, rdev)`` entries plus the trailer.

    Written here rather than with cpio(1) so device nodes need no mknod (and no root).
    """
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        nm = name.encode() + b"\0"
        out += b"070701" + b"".join(b"%08X" % v for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(nm), 0))
        out += nm + b"\0" * (-(110 + len(nm)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)


def _dir(name: str) -> tuple[str, int, bytes, int]:
    return (name, 0o040755, b"", 0)


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[str, int, bytes, int]:
    return (name, 0o100000 | mode, data, 0)


def _run(cmd: list[str], cwd: str | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise GuestError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def _kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on (``linux-image-6.1.0-N-amd64``)."""
    out = _run(["apt-cache", "depends", KERNEL_PACKAGE])
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise GuestError(f"apt-cache depends {KERNEL_PACKAGE} names no kernel package:\n{out}")
    return m.group(1)


def cache_root() -> str:
    """Where built images live: ``$DATAPLANE_GUEST_CACHE`` or ``~/.cache/dataplane-guest``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "dataplane-guest")


def guest_image(root: str | None = None) -> GuestImage:
    """The cached guest image for the current ``linux-image-amd64``, built if missing."""
    root = root or cache_root()
    package = _kernel_package()
    version = package.removeprefix("linux-image-")
    recipe = hashlib.sha256(repr((_INIT, _GUEST_SH, MODULES)).encode()).hexdigest()[:12]
    final = os.path.join(root, version, recipe)
    image = GuestImage(version, os.path.join(final, "vmlinuz"), os.path.join(final, "initrd.gz"))
    if os.path.exists(image.initrd):
        return image
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(final))
    try:
        _build(package, version, work)
        try:
            os.rename(os.path.join(work, "out"), final)
        except OSError:
            if not os.path.exists(image.initrd):  # not a concurrent builder that won: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return image


def _build(package: str, version: str, work: str) -> None:
    if not os.access(BUSYBOX, os.X_OK):
        raise GuestError(f"{BUSYBOX} is missing (Debian package busybox-static)")
    # as root apt drops to _apt, which cannot write to our private temp dir
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=work)
    deb = next(f for f in os.listdir(work) if f.endswith(".deb"))
    tree = os.path.join(work, "tree")
    _run(["dpkg-deb", "-x", os.path.join(work, deb), tree])
    _run(["depmod", "-b", tree, version])
    order: list[str] = []
    for module in MODULES:
        out = _run(["modprobe", "-d", tree, "-S", version, "--show-depends", module])
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and words[1] not in order:
                order.append(words[1])
    entries = [_dir(d) for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
    entries.append(("dev/console", 0o020600, b"", os.makedev(5, 1)))
    with open(BUSYBOX, "rb") as f:
        entries.append(_file("bin/busybox", f.read(), 0o755))
    names = []
    for path in order:
        data = open(path, "rb").read()
        name = os.path.basename(path)
        if name.endswith(".xz"):  # busybox insmod takes plain objects
            data, name = lzma.decompress(data), name[:-3]
        names.append(name)
        entries.append(_file(f"lib/modules/{name}", data))
    entries.append(_file("lib/modules/order", "".join(n + "\n" for n in names).encode()))
    entries.append(_file("lib/guest.sh", _GUEST_SH.encode()))
    entries.append(_file("init", _INIT.encode(), 0o755))
    out = os.path.join(work, "out")
    os.mkdir(out)
    shutil.copyfile(os.path.join(tree, "boot", f"vmlinuz-{version}"), os.path.join(out, "vmlinuz"))
    with open(os.path.join(out, "initrd.gz"), "wb") as f:
        f.write(gzip.compress(_cpio_newc(entries), 6))


# -- devices -------------------------------------------------------------------------------------

@dataclass
class Nic:
    """A virtio-net-pci device on a vhost-user netdev at ``socket``.

    ``queues`` > 1 sets ``queues=`` on the netdev and ``mq=on`` on the device
    (the guest uses min(queues, vCPUs) pairs: give it ``smp=queues``);
    ``packed`` selects the packed ring; ``reconnect`` (seconds) lets QEMU wait
    for a socket that is not there yet; ``device`` adds device properties
    (``{"csum": "off", "mrg_rxbuf": "off"}``). The MAC is chosen per guest unless given.
    """

    socket: str
    mac: str | None = None
    queues: int = 1
    packed: bool = False
    reconnect: int | None = None
    device: dict = field(default_factory=dict)


@dataclass
class Disk:
    """A vhost-user-blk-pci device at ``socket`` with ``num_queues`` queues; ``device`` adds properties."""

    socket: str
    num_queues: int = 1
    reconnect: int | None = None
    device: dict = field(default_factory=dict)


def _props(d: dict) -> str:
    return "".join(f",{k}={v}" for k, v in d.items())


_QEMU_VERSION: list = []


def qemu_version() -> tuple[int, ...]:
    """The installed QEMU's version, e.g. (10, 0, 2) ((0,) when unknown)."""
    if not _QEMU_VERSION:
        v: tuple[int, ...] = (0,)
        if QEMU is not None:
            try:
                out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30).stdout
                m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
                if m:
                    v = tuple(int(x) for x in m.groups())
            except (OSError, subprocess.SubprocessError):
                pass
        _QEMU_VERSION.append(v)
    return _QEMU_VERSION[0]


def _chardev(cid: str, socket: str, reconnect: int | None) -> list[str]:
    """A socket chardev; ``reconnect`` seconds between connection attempts (QEMU 9.2 replaced the
    ``reconnect=`` seconds option by ``reconnect-ms=``; QEMU 10 no longer honours the old one)."""
    opt = ""
    if reconnect:
        opt = f",reconnect-ms={reconnect * 1000}" if qemu_version() >= (9, 2) else f",reconnect={reconnect}"
    return ["-chardev", f"socket,id={cid},path={socket}" + opt]


# -- the launcher --------------------------------------------------------------------------------

@dataclass
class GuestResult:
    """What a guest reported: ``passed``, the ``line`` itself, its ``KEY=VALUE`` ``values``, the whole ``console``."""

    passed: bool
    line: str
    values: dict
    console: str


class Guest:
    """One QEMU guest running ``script`` (see the module docstring).

    ``params`` become shell variables in the script; ``nics`` and ``disks``
    are :class:`Nic` / :class:`Disk`; ``memory_mb`` is guest RAM (memfd,
    shared); ``smp`` vCPUs; ``cpu`` the CPU model (:data:`MIGRATION_CPU` for a guest to migrate); ``extra`` more QEMU arguments; ``append`` more
    kernel parameters; ``script_timeout`` bounds the script inside the guest.
    ``start()`` launches QEMU, ``wait()`` returns the :class:`GuestResult`, ``close()``
    kills QEMU (by its pid) and removes the guest's files; a context manager
    starts and closes.
    """

    def __init__(self, image: GuestImage, script: str, *, params: dict | None = None, nics=(), disks=(),
                 memory_mb: int = 256, smp: int = 1, name: str = "guest", extra: list[str] = (),
                 append: str = "", script_timeout: int = 180, cpu: str = "max",
                 incoming_from: "Guest | None" = None):
        if QEMU is None:
            raise GuestError("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
        self.image, self.script, self.params = image, script, dict(params or {})
        self.nics, self.disks = list(nics), list(disks)
        self.memory_mb, self.smp, self.name, self.extra, self.append = memory_mb, smp, name, list(extra), append
        self.script_timeout = int(script_timeout)
        self.cpu = cpu
        # a migration destination boots nothing: it takes the source's initramfs file and MAC addresses
        self.incoming_from = incoming_from
        self.seq = incoming_from.seq if incoming_from else next(_SEQ)
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.result: GuestResult | None = None
        self._monitor: Monitor | None = None
        self._host_line: socket.socket | None = None

    @property
    def log_file(self) -> str:
        return os.path.join(self.dir, "console.log")

    @property
    def console(self) -> str:
        """The serial console so far."""
        try:
            with open(self.log_file, "rb") as f:
                return f.read().decode(errors="replace")
        except (FileNotFoundError, TypeError):
            return ""

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _initrd(self) -> str:
        """The cached initramfs with this boot's script and params appended as a second archive."""
        if self.incoming_from is not None:
            return self.incoming_from._path("initrd.gz")
        for key in self.params:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"guest param {key!r} is not a shell variable name")
        params = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in self.params.items())
        extra = _cpio_newc([_file("test.sh", self.script.encode()), _file("params", params.encode()),
                            _file("timeout", f"{self.script_timeout}\n".encode())])
        path = os.path.join(self.dir, "initrd.gz")
        with open(path, "wb") as out, open(self.image.initrd, "rb") as base:
            shutil.copyfileobj(base, out)
            out.write(gzip.compress(extra, 1))
        return path

    def command(self) -> list[str]:
        """The QEMU command line (``start()`` must have made the guest's directory)."""
        cmd = [
            QEMU, "-machine", "q35,accel=tcg", "-cpu", self.cpu, "-smp", str(self.smp), "-m", f"{self.memory_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on", "-numa", "node,memdev=mem",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{self.log_file}",
            "-serial", f"unix:{self._path('host.sock')},server=on,wait=off",  # ttyS1: Guest.tell
            "-monitor", f"unix:{self._path('monitor.sock')},server=on,wait=off",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",  # for management agents
            "-kernel", self.image.kernel, "-initrd", self._initrd(),
            # no_timer_check: on a loaded host the kernel's early IO-APIC timer check can miss
            # its ticks under TCG and panic ("IO-APIC + timer doesn't work")
            "-append", f"console=ttyS0 panic=-1 loglevel=4 no_timer_check {self.append}".strip(),
        ]
        for i, nic in enumerate(self.nics):
            mac = nic.mac or f"52:54:00:{(self.seq >> 8) & 0xFF:02x}:{self.seq & 0xFF:02x}:{i:02x}"
            netdev = f"vhost-user,id=n{i},chardev=nc{i}"
            dev = f"virtio-net-pci,id=nic{i},netdev=n{i},mac={mac},vectors=0"
            if nic.queues > 1:
                netdev += f",queues={nic.queues}"
                dev += ",mq=on"
            if nic.packed:
                dev += ",packed=on"
            cmd += [*_chardev(f"nc{i}", nic.socket, nic.reconnect), "-netdev", netdev,
                    "-device", dev + _props(nic.device)]
        for i, disk in enumerate(self.disks):
            cmd += [*_chardev(f"dc{i}", disk.socket, disk.reconnect), "-device",
                    f"vhost-user-blk-pci,chardev=dc{i},num-queues={disk.num_queues},vectors=0" + _props(disk.device)]
        if self.incoming_from is not None:
            cmd += ["-incoming", f"unix:{self.incoming_socket}"]
        return cmd + self.extra

    @property
    def incoming_socket(self) -> str:
        """Where a destination listens for the migration stream."""
        return self._path("incoming.sock")

    def destination(self, *, nics=None, disks=None, name: str | None = None) -> "Guest":
        """A guest to migrate this one into: the same machine and initramfs, on the back-ends
        ``nics`` / ``disks`` (by default the same sockets), started with ``-incoming``."""
        return Guest(self.image, self.script, params=self.params,
                     nics=self.nics if nics is None else nics, disks=self.disks if disks is None else disks,
                     memory_mb=self.memory_mb, smp=self.smp, name=name or f"{self.name}-dst", extra=self.extra,
                     append=self.append, script_timeout=self.script_timeout, cpu=self.cpu, incoming_from=self)

    @property
    def qmp_socket(self) -> str:
        """QEMU's QMP socket (for a management agent); the NICs are ``nic0``, ``nic1``..."""
        return self._path("qmp.sock")

    def monitor(self, timeout: float = 60.0) -> "Monitor":
        """The guest's HMP monitor (connected on first use)."""
        if self._monitor is None:
            self._monitor = Monitor(self._path("monitor.sock"), timeout, alive=lambda: self.proc.poll() is None)
        return self._monitor

    def tell(self, line: str, *, heard: bool = True, timeout: float = 120.0) -> None:
        """Send ``line`` to the guest's ``ttyS1`` (the script reads it with ``host_said``); with
        ``heard``, until the console shows ``host said LINE`` (sent again every 2 s meanwhile)."""
        if self._host_line is None:
            self._host_line = _connect_unix(self._path("host.sock"), 60.0, lambda: self.proc.poll() is None)
            self._host_line.setblocking(False)
        rx = re.compile(rf"^host said {re.escape(line)}\r?$", re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            try:
                while self._host_line.recv(4096):  # what host_said writes to wake the port
                    pass
            except BlockingIOError:
                pass
            except OSError:  # QEMU closed the port: the guest ended (below)
                pass
            if heard and rx.search(self.console):  # heard the previous send meanwhile
                return
            try:
                self._host_line.sendall(line.encode() + b"\n")
            except OSError:  # BrokenPipe / reset: QEMU is gone (the console says whether it heard first)
                if heard and rx.search(self.console):
                    return
                raise GuestError(f"guest {self.name}: ended before it heard {line!r}" + self._tails()) from None
            if not heard:
                return
            resend = time.monotonic() + 2.0
            while time.monotonic() < resend:
                if rx.search(self.console):
                    return
                if self.proc.poll() is not None or RESULT_RE.search(self.console):
                    if rx.search(self.console):  # it heard, then ended, between the two looks
                        return
                    raise GuestError(f"guest {self.name}: ended before it heard {line!r}" + self._tails())
                if time.monotonic() > deadline:
                    raise GuestError(f"guest {self.name}: did not hear {line!r} within {timeout} s" + self._tails())
                time.sleep(0.1)

    def wait_console(self, pattern: str, timeout: float = 300.0) -> re.Match:
        """Wait until the console shows a line matching ``pattern`` (a regex); its match.

        Raises :class:`GuestError` if QEMU exits or the guest reports its result first, or after ``timeout``.
        """
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.console
            m = rx.search(text)
            if m:
                return m
            if RESULT_RE.search(text) or self.proc.poll() is not None:
                raise GuestError(f"guest {self.name}: ended (QEMU exit status {self.proc.poll()}) before /{pattern}/"
                                 + self._tails())
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: no /{pattern}/ within {timeout} s" + self._tails())
            time.sleep(0.1)

    def start(self) -> "Guest":
        """Launch QEMU (returns at once; the guest boots in the background)."""
        self.dir = tempfile.mkdtemp(prefix=f"guest-{self.name}-")
        self._stdio = open(os.path.join(self.dir, "qemu.log"), "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._stdio,
                                     stderr=subprocess.STDOUT)
        return self

    def wait(self, timeout: float | None = None) -> GuestResult:
        """Wait for the PASS/FAIL line (or QEMU's exit, or ``timeout``: by default the
        script's own limit plus 2 minutes to boot under load) and return the result.

        Raises :class:`GuestError` with the console's tail and QEMU's own output
        when no result line came.
        """
        if self.result is not None:
            return self.result
        if timeout is None:
            timeout = self.script_timeout + BOOT_ALLOWANCE
        deadline = time.monotonic() + timeout
        while True:
            text = self.console
            m = RESULT_RE.search(text)
            if m and text[m.end() : m.end() + 1] in ("\r", "\n"):  # the whole line, not one being written
                break
            if self.proc.poll() is not None:
                m = RESULT_RE.search(self.console)  # the last line may land as QEMU exits
                if m:
                    break
                raise GuestError(f"guest {self.name}: QEMU exited ({self.proc.returncode}) without a result"
                                 + self._tails())
            if time.monotonic() > deadline:
                raise GuestError(f"guest {self.name}: no result within {timeout} s" + self._tails())
            time.sleep(0.1)
        line = m.group(0).strip()
        words = line.split()[1:]
        values = dict(w.split("=", 1) for w in words if "=" in w) if words[:1] != ["exit"] else {}
        try:  # the guest powers off right after the line
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self.result = GuestResult(line.startswith("PASS"), line, values, self.console)
        return self.result

    def _tails(self) -> str:
        try:
            with open(os.path.join(self.dir, "qemu.log"), "rb") as f:
                qemu = f.read().decode(errors="replace")
        except OSError:
            qemu = ""
        return f"\n--- console (tail) ---\n{self.console[-4000:]}\n--- qemu ---\n{qemu[-2000:]}"

    def close(self) -> None:
        """Kill QEMU (this guest's pid only) and remove the guest's directory."""
        for conn in (self._monitor, self._host_line):
            if conn is not None:
                conn.close()
        self._monitor = self._host_line = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            self._stdio.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Guest":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def run_guests(*guests: Guest, timeout: float | None = None) -> list[GuestResult]:
    """Start every guest not started yet, wait for all, and return their results (in order).

    ``timeout`` bounds the whole wait (default: the longest script limit plus the boot allowance).

    The guests are not closed: use them as context managers or call ``close()``.
    """
    for g in guests:
        if g.proc is None:
            g.start()
    if timeout is None:
        timeout = max(g.script_timeout for g in guests) + BOOT_ALLOWANCE
    deadline = time.monotonic() + timeout
    return [g.wait(max(1.0, deadline - time.monotonic())) for g in guests]


# -- live migration --------------------------------------------------------------------------------

#: The console line after which :func:`migrate_midway` migrates (``rounds`` prints it).
PROGRESS = r"^round 2 ok"

#: A guest that sends TCP data to itself through its one NIC, for a back-end in ``5tswap`` mode:
#: 10.0.0.1:A -> 10.0.0.2:B comes back as 10.0.0.2:B -> 10.0.0.1:A, which Linux takes as a
#: simultaneous open to itself, so ``nc`` reads back what it writes. No one answers ARP, hence
#: the static neighbour. Rounds of ``$mib`` MiB, each md5-checked (``rounds``: "round N ok" each,
#: until the host says ``stop`` (:meth:`Guest.tell`), then ``$after`` more; at most ``$max_rounds``).
SELF_TCP_ROUNDS = r"""
ip addr add 10.0.0.1/24 dev eth0
ip link set eth0 up
arp -i eth0 -s 10.0.0.2 02:00:00:00:00:02
tcp_round() {
    dd if=/dev/urandom of=tx bs=1M count=$mib 2>/dev/null
    nc -w 20 10.0.0.2 5001 < tx > rx || fail "round $1: nc failed after $(wc -c < rx) bytes"
    a=$(md5sum < tx | cut -d' ' -f1)
    b=$(md5sum < rx | cut -d' ' -f1)
    [ "$a" = "$b" ] || fail "round $1: sent $a, got back $b ($(wc -c < rx) bytes)"
}
rounds tcp_round $max_rounds $after
result rounds=$ROUNDS
"""

#: A guest serving ``$mib`` MiB of random data on 10.0.0.2 (its one NIC): the same file on every
#: connection to port 5001, its md5 on port 5002; it prints ``serving`` and runs until the host says
#: ``done``.  The peer of :data:`FETCH_ROUNDS`.
FETCH_SERVER = """
ip addr add 10.0.0.2/24 dev eth0
ip link set eth0 up
dd if=/dev/urandom of=data bs=1M count=$mib 2>/dev/null
md5sum < data | cut -d' ' -f1 > sum
(while true; do nc -l -p 5001 < data >/dev/null; done) &
(while true; do nc -l -p 5002 < sum >/dev/null; done) &
echo serving
until host_said done; do :; done
result served=1
"""

#: A guest on 10.0.0.1 fetching :data:`FETCH_SERVER`'s file in rounds (the device writes it into the
#: guest's memory), each md5-checked (``rounds``, as :data:`SELF_TCP_ROUNDS`); a refused or broken
#: connection is tried again (the server's listener is back between two connections, and a migration
#: can break one).
FETCH_ROUNDS = r"""
ip addr add 10.0.0.1/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 10.0.0.2 || fail "no ping reply from the server"
fetch() {  # port file bytes: read from the server until the whole file is here (stdin stays open);
           # a refused or broken connection is tried again
    _n=0
    while [ $_n -lt 20 ]; do
        _n=$((_n + 1))
        sleep 120 | nc 10.0.0.2 $1 > $2 &
        _p=$!
        wait_until 60 sh -c "[ \$(wc -c < $2) -ge $3 ] || ! kill -0 $_p"
        kill $_p 2>/dev/null
        [ $(wc -c < $2) -ge $3 ] && return 0
        sleep 1
    done
    return 1
}
fetch_round() {
    fetch 5002 want 33 || fail "round $1: no md5 from the server"
    fetch 5001 rx $(( mib * 1048576 )) || fail "round $1: got $(wc -c < rx) of $mib MiB"
    [ "$(md5sum < rx | cut -d' ' -f1)" = "$(cat want)" ] || fail "round $1: got $(wc -c < rx) bytes, md5 differs"
}
rounds fetch_round $max_rounds $after
result rounds=$ROUNDS
"""


def fetch_migration(image: "GuestImage", *, server: str, src: str, dst: str, mib: int = 4, max_rounds: int = 40,
                    after: int = 2, **migrate_kw) -> "tuple[GuestResult | None, MigrationResult]":
    """A :data:`FETCH_SERVER` guest on vhost-user socket ``server`` and a :data:`FETCH_ROUNDS` guest on
    ``src``, migrated after its round 2 (:func:`migrate_midway`) to a destination on ``dst``, which does
    ``after`` more rounds once told ``stop``.  Returns the destination's result (None when the migration
    did not complete) and the migration's; both guests are stopped."""
    server_g = Guest(image, FETCH_SERVER, name="server", params={"mib": mib}, nics=[Nic(server)], script_timeout=600)
    src_g = Guest(image, FETCH_ROUNDS, name="client", params={"max_rounds": max_rounds, "after": after, "mib": mib},
                  cpu=MIGRATION_CPU, nics=[Nic(src)], script_timeout=600)
    with server_g, src_g:
        server_g.wait_console("serving", 300)
        dst_g, mig = migrate_midway(src_g, nics=[Nic(dst)], **migrate_kw)
        with dst_g:
            if mig.status != "completed":
                return None, mig
            r = dst_g.wait(600)
            server_g.tell("done")
            server_g.wait(120)
    return r, mig


def _connect_unix(path: str, timeout: float, alive) -> socket.socket:
    """A stream connection to ``path``, retried while QEMU (``alive()``) has not made the socket yet."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if not alive():
                raise GuestError(f"QEMU exited before {path} could be reached") from None
            if time.monotonic() > deadline:
                raise GuestError(f"no QEMU socket {path} within {timeout} s") from None
            time.sleep(0.1)


_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Monitor:
    """QEMU's human monitor (HMP) on a unix socket: :meth:`cmd` sends a line and returns its output."""

    PROMPT = b"(qemu) "

    def __init__(self, path: str, timeout: float = 60.0, alive=lambda: True):
        self.sock = _connect_unix(path, timeout, alive)
        self._buf = b""
        self._until_prompt(timeout)  # the banner

    def _until_prompt(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        while self.PROMPT not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise GuestError(f"no monitor prompt within {timeout} s: {self._buf[-2000:]!r}") from None
            if not chunk:
                raise GuestError(f"the monitor closed: {self._buf[-2000:]!r}")
            self._buf += chunk
        text, _, self._buf = self._buf.partition(self.PROMPT)
        return text.decode(errors="replace")

    def cmd(self, line: str, timeout: float = 60.0) -> str:
        """Run one HMP command; its output without the echoed command line."""
        self.sock.sendall(line.encode() + b"\n")
        text = _ESCAPES.sub("", self._until_prompt(timeout)).replace("\r", "")
        lines = text.split("\n")
        if lines and lines[0].strip().endswith(line):  # readline echoes what it was sent
            lines = lines[1:]
        return "\n".join(lines).strip()

    def close(self) -> None:
        self.sock.close()


@dataclass
class MigrationResult:
    """What the source's ``info migrate`` said at the end: ``status`` (``completed``, ``failed``, ...),
    ``total_ms`` and ``downtime_ms`` (None when not reported), and the whole ``info`` text."""

    status: str
    total_ms: int | None
    downtime_ms: int | None
    info: str


def _ms(key: str, text: str) -> int | None:
    m = re.search(rf"^{key}: (\d+) ms", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def migrate(src: Guest, dst: Guest, *, max_bandwidth: str = "4G", timeout: float = 600.0,
            capabilities: dict | None = None, postcopy: bool = False) -> MigrationResult:
    """Live-migrate ``src`` into ``dst`` (made by :meth:`Guest.destination` and started) over a unix socket.

    Sets ``max-bandwidth`` (QEMU's default of 32 MiB/s would not converge under a
    guest that keeps writing) and the ``capabilities`` given
    (``{"postcopy-ram": "on"}``), runs ``migrate -d unix:...`` on the source's
    monitor and polls ``info migrate`` until the status is ``completed``,
    ``failed`` or ``cancelled``. On success it waits until the destination
    runs. Raises :class:`GuestError` on a timeout; a failed migration is a result.

    ``postcopy``: turn ``postcopy-ram`` on at both ends and, once the precopy
    phase is ``active``, switch to postcopy (``migrate_start_postcopy``): the
    destination then runs while its RAM still arrives, page by page on fault.
    """
    if postcopy:
        capabilities = {**(capabilities or {}), "postcopy-ram": "on"}
    mon = src.monitor()
    dst.monitor()
    deadline = time.monotonic() + 60
    while not os.path.exists(dst.incoming_socket):
        if dst.proc.poll() is not None or time.monotonic() > deadline:
            raise GuestError(f"destination {dst.name} is not listening on {dst.incoming_socket}" + dst._tails())
        time.sleep(0.1)
    for name, value in (capabilities or {}).items():
        for m in (mon, dst.monitor()):
            m.cmd(f"migrate_set_capability {name} {value}")
    out = mon.cmd(f"migrate_set_parameter max-bandwidth {max_bandwidth}")
    if out:
        raise GuestError(f"migrate_set_parameter: {out}")
    out = mon.cmd(f"migrate -d unix:{dst.incoming_socket}")
    if out:
        raise GuestError(f"migrate: {out}")
    deadline = time.monotonic() + timeout
    switch = postcopy
    while True:
        info = mon.cmd("info migrate")
        m = re.search(r"^Migration status: (\S+)", info, re.MULTILINE)
        status = m.group(1) if m else "?"
        if status in ("completed", "failed", "cancelled"):
            break
        if switch and status == "active":
            out = mon.cmd("migrate_start_postcopy")
            if out:
                raise GuestError(f"migrate_start_postcopy: {out}")
            switch = False
            continue
        if time.monotonic() > deadline:
            raise GuestError(f"migration of {src.name} still {status} after {timeout} s:\n{info}")
        time.sleep(0.2)
    result = MigrationResult(status, _ms("total time", info), _ms("downtime", info), info)
    if status == "completed":
        while "running" not in dst.monitor().cmd("info status"):
            if dst.proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError(f"destination {dst.name} does not run after the migration" + dst._tails())
            time.sleep(0.1)
    return result

#: A guest that writes its disk ``/dev/vda`` in rounds: ``$mib`` MiB of random data into slot
#: ``(N - 1) % $slots`` (O_DIRECT), read back at once and compared (``rounds``, as
#: :data:`SELF_TCP_ROUNDS`); at the end every slot is read back again and must hold what was
#: last written there. The result line carries the md5 of each slot written (``s0=... s1=...``).
BLK_ROUNDS = r"""
blk_round() {
    slot=$(( ($1 - 1) % slots ))
    dd if=/dev/urandom of=w bs=1M count=$mib 2>/dev/null
    dd if=w of=/dev/vda bs=1M seek=$((slot * mib)) count=$mib oflag=direct 2>/dev/null || fail "round $1: write"
    md5sum < w | cut -d' ' -f1 > slot$slot
    dd if=/dev/vda of=r bs=1M skip=$((slot * mib)) count=$mib iflag=direct 2>/dev/null || fail "round $1: read"
    cmp -s w r || fail "round $1: slot $slot reads back different data"
}
rounds blk_round $max_rounds $after
s=0
while [ $s -lt $slots ]; do
    if [ -e slot$s ]; then
        got=$(dd if=/dev/vda bs=1M skip=$((s * mib)) count=$mib iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        [ "$got" = "$(cat slot$s)" ] || fail "slot $s holds $got, not $(cat slot$s)"
        result s$s=$got
    fi
    s=$((s + 1))
done
result rounds=$ROUNDS
"""


def migrate_midway(src: Guest, *, nics=None, disks=None, progress: str = PROGRESS, stop: str | None = "stop",
                   **migrate_kw) -> tuple[Guest, MigrationResult]:
    """Start ``src`` (unless started), wait for ``progress`` on its console, start its destination on
    ``nics`` / ``disks`` and migrate (``migrate_kw`` go to :func:`migrate`); once the destination runs,
    :meth:`~Guest.tell` it ``stop``. Returns the started destination (the caller closes it, and
    waits for its result) and the :class:`MigrationResult`."""
    if src.proc is None:
        src.start()
    src.wait_console(progress)
    dst = src.destination(nics=nics, disks=disks).start()
    try:
        result = migrate(src, dst, **migrate_kw)
        if result.status == "completed" and stop:
            dst.tell(stop)
    except BaseException:
        dst.close()
        raise
    return dst, result


@dataclass
class NetMigration:
    """One :func:`net_migration`: the guest's ``result`` (from the destination), the
    ``migration``, the ``show port stats 0`` of the ``source`` and ``destination`` back-ends,
    their ``show port xstats 0`` (``source_x``, ``destination_x``) and the destination's output."""

    result: GuestResult
    migration: MigrationResult
    source: dict
    destination: dict
    source_x: dict
    destination_x: dict
    destination_log: str


def net_migration(image: GuestImage, kind: str, *, packed: bool = False, device: dict | None = None,
                  mib: int = 4, after: int = 2, backend_cpus=None, devargs: str = "",
                  **migrate_kw) -> NetMigration:
    """A guest running :data:`SELF_TCP_ROUNDS` migrated, after its round 2, from one 5tswap
    back-end to another (``kind``: ``"testpmd"`` or ``"dataplane"``, see
    :func:`~dataplane.testing.testpmd.swap_backend`); the host says stop once the destination
    runs, the guest does ``after`` more rounds. Everything started is stopped and removed.

    ``packed`` and ``device`` are the NIC's (:class:`Nic`); ``backend_cpus`` the two back-ends'
    cpus (default: dpdk-testpmd on cpu 1 and 0, ours on lcores 0-1 both); ``devargs`` more
    ``net_vhost`` devargs for both (``",postcopy-support=1"``); ``migrate_kw`` go to :func:`migrate`.
    """
    from dataplane.testing.testpmd import swap_backend

    cpus = backend_cpus or (("1", "0") if kind == "testpmd" else ("0-1", "0-1"))
    d = tempfile.mkdtemp(prefix="mig", dir="/tmp")  # socket paths must stay short
    socks = [os.path.join(d, "a.sock"), os.path.join(d, "b.sock")]
    nic = dict(packed=packed, device=dict(device or {}))
    params = {"mib": mib, "max_rounds": 60, "after": after}
    try:
        with swap_backend(kind, socks[0], cpus=cpus[0], devargs=devargs) as a, \
                swap_backend(kind, socks[1], cpus=cpus[1], devargs=devargs) as b:
            with Guest(image, SELF_TCP_ROUNDS, params=params, nics=[Nic(socks[0], **nic)], name="src",
                       script_timeout=400, cpu=MIGRATION_CPU) as src:
                # xstats while the devices run (dpdk-testpmd has none for a stopped device): the
                # source's before the migration, the destination's after a whole round there, well
                # after the guest announced itself
                src.wait_console(PROGRESS)
                source_x = a.port_xstats(0)
                dst, m = migrate_midway(src, nics=[Nic(socks[1], **nic)], **migrate_kw)
                with dst:
                    if m.status == "completed":
                        dst.wait_console(r"^round \d+ ok")
                    destination_x = b.port_xstats(0)
                    r = dst.wait()
            return NetMigration(r, m, a.port_stats(0), b.port_stats(0), source_x, destination_x, b.output)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class BlkMigration:
    """One :func:`blk_migration`: the guest's ``result`` (from the destination), the
    ``migration``, and the final per-queue counters of the ``source`` and ``destination`` back-ends."""

    result: GuestResult
    migration: MigrationResult
    source: list
    destination: list


def blk_migration(image: GuestImage, file: str, *, packed: bool = False, mib: int = 4, slots: int = 4,
                  after: int = 2) -> BlkMigration:
    """A guest running :data:`BLK_ROUNDS` on a ``dataplane-vhost-blk`` disk serving ``file``,
    migrated after its round 2 to a second ``dataplane-vhost-blk`` serving the same file; the
    host says stop once the destination runs. Everything started is stopped and removed."""
    from dataplane.testing.vhost_blk_proc import BlkProcess

    d = tempfile.mkdtemp(prefix="migb", dir="/tmp")
    socks = [os.path.join(d, "a.sock"), os.path.join(d, "b.sock")]
    disk = {"device": {"packed": "on"}} if packed else {}
    params = {"mib": mib, "slots": slots, "max_rounds": 60, "after": after}
    try:
        with BlkProcess(socks[0], file=file) as a, BlkProcess(socks[1], file=file) as b:
            with Guest(image, BLK_ROUNDS, params=params, disks=[Disk(socks[0], **disk)], name="src",
                       script_timeout=400, cpu=MIGRATION_CPU) as src:
                dst, m = migrate_midway(src, disks=[Disk(socks[1], **disk)])
                with dst:
                    r = dst.wait()
            return BlkMigration(r, m, a.stop()["queues"], b.stop()["queues"])
    finally:
        shutil.rmtree(d, ignore_errors=True)
