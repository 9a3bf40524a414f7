"""DPDK-compatible EAL argument parsing.

``parse_eal_args(argv)`` turns a DPDK-style EAL command line into an
:class:`EalConfig`::

    -l 0-3 --main-lcore 1 --vdev net_vhost0,iface=/tmp/vh0,queues=2 \\
        --no-huge -m 512 --log-level dataplane.vhost:debug -- --app-option

The option syntax and meaning follow DPDK's EAL (see DPDK's "EAL parameters"
guide); the code is our own.  Supported options:

=============================  ==========================================
``-l LIST``                    lcore list: ``0-3``, ``0,2``, ``1-3,5``;
                               lcore i runs on cpu i
``-c MASK``                    hex coremask (``0x3``, ``f``)
``--lcores MAP``               lcore -> cpu set map, e.g.
                               ``1,2@(5-7),(3-5)@(0,2),(0,6),7-8``
``--main-lcore N``             the main lcore (default: the lowest lcore)
``-n N``                       memory channels (recorded)
``--vdev DEVARGS``             virtual device, repeatable
``-a/--allow DEVARGS``         allowed (PCI) device, repeatable
``--no-huge``                  use anonymous memory instead of hugepages
``-m MB``                      memory to preallocate
``--socket-mem MB,MB,..``      memory per NUMA socket
``--huge-dir DIR``             hugetlbfs mount to use
``--file-prefix NAME``         runtime file prefix (default ``dataplane``)
``--in-memory``                create no runtime files
``--log-level [PATTERN:]LVL``  repeatable; level 1-8 or a name
``--log-format console|json``  (ours; DPDK has no such option)
``--no-pci``                   compat: recorded
``--single-file-segments``     compat: recorded
``--force-max-simd-bitwidth``  compat: recorded
``--proc-type primary|auto``   always a primary process here
``--no-telemetry``             compat: there is no telemetry socket
``-v``                         log the version at start-up
``-h/--help``, ``--version``   print the usage or the version and exit
``--``                         the rest goes to the application
=============================  ==========================================

Every error is an :class:`EalArgsError` whose message is one line naming
the offending argument and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dataplane.log import LogLevelError, normalize_level

__all__ = [
    "MAX_CPU",
    "MAX_LCORE",
    "Devargs",
    "EalArgsError",
    "EalConfig",
    "check_affinity",
    "check_eal_config",
    "default_lcores",
    "format_cpuset",
    "lcores_from_ids",
    "parse_coremask",
    "eal_options_help",
    "parse_devargs",
    "parse_eal_args",
    "parse_file_prefix",
    "parse_lcore_id",
    "parse_lcores_list",
    "parse_lcores_map",
    "parse_log_format",
    "parse_log_level_arg",
    "parse_positive_int",
    "parse_simd_bitwidth",
    "parse_socket_mem",
]

#: Lcore ids are ``0 .. MAX_LCORE - 1`` (RTE_MAX_LCORE in Debian's DPDK build).
MAX_LCORE = 128
#: Cpu ids are ``0 .. MAX_CPU - 1`` (CPU_SETSIZE).
MAX_CPU = 1024

LOG_FORMATS = ("console", "json")

LcoreMap = dict[int, frozenset[int]]


class EalArgsError(ValueError):
    """A bad EAL argument; ``str()`` is one line naming it.

    ``field`` names the :class:`EalConfig` field at fault when known, so a
    caller (e.g. the TOML loader) can point at its own spelling of it.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------
# Device arguments.


@dataclass
class Devargs:
    """A DPDK device argument string ``NAME,key=val,key2=val2``.

    A key given without ``=`` (a flag) has the value ``""``.  ``str()``
    gives back the devargs string (a flag and ``key=`` both print as
    ``key``).
    """

    name: str
    args: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [self.name]
        parts += [f"{k}={v}" if v != "" else k for k, v in self.args.items()]
        return ",".join(parts)


def _split_top_level(text: str, what: str) -> list[str]:
    """Split ``text`` on commas that are not inside ``[...]``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for pos, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            if depth == 0:
                raise EalArgsError(f"invalid {what} {text!r}: unbalanced ']' at position {pos}")
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:pos])
            start = pos + 1
    if depth:
        raise EalArgsError(f"invalid {what} {text!r}: unbalanced '[' (missing ']')")
    parts.append(text[start:])
    return parts


def parse_devargs(text: str) -> Devargs:
    """Parse ``NAME,key=val,...``; a comma inside ``[...]`` does not split.

    Bracketed values keep their brackets (``mac=[00:11,22]`` gives
    ``"[00:11,22]"``), as in DPDK's kvargs.  Empty items (``a,,b=1`` or a
    trailing comma) are skipped, as DPDK does.
    """
    parts = _split_top_level(text, "devargs")
    name = parts[0]
    if not name:
        raise EalArgsError(f"invalid devargs {text!r}: empty device name")
    if "=" in name or "[" in name:
        raise EalArgsError(
            f"invalid devargs {text!r}: device name {name!r} must come first and contain no '=' or '['"
        )
    args: dict[str, str] = {}
    for item in parts[1:]:
        if not item:
            continue
        key, _, value = item.partition("=")
        if not key:
            raise EalArgsError(f"invalid devargs {text!r}: empty key in {item!r}")
        if "[" in key:
            raise EalArgsError(f"invalid devargs {text!r}: '[' in key {key!r}")
        if key in args:
            raise EalArgsError(f"invalid devargs {text!r}: duplicate key {key!r}")
        args[key] = value
    return Devargs(name, args)


# --------------------------------------------------------------------------
# Lcore and cpu sets.


def format_cpuset(ids: Iterable[int]) -> str:
    """Format ids compactly with ranges: ``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    ordered = sorted(set(ids))
    runs: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


def _a(kind: str) -> str:
    """``"an lcore"``, ``"a cpu"``."""
    return f"an {kind}" if kind == "lcore" else f"a {kind}"


def _parse_id(token: str, kind: str, limit: int) -> int:
    token = token.strip()
    if not token.isdigit():
        raise ValueError(f"expected {_a(kind)} number, got {token!r}" if token else f"missing {kind} number")
    value = int(token)
    if value >= limit:
        raise ValueError(f"{kind} {value} is out of range 0-{limit - 1}")
    return value


def _parse_id_items(text: str, kind: str, limit: int, *, unique: bool) -> list[int]:
    """Parse ``N``, ``N-M`` items separated by commas into ids in order.

    Raises ``ValueError`` with a reason (no context); callers add it.
    """
    ids: list[int] = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError(f"empty item in {text!r}")
        low_text, dash, high_text = item.partition("-")
        low = _parse_id(low_text, kind, limit)
        high = _parse_id(high_text, kind, limit) if dash else low
        if low > high:
            raise ValueError(f"range {item.strip()} goes backwards (start > end)")
        for value in range(low, high + 1):
            if value in ids:
                if unique:
                    raise ValueError(f"{kind} {value} is listed twice")
                continue
            ids.append(value)
    return ids


def _identity_map(lcores: Iterable[int]) -> LcoreMap:
    return {lcore: frozenset({lcore}) for lcore in sorted(lcores)}


def parse_lcores_list(text: str) -> LcoreMap:
    """Parse ``-l``: ``0-3``, ``0,2``, ``1-3,5``; lcore i runs on cpu i."""
    try:
        return _identity_map(_parse_id_items(text, "lcore", MAX_LCORE, unique=True))
    except ValueError as err:
        raise EalArgsError(f"invalid lcore list {text!r}: {err}", field="lcores") from None


def lcores_from_ids(ids: Iterable[int]) -> LcoreMap:
    """Map already-numeric lcore ids (e.g. a TOML array) to themselves as cpus.

    Same rules as ``-l``: at least one id, each in range, none twice.
    """
    ids = list(ids)
    if not ids:
        raise EalArgsError("expected at least one lcore id", field="lcores")
    seen: set[int] = set()
    for lcore in ids:
        if not 0 <= lcore < MAX_LCORE:
            raise EalArgsError(f"lcore {lcore} is out of range 0-{MAX_LCORE - 1}", field="lcores")
        if lcore in seen:
            raise EalArgsError(f"lcore {lcore} is listed twice", field="lcores")
        seen.add(lcore)
    return _identity_map(ids)


def parse_coremask(text: str) -> LcoreMap:
    """Parse ``-c``: a hex mask with or without ``0x``; lcore i runs on cpu i."""
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits:
        raise EalArgsError(f"invalid coremask {text!r}: no hex digits", field="lcores")
    bad = next((c for c in digits if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise EalArgsError(f"invalid coremask {text!r}: {bad!r} is not a hex digit", field="lcores")
    mask = int(digits, 16)
    if mask == 0:
        raise EalArgsError(f"invalid coremask {text!r}: selects no lcore", field="lcores")
    if mask.bit_length() > MAX_LCORE:
        raise EalArgsError(
            f"invalid coremask {text!r}: lcore {mask.bit_length() - 1} is out of range 0-{MAX_LCORE - 1}",
            field="lcores",
        )
    return _identity_map(bit for bit in range(mask.bit_length()) if mask >> bit & 1)


class _MapParser:
    """Recursive-descent parser for the ``--lcores`` syntax.

    Grammar (blanks allowed around numbers)::

        map     := element (',' element)*
        element := set ['@' set]
        set     := N | N '-' M | '(' item (',' item)* ')'
        item    := N | N '-' M

    Without ``@``, a bare number or range puts each lcore on its own cpu
    (``7-8``: lcore 7 on cpu 7, lcore 8 on cpu 8), while a parenthesised
    group makes its lcores share the group as their cpu set (``(0,6)``:
    lcores 0 and 6 both float on cpus 0 and 6).  With ``@``, every lcore of
    the left set runs on the whole right set.
    """

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def read_set(self, kind: str, limit: int, *, unique: bool) -> tuple[list[int], bool]:
        """Read one set; return its ids and whether it was parenthesised."""
        self.skip_blanks()
        start = self.pos
        if self.peek() == "(":
            close = self.text.find(")", start)
            if close < 0:
                raise ValueError(f"'(' at position {start} has no matching ')'")
            inner = self.text[start + 1 : close]
            if "(" in inner:
                raise ValueError(f"nested '(' in the group at position {start}")
            self.pos = close + 1
            self.skip_blanks()
            return _parse_id_items(inner, kind, limit, unique=unique), True
        while self.pos < len(self.text) and self.text[self.pos] not in ",@()":
            self.pos += 1
        token = self.text[start : self.pos]
        if not token.strip():
            found = f"{self.peek()!r}" if self.peek() else "the end"
            raise ValueError(f"expected {_a(kind)} number or '(' at position {start}, found {found}")
        return _parse_id_items(token, kind, limit, unique=unique), False

    def parse(self) -> LcoreMap:
        mapping: LcoreMap = {}
        while True:
            lcores, grouped = self.read_set("lcore", MAX_LCORE, unique=True)
            if self.peek() == "@":
                self.pos += 1
                cpus, _ = self.read_set("cpu", MAX_CPU, unique=False)
                assignment = {lcore: frozenset(cpus) for lcore in lcores}
            elif grouped:
                assignment = {lcore: frozenset(lcores) for lcore in lcores}
            else:
                assignment = {lcore: frozenset({lcore}) for lcore in lcores}
            for lcore, cpus_of in assignment.items():
                if lcore in mapping:
                    raise ValueError(f"lcore {lcore} is listed twice")
                mapping[lcore] = cpus_of
            if self.pos == len(self.text):
                return dict(sorted(mapping.items()))
            if self.peek() != ",":
                raise ValueError(f"unexpected {self.peek()!r} at position {self.pos}")
            self.pos += 1


def parse_lcores_map(text: str) -> LcoreMap:
    """Parse ``--lcores``: e.g. ``0@0,1@0,(2,3)@1``, ``(0-3)@(0,1)``, ``1,2``.

    Returns lcore id -> cpu set, sorted by lcore id.  See :class:`_MapParser`
    for the grammar and the meaning of groups without ``@``.
    """
    if not text.strip():
        raise EalArgsError(f"invalid lcore map {text!r}: empty", field="lcores")
    try:
        return _MapParser(text.strip()).parse()
    except ValueError as err:
        raise EalArgsError(f"invalid lcore map {text!r}: {err}", field="lcores") from None


def default_lcores() -> LcoreMap:
    """One lcore per cpu of this process's affinity, lcore i on cpu i."""
    return _identity_map(cpu for cpu in os.sched_getaffinity(0) if cpu < MAX_LCORE)


def check_affinity(lcores: Mapping[int, Iterable[int]], allowed_cpus: Iterable[int] | None = None) -> None:
    """Check every cpu of the map is in ``allowed_cpus`` (default: our affinity)."""
    allowed = set(os.sched_getaffinity(0) if allowed_cpus is None else allowed_cpus)
    for lcore in sorted(lcores):
        for cpu in sorted(lcores[lcore]):
            if cpu not in allowed:
                raise EalArgsError(
                    f"lcore {lcore} -> cpu {cpu}: cpu {cpu} is not in the allowed cpus "
                    f"{format_cpuset(allowed) or '(none)'}",
                    field="lcores",
                )


# --------------------------------------------------------------------------
# Scalar option values.  Each accepts the command-line string or, for the
# TOML loader, an already typed value.


def _as_int(value: int | str, expected: str) -> int:
    if isinstance(value, bool):
        raise EalArgsError(f"expected {expected}, got {value!r}")
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text.isdigit():
        raise EalArgsError(f"expected {expected}, got {value!r}")
    return int(text)


def parse_lcore_id(value: int | str) -> int:
    """An lcore id, ``0 .. MAX_LCORE - 1``."""
    lcore = _as_int(value, "an lcore id")
    if not 0 <= lcore < MAX_LCORE:
        raise EalArgsError(f"lcore {lcore} is out of range 0-{MAX_LCORE - 1}")
    return lcore


def parse_positive_int(value: int | str) -> int:
    """An integer >= 1."""
    number = _as_int(value, "a positive integer")
    if number < 1:
        raise EalArgsError(f"expected a positive integer, got {number}")
    return number


def parse_socket_mem(value: str | Iterable[int]) -> list[int]:
    """Megabytes per socket: ``"1024,0"`` or ``[1024, 0]``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    if not items:
        raise EalArgsError("expected at least one amount of memory (MB per socket)")
    return [_as_int(item, "a comma-separated list of megabytes per socket") for item in items]


def parse_file_prefix(value: str) -> str:
    """A runtime file prefix: non-empty, no ``/``."""
    if not value:
        raise EalArgsError("expected a non-empty prefix")
    if "/" in value:
        raise EalArgsError(f"prefix {value!r} must not contain '/'")
    return value


def parse_log_level_arg(value: str) -> tuple[str | None, str]:
    """Parse a ``--log-level`` value into ``(pattern, level_name)``.

    Forms, as in DPDK: ``LEVEL`` (global; pattern ``None``),
    ``PATTERN:LEVEL`` (a glob over logger names, e.g. ``pmd.net.vhost.*``)
    and DPDK's older ``REGEX,LEVEL``.  The level is a number 1-8 or a name
    (or name prefix); it is normalised to the name.
    """
    if "," in value:
        pattern, _, level = value.partition(",")
    elif ":" in value:
        pattern, _, level = value.rpartition(":")
    else:
        pattern, level = None, value
    if pattern is not None and not pattern.strip():
        raise EalArgsError(f"invalid log level {value!r}: empty logger pattern before the level")
    try:
        return (pattern.strip() if pattern is not None else None, normalize_level(level))
    except LogLevelError as err:
        context = f"in {value!r}: " if pattern is not None else ""
        raise EalArgsError(f"{context}{err}") from None


def parse_log_format(value: str) -> str:
    """``console`` or ``json``."""
    if value not in LOG_FORMATS:
        raise EalArgsError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def parse_simd_bitwidth(value: int | str) -> int:
    """A power of two from 64 to 32768, as DPDK's --force-max-simd-bitwidth."""
    width = _as_int(value, "a power of two from 64 to 32768")
    if width < 64 or width > 32768 or width & (width - 1):
        raise EalArgsError(f"expected a power of two from 64 to 32768, got {width}")
    return width


# --------------------------------------------------------------------------
# The configuration.


@dataclass
class EalConfig:
    """The EAL settings, from the command line or a config file's ``[eal]``."""

    lcores: LcoreMap = field(default_factory=default_lcores)
    #: ``None`` at construction means the lowest lcore; always an int after.
    main_lcore: int | None = None
    memory_channels: int | None = None
    vdevs: list[Devargs] = field(default_factory=list)
    allow: list[Devargs] = field(default_factory=list)
    no_huge: bool = False
    memory_mb: int | None = None
    socket_mem: list[int] | None = None
    huge_dir: str | None = None
    file_prefix: str = "dataplane"
    #: No runtime files (no shared config, no hugepage files left behind).
    in_memory: bool = False
    #: ``(pattern, level)`` rules in order; ``(None, level)`` is global.
    log_levels: list[tuple[str | None, str]] = field(default_factory=list)
    log_format: str = "console"
    no_pci: bool = False
    single_file_segments: bool = False
    force_max_simd_bitwidth: int | None = None
    proc_type: str = "primary"
    #: ``-v``: log the version at start-up.
    show_version: bool = False
    no_telemetry: bool = False
    #: ``"help"`` (``-h/--help``) or ``"version"`` (``--version``): print it and exit; nothing else is parsed.
    usage: str | None = None
    app_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.main_lcore is None and self.lcores:
            self.main_lcore = min(self.lcores)

    @property
    def worker_lcores(self) -> list[int]:
        """The lcore ids other than the main lcore, sorted."""
        return sorted(lcore for lcore in self.lcores if lcore != self.main_lcore)


#: How the command line spells each EalConfig field in error messages.
CLI_NAMES: dict[str, str] = {
    "lcores": "--lcores",
    "main_lcore": "--main-lcore",
    "memory_channels": "-n",
    "vdevs": "--vdev",
    "allow": "--allow",
    "no_huge": "--no-huge",
    "memory_mb": "-m",
    "socket_mem": "--socket-mem",
    "huge_dir": "--huge-dir",
    "file_prefix": "--file-prefix",
    "in_memory": "--in-memory",
    "log_levels": "--log-level",
    "log_format": "--log-format",
    "no_pci": "--no-pci",
    "single_file_segments": "--single-file-segments",
    "force_max_simd_bitwidth": "--force-max-simd-bitwidth",
    "proc_type": "--proc-type",
    "show_version": "-v",
    "no_telemetry": "--no-telemetry",
}


def check_eal_config(
    cfg: EalConfig,
    *,
    spell: Callable[[str], str] = CLI_NAMES.__getitem__,
    allowed_cpus: Iterable[int] | None = None,
) -> None:
    """Cross-field checks, shared by the command line and the config file.

    Raises :class:`EalArgsError` whose ``field`` names the offending field;
    the message does not repeat it (callers prefix their own spelling of it)
    but names any other field involved through ``spell(field)``, e.g. ``-m``
    or ``eal.memory_mb``.  ``allowed_cpus`` defaults to our affinity.
    """
    if cfg.main_lcore not in cfg.lcores:
        raise EalArgsError(
            f"lcore {cfg.main_lcore} is not in the lcore set {format_cpuset(cfg.lcores)}",
            field="main_lcore",
        )
    if cfg.memory_mb is not None and cfg.socket_mem is not None:
        raise EalArgsError(
            f"cannot be combined with {spell('memory_mb')} (give one or the other)",
            field="socket_mem",
        )
    if cfg.no_huge and cfg.socket_mem is not None:
        raise EalArgsError(f"cannot be combined with {spell('no_huge')}", field="socket_mem")
    check_affinity(cfg.lcores, allowed_cpus)


# --------------------------------------------------------------------------
# The command line.


class _Builder:
    """Collects option values while scanning argv."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.vdevs: list[Devargs] = []
        self.allow: list[Devargs] = []
        self.log_levels: list[tuple[str | None, str]] = []
        self.lcore_option: str | None = None
        self.usage: str | None = None

    def set_lcores(self, option: str, value: LcoreMap) -> None:
        if self.lcore_option is not None:
            if self.lcore_option == option:
                raise EalArgsError("given twice")
            raise EalArgsError(
                f"cannot be combined with {self.lcore_option} (give only one of -l, -c, --lcores)"
            )
        self.lcore_option = option
        self.values["lcores"] = value


@dataclass(frozen=True)
class _Option:
    """One EAL option: its spellings, what it does with its value, and its line in the usage."""

    names: tuple[str, ...]
    apply: Callable[[_Builder, str, str], None]
    metavar: str = ""  # "" for a flag
    help: str = ""

    @property
    def takes_value(self) -> bool:
        return bool(self.metavar)


def _store(dest: str, convert: Callable[[str], object]) -> Callable[[_Builder, str, str], None]:
    def apply(builder: _Builder, _option: str, value: str) -> None:
        builder.values[dest] = convert(value)

    return apply


def _flag(dest: str) -> Callable[[_Builder, str, str], None]:
    def apply(builder: _Builder, _option: str, _value: str) -> None:
        builder.values[dest] = True

    return apply


def _lcores(convert: Callable[[str], LcoreMap]) -> Callable[[_Builder, str, str], None]:
    def apply(builder: _Builder, option: str, value: str) -> None:
        builder.set_lcores(option, convert(value))

    return apply


def _proc_type(value: str) -> str:
    if value not in ("primary", "auto"):
        raise EalArgsError(f"expected primary or auto (there are no secondary processes), got {value!r}")
    return value


def _usage_request(what: str) -> Callable[[_Builder, str, str], None]:
    def apply(builder: _Builder, _option: str, _value: str) -> None:
        builder.usage = what

    return apply


_OPTIONS: tuple[_Option, ...] = (
    _Option(("-l",), _lcores(parse_lcores_list), "CORELIST",
            "lcores to run on, e.g. 0-3 or 1,3,5-7; lcore i runs on cpu i"),
    _Option(("-c",), _lcores(parse_coremask), "COREMASK", "lcores to run on as a hex bitmask, e.g. 0x3"),
    _Option(("--lcores",), _lcores(parse_lcores_map), "COREMAP",
            "lcore sets mapped to cpu sets, e.g. 1,2@(5-7),(3-5)@(0,2)"),
    _Option(("--main-lcore",), _store("main_lcore", parse_lcore_id), "ID",
            "the lcore that runs the application (default: the lowest)"),
    _Option(("-n",), _store("memory_channels", parse_positive_int), "CHANNELS",
            "memory channels (recorded, no effect)"),
    _Option(("--vdev",), lambda b, _o, v: b.vdevs.append(parse_devargs(v)), "DEVARGS",
            "add a virtual device, e.g. net_vhost0,iface=/tmp/vh0,queues=2 (repeatable)"),
    _Option(("-a", "--allow"), lambda b, _o, v: b.allow.append(parse_devargs(v)), "DEVARGS",
            "allow a device by its bus address, with its devargs (repeatable)"),
    _Option(("--no-huge",), _flag("no_huge"), help="use anonymous shared memory instead of hugepages"),
    _Option(("-m",), _store("memory_mb", parse_positive_int), "MB", "memory to preallocate, in megabytes"),
    _Option(("--socket-mem",), _store("socket_mem", parse_socket_mem), "MB,MB,...",
            "memory to preallocate per NUMA socket, in megabytes"),
    _Option(("--huge-dir",), _store("huge_dir", str), "DIR", "the hugetlbfs mount to use"),
    _Option(("--file-prefix",), _store("file_prefix", parse_file_prefix), "PREFIX",
            "prefix of the runtime directory and hugepage files (default: dataplane)"),
    _Option(("--in-memory",), _flag("in_memory"), help="create no runtime files"),
    _Option(("--proc-type",), _store("proc_type", _proc_type), "TYPE",
            "primary or auto (always a primary process here)"),
    _Option(("--log-level",), lambda b, _o, v: b.log_levels.append(parse_log_level_arg(v)), "[PATTERN:]LEVEL",
            "log level, globally or for loggers matching PATTERN; 1-8 or a name (repeatable)"),
    _Option(("--log-format",), _store("log_format", parse_log_format), "FORMAT",
            "console or json (not a DPDK option)"),
    _Option(("--no-pci",), _flag("no_pci"), help="no PCI bus scan (there is none to do: recorded)"),
    _Option(("--single-file-segments",), _flag("single_file_segments"),
            help="fewer hugepage files (recorded, no effect)"),
    _Option(("--force-max-simd-bitwidth",), _store("force_max_simd_bitwidth", parse_simd_bitwidth), "BITS",
            "cap the SIMD width of vector paths (recorded)"),
    _Option(("--no-telemetry",), _flag("no_telemetry"), help="no telemetry socket (there is none)"),
    _Option(("-v",), _flag("show_version"), help="log the version at start-up"),
    _Option(("-h", "--help"), _usage_request("help"), help="print this usage and exit"),
    _Option(("--version",), _usage_request("version"), help="print the version and exit"),
)


def eal_options_help() -> list[tuple[str, str]]:
    """``(spelling, help)`` of every EAL option, in usage order: ``("-l CORELIST", "...")``."""
    return [(", ".join(opt.names) + (f" {opt.metavar}" if opt.metavar else ""), opt.help) for opt in _OPTIONS]


_BY_NAME: dict[str, _Option] = {name: opt for opt in _OPTIONS for name in opt.names}


def _looks_like_option(arg: str) -> bool:
    return len(arg) > 1 and arg.startswith("-")


def _split_option(arg: str) -> tuple[str, _Option, str | None]:
    """Return (name, option, attached value) for ``--opt[=v]`` or ``-o[v]``."""
    if arg.startswith("--"):
        name, equals, value = arg.partition("=")
        option = _BY_NAME.get(name)
        if option is None:
            raise EalArgsError(f"{name}: unknown option")
        return name, option, value if equals else None
    if _looks_like_option(arg):
        name = arg[:2]
        option = _BY_NAME.get(name)
        if option is None:
            raise EalArgsError(f"{arg}: unknown option")
        return name, option, (arg[2:] or None)
    raise EalArgsError(f"{arg}: unexpected argument (application arguments go after '--')")


def parse_eal_args(argv: Iterable[str], *, allowed_cpus: Iterable[int] | None = None) -> EalConfig:
    """Parse EAL arguments (without the program name) into an :class:`EalConfig`.

    Parsing stops at ``--``; the rest becomes ``app_args``.  ``allowed_cpus``
    overrides ``os.sched_getaffinity(0)`` for the affinity check (tests).
    Raises :class:`EalArgsError`.
    """
    args = list(argv)
    builder = _Builder()
    app_args: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            app_args = args[i:]
            break
        name, option, value = _split_option(arg)
        if option.takes_value:
            if value is None:
                if i >= len(args) or _looks_like_option(args[i]):
                    got = f", got option {args[i]!r}" if i < len(args) else ""
                    raise EalArgsError(f"{name}: missing value{got}")
                value = args[i]
                i += 1
        elif value is not None:
            raise EalArgsError(f"{name}: takes no value, got {value!r}")
        try:
            option.apply(builder, name, value or "")
        except EalArgsError as err:
            raise EalArgsError(f"{name}: {err}", field=err.field) from None
        if builder.usage is not None:  # -h/--help/--version: print and exit, as DPDK does at once
            return EalConfig(usage=builder.usage)

    cfg = EalConfig(
        **builder.values,  # type: ignore[arg-type]
        vdevs=builder.vdevs,
        allow=builder.allow,
        log_levels=builder.log_levels,
        app_args=app_args,
    )
    lcore_option = builder.lcore_option or "--lcores"

    def spell(name: str) -> str:
        return lcore_option if name == "lcores" else CLI_NAMES[name]

    try:
        check_eal_config(cfg, spell=spell, allowed_cpus=allowed_cpus)
    except EalArgsError as err:
        raise EalArgsError(f"{spell(err.field or 'lcores')}: {err}", field=err.field) from None
    return cfg
