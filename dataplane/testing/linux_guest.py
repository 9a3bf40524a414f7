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
    * ``barrier PEER PORT`` — returns once the guest at address PEER called
      ``barrier`` with the same PORT too (so neither powers off while the
      other still needs it), 1 after a minute without the peer.

    The script's exit status decides: 0 prints ``PASS`` plus the ``result``
    values, anything else ``FAIL exit N`` (the console above it shows what
    ran). Kernel panics power off too (``panic=-1`` with ``-no-reboot``).
    Network interfaces are ``eth0``, ``eth1``... in the order of ``nics``;
    disks ``/dev/vda``, ``/dev/vdb``... in the order of ``disks``, after the NICs
    on the PCI bus.

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
    segfaults when the driver enables the device. QEMU connects as the
    vhost-user client; with ``reconnect=N`` it waits for a socket that does
    not exist yet instead of exiting at once.
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
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

__all__ = ["Disk", "Guest", "GuestError", "GuestImage", "GuestResult", "Nic", "QEMU", "guest_image", "run_guests"]

QEMU = shutil.which("qemu-system-x86_64")
BUSYBOX = "/bin/busybox"
KERNEL_PACKAGE = "linux-image-amd64"
MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
CACHE_ENV = "DATAPLANE_GUEST_CACHE"
BOOT_ALLOWANCE = 120.0  # seconds a guest may take to boot and power off, beyond its script
RESULT_RE = re.compile(r"^(PASS|FAIL)\b[^\r\n]*", re.MULTILINE)

_SEQ = itertools.count()


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


def _chardev(cid: str, socket: str, reconnect: int | None) -> list[str]:
    return ["-chardev", f"socket,id={cid},path={socket}" + (f",reconnect={reconnect}" if reconnect else "")]


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
    shared); ``smp`` vCPUs; ``extra`` more QEMU arguments; ``append`` more
    kernel parameters; ``script_timeout`` bounds the script inside the guest.
    ``start()`` launches QEMU, ``wait()`` returns the :class:`GuestResult`, ``close()``
    kills QEMU (by its pid) and removes the guest's files; a context manager
    starts and closes.
    """

    def __init__(self, image: GuestImage, script: str, *, params: dict | None = None, nics=(), disks=(),
                 memory_mb: int = 256, smp: int = 1, name: str = "guest", extra: list[str] = (),
                 append: str = "", script_timeout: int = 180):
        if QEMU is None:
            raise GuestError("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
        self.image, self.script, self.params = image, script, dict(params or {})
        self.nics, self.disks = list(nics), list(disks)
        self.memory_mb, self.smp, self.name, self.extra, self.append = memory_mb, smp, name, list(extra), append
        self.script_timeout = int(script_timeout)
        self.seq = next(_SEQ)
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.result: GuestResult | None = None

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

    def _initrd(self) -> str:
        """The cached initramfs with this boot's script and params appended as a second archive."""
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
            QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", str(self.smp), "-m", f"{self.memory_mb}M",
            "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on", "-numa", "node,memdev=mem",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{self.log_file}",
            "-kernel", self.image.kernel, "-initrd", self._initrd(),
            # no_timer_check: on a loaded host the kernel's early IO-APIC timer check can miss
            # its ticks under TCG and panic ("IO-APIC + timer doesn't work")
            "-append", f"console=ttyS0 panic=-1 loglevel=4 no_timer_check {self.append}".strip(),
        ]
        for i, nic in enumerate(self.nics):
            mac = nic.mac or f"52:54:00:{(self.seq >> 8) & 0xFF:02x}:{self.seq & 0xFF:02x}:{i:02x}"
            netdev = f"vhost-user,id=n{i},chardev=nc{i}"
            dev = f"virtio-net-pci,netdev=n{i},mac={mac},vectors=0"
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
        return cmd + self.extra

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
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            self._stdio.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Guest":
        return self.start()

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
