"""``dataplane vdpa``: the iproute2 ``vdpa`` tool, talking to the management service.

Usage (iproute2's syntax, options and output, byte for byte)::

    dataplane vdpa [ --file-prefix PREFIX ] [ OPTIONS ] OBJECT { COMMAND | help }
        OBJECT := { mgmtdev | dev }
        OPTIONS := { -V[ersion] | -j[son] | -p[retty] | -h[elp] }
    vdpa mgmtdev show [ DEV ]
    vdpa dev show [ DEV ]
    vdpa dev add name NAME mgmtdev MANAGEMENTDEV [ device_features DEVICE_FEATURES ]
                 [ mac MACADDR ] [ mtu MTU ] [ max_vqp MAX_VQ_PAIRS ]
    vdpa dev del DEV
    vdpa dev set name NAME mac MACADDR
    vdpa dev config show [ DEV ]
    vdpa dev vstats show DEV qidx QUEUE_INDEX

``--file-prefix`` (this tool's only addition) picks the runtime directory
whose ``vdpa.sock`` the service listens on (default: the project's default
prefix).  Without a service there, every command prints ``Failed to connect to
vdpa Netlink`` and exits 1, as iproute2 does without the kernel module.

The argument parser keeps iproute2's quirks: prefixes of ``show``, ``list``,
``add``, ``del``, ``config``, ``help``, ``name``, ``mgmtdev`` and ``max_vqp``
are accepted (the first match in iproute2's order wins: ``vdpa dev d`` is
del), ``mac``, ``mtu``, ``qidx``, ``device_features``, ``vstats`` and ``set``
need the exact word, options may follow the command (GNU getopt permutes),
bad numbers fail silently with exit 1, and a lone trailing keyword without its
value is ignored (iproute2's ``NEXT_ARG_OK`` loop).
"""

from __future__ import annotations

import os
import socket
import sys

from .attrs import VdpaAttr, VdpaCmd
from .output import Printer

PROG = "vdpa"
#: the iproute2 release this tool mirrors (``vdpa -V``)
IPROUTE2_VERSION = "6.1.0"

HELP = (
    "Usage: vdpa [ OPTIONS ] OBJECT { COMMAND | help }\n"
    "where  OBJECT := { mgmtdev | dev }\n"
    "       OPTIONS := { -V[ersion] | -n[o-nice-names] | -j[son] | -p[retty] }\n"
)
MGMTDEV_HELP = "Usage: vdpa mgmtdev show [ DEV ]\n"
DEV_HELP = (
    "Usage: vdpa dev show [ DEV ]\n"
    "       vdpa dev add name NAME mgmtdev MANAGEMENTDEV [ device_features DEVICE_FEATURES]\n"
    "                                                    [ mac MACADDR ] [ mtu MTU ]\n"
    "                                                    [ max_vqp MAX_VQ_PAIRS ]\n"
    "       vdpa dev del DEV\n"
    "Usage: vdpa dev config COMMAND [ OPTIONS ]\n"
    "Usage: vdpa dev vstats COMMAND\n"
)
DEV_CONFIG_HELP = "Usage: vdpa dev config show [ DEV ]\n"
DEV_VSTATS_HELP = "Usage: vdpa dev vstats show DEV [qidx QUEUE_INDEX]\n"
CONNECT_FAILED = "Failed to connect to vdpa Netlink\n"

SHORT_OPTS = "Vjpsh"
#: long option -> takes an argument
LONG_OPTS = {"Version": False, "json": False, "pretty": False, "help": False, "file-prefix": True}

# vdpa_argv_parse option bits
O_MGMTDEV_HANDLE = 1 << 0
O_VDEV_MGMTDEV_HANDLE = 1 << 1
O_VDEV_NAME = 1 << 2
O_VDEV_HANDLE = 1 << 3
O_VDEV_MAC = 1 << 4
O_VDEV_MTU = 1 << 5
O_MAX_VQP = 1 << 6
O_QUEUE_INDEX = 1 << 7
O_VDEV_FEATURES = 1 << 8

#: required-argument checks, in iproute2's order
_REQUIRED = [
    (O_VDEV_MGMTDEV_HANDLE, "management device handle not set."),
    (O_VDEV_NAME, "device name is not set."),
    (O_VDEV_HANDLE, "device name is not set."),
    (O_QUEUE_INDEX, "queue index is not set."),
]

ULONG_MAX = 2**64 - 1


class _Fail(Exception):
    """A command failed; whatever had to be said is already on stderr."""


def matches(prefix: str, word: str) -> bool:
    """iproute2 ``matches() == 0``: a non-empty prefix of ``word``."""
    return prefix != "" and word.startswith(prefix)


def _strtoul(arg: str, base: int) -> tuple[int, str] | None:
    """C ``strtoul``/``strtoull``: ``(value, rest)``, or None when no digit was read.
    An out-of-range value comes back as ``ULONG_MAX + 1`` (caller treats as ERANGE)."""
    i, n = 0, len(arg)
    while i < n and arg[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and arg[i] in "+-":
        neg = arg[i] == "-"
        i += 1
    digits = "0123456789abcdef"[:base]
    if base == 16 and arg[i : i + 2].lower() == "0x" and i + 2 < n and arg[i + 2].lower() in digits:
        i += 2
    start = i
    while i < n and arg[i].lower() in digits:
        i += 1
    if i == start:
        return None
    value = int(arg[start:i], base)
    if value > ULONG_MAX:
        return ULONG_MAX + 1, arg[i:]
    if neg:
        value = (-value) & ULONG_MAX
    return value, arg[i:]


def get_unsigned(arg: str, base: int, limit: int) -> int | None:
    """iproute2 ``get_u16``/``get_u32``/``get_u64``: the value, or None on any error."""
    if not arg:
        return None
    parsed = _strtoul(arg, base)
    if parsed is None:
        return None
    value, rest = parsed
    if rest or value > ULONG_MAX or value > limit:
        return None
    return value


def _sscanf_hex(part: str) -> int | None:
    """``sscanf(part, "%x", &int)``: None if no hex digit was converted."""
    parsed = _strtoul(part, 16)
    if parsed is None:
        return None
    value = parsed[0]
    if value > 0xFFFFFFFF:
        return -1
    return value - (1 << 32) if value & 0x80000000 else value


def ll_addr_a2n(arg: str, err) -> bytes | None:
    """iproute2 ``ll_addr_a2n`` for a 6-byte address (missing bytes stay zero)."""
    out = bytearray(6)
    if "." in arg:
        try:
            out[:4] = socket.inet_pton(socket.AF_INET, arg)
        except OSError:
            err(f'"{arg}" is invalid lladdr.\n')
            return None
        return bytes(out)
    for i in range(6):
        part, sep, rest = arg.partition(":")
        temp = _sscanf_hex(part)
        if temp is None or temp < 0 or temp > 255:
            err(f'"{part}" is invalid lladdr.\n')
            return None
        out[i] = temp
        if not sep:
            break
        arg = rest
    return bytes(out)


class _Opts:
    def __init__(self) -> None:
        self.present = 0
        self.mdev_bus: str | None = None
        self.mdev_name: str | None = None
        self.vdev_name: str | None = None
        self.mac = bytes(6)
        self.mtu = 0
        self.max_vqp = 0
        self.queue_idx = 0
        self.device_features = 0

    def attrs(self) -> list:
        """``vdpa_opts_put``: the request attributes, in iproute2's order."""
        out: list = []
        if self.present & (O_MGMTDEV_HANDLE | O_VDEV_MGMTDEV_HANDLE):
            if self.mdev_bus is not None:
                out.append((VdpaAttr.MGMTDEV_BUS_NAME, self.mdev_bus))
            out.append((VdpaAttr.MGMTDEV_DEV_NAME, self.mdev_name))
        if self.present & (O_VDEV_NAME | O_VDEV_HANDLE):
            out.append((VdpaAttr.DEV_NAME, self.vdev_name))
        if self.present & O_VDEV_MAC:
            out.append((VdpaAttr.DEV_NET_CFG_MACADDR, self.mac))
        if self.present & O_VDEV_MTU:
            out.append((VdpaAttr.DEV_NET_CFG_MTU, self.mtu))
        if self.present & O_MAX_VQP:
            out.append((VdpaAttr.DEV_NET_CFG_MAX_VQP, self.max_vqp))
        if self.present & O_QUEUE_INDEX:
            out.append((VdpaAttr.DEV_QUEUE_INDEX, self.queue_idx))
        if self.present & O_VDEV_FEATURES:
            out.append((VdpaAttr.DEV_FEATURES, self.device_features))
        return out


class VdpaTool:
    """One run of the tool; ``run(argv)`` returns the exit code."""

    def __init__(self, stdout=None, stderr=None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.json = False
        self.pretty = False
        self.file_prefix: str | None = None
        self.client = None
        self.p: Printer | None = None

    def err(self, s: str) -> None:
        self.stderr.write(s)

    # ------------------------------------------------------------ options
    def _getopt(self, argv: list[str], args: list[str]):
        """GNU ``getopt_long(argv, "Vjpsh", ...)`` with permutation: yields
        ``(option, value)`` in order, or ``("?", message)``; collects the
        non-option arguments into ``args``."""
        posix = "POSIXLY_CORRECT" in os.environ
        i = 0
        while i < len(argv):
            a = argv[i]
            i += 1
            if a == "--":
                args.extend(argv[i:])
                return
            if a.startswith("--"):
                name, eq, value = a[2:].partition("=")
                if name in LONG_OPTS:
                    found = name
                else:
                    cands = [o for o in LONG_OPTS if name and o.startswith(name)]
                    if len(cands) != 1:
                        yield "?", f"{PROG}: unrecognized option '{a}'\n"
                        return
                    found = cands[0]
                if LONG_OPTS[found]:
                    if not eq:
                        if i >= len(argv):
                            yield "?", f"{PROG}: option '--{found}' requires an argument\n"
                            return
                        value = argv[i]
                        i += 1
                    yield found, value
                elif eq:
                    yield "?", f"{PROG}: option '--{found}' doesn't allow an argument\n"
                    return
                else:
                    yield found, None
            elif a.startswith("-") and a != "-":
                for ch in a[1:]:
                    if ch not in SHORT_OPTS:
                        yield "?", f"{PROG}: invalid option -- '{ch}'\n"
                        return
                    yield ch, None
            else:
                args.append(a)
                if posix:  # POSIXLY_CORRECT: the first non-option ends the options
                    args.extend(argv[i:])
                    return

    def run(self, argv: list[str]) -> int:
        args: list[str] = []
        for opt, value in self._getopt(list(argv), args):
            if opt in ("V", "Version"):
                self.stdout.write(f"vdpa utility, iproute2-{IPROUTE2_VERSION}\n")
                return 0
            if opt in ("j", "json"):
                self.json = True
            elif opt in ("p", "pretty"):
                self.pretty = True
            elif opt in ("h", "help"):
                self.err(HELP)
                return 0
            elif opt == "file-prefix":
                self.file_prefix = value
            else:  # "?" (getopt already complained) or -s, which iproute2 lists but does not handle
                if opt == "?":
                    self.err(value)
                self.err("Unknown option.\n")
                self.err(HELP)
                return 1
        if not self._connect():
            return 1
        self.p = Printer(self.json, self.pretty)
        try:
            rc = self.vdpa_cmd(args)
        except _Fail:
            rc = 1
        finally:
            self.client.close()
            self.stdout.write(self.p.getvalue())
            self.stdout.flush()
        return rc

    def _connect(self) -> bool:
        from dataplane.memory.runtime import RuntimeDir

        from .service import SOCKET_NAME, default_file_prefix
        from .transport import MgmtClient

        try:
            path = RuntimeDir(self.file_prefix or default_file_prefix()).file(SOCKET_NAME)
        except ValueError as exc:
            self.err(f"{PROG}: {exc}\n")
            return False
        try:
            self.client = MgmtClient(path)
        except OSError:
            self.err(CONNECT_FAILED)
            return False
        return True

    # ------------------------------------------------------------ requests
    def sndrcv(self, cmd: VdpaCmd, opts: _Opts | None, dump: bool, callback=None) -> None:
        """Send a request, feed the reply messages to ``callback``, report the ack."""
        try:
            reply = self.client.request(cmd, opts.attrs() if opts else [], dump)
        except (OSError, ValueError) as exc:
            self.err(f"{PROG}: {exc}\n")
            raise _Fail() from None
        for msg in reply.messages:
            if callback is not None:
                callback(msg)
        if reply.extack:
            kind = "Error" if reply.error else "Warning"
            dot = "" if reply.extack.endswith(".") else "."
            self.err(f"{kind}: {reply.extack}{dot}\n")
        if reply.error:
            self.err(f"kernel answers: {os.strerror(-reply.error)}\n")
            raise _Fail()

    # ------------------------------------------------------------ argument parsing
    def _handle(self, value: str | None, opts: _Opts) -> None:
        if value is None:
            self.err('vdpa identification ("mgmtdev_bus_name/mgmtdev_name") expected\n')
            raise _Fail()
        slashes = value.count("/")
        if slashes > 1:
            self.err("Wrong vdpa mgmtdev identification string format\n")
            self.err('Expected "mgmtdev_bus_name/mgmtdev_name"\n')
            self.err('Expected "mgmtdev_name"\n')
            raise _Fail()
        if slashes == 1:
            opts.mdev_bus, opts.mdev_name = value.split("/")
        else:
            opts.mdev_bus, opts.mdev_name = None, value

    def argv_parse(self, args: list[str], required: int, optional: int) -> _Opts:
        """iproute2 ``vdpa_argv_parse``, quirks included."""
        opts = _Opts()
        every = required | optional
        found = 0
        argv = list(args)

        def cur():
            return argv[0] if argv else None

        def fwd():
            del argv[:1]

        if required & O_MGMTDEV_HANDLE:
            self._handle(cur(), opts)
            fwd()
            found |= O_MGMTDEV_HANDLE
        elif required & O_VDEV_HANDLE:
            if not argv:
                self.err("String parameter expected\n")
                raise _Fail()
            opts.vdev_name = cur()
            fwd()
            found |= O_VDEV_HANDLE
        while len(argv) - 1 > 0:  # NEXT_ARG_OK(): a lone last word is never looked at
            word = argv[0]
            if matches(word, "name") and every & O_VDEV_NAME:
                fwd()
                if not argv:
                    self.err("String parameter expected\n")
                    raise _Fail()
                opts.vdev_name = cur()
                fwd()
                found |= O_VDEV_NAME
            elif matches(word, "mgmtdev") and every & O_VDEV_MGMTDEV_HANDLE:
                fwd()
                self._handle(cur(), opts)
                fwd()
                found |= O_VDEV_MGMTDEV_HANDLE
            elif word == "mac" and every & O_VDEV_MAC:
                fwd()
                if not argv:
                    self.err("String parameter expected\n")
                    raise _Fail()
                mac = ll_addr_a2n(cur(), self.err)
                if mac is None:
                    raise _Fail()
                opts.mac = mac
                fwd()
                found |= O_VDEV_MAC
            elif word == "mtu" and every & O_VDEV_MTU:
                fwd()
                opts.mtu = self._number(cur(), 10, 0xFFFF)
                fwd()
                found |= O_VDEV_MTU
            elif matches(word, "max_vqp") and optional & O_MAX_VQP:
                fwd()
                opts.max_vqp = self._number(cur(), 10, 0xFFFF)
                fwd()
                found |= O_MAX_VQP
            elif word == "qidx" and optional & O_QUEUE_INDEX:
                fwd()
                opts.queue_idx = self._number(cur(), 10, 0xFFFFFFFF)
                fwd()
                found |= O_QUEUE_INDEX
            elif word == "device_features" and optional & O_VDEV_FEATURES:
                fwd()
                opts.device_features = self._number(cur(), 16, ULONG_MAX)
                fwd()
                found |= O_VDEV_FEATURES
            else:
                self.err(f'Unknown option "{word}"\n')
                raise _Fail()
        opts.present = found
        for flag, message in _REQUIRED:
            if required & flag and not found & flag:
                self.err(message + "\n")
                raise _Fail()
        if required & ~found:
            self.err("BUG: unknown argument required but not found\n")
            raise _Fail()
        return opts

    def _number(self, arg: str | None, base: int, limit: int) -> int:
        if arg is None:
            self.err("number expected\n")
            raise _Fail()
        value = get_unsigned(arg, base, limit)
        if value is None:  # iproute2 fails here without a word
            raise _Fail()
        return value

    # ------------------------------------------------------------ objects
    def vdpa_cmd(self, args: list[str]) -> int:
        if not args or matches(args[0], "help"):
            self.err(HELP)
            return 0
        if matches(args[0], "mgmtdev"):
            return self.cmd_mgmtdev(args[1:])
        if matches(args[0], "dev"):
            return self.cmd_dev(args[1:])
        self.err(f'Object "{args[0]}" not found\n')
        return 1

    def cmd_mgmtdev(self, args: list[str]) -> int:
        if not args or matches(args[0], "help"):
            self.err(MGMTDEV_HELP)
            return 0
        if matches(args[0], "show") or matches(args[0], "list"):
            return self.mgmtdev_show(args[1:])
        self.err(f'Command "{args[0]}" not found\n')
        return 1

    def cmd_dev(self, args: list[str]) -> int:
        if not args:
            return self.dev_show([])
        word = args[0]
        if matches(word, "help"):
            self.err(DEV_HELP)
            return 0
        if matches(word, "show") or matches(word, "list"):
            return self.dev_show(args[1:])
        if matches(word, "add"):
            return self.dev_add(args[1:])
        if matches(word, "del"):
            return self.dev_del(args[1:])
        if matches(word, "config"):
            return self.cmd_dev_config(args[1:])
        if word == "vstats":
            return self.cmd_dev_vstats(args[1:])
        if word == "set":
            return self.dev_set(args[1:])
        self.err(f'Command "{word}" not found\n')
        return 1

    def cmd_dev_config(self, args: list[str]) -> int:
        if not args:
            return self.config_show([])
        if matches(args[0], "help"):
            self.err(DEV_CONFIG_HELP)
            return 0
        if matches(args[0], "show"):
            return self.config_show(args[1:])
        self.err(f'Command "{args[0]}" not found\n')
        return 1

    def cmd_dev_vstats(self, args: list[str]) -> int:
        if not args:
            self.err(DEV_VSTATS_HELP)
            return 1
        if args[0] == "help":
            self.err(DEV_VSTATS_HELP)
            return 0
        if args[0] == "show":
            return self.vstats_show(args[1:])
        self.err(f'Command "{args[0]}" not found\n')
        return 1

    # ------------------------------------------------------------ commands
    def _section(self, name: str, cmd: VdpaCmd, opts: _Opts | None, callback) -> int:
        self.p.open_object(None)
        self.p.open_object(name)
        try:
            self.sndrcv(cmd, opts, opts is None, callback)
        finally:
            self.p.close_object()
            self.p.close_object()
        return 0

    def mgmtdev_show(self, args: list[str]) -> int:
        opts = self.argv_parse(args, O_MGMTDEV_HANDLE, 0) if args else None
        return self._section("mgmtdev", VdpaCmd.MGMTDEV_GET, opts, self.pr_mgmtdev)

    def dev_show(self, args: list[str]) -> int:
        opts = self.argv_parse(args, O_VDEV_HANDLE, 0) if args else None
        return self._section("dev", VdpaCmd.DEV_GET, opts, self.pr_dev)

    def dev_add(self, args: list[str]) -> int:
        opts = self.argv_parse(
            args,
            O_VDEV_MGMTDEV_HANDLE | O_VDEV_NAME,
            O_VDEV_MAC | O_VDEV_MTU | O_MAX_VQP | O_VDEV_FEATURES,
        )
        self.sndrcv(VdpaCmd.DEV_NEW, opts, False)
        return 0

    def dev_del(self, args: list[str]) -> int:
        opts = self.argv_parse(args, O_VDEV_HANDLE, 0)
        self.sndrcv(VdpaCmd.DEV_DEL, opts, False)
        return 0

    def dev_set(self, args: list[str]) -> int:
        opts = self.argv_parse(args, O_VDEV_NAME, O_VDEV_MAC)
        self.sndrcv(VdpaCmd.DEV_ATTR_SET, opts, False)
        return 0

    def config_show(self, args: list[str]) -> int:
        opts = self.argv_parse(args, O_VDEV_HANDLE, 0) if args else None
        return self._section("config", VdpaCmd.DEV_CONFIG_GET, opts, self.pr_config)

    def vstats_show(self, args: list[str]) -> int:
        if len(args) not in (1, 3):
            self.err(DEV_VSTATS_HELP)
            return 1
        opts = self.argv_parse(args, O_VDEV_HANDLE, O_QUEUE_INDEX)
        self.p.open_object(None)
        self.p.open_object("vstats")
        try:
            self.sndrcv(VdpaCmd.DEV_VSTATS_GET, opts, False, self.pr_vstats)
        finally:
            self.p.close_object()
            self.p.close_object()
        return 0

    # ------------------------------------------------------------ printing
    @staticmethod
    def _tb(msg) -> dict:
        return {attr: value for attr, value in msg.attrs}

    def _mgmtdev_handle(self, tb) -> str:
        name = tb[VdpaAttr.MGMTDEV_DEV_NAME]
        bus = tb.get(VdpaAttr.MGMTDEV_BUS_NAME)
        return f"{bus}/{name}" if bus is not None else name

    def pr_mgmtdev(self, msg) -> None:
        tb = self._tb(msg)
        if VdpaAttr.MGMTDEV_DEV_NAME not in tb:
            return
        p = self.p
        p.handle_start(self._mgmtdev_handle(tb))
        classes = 0
        if VdpaAttr.MGMTDEV_SUPPORTED_CLASSES in tb:
            classes = tb[VdpaAttr.MGMTDEV_SUPPORTED_CLASSES]
            p.array_start("supported_classes")
            for i in range(1, 64):
                if classes >> i & 1:
                    name = {1: "net", 2: "block"}.get(i, "< unknown class >")
                    p.string(None, f" {name}", name)
            p.array_end()
        if VdpaAttr.DEV_MGMTDEV_MAX_VQS in tb:
            p.nl()
            n = tb[VdpaAttr.DEV_MGMTDEV_MAX_VQS]
            p.uint("max_supported_vqs", f"  max_supported_vqs {_c_int(n)}", n)
        if VdpaAttr.DEV_SUPPORTED_FEATURES in tb:
            p.features("dev_features", tb[VdpaAttr.DEV_SUPPORTED_FEATURES], 1 if classes & (1 << 1) else 0)
        p.handle_end()

    def pr_dev(self, msg) -> None:
        tb = self._tb(msg)
        if not all(a in tb for a in (VdpaAttr.MGMTDEV_DEV_NAME, VdpaAttr.DEV_NAME, VdpaAttr.DEV_ID)):
            return
        p = self.p
        kind = {1: "network", 2: "block"}.get(tb[VdpaAttr.DEV_ID], "<unknown type>")
        mgmtdev = self._mgmtdev_handle(tb)
        p.handle_start(tb[VdpaAttr.DEV_NAME])
        p.string("type", f"type {kind}", kind)
        p.string("mgmtdev", f" mgmtdev {mgmtdev}", mgmtdev)
        for attr, key in (
            (VdpaAttr.DEV_VENDOR_ID, "vendor_id"),
            (VdpaAttr.DEV_MAX_VQS, "max_vqs"),
            (VdpaAttr.DEV_MAX_VQ_SIZE, "max_vq_size"),
        ):
            if attr in tb:
                p.uint(key, f" {key} {tb[attr]}", tb[attr])
        p.handle_end()

    def pr_config(self, msg) -> None:
        tb = self._tb(msg)
        if VdpaAttr.DEV_NAME not in tb or VdpaAttr.DEV_ID not in tb:
            return
        p = self.p
        p.handle_start(tb[VdpaAttr.DEV_NAME])
        if tb[VdpaAttr.DEV_ID] == 1:
            if VdpaAttr.DEV_NET_CFG_MACADDR in tb:
                mac = ":".join(f"{b:02x}" for b in tb[VdpaAttr.DEV_NET_CFG_MACADDR])
                p.string("mac", f"mac {mac} ", mac)
            if VdpaAttr.DEV_NET_STATUS in tb:
                status = tb[VdpaAttr.DEV_NET_STATUS]
                link = "up" if status & 1 else "down"
                announce = bool(status & 2)
                p.string("link ", f"link {link} ", link)
                p.bool("link_announce ", f"link_announce {'true' if announce else 'false'} ", announce)
            if VdpaAttr.DEV_NET_CFG_MAX_VQP in tb:
                v = tb[VdpaAttr.DEV_NET_CFG_MAX_VQP]
                p.uint("max_vq_pairs", f"max_vq_pairs {v} ", v)
            if VdpaAttr.DEV_NET_CFG_MTU in tb:
                v = tb[VdpaAttr.DEV_NET_CFG_MTU]
                p.uint("mtu", f"mtu {v} ", v)
            if VdpaAttr.DEV_NEGOTIATED_FEATURES in tb:
                p.features("negotiated_features", tb[VdpaAttr.DEV_NEGOTIATED_FEATURES], tb[VdpaAttr.DEV_ID] & 0xFFFF)
        p.handle_end()

    def pr_vstats(self, msg) -> None:
        tb = self._tb(msg)
        if VdpaAttr.DEV_NAME not in tb or VdpaAttr.DEV_ID not in tb:
            return
        p = self.p
        p.handle_start(tb[VdpaAttr.DEV_NAME])
        if tb[VdpaAttr.DEV_ID] == 1:
            max_vqp = 0
            features = 0
            name = None
            for attr, value in msg.attrs:  # in message order, like iproute2
                if attr == VdpaAttr.DEV_NET_CFG_MAX_VQP:
                    max_vqp = value & 0xFFFF
                elif attr == VdpaAttr.DEV_NEGOTIATED_FEATURES:
                    features = value
                elif attr == VdpaAttr.DEV_QUEUE_INDEX:
                    qidx = value & 0xFFFF  # read as a u16
                    if features & (1 << 17) and qidx == 2 * max_vqp:
                        kind = "control_vq"
                    else:
                        kind = "tx" if qidx & 1 else "rx"
                    p.string("queue_type", f"queue_type {kind} ", kind)
                elif attr == VdpaAttr.DEV_VENDOR_ATTR_NAME:
                    if len(value) > 200:  # MAX_KEY_LEN: iproute2 stops printing this device
                        break
                    name = value
                elif attr == VdpaAttr.DEV_VENDOR_ATTR_VALUE and name is not None:
                    p.uint(name, f"{name} {value} ", value)
        p.handle_end()


def _c_int(n: int) -> int:
    """A u32 printed with ``%d``."""
    return n - (1 << 32) if n & 0x80000000 else n


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``dataplane vdpa ARGS`` (``argv`` without the ``vdpa`` word).

    ``[--file-prefix P] follow-guest-mac ...`` is not iproute2's: it runs the agent of
    :mod:`.guest_mac`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "follow-guest-mac" in argv:
        i = argv.index("follow-guest-mac")
        pre = argv[:i]
        if not pre or (len(pre) == 2 and pre[0] == "--file-prefix"):
            from .guest_mac import main as follow_main

            return follow_main(argv[i + 1:], pre[1] if pre else None)
    return VdpaTool().run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
