"""``-a BDF,class=vdpa[,key=value...]``: the mlx5 classes and the vDPA driver's devargs (facts §3.1).

Two layers read the devargs, as in DPDK 22.11:

* the mlx5 common bus reads ``class``: class names joined by ``:`` (``eth`` -- also spelled
  ``net`` --, ``vdpa``, ``regex``, ``compress``, ``crypto``).  No ``class`` (or an empty one)
  means ``eth``.  An unknown name is an error ("Invalid mlx5 class options: %s."), and so is
  ``eth`` together with ``vdpa`` ("Unsupported mlx5 classes combination.": the common bus
  refuses that pair).  The device is this driver's only when ``vdpa`` is among the classes;
  otherwise :class:`NotOurDevice` (another class driver's business).
* the vDPA driver reads its keys (:data:`VDPA_KEYS`) in the order given, each value with C's
  ``strtoul(val, NULL, 0)`` (:func:`strtoul`: leading blanks, a sign, ``0x`` hex or ``0``
  octal, digits up to the first that does not fit, no digits = 0, a negative number wraps
  modulo 2**64), then stores it with the C cast of its field:

  ====================  ==================  ===========================================
  key                   stored as           default, documented range, warning
  ====================  ==================  ===========================================
  event_mode            int                 1 (fixed timer); > 2: "Invalid event_mode %s."
                                            and the value is ignored
  event_us              u32                 0; in mode 0 a final 0 becomes 1 (µs)
  no_traffic_time       u32                 16
  event_core            int                 -1 (the main lcore's cpuset); a value >= the
                                            online cores: "Invalid event_core %s.", ignored
  max_conf_threads      (PMD-global)        0; 1..256; the first device that sets it wins,
                                            above 256 it is clamped (warning)
  hw_latency_mode       u32                 0 (0 HW default, 1, 2)
  hw_max_latency_us     u32                 0 (1..4095 documented; the virtq field is 12 bits)
  hw_max_pending_comp   u32                 0 (1..65535 documented; the field is 16 bits)
  queue_size            u16                 0 (1..1024 documented)
  queues                u16                 0 (1..128 documented)
  ====================  ==================  ===========================================

  The driver does no range check of its own beyond those warnings (the documented ranges
  are what the virtq fields hold: :meth:`Mlx5VdpaDevargs.virtq_moderation` gives the
  values masked to the field widths).  ``queue_size`` and ``queues`` go together: one
  without the other resets both to 0 with "Please provide both queue_size and queues.".

* A value that overflows ``unsigned long`` (ERANGE) logs ``%s: "%s" is an invalid integer.``
  and stops the processing: the keys after it are not read (DPDK's handler returns an error
  and its key loop stops; the driver ignores that error).
* A key that is neither the driver's nor the common bus's (:data:`COMMON_KEYS`) logs
  "Invalid key %s." (facts §3.1).  Note: DPDK 22.11's common bus then fails the probe with
  ``Key "%s" is unknown for the provided classes.`` (EINVAL) for every key no class driver
  used -- the unknown key and a key whose value overflowed; ``strict=True`` does that.

Warnings are structlog events on ``dataplane.vdpa.mlx5``; the result is a
:class:`Mlx5VdpaDevargs`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from dataplane import log as dplog

__all__ = [
    "MLX5_CLASSES",
    "VDPA_KEYS",
    "COMMON_KEYS",
    "EVENT_MODE_DYNAMIC_TIMER",
    "EVENT_MODE_FIXED_TIMER",
    "EVENT_MODE_ONLY_INTERRUPT",
    "DEFAULT_NO_TRAFFIC_MAX",
    "DEFAULT_TIMER_STEP_US",
    "MAX_CONF_THREADS",
    "DevargsError",
    "NotOurDevice",
    "ConfThreads",
    "CONF_THREADS",
    "Mlx5VdpaDevargs",
    "strtoul",
    "parse_classes",
    "parse_devargs",
]

log = dplog.get_logger("dataplane.vdpa.mlx5")

#: class name -> class bit (DPDK's MLX5_CLASS_*); "net" is kept as another name for eth.
MLX5_CLASSES = {"eth": 1 << 0, "net": 1 << 0, "vdpa": 1 << 1, "regex": 1 << 2, "compress": 1 << 3,
                "crypto": 1 << 4}
_ETH, _VDPA = MLX5_CLASSES["eth"], MLX5_CLASSES["vdpa"]
#: class pairs the common bus refuses.
_INVALID_COMBINATIONS = (_ETH | _VDPA,)

#: The keys the vDPA driver reads.
VDPA_KEYS = ("event_core", "event_mode", "event_us", "hw_latency_mode", "hw_max_latency_us", "hw_max_pending_comp",
             "no_traffic_time", "queue_size", "queues", "max_conf_threads")
#: Keys the mlx5 common bus consumes itself (``class``, ``driver`` and its memory/doorbell options).
COMMON_KEYS = ("class", "driver", "mr_ext_memseg_en", "mr_mempool_reg_en", "sys_mem_en", "sq_db_nc", "tx_db_nc",
               "device_fd", "pd_handle")

EVENT_MODE_DYNAMIC_TIMER = 0
EVENT_MODE_FIXED_TIMER = 1
EVENT_MODE_ONLY_INTERRUPT = 2
#: no_traffic_time default: empty polls before the event thread arms the CQs and blocks.
DEFAULT_NO_TRAFFIC_MAX = 16
#: event_us in dynamic-timer mode when not given (or 0).
DEFAULT_TIMER_STEP_US = 1
#: max_conf_threads is clamped to this.
MAX_CONF_THREADS = 256

_ULONG_MAX = (1 << 64) - 1


class DevargsError(ValueError):
    """The devargs make the probe fail (DPDK: EINVAL)."""


class NotOurDevice(Exception):
    """``vdpa`` is not among the classes: the function is left to another mlx5 class driver."""


def strtoul(text: str) -> tuple[int, bool]:
    """C's ``strtoul(text, NULL, 0)`` on an LP64 machine: ``(value, overflowed)``.

    Overflow (ERANGE) gives ``(ULONG_MAX, True)``; text without digits gives ``(0, False)``.
    """
    s = text.lstrip(" \t\n\v\f\r")
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x" and s[2:3] and s[2] in "0123456789abcdefABCDEF":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    for ch in s:
        d = digits.find(ch.lower())
        if d < 0:
            break
        n = n * base + d
    if n > _ULONG_MAX:
        return _ULONG_MAX, True
    return ((-n) & _ULONG_MAX if neg else n), False


def _c_int(v: int) -> int:
    """``(int)`` of an unsigned long: the low 32 bits, signed."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


class ConfThreads:
    """The PMD-global ``max_conf_threads`` (DPDK's ``conf_thread_mng``): the first device that asks sets it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.initializer: object | None = None
        self.max_thrds = 0

    def request(self, owner: object, value: str, n: int) -> None:
        with self._lock:
            if self.initializer is None:
                self.initializer = owner
                if n > MAX_CONF_THREADS:
                    log.warning(f"Invalid max_conf_threads {value} and set max_conf_threads to {MAX_CONF_THREADS}")
                    n = MAX_CONF_THREADS
                self.max_thrds = n
            elif n != self.max_thrds:
                log.warning("max_conf_threads is PMD argument and not per device, only the first device "
                            f"configuration set it, current value is {self.max_thrds} and will not be changed "
                            f"to {_c_int(n)}.")

    def reset(self) -> None:
        """Forget the setting (the last device using configuration threads went away)."""
        with self._lock:
            self.initializer = None
            self.max_thrds = 0


#: The process's one setting, used when :func:`parse_devargs` is given none.
CONF_THREADS = ConfThreads()


@dataclass
class Mlx5VdpaDevargs:
    """What the driver keeps of the devargs (DPDK's priv fields after ``mlx5_vdpa_config_get``)."""

    classes: frozenset = frozenset({"vdpa"})
    event_mode: int = EVENT_MODE_FIXED_TIMER
    event_us: int = 0
    no_traffic_max: int = DEFAULT_NO_TRAFFIC_MAX
    event_core: int = -1
    use_c_thread: bool = False
    hw_latency_mode: int = 0
    hw_max_latency_us: int = 0
    hw_max_pending_comp: int = 0
    queue_size: int = 0
    queues: int = 0
    #: keys logged as "Invalid key" (left for the common bus to judge)
    unknown_keys: list = field(default_factory=list)
    #: keys no layer used (an unknown key, or one whose value overflowed): DPDK's common bus fails on the first
    unused_keys: list = field(default_factory=list)

    def virtq_moderation(self) -> dict:
        """The CQ moderation fields as a virtq holds them (2, 12 and 16 bits wide)."""
        return dict(hw_latency_mode=self.hw_latency_mode & 0x3, hw_max_latency_us=self.hw_max_latency_us & 0xFFF,
                    hw_max_pending_comp=self.hw_max_pending_comp & 0xFFFF)


def parse_classes(value: str | None) -> int:
    """The class bits of a ``class=`` value (0 when absent or empty: the bus then means eth)."""
    if value is None:
        return 0
    bits = 0
    for name in (p for p in value.split(":") if p):
        if name not in MLX5_CLASSES:
            log.error(f"Invalid mlx5 class options: {value}.")
            raise DevargsError(f"Invalid mlx5 class options: {value}.")
        bits |= MLX5_CLASSES[name]
    return bits


def _class_names(bits: int) -> frozenset:
    return frozenset(n for n, b in MLX5_CLASSES.items() if bits & b and n != "net")


def parse_devargs(args: dict[str, str] | list[tuple[str, str]], *, online_cores: int | None = None,
                  conf_threads: ConfThreads | None = None, strict: bool = False) -> Mlx5VdpaDevargs:
    """Parse one function's devargs (``key=value`` pairs, in the order given).

    NotOurDevice when ``vdpa`` is not among the classes; DevargsError for a bad class or the
    eth+vdpa pair (and, with ``strict``, for a key no layer used).  ``online_cores`` defaults
    to ``os.cpu_count()`` (DPDK: ``sysconf(_SC_NPROCESSORS_ONLN)``).
    """
    pairs = list(args.items()) if isinstance(args, dict) else list(args)
    class_values = [v for k, v in pairs if k == "class"]
    bits = parse_classes(class_values[-1] if class_values else None) or _ETH
    for bad in _INVALID_COMBINATIONS:
        if bits & bad == bad:
            log.error("Unsupported mlx5 classes combination.", classes=sorted(_class_names(bits)))
            raise DevargsError("Unsupported mlx5 classes combination.")
    if not bits & _VDPA:
        raise NotOurDevice(f"class {':'.join(sorted(_class_names(bits)))}: not the vdpa class")
    cores = online_cores if online_cores is not None else (os.cpu_count() or 1)
    threads = conf_threads if conf_threads is not None else CONF_THREADS
    out = Mlx5VdpaDevargs(classes=_class_names(bits))
    for i, (key, value) in enumerate(pairs):
        if key in COMMON_KEYS:
            continue
        if key not in VDPA_KEYS:
            log.warning(f"Invalid key {key}.")
            out.unknown_keys.append(key)
            out.unused_keys.append(key)
            continue
        n, overflow = strtoul(value)
        if overflow:
            log.warning(f'{key}: "{value}" is an invalid integer.')
            out.unused_keys.append(key)
            # the key loop stops here; the remaining keys are not read by the driver
            out.unused_keys.extend(k for k, _ in pairs[i + 1:] if k in VDPA_KEYS)
            break
        if key == "event_mode":
            if n <= EVENT_MODE_ONLY_INTERRUPT:
                out.event_mode = n
            else:
                log.warning(f"Invalid event_mode {value}.")
        elif key == "event_us":
            out.event_us = n & 0xFFFFFFFF
        elif key == "no_traffic_time":
            out.no_traffic_max = n & 0xFFFFFFFF
        elif key == "event_core":
            if n >= cores:
                log.warning(f"Invalid event_core {value}.")
            else:
                out.event_core = _c_int(n)
        elif key == "max_conf_threads":
            out.use_c_thread = n != 0
            if n:
                threads.request(out, value, n)
        elif key == "hw_latency_mode":
            out.hw_latency_mode = n & 0xFFFFFFFF
        elif key == "hw_max_latency_us":
            out.hw_max_latency_us = n & 0xFFFFFFFF
        elif key == "hw_max_pending_comp":
            out.hw_max_pending_comp = n & 0xFFFFFFFF
        elif key == "queue_size":
            out.queue_size = n & 0xFFFF
        elif key == "queues":
            out.queues = n & 0xFFFF
    if not out.event_us and out.event_mode == EVENT_MODE_DYNAMIC_TIMER:
        out.event_us = DEFAULT_TIMER_STEP_US
    if bool(out.queue_size) != bool(out.queues):
        out.queue_size = out.queues = 0
        log.warning("Please provide both queue_size and queues.")
    if strict and out.unused_keys:
        key = out.unused_keys[0]
        log.error(f'Key "{key}" is unknown for the provided classes.')
        raise DevargsError(f'Key "{key}" is unknown for the provided classes.')
    return out
