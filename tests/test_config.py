"""TOML config loading: the [eal] table, and line-precise one-line errors."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass

import pytest

from dataplane.config import (
    INT,
    STR,
    Config,
    ConfigError,
    Field,
    ListOf,
    Schema,
    Table,
    load_config,
)
from dataplane.lcores.eal_args import Devargs, format_cpuset, parse_eal_args

CPUS = sorted(os.sched_getaffinity(0))
CPU_LIST = ",".join(map(str, CPUS))


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(toml(text))
    message = str(info.value)
    assert "\n" not in message
    return info.value


VALID = toml(
    f"""
    # a full [eal] table
    [eal]
    lcores = "(0-3)@({CPU_LIST})"
    main_lcore = 1
    memory_channels = 4
    vdev = [
        "net_vhost0,iface=/tmp/vh0,queues=2",
        "net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22]",
    ]
    allow = ["0000:00:01.0"]
    no_huge = true
    memory_mb = 512
    huge_dir = "/dev/hugepages"
    file_prefix = "vm1"
    in_memory = true
    log_level = ["info", "dataplane.vhost:debug", "8"]
    log_format = "json"
    no_pci = true
    single_file_segments = true
    force_max_simd_bitwidth = 256
    """
)


def test_valid_file(tmp_path):
    path = tmp_path / "dp.toml"
    path.write_text(VALID)
    for source in (path, str(path), VALID):
        cfg = load_config(source)
        assert isinstance(cfg, Config)
        eal = cfg.eal
        assert eal.lcores == {i: frozenset(CPUS) for i in range(4)}
        assert eal.main_lcore == 1
        assert eal.worker_lcores == [0, 2, 3]
        assert eal.memory_channels == 4
        assert eal.vdevs == [
            Devargs("net_vhost0", {"iface": "/tmp/vh0", "queues": "2"}),
            Devargs("net_ring0", {"nodeaction": "r1:0:CREATE", "mac": "[00:11,22]"}),
        ]
        assert eal.allow == [Devargs("0000:00:01.0", {})]
        assert eal.no_huge and eal.in_memory and eal.no_pci and eal.single_file_segments
        assert eal.memory_mb == 512
        assert eal.huge_dir == "/dev/hugepages"
        assert eal.file_prefix == "vm1"
        assert eal.log_levels == [(None, "info"), ("dataplane.vhost", "debug"), (None, "debug")]
        assert eal.log_format == "json"
        assert eal.force_max_simd_bitwidth == 256


def test_same_meaning_as_command_line():
    argv = ["--lcores", f"(0-3)@({CPU_LIST})", "--main-lcore", "1", "-n", "4",
            "--vdev", "net_vhost0,iface=/tmp/vh0,queues=2",
            "--vdev", "net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22]",
            "-a", "0000:00:01.0", "--no-huge", "-m", "512", "--huge-dir", "/dev/hugepages",
            "--file-prefix", "vm1", "--in-memory", "--log-level", "info",
            "--log-level", "dataplane.vhost:debug", "--log-level", "8", "--log-format", "json",
            "--no-pci", "--single-file-segments", "--force-max-simd-bitwidth", "256"]  # fmt: skip
    assert load_config(VALID).eal == parse_eal_args(argv)


def test_empty_config_gives_command_line_defaults():
    assert load_config("").eal == parse_eal_args([])
    assert load_config("[eal]\n").eal == parse_eal_args([])


def test_lcores_as_list_and_scalar_log_level():
    cfg = load_config(f"[eal]\nlcores = [{CPUS[0]}]\nlog_level = 'warning'\nsocket_mem = [1024, 0]\n")
    assert cfg.eal.lcores == {CPUS[0]: frozenset({CPUS[0]})}
    assert cfg.eal.log_levels == [(None, "warning")]
    assert cfg.eal.socket_mem == [1024, 0]


def test_path_and_file_name_in_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[eal]\nmemory_mb = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f'{path}:2: eal.memory_mb: expected an integer, got "abc"'
    assert (info.value.filename, info.value.line, info.value.path) == (str(path), 2, "eal.memory_mb")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


def test_unknown_key():
    err = error_of(
        """
        [eal]
        lcores = "0"

        memroy_mb = 512
        """
    )
    assert str(err).startswith("<string>:4: eal.memroy_mb: unknown key; allowed keys: lcores, main_lcore,")
    assert "memory_mb" in str(err)


def test_unknown_table_and_top_level_key():
    assert str(error_of("[eal]\n\n[bogus]\nx = 1\n")) == "<string>:3: bogus: unknown table; allowed tables: eal, port, forward"
    assert str(error_of("# top\nx = 1\n")) == "<string>:2: x: unknown key; allowed tables: eal, port, forward"


@pytest.mark.parametrize(
    "body, expected",
    [
        ('memory_mb = "abc"', 'eal.memory_mb: expected an integer, got "abc"'),
        ("memory_mb = true", "eal.memory_mb: expected an integer, got true"),
        ("no_huge = 1", "eal.no_huge: expected a boolean (true or false), got 1"),
        ("vdev = 'net_null0'", 'eal.vdev: expected an array of strings, got "net_null0"'),
        ("socket_mem = [1024, 'x']", 'eal.socket_mem[1]: expected an integer, got "x"'),
        ("lcores = 3", "eal.lcores: expected a string or an array of integers, got 3"),
        ("lcores = [0, 'a']", 'eal.lcores[1]: expected an integer, got "a"'),
        ("log_level = ['info', 3]", "eal.log_level[1]: expected a string, got 3"),
        ("huge_dir = ['/a']", 'eal.huge_dir: expected a string, got ["/a"]'),
    ],
)
def test_wrong_type(body, expected):
    err = error_of(f"[eal]\n# comment\n{body}\n")
    assert str(err) == f"<string>:3: {expected}"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("lcores = '3-1'", "eal.lcores: invalid lcore map '3-1': range 3-1 goes backwards (start > end)"),
        ("lcores = '(0-3@1'", "eal.lcores: invalid lcore map '(0-3@1': '(' at position 0 has no matching ')'"),
        ("lcores = [0, 0]", "eal.lcores: lcore 0 is listed twice"),
        ("lcores = []", "eal.lcores: expected at least one lcore id"),
        ("main_lcore = 200", "eal.main_lcore: lcore 200 is out of range 0-127"),
        ("memory_mb = 0", "eal.memory_mb: expected a positive integer, got 0"),
        ("log_level = 'loud'", "eal.log_level: unknown log level 'loud': expected 1-8 or one of"),
        ("log_level = ['info', 'lib.eal:9']", "eal.log_level[1]: in 'lib.eal:9': log level 9 is out of range 1-8"),
        ("log_format = 'xml'", "eal.log_format: expected one of console, json, got 'xml'"),
        ("file_prefix = 'a/b'", "eal.file_prefix: prefix 'a/b' must not contain '/'"),
        ("vdev = ['net_null0', 'net_x0,a=1,a=2']", "eal.vdev[1]: invalid devargs 'net_x0,a=1,a=2': duplicate key 'a'"),
        ("allow = ['0000:00:01.0,k=[1']", "eal.allow[0]: invalid devargs '0000:00:01.0,k=[1': unbalanced '['"),
        ("force_max_simd_bitwidth = 100", "eal.force_max_simd_bitwidth: expected a power of two"),
    ],
)
def test_bad_value(body, expected):
    err = error_of(f"[eal]\n\n{body}\n")
    assert str(err).startswith(f"<string>:3: {expected}"), str(err)


def test_cross_field_errors_point_at_the_offending_key():
    err = error_of(
        """
        [eal]
        memory_mb = 512
        no_huge = false
        socket_mem = [512, 0]
        """
    )
    assert str(err) == "<string>:4: eal.socket_mem: cannot be combined with eal.memory_mb (give one or the other)"

    err = error_of("[eal]\nsocket_mem = [512]\nno_huge = true\n")
    assert str(err) == "<string>:2: eal.socket_mem: cannot be combined with eal.no_huge"

    err = error_of(f"[eal]\nlcores = [{CPUS[0]}]\nmain_lcore = 127\n")
    assert str(err) == f"<string>:3: eal.main_lcore: lcore 127 is not in the lcore set {CPUS[0]}"


def test_affinity_error():
    cpu = max(CPUS) + 1
    err = error_of(f"[eal]\nlcores = '3@{cpu}'\n")
    assert str(err) == (
        f"<string>:2: eal.lcores: lcore 3 -> cpu {cpu}: cpu {cpu} is not in the allowed cpus {format_cpuset(CPUS)}"
    )


def test_syntax_error():
    err = error_of(
        """
        [eal]
        lcores = "0"
        memory_mb = = 3
        """
    )
    assert str(err) == "<string>:3: TOML syntax error: Invalid value (column 13)"
    assert err.line == 3 and err.path is None


def test_syntax_error_at_end_of_document():
    err = error_of('[eal]\nvdev = ["a",\n')
    assert str(err).startswith("<string>:2: TOML syntax error:")


def test_lines_for_other_toml_spellings():
    # Root-level dotted key.
    assert str(error_of('title = 1\n')).startswith("<string>:1: title:")
    assert str(error_of('# top\neal.memory_mb = "x"\n')).startswith("<string>:2: eal.memory_mb: expected an integer")
    # Inline table: the line of `eal = {...}`.
    assert str(error_of('# top\n\neal = { memory_mb = "x" }\n')).startswith("<string>:3: eal.memory_mb:")
    # Not a table.
    assert str(error_of("eal = 3\n")) == "<string>:1: eal: expected a table ([eal]), got 3"
    # A quoted key and a sub-table.
    assert str(error_of('[eal]\n"memory_mb" = "x"\n')).startswith("<string>:2: eal.memory_mb:")
    assert str(error_of("[eal]\nno_huge = true\n[eal.extra]\nx = 1\n")).startswith(
        "<string>:3: eal.extra: unknown key"
    )


# --------------------------------------------------------------------------
# The schema mechanism, with an array-of-tables schema like a future [[port]].


@dataclass
class PortSpec:
    name: str
    queues: int = 1
    tags: list[str] | None = None


def _check_port(port: PortSpec, spell) -> None:
    if port.queues > 8 and port.name.startswith("ring"):
        err = ValueError(f"ring ports have at most 8 queues (see {spell('name')})")
        err.field = "queues"  # type: ignore[attr-defined]
        raise err


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError(f"expected a positive integer, got {value}")
    return value


PORT_SCHEMA = Schema(
    tables=(
        Table(
            "port",
            fields=(
                Field("name", STR, doc="port name", required=True),
                Field("queues", INT, _positive, 1, "queue pairs"),
                Field("tags", ListOf(STR), None, [], "free-form tags"),
            ),
            factory=PortSpec,
            check=_check_port,
            array=True,
        ),
    ),
    factory=dict,
)

PORTS = toml(
    """
    [[port]]
    name = "vhost0"

    [[port]]
    name = "ring0"
    queues = {queues}
    """
)


def test_array_of_tables():
    ports = load_config(PORTS.format(queues=4), schema=PORT_SCHEMA)["port"]
    assert ports == [PortSpec("vhost0", 1, []), PortSpec("ring0", 4, [])]
    assert load_config("", schema=PORT_SCHEMA) == {"port": []}


def test_array_of_tables_errors_locate_the_right_entry():
    with pytest.raises(ConfigError) as info:
        load_config(PORTS.format(queues=0), schema=PORT_SCHEMA)
    assert str(info.value) == "<string>:6: port[1].queues: expected a positive integer, got 0"

    with pytest.raises(ConfigError) as info:
        load_config(PORTS.format(queues=9), schema=PORT_SCHEMA)
    assert str(info.value) == "<string>:6: port[1].queues: ring ports have at most 8 queues (see port[1].name)"

    with pytest.raises(ConfigError) as info:
        load_config(PORTS.format(queues=1) + "colour = 'red'\n", schema=PORT_SCHEMA)
    assert str(info.value) == "<string>:7: port[1].colour: unknown key; allowed keys: name, queues, tags"

    with pytest.raises(ConfigError) as info:
        load_config("[[port]]\nqueues = 2\n\n[[port]]\n", schema=PORT_SCHEMA)
    assert str(info.value) == "<string>:1: port[0].name: missing required key"

    with pytest.raises(ConfigError) as info:
        load_config("port = 3\n", schema=PORT_SCHEMA)
    assert str(info.value) == "<string>:1: port: expected an array of tables ([[port]]), got 3"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[forward]\nmode = "bogus"', "<string>:2: forward.mode: unknown forwarding mode 'bogus'"),
        ('[[port]]\nvdev = "net_vhost0,iface=/nonexistent/x.sock"', "<string>:2: port[0].vdev: socket path"),
        ('[[port]]\nvdev = "net_ring0"\n[[port]]\nvdev = "net_tap0"', "<string>:4: port[1].vdev: unknown port 'net_tap0'"),
        ('[[port]]\nvdev = "net_vhost0"', "<string>:2: port[0].vdev: net_vhost0 needs iface=SOCKET"),
        ("[[port]]\nqueues = 2", "<string>:2: port[0].queues: unknown key"),
        ('[forward]\nburst = "x"', '<string>:2: forward.burst: expected an integer, got "x"'),
        ("[forward]\nburst = 0", "<string>:2: forward.burst: 0 is out of range 1..512"),
        ("[forward]\ntxpkts = []", "<string>:2: forward.txpkts: expected a non-empty list"),
        ('[forward]\neth_peer = ["0,zz:00:00:00:00:00"]', "<string>:2: forward.eth_peer: expected"),
        ('[eal]\nlcores = "0@999"', "<string>:2: eal.lcores: lcore 0 -> cpu 999"),
    ],
)
def test_port_and_forward_errors_name_the_key(text, expected):
    assert str(error_of(text)).startswith(expected)


def test_port_and_forward_tables_load(tmp_path):
    cfg = load_config(
        '[[port]]\nvdev = "net_vhost0,iface=%s/vh.sock,queues=2"\n[[port]]\nvdev = "net_ring0"\n'
        '[forward]\nmode = "macswap"\nrxq = 2\ntxpkts = [2000, 2000]\nstats_period = 0.5\n'
        'eth_peer = ["1,02:00:00:00:00:09"]\n' % tmp_path
    )
    assert [p.vdev.name for p in cfg.port] == ["net_vhost0", "net_ring0"]
    assert cfg.port[0].vdev.args["queues"] == "2"
    f = cfg.forward
    assert (f.mode, f.rxq, f.txpkts, f.stats_period, f.eth_peer) == ("macswap", 2, [2000, 2000], 0.5, {1: "02:00:00:00:00:09"})


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "configs").glob("*.toml"))
    assert files
    for f in files:
        cfg = load_config(f)
        assert cfg.port, f
    embedded = root / "dataplane" / "configs" / "default.toml"
    assert embedded.read_text() == (root / "configs" / "default.toml").read_text()
