"""TOML configuration: schema-as-data, validation with line-precise errors.

A config file mirrors the command line::

    [eal]
    lcores = "0@0,1@1"          # --lcores syntax, or a list of ids: [0, 1]
    main_lcore = 0
    vdev = ["net_vhost0,iface=/tmp/vh0,queues=2"]
    no_huge = true
    memory_mb = 512
    log_level = ["info", "dataplane.vhost:debug"]
    log_format = "json"

:func:`load_config` returns a :class:`Config`.  Every problem is a
:class:`ConfigError` whose message is one line::

    dp.toml:4: eal.memory_mb: expected an integer, got "abc"

The schema is data: a :class:`Schema` of :class:`Table` s, each a tuple of
:class:`Field` s (key, TOML type, validator, default, doc).  A later table
(``[[port]]``, ``[forward]``) is one more ``Table`` in :data:`SCHEMA` and
one more attribute of :class:`Config`.  The ``[eal]`` validators are the
command-line parsers of :mod:`dataplane.lcores.eal_args`, so a setting
means the same in both places.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane.memory.mbuf import RTE_PKTMBUF_HEADROOM
from dataplane.lcores.eal_args import (
    EalConfig,
    check_eal_config,
    lcores_from_ids,
    parse_devargs,
    parse_file_prefix,
    parse_lcore_id,
    parse_lcores_map,
    parse_log_format,
    parse_log_level_arg,
    parse_positive_int,
    parse_simd_bitwidth,
    parse_socket_mem,
)

__all__ = [
    "BOOL",
    "INT",
    "MISSING",
    "SCHEMA",
    "STR",
    "Config",
    "ConfigError",
    "EAL_TABLE",
    "PORT_TABLE",
    "FORWARD_TABLE",
    "FORWARD_MODES",
    "PORT_KINDS",
    "PortConfig",
    "ForwardConfig",
    "Field",
    "Kind",
    "ListOf",
    "OneOf",
    "Scalar",
    "Schema",
    "Table",
    "each",
    "load_config",
]

PathPart = str | int  # a key, or an index into an array


class ConfigError(ValueError):
    """A bad config file; ``str()`` is ``<file>:<line>: <key path>: <problem>``.

    ``line`` is ``None`` (and left out of the message) when the key's line
    cannot be found; ``path`` is ``None`` for file-level problems.
    """

    def __init__(self, filename: str, line: int | None, path: str | None, problem: str):
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")
        self.filename = filename
        self.line = line
        self.path = path
        self.problem = problem


class _Problem(Exception):
    """A problem found below a key; ``parts`` is the path below that key."""

    def __init__(self, message: str, parts: tuple[PathPart, ...] = ()):
        super().__init__(message)
        self.parts = parts


def _show(value: Any) -> str:
    """Render a value the way TOML would write it, shortened."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------
# TOML value types.


class Kind:
    """A TOML value type: a description for messages and a deep check."""

    description: str  # "an integer"
    plural: str  # "integers"

    def matches(self, value: Any) -> bool:
        """Shallow test: is ``value`` of this kind at the top level?"""
        raise NotImplementedError

    def check(self, value: Any) -> None:
        """Raise :class:`_Problem` unless ``value`` is of this kind, deeply."""
        if not self.matches(value):
            raise _Problem(f"expected {self.description}, got {_show(value)}")


@dataclass(frozen=True)
class Scalar(Kind):
    description: str
    plural: str
    pytype: type

    def matches(self, value: Any) -> bool:
        # bool is an int in Python but not in TOML.
        return isinstance(value, self.pytype) and (self.pytype is bool or not isinstance(value, bool))


@dataclass(frozen=True)
class ListOf(Kind):
    """A TOML array whose items are all of ``item``."""

    item: Kind

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"an array of {self.item.plural}"

    @property
    def plural(self) -> str:  # type: ignore[override]
        return f"arrays of {self.item.plural}"

    def matches(self, value: Any) -> bool:
        return isinstance(value, list)

    def check(self, value: Any) -> None:
        super().check(value)
        for index, item in enumerate(value):
            try:
                self.item.check(item)
            except _Problem as problem:
                raise _Problem(str(problem), (index, *problem.parts)) from None


@dataclass(frozen=True)
class OneOf(Kind):
    """Any of ``kinds``; the first whose shape matches is checked deeply."""

    kinds: tuple[Kind, ...]

    def __init__(self, *kinds: Kind):
        object.__setattr__(self, "kinds", kinds)

    @property
    def description(self) -> str:  # type: ignore[override]
        return " or ".join(kind.description for kind in self.kinds)

    @property
    def plural(self) -> str:  # type: ignore[override]
        return " or ".join(kind.plural for kind in self.kinds)

    def matches(self, value: Any) -> bool:
        return any(kind.matches(value) for kind in self.kinds)

    def check(self, value: Any) -> None:
        for kind in self.kinds:
            if kind.matches(value):
                kind.check(value)
                return
        super().check(value)


INT = Scalar("an integer", "integers", int)
STR = Scalar("a string", "strings", str)
BOOL = Scalar("a boolean (true or false)", "booleans", bool)


def each(validator: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """Lift an item validator to arrays; errors name the item's index."""

    def validate(values: list[Any]) -> list[Any]:
        out = []
        for index, value in enumerate(values):
            try:
                out.append(validator(value))
            except ValueError as err:
                raise _Problem(str(err), (index,)) from None
        return out

    return validate


# --------------------------------------------------------------------------
# Schema.


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A field default meaning "leave it to the table's factory".
MISSING: Any = _Missing()


@dataclass(frozen=True)
class Field:
    """One key of a table.

    Args:
        name: the TOML key.
        type: its TOML :class:`Kind`; checked before the validator runs.
        validator: converts the checked value to the stored one; raises
            ``ValueError`` with a one-line reason.  ``None`` keeps the value.
        default: stored when the key is absent; :data:`MISSING` leaves it
            to the factory's own default.
        doc: one line for users.
        dest: the factory's argument name, if not ``name``.
        required: the key must be given.
    """

    name: str
    type: Kind
    validator: Callable[[Any], Any] | None = None
    default: Any = MISSING
    doc: str = ""
    dest: str | None = None
    required: bool = False

    @property
    def target(self) -> str:
        return self.dest or self.name


@dataclass(frozen=True)
class Table:
    """A TOML table (``[name]``) or, with ``array=True``, array of tables.

    ``factory(**values)`` builds the object from the validated fields;
    ``check(obj, spell)`` then runs cross-field checks and raises a
    ``ValueError`` whose ``field`` attribute is the offending field's
    ``dest`` (``spell(dest)`` gives the key path to mention another field).
    """

    name: str
    fields: tuple[Field, ...]
    factory: Callable[..., Any]
    check: Callable[[Any, Callable[[str], str]], None] | None = None
    array: bool = False
    doc: str = ""

    def field_by_key(self, key: str) -> Field | None:
        return next((f for f in self.fields if f.name == key), None)

    def field_by_dest(self, dest: str) -> Field | None:
        return next((f for f in self.fields if f.target == dest), None)

    @property
    def keys(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class Schema:
    """The top-level tables and the factory of the whole config."""

    tables: tuple[Table, ...]
    factory: Callable[..., Any]

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


# --------------------------------------------------------------------------
# Finding the line of a key (tomllib reports no positions).

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")


def _split_dotted(name: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in name.split("."))


class _Locator:
    """Finds the line of a table header or key by scanning the source text."""

    def __init__(self, text: str):
        self.lines = text.split("\n")  # as tomllib counts lines
        # (0-based line, is_array_header, dotted name)
        self.headers: list[tuple[int, bool, tuple[str, ...]]] = []
        for number, line in enumerate(self.lines):
            match = _HEADER.match(line)
            if match:
                self.headers.append((number, match.group(1) == "[[", _split_dotted(match.group(2))))

    def _section(self, table: str, index: int | None) -> tuple[int, int] | None:
        """Line range (header, end) of ``[table]`` or the index-th ``[[table]]``."""
        seen = 0
        for position, (number, is_array, name) in enumerate(self.headers):
            if name != (table,):
                continue
            if index is None or (is_array and seen == index):
                end = self.headers[position + 1][0] if position + 1 < len(self.headers) else len(self.lines)
                return number, end
            seen += is_array
        return None

    def _find_key(self, key: str, start: int, end: int, prefix: str = "") -> int | None:
        pattern = re.compile(rf"^\s*{prefix}(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*[=.]")
        for number in range(start, end):
            if pattern.match(self.lines[number]):
                return number
        return None

    def line_of(self, parts: Sequence[PathPart]) -> int | None:
        """1-based line of the key at ``parts`` (e.g. ``("eal", "memory_mb")``)."""
        table = str(parts[0])
        rest = list(parts[1:])
        index = rest.pop(0) if rest and isinstance(rest[0], int) else None
        key = next((p for p in rest if isinstance(p, str)), None)
        root_end = self.headers[0][0] if self.headers else len(self.lines)
        section = self._section(table, index)
        found: int | None = None
        if key is None:
            found = section[0] if section else self._find_key(table, 0, root_end)
        else:
            if section:
                found = self._find_key(key, section[0] + 1, section[1])
            if found is None:  # [table.key] header, then root-level `table.key = ...`
                found = next((n for n, _, name in self.headers if name == (table, key)), None)
            if found is None:
                found = self._find_key(key, 0, root_end, prefix=rf"{re.escape(table)}\s*\.\s*")
            if found is None and section:
                found = section[0]
            if found is None:  # e.g. an inline table `eal = { ... }`
                found = self._find_key(table, 0, root_end)
        return None if found is None else found + 1


# --------------------------------------------------------------------------
# Loading.


def _render_path(parts: Sequence[PathPart]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Loader:
    """Validates parsed TOML against a schema, raising located ConfigErrors."""

    def __init__(self, schema: Schema, filename: str, text: str):
        self.schema = schema
        self.filename = filename
        self.locator = _Locator(text)

    def error(self, parts: Sequence[PathPart], problem: str) -> ConfigError:
        return ConfigError(self.filename, self.locator.line_of(parts), _render_path(parts), problem)

    def load(self, data: dict[str, Any]) -> Any:
        allowed = ", ".join(t.name for t in self.schema.tables)
        for key in data:
            if self.schema.table(key) is None:
                kind = "table" if isinstance(data[key], (dict, list)) else "key"
                raise self.error((key,), f"unknown {kind}; allowed tables: {allowed}")
        values: dict[str, Any] = {}
        for table in self.schema.tables:
            raw = data.get(table.name, MISSING)
            if table.array:
                if raw is MISSING:
                    raw = []
                if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
                    raise self.error(
                        (table.name,), f"expected an array of tables ([[{table.name}]]), got {_show(raw)}"
                    )
                values[table.name] = [self.load_table(table, item, (table.name, i)) for i, item in enumerate(raw)]
            else:
                if raw is MISSING:
                    raw = {}
                if not isinstance(raw, dict):
                    raise self.error((table.name,), f"expected a table ([{table.name}]), got {_show(raw)}")
                values[table.name] = self.load_table(table, raw, (table.name,))
        return self.schema.factory(**values)

    def load_table(self, table: Table, raw: dict[str, Any], base: tuple[PathPart, ...]) -> Any:
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            spec = table.field_by_key(key)
            if spec is None:
                raise self.error((*base, key), f"unknown key; allowed keys: {', '.join(table.keys)}")
            try:
                spec.type.check(value)
                kwargs[spec.target] = spec.validator(value) if spec.validator else value
            except _Problem as problem:
                raise self.error((*base, key, *problem.parts), str(problem)) from None
            except ValueError as err:
                raise self.error((*base, key), str(err)) from None
        for spec in table.fields:
            if spec.target in kwargs:
                continue
            if spec.required:
                raise self.error((*base, spec.name), "missing required key")  # line: the table header
            if spec.default is not MISSING:
                kwargs[spec.target] = copy.deepcopy(spec.default)
        obj = table.factory(**kwargs)
        if table.check is not None:

            def spell(dest: str) -> str:
                spec = table.field_by_dest(dest)
                return _render_path((*base, spec.name if spec else dest))

            try:
                table.check(obj, spell)
            except ValueError as err:
                dest = getattr(err, "field", None)
                spec = table.field_by_dest(dest) if dest else None
                parts = (*base, spec.name) if spec else base
                raise self.error(parts, str(err)) from None
        return obj


_SYNTAX = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def _syntax_error(filename: str, text: str, err: tomllib.TOMLDecodeError) -> ConfigError:
    match = _SYNTAX.match(str(err))
    if match is None:  # "... (at end of document)": point at the last non-blank line
        numbered = [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        message = re.sub(r"\s*\(at end of document\)$", " at end of document", str(err))
        return ConfigError(filename, numbered[-1] if numbered else None, None, f"TOML syntax error: {message}")
    return ConfigError(
        filename, int(match["line"]), None, f"TOML syntax error: {match['msg']} (column {match['col']})"
    )


def _read(source: str | os.PathLike[str]) -> tuple[str, str]:
    """Return (text, filename) for a path or for TOML text."""
    is_path = isinstance(source, os.PathLike) or (
        "\n" not in source and (source.endswith(".toml") or os.path.isfile(source))
    )
    if not is_path:
        return str(source), "<string>"
    filename = os.fspath(source)
    try:
        return Path(filename).read_text(encoding="utf-8"), filename
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(filename, None, None, f"cannot read: {reason}") from None


# --------------------------------------------------------------------------
# The dataplane schema.


def _lcores_value(value: str | list[int]) -> dict[int, frozenset[int]]:
    """``--lcores`` syntax, or a list of ids with lcore i on cpu i."""
    return parse_lcores_map(value) if isinstance(value, str) else lcores_from_ids(value)


def _log_levels_value(value: str | list[str]) -> list[tuple[str | None, str]]:
    """One ``--log-level`` value or a list of them."""
    if isinstance(value, str):
        return [parse_log_level_arg(value)]
    return each(parse_log_level_arg)(value)


EAL_TABLE = Table(
    name="eal",
    doc="The EAL settings; the same meaning as the command-line options.",
    factory=EalConfig,
    check=lambda cfg, spell: check_eal_config(cfg, spell=spell),
    fields=(
        Field("lcores", OneOf(STR, ListOf(INT)), _lcores_value,
              doc="--lcores syntax (\"0@0,(1,2)@1\") or a list of lcore ids (lcore i on cpu i)"),
        Field("main_lcore", INT, parse_lcore_id, None, "--main-lcore; default: the lowest lcore"),
        Field("memory_channels", INT, parse_positive_int, None, "-n (recorded)"),
        Field("vdev", ListOf(STR), each(parse_devargs), [], "--vdev devargs strings", dest="vdevs"),
        Field("allow", ListOf(STR), each(parse_devargs), [], "-a/--allow devargs strings"),
        Field("no_huge", BOOL, None, False, "--no-huge"),
        Field("memory_mb", INT, parse_positive_int, None, "-m, megabytes"),
        Field("socket_mem", ListOf(INT), parse_socket_mem, None, "--socket-mem, megabytes per socket"),
        Field("huge_dir", STR, None, None, "--huge-dir"),
        Field("file_prefix", STR, parse_file_prefix, "dataplane", "--file-prefix"),
        Field("in_memory", BOOL, None, False, "--in-memory"),
        Field("log_level", OneOf(STR, ListOf(STR)), _log_levels_value, [],
              "--log-level values: \"info\", \"dataplane.vhost:debug\"", dest="log_levels"),
        Field("log_format", STR, parse_log_format, "console", "\"console\" or \"json\""),
        Field("no_pci", BOOL, None, False, "--no-pci (recorded)"),
        Field("single_file_segments", BOOL, None, False, "--single-file-segments (recorded)"),
        Field("force_max_simd_bitwidth", INT, parse_simd_bitwidth, None, "--force-max-simd-bitwidth (recorded)"),
    ),
)  # fmt: skip


#: testpmd's forwarding modes (the engine implements them; names are defined here once).
FORWARD_MODES = ("io", "mac", "macswap", "5tswap", "rxonly", "txonly", "csum", "flowgen", "icmpecho")


def __getattr__(name: str):
    # PORT_KINDS: the port kinds a ``[[port]]`` may name (``--vdev`` driver names), read from the
    # driver registry when asked (it imports every driver, which a config check alone does not need)
    if name == "PORT_KINDS":
        return _registry().port_kinds()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registry():
    from dataplane.ethdev import registry

    return registry


@dataclass
class PortConfig:
    """One ``[[port]]``: a virtual device, as ``--vdev`` would give it."""

    vdev: Any = None


def _port_vdev(value: str):
    """A ``--vdev`` string of a known kind; a vhost server socket must be creatable."""
    d = parse_devargs(value)
    kind = d.name.rstrip("0123456789")
    registry = _registry()
    kinds = registry.port_kinds()
    if kind not in kinds or kind == d.name:
        raise ValueError(f"unknown port {d.name!r}; ports are {', '.join(k + 'N' for k in kinds)}")
    port = registry.find_driver(d.name).port_class
    path = d.args.get(port.socket_devarg) if port.socket_devarg else None
    if port.socket_devarg and not path:
        raise ValueError(f"{d.name} needs {port.socket_devarg}=SOCKET")
    if path and port.listens(d.args):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"socket path {path!r} is not writable (directory {parent!r})")
    return d


PORT_TABLE = Table(
    name="port",
    array=True,
    doc="The ports, numbered in order: one [[port]] per virtual device.",
    factory=PortConfig,
    fields=(
        Field("vdev", STR, _port_vdev, MISSING, "devargs, e.g. \"net_vhost0,iface=/tmp/vh0.sock,queues=1\"",
              required=True),
    ),
)


def _mode(value: str) -> str:
    if value not in FORWARD_MODES:
        raise ValueError(f"unknown forwarding mode {value!r}; modes are {', '.join(FORWARD_MODES)}")
    return value


def _positive_list(value: list[int]) -> list[int]:
    if not value or any(v <= 0 for v in value):
        raise ValueError(f"expected a non-empty list of positive lengths, got {_show(value)}")
    return value


def _eth_peers(value: list[str]) -> dict[int, str]:
    out = {}
    for item in value:
        port, _, mac = item.partition(",")
        parts = mac.split(":")
        try:
            ok = port.isdigit() and len(parts) == 6 and all(0 <= int(p, 16) <= 255 for p in parts)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"expected \"PORT,XX:XX:XX:XX:XX:XX\", got {_show(item)}")
        out[int(port)] = mac
    return out


#: testpmd's ``--port-topology`` values: how ports are paired for forwarding.
PORT_TOPOLOGIES = ("paired", "chained", "loop")
#: ``--mbuf-size``: more than the headroom, and a uint16 (testpmd's limit).
MIN_MBUF_SIZE = RTE_PKTMBUF_HEADROOM + 1
MAX_MBUF_SIZE = 0xFFFF
#: ``--max-pkt-len``: at least an Ethernet minimum frame (RTE_ETHER_MIN_LEN), at most what a uint16 length says.
MIN_PKT_LEN = 64
MAX_PKT_LEN = 0xFFFF


def _port_topology(v: str) -> str:
    if v not in PORT_TOPOLOGIES:
        raise ValueError(f"expected one of {', '.join(PORT_TOPOLOGIES)}, got {_show(v)}")
    return v


def _range(lo: int, hi: int) -> Callable[[int], int]:
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}..{hi}")
        return v

    return check


NUMBER = Scalar("a number", "numbers", (int, float))  # type: ignore[arg-type]


@dataclass
class ForwardConfig:
    """``[forward]``: testpmd's forwarding options."""

    mode: str = "io"
    nb_cores: int | None = None
    rxq: int = 1
    txq: int = 1
    burst: int = 32
    txpkts: list[int] = field(default_factory=lambda: [64])
    txonly_multi_flow: bool = False
    tx_first: bool = False
    eth_peer: dict[int, str] = field(default_factory=dict)
    total_num_mbufs: int = 8192
    stats_period: float = 1.0
    port_topology: str = "paired"
    #: data room of the pool's mbufs, headroom included (None: RTE_MBUF_DEFAULT_BUF_SIZE, 2176)
    mbuf_size: int | None = None
    #: largest frame to receive (None: 1518, or the txpkts total if larger)
    max_pkt_len: int | None = None


FORWARD_TABLE = Table(
    name="forward",
    doc="Forwarding: testpmd's options of the same names.",
    factory=ForwardConfig,
    fields=(
        Field("mode", STR, _mode, "io", "--forward-mode"),
        Field("nb_cores", INT, _range(1, 128), None, "--nb-cores"),
        Field("rxq", INT, _range(1, 64), 1, "--rxq"),
        Field("txq", INT, _range(1, 64), 1, "--txq"),
        Field("burst", INT, _range(1, 512), 32, "--burst"),
        Field("txpkts", ListOf(INT), _positive_list, [64], "--txpkts, segment lengths"),
        Field("txonly_multi_flow", BOOL, None, False, "--txonly-multi-flow"),
        Field("tx_first", BOOL, None, False, "--tx-first"),
        Field("eth_peer", ListOf(STR), _eth_peers, {}, "--eth-peer values, \"PORT,MAC\""),
        Field("total_num_mbufs", INT, _range(64, 1 << 24), 8192, "--total-num-mbufs"),
        Field("stats_period", NUMBER, lambda v: float(_range(0, 3600)(v)), 1.0, "--stats-period, seconds (0: off)"),
        Field("port_topology", STR, _port_topology, "paired", "--port-topology: paired, chained or loop"),
        Field("mbuf_size", INT, _range(MIN_MBUF_SIZE, MAX_MBUF_SIZE), None,
              "--mbuf-size, mbuf data room in bytes (headroom included)"),
        Field("max_pkt_len", INT, _range(MIN_PKT_LEN, MAX_PKT_LEN), None, "--max-pkt-len, largest frame to receive"),
    ),
)  # fmt: skip


@dataclass
class Config:
    """A loaded configuration: one attribute per table of :data:`SCHEMA`."""

    eal: EalConfig = field(default_factory=EalConfig)
    port: list[PortConfig] = field(default_factory=list)
    forward: ForwardConfig = field(default_factory=ForwardConfig)


SCHEMA = Schema(tables=(EAL_TABLE, PORT_TABLE, FORWARD_TABLE), factory=Config)


def load_config(source: str | os.PathLike[str], *, schema: Schema = SCHEMA) -> Any:
    """Load and validate a TOML config; return a :class:`Config`.

    ``source`` is a path (any ``os.PathLike``, or a ``str`` without newlines
    that ends in ``.toml`` or names an existing file) or TOML text.  Raises
    :class:`ConfigError`.  ``schema`` lets tests and tools load other schemas.
    """
    text, filename = _read(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _syntax_error(filename, text, err) from None
    return _Loader(schema, filename, text).load(data)
