"""EAL argument parsing: DPDK's own examples, and every error naming its argument."""

from __future__ import annotations

import os

import pytest

from dataplane.lcores.eal_args import (
    CLI_NAMES,
    MAX_LCORE,
    Devargs,
    EalArgsError,
    EalConfig,
    check_affinity,
    default_lcores,
    format_cpuset,
    parse_coremask,
    parse_devargs,
    parse_eal_args,
    parse_lcores_list,
    parse_lcores_map,
    parse_log_level_arg,
)

# Pretend to run on a 16-cpu machine for parser tests; the real affinity
# (2 cpus here) is tested separately.
BIG = range(16)


def ident(*lcores: int) -> dict[int, frozenset[int]]:
    return {lcore: frozenset({lcore}) for lcore in lcores}


def parse(*argv: str) -> EalConfig:
    return parse_eal_args(list(argv), allowed_cpus=BIG)


# --------------------------------------------------------------------------
# Lcore sets.


@pytest.mark.parametrize(
    "text, lcores",
    [
        ("0-3", (0, 1, 2, 3)),
        ("0,2", (0, 2)),
        ("1-3,5", (1, 2, 3, 5)),
        ("7", (7,)),
        ("5,1", (1, 5)),
        (" 0 - 1 , 3 ", (0, 1, 3)),
        ("127", (127,)),
    ],
)
def test_lcores_list(text, lcores):
    assert parse_lcores_list(text) == ident(*lcores)


@pytest.mark.parametrize(
    "text, lcores",
    [("0x3", (0, 1)), ("3", (0, 1)), ("f", (0, 1, 2, 3)), ("0XF0", (4, 5, 6, 7)), ("0x5", (0, 2))],
)
def test_coremask(text, lcores):
    assert parse_coremask(text) == ident(*lcores)


def test_lcores_map_dpdk_doc_example():
    # DPDK EAL docs: "--lcores='1,2@(5-7),(3-5)@(0,2),(0,6),7-8'" starts 9 threads.
    got = parse_lcores_map("1,2@(5-7),(3-5)@(0,2),(0,6),7-8")
    assert got == {
        0: frozenset({0, 6}),
        1: frozenset({1}),
        2: frozenset({5, 6, 7}),
        3: frozenset({0, 2}),
        4: frozenset({0, 2}),
        5: frozenset({0, 2}),
        6: frozenset({0, 6}),
        7: frozenset({7}),
        8: frozenset({8}),
    }
    assert list(got) == sorted(got)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0@0,1@0,(2,3)@1", {0: {0}, 1: {0}, 2: {1}, 3: {1}}),
        ("(0-3)@(0,1)", {i: {0, 1} for i in range(4)}),
        ("1,2", {1: {1}, 2: {2}}),
        ("(4-5)@(2,3)", {4: {2, 3}, 5: {2, 3}}),
        ("0-3", {0: {0}, 1: {1}, 2: {2}, 3: {3}}),
        ("(0,1)", {0: {0, 1}, 1: {0, 1}}),
        ("2@5-7", {2: {5, 6, 7}}),
        ("0@( 1 , 3 )", {0: {1, 3}}),
        ("10@1000", {10: {1000}}),
    ],
)
def test_lcores_map(text, expected):
    assert parse_lcores_map(text) == {k: frozenset(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    "func, text, fragment",
    [
        (parse_lcores_list, "3-1", "3-1 goes backwards"),
        (parse_lcores_list, "0,,2", "empty item"),
        (parse_lcores_list, "a", "expected an lcore number, got 'a'"),
        (parse_lcores_list, "128", "lcore 128 is out of range 0-127"),
        (parse_lcores_list, "0,0", "lcore 0 is listed twice"),
        (parse_lcores_list, "1-", "missing lcore number"),
        (parse_coremask, "0xZ", "'Z' is not a hex digit"),
        (parse_coremask, "0x", "no hex digits"),
        (parse_coremask, "0", "selects no lcore"),
        (parse_coremask, "1" + "0" * 32, "lcore 128 is out of range"),
        (parse_lcores_map, "", "empty"),
        (parse_lcores_map, "(0-3@1", "has no matching ')'"),
        (parse_lcores_map, "0-3)@1", "unexpected ')'"),
        (parse_lcores_map, "0@", "expected a cpu number"),
        (parse_lcores_map, "0,", "expected an lcore number or '(' at position 2, found the end"),
        (parse_lcores_map, "1,1@0", "lcore 1 is listed twice"),
        (parse_lcores_map, "(0,1),(1,2)", "lcore 1 is listed twice"),
        (parse_lcores_map, "((0))", "nested '('"),
        (parse_lcores_map, "200@0", "lcore 200 is out of range 0-127"),
        (parse_lcores_map, "0@1024", "cpu 1024 is out of range 0-1023"),
        (parse_lcores_map, "3-1@0", "3-1 goes backwards"),
        (parse_lcores_map, "0@0@1", "unexpected '@'"),
    ],
)
def test_lcore_syntax_errors(func, text, fragment):
    with pytest.raises(EalArgsError) as info:
        func(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message
    assert "\n" not in message


def test_format_cpuset():
    assert format_cpuset({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpuset([3]) == "3"
    assert format_cpuset([]) == ""


def test_default_lcores_follow_affinity():
    cpus = sorted(c for c in os.sched_getaffinity(0) if c < MAX_LCORE)
    assert default_lcores() == ident(*cpus)
    cfg = parse_eal_args([])
    assert cfg.lcores == ident(*cpus)
    assert cfg.main_lcore == cpus[0]


# --------------------------------------------------------------------------
# Devargs.


@pytest.mark.parametrize(
    "text, name, args",
    [
        ("net_vhost0,iface=/tmp/vh0,queues=2", "net_vhost0", {"iface": "/tmp/vh0", "queues": "2"}),
        (
            "net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22]",
            "net_ring0",
            {"nodeaction": "r1:0:CREATE", "mac": "[00:11,22]"},
        ),
        ("net_x0,corelist=[0-3,5],q=1", "net_x0", {"corelist": "[0-3,5]", "q": "1"}),
        ("net_null0", "net_null0", {}),
        ("net_tap0,flag,k=v", "net_tap0", {"flag": "", "k": "v"}),
        ("net_x0,path=/a=b", "net_x0", {"path": "/a=b"}),
        ("net_x0,a=[[1,2],[3]]", "net_x0", {"a": "[[1,2],[3]]"}),
        ("0000:00:01.0", "0000:00:01.0", {}),
        ("net_null0,", "net_null0", {}),
    ],
)
def test_devargs(text, name, args):
    dev = parse_devargs(text)
    assert dev == Devargs(name, args)
    assert list(dev.args) == list(args)  # order kept
    assert parse_devargs(str(dev)) == dev


def test_devargs_str_roundtrip():
    text = "net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22],flag"
    assert str(parse_devargs(text)) == text


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("net_x0,a=1,a=2", "duplicate key 'a'"),
        ("net_x0,mac=[00:11,22", "unbalanced '['"),
        ("net_x0,mac=00]", "unbalanced ']'"),
        ("", "empty device name"),
        (",a=1", "empty device name"),
        ("iface=/tmp/x", "must come first"),
        ("net_x0,=1", "empty key"),
    ],
)
def test_devargs_errors(text, fragment):
    with pytest.raises(EalArgsError, match="invalid devargs") as info:
        parse_devargs(text)
    assert fragment in str(info.value)


# --------------------------------------------------------------------------
# Log levels.


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8", (None, "debug")),
        ("1", (None, "emergency")),
        ("6", (None, "notice")),
        ("debug", (None, "debug")),
        ("INFO", (None, "info")),
        ("warn", (None, "warning")),
        ("err", (None, "error")),
        ("lib.eal:debug", ("lib.eal", "debug")),
        ("pmd.net.vhost.*:info", ("pmd.net.vhost.*", "info")),
        ("dataplane.vhost:7", ("dataplane.vhost", "info")),
        (r"pmd\.net\..*,debug", (r"pmd\.net\..*", "debug")),
    ],
)
def test_log_level_forms(text, expected):
    assert parse_log_level_arg(text) == expected


@pytest.mark.parametrize("text", ["0", "9", "verbose", "", "lib.eal:", ":debug", "lib.eal:loud"])
def test_log_level_errors(text):
    with pytest.raises(EalArgsError):
        parse_log_level_arg(text)


# --------------------------------------------------------------------------
# Whole command lines.


def test_full_command_line():
    cfg = parse(
        "-l", "0-3",
        "--main-lcore=2",
        "-n", "4",
        "--vdev", "net_vhost0,iface=/tmp/vh0,queues=2",
        "--vdev=net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22]",
        "-a", "0000:00:01.0",
        "--allow=0000:00:02.0,x=1",
        "--no-huge",
        "-m512",
        "--huge-dir", "/dev/hugepages",
        "--file-prefix", "vm1",
        "--in-memory",
        "--log-level", "8",
        "--log-level=lib.eal:debug",
        "--log-level", "pmd.net.vhost.*:info",
        "--log-format", "json",
        "--no-pci",
        "--single-file-segments",
        "--force-max-simd-bitwidth=512",
        "--", "--app-opt", "-l", "x",
    )  # fmt: skip
    assert cfg.lcores == ident(0, 1, 2, 3)
    assert cfg.main_lcore == 2
    assert cfg.worker_lcores == [0, 1, 3]
    assert cfg.memory_channels == 4
    assert [str(d) for d in cfg.vdevs] == [
        "net_vhost0,iface=/tmp/vh0,queues=2",
        "net_ring0,nodeaction=r1:0:CREATE,mac=[00:11,22]",
    ]
    assert cfg.vdevs[1].args["mac"] == "[00:11,22]"
    assert [d.name for d in cfg.allow] == ["0000:00:01.0", "0000:00:02.0"]
    assert cfg.allow[1].args == {"x": "1"}
    assert cfg.no_huge and cfg.in_memory and cfg.no_pci and cfg.single_file_segments
    assert cfg.memory_mb == 512
    assert cfg.socket_mem is None
    assert cfg.huge_dir == "/dev/hugepages"
    assert cfg.file_prefix == "vm1"
    assert cfg.log_levels == [(None, "debug"), ("lib.eal", "debug"), ("pmd.net.vhost.*", "info")]
    assert cfg.log_format == "json"
    assert cfg.force_max_simd_bitwidth == 512
    assert cfg.app_args == ["--app-opt", "-l", "x"]


@pytest.mark.parametrize(
    "argv, lcores",
    [
        (["-l", "0-3"], ident(0, 1, 2, 3)),
        (["-l0-3"], ident(0, 1, 2, 3)),
        (["-l", "0,2"], ident(0, 2)),
        (["-c", "0x3"], ident(0, 1)),
        (["-c", "f"], ident(0, 1, 2, 3)),
        (["-cf"], ident(0, 1, 2, 3)),
        (["--lcores", "1,2"], ident(1, 2)),
        (["--lcores=(0-3)@(0,1)"], {i: frozenset({0, 1}) for i in range(4)}),
        (["--lcores", "1,2@(5-7),(3-5)@(0,2),(0,6),7-8"], parse_lcores_map("1,2@(5-7),(3-5)@(0,2),(0,6),7-8")),
    ],
)
def test_lcore_options(argv, lcores):
    cfg = parse(*argv)
    assert cfg.lcores == lcores
    assert cfg.main_lcore == min(lcores)


def test_defaults():
    cfg = parse()
    assert cfg.file_prefix == "dataplane"
    assert cfg.log_format == "console"
    assert cfg.log_levels == [] and cfg.vdevs == [] and cfg.allow == [] and cfg.app_args == []
    assert not (cfg.no_huge or cfg.in_memory or cfg.no_pci or cfg.single_file_segments)
    assert cfg.memory_mb is None and cfg.socket_mem is None and cfg.memory_channels is None
    assert cfg.huge_dir is None and cfg.force_max_simd_bitwidth is None


def test_socket_mem():
    assert parse("--socket-mem", "1024,0").socket_mem == [1024, 0]
    assert parse("--socket-mem=512").socket_mem == [512]


def test_app_args_only_after_double_dash():
    assert parse("--", "--no-huge").app_args == ["--no-huge"]
    assert not parse("--", "--no-huge").no_huge
    assert parse("-l", "1", "--").app_args == []


@pytest.mark.parametrize(
    "argv, names, fragment",
    [
        (["--bogus"], "--bogus", "unknown option"),
        (["--bogus=3"], "--bogus", "unknown option"),
        (["-x"], "-x", "unknown option"),
        (["stray"], "stray", "application arguments go after '--'"),
        (["-l"], "-l", "missing value"),
        (["--vdev"], "--vdev", "missing value"),
        (["-m", "--no-huge"], "-m", "missing value, got option '--no-huge'"),
        (["--no-huge=1"], "--no-huge", "takes no value"),
        (["-l", "3-1"], "-l", "3-1 goes backwards"),
        (["-c", "0xZ"], "-c", "'Z' is not a hex digit"),
        (["-l", "128"], "-l", "lcore 128 is out of range 0-127"),
        (["--lcores", "200@0"], "--lcores", "lcore 200 is out of range 0-127"),
        (["--lcores", "0@0,0@1"], "--lcores", "lcore 0 is listed twice"),
        (["-l", "0-1", "-c", "0x3"], "-c", "cannot be combined with -l"),
        (["-c", "3", "--lcores", "0,1"], "--lcores", "cannot be combined with -c"),
        (["-l", "0", "-l", "1"], "-l", "given twice"),
        (["-l", "0-1", "--main-lcore", "5"], "--main-lcore", "lcore 5 is not in the lcore set 0-1"),
        (["--main-lcore", "x"], "--main-lcore", "expected an lcore id, got 'x'"),
        (["--main-lcore", "500"], "--main-lcore", "lcore 500 is out of range"),
        (["-m", "512", "--socket-mem", "512,0"], "--socket-mem", "cannot be combined with -m"),
        (["--no-huge", "--socket-mem", "512"], "--socket-mem", "cannot be combined with --no-huge"),
        (["--socket-mem", "1024,x"], "--socket-mem", "megabytes per socket, got 'x'"),
        (["-m", "abc"], "-m", "expected a positive integer, got 'abc'"),
        (["-m", "0"], "-m", "expected a positive integer, got 0"),
        (["-n", "-1"], "-n", "missing value"),
        (["--file-prefix", "a/b"], "--file-prefix", "must not contain '/'"),
        (["--vdev", "net_x0,a=1,a=2"], "--vdev", "duplicate key 'a'"),
        (["--vdev", "net_x0,mac=[00:11"], "--vdev", "unbalanced '['"),
        (["-a", "0000:00:01.0,k=[1"], "-a", "unbalanced '['"),
        (["--log-level", "9"], "--log-level", "out of range 1-8"),
        (["--log-level", "lib.eal:loud"], "--log-level", "unknown log level 'loud'"),
        (["--log-format", "xml"], "--log-format", "expected one of console, json, got 'xml'"),
        (["--force-max-simd-bitwidth", "100"], "--force-max-simd-bitwidth", "power of two"),
    ],
)
def test_errors_name_the_argument(argv, names, fragment):
    with pytest.raises(EalArgsError) as info:
        parse(*argv)
    message = str(info.value)
    assert message.startswith(f"{names}: "), message
    assert fragment in message, message
    assert "\n" not in message


def test_error_carries_field():
    with pytest.raises(EalArgsError) as info:
        parse("-m", "1", "--socket-mem", "1")
    assert info.value.field == "socket_mem"


# --------------------------------------------------------------------------
# Affinity, on the real machine.


def _cpu_outside_affinity() -> int:
    return max(os.sched_getaffinity(0)) + 1


def test_affinity_rejects_unavailable_cpu():
    cpu = _cpu_outside_affinity()
    allowed = format_cpuset(os.sched_getaffinity(0))
    with pytest.raises(EalArgsError) as info:
        parse_eal_args(["--lcores", f"3@{cpu}"])
    assert str(info.value) == (
        f"--lcores: lcore 3 -> cpu {cpu}: cpu {cpu} is not in the allowed cpus {allowed}"
    )


def test_affinity_names_the_lcore_option_used():
    cpu = _cpu_outside_affinity()
    with pytest.raises(EalArgsError, match=r"^-l: lcore \d+ -> cpu \d+"):
        parse_eal_args(["-l", f"0-{cpu}"])
    with pytest.raises(EalArgsError, match=r"^-c: lcore \d+ -> cpu \d+"):
        parse_eal_args(["-c", hex(1 << cpu)])


def test_affinity_accepts_available_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    cfg = parse_eal_args(["--lcores", f"(0-3)@({','.join(map(str, cpus))})"])
    assert cfg.lcores[3] == frozenset(cpus)


def test_check_affinity_with_explicit_set():
    check_affinity({0: {0}, 1: {5}}, allowed_cpus={0, 5})
    with pytest.raises(EalArgsError, match=r"lcore 1 -> cpu 5: cpu 5 is not in the allowed cpus 0-2"):
        check_affinity({0: {0}, 1: {5}}, allowed_cpus={0, 1, 2})


def test_dpdk_compat_options():
    cfg = parse("-l", "0", "-v", "--proc-type", "auto", "--no-telemetry")
    assert (cfg.show_version, cfg.proc_type, cfg.no_telemetry) == (True, "auto", True)
    assert parse("-l", "0", "--proc-type=primary").proc_type == "primary"
    with pytest.raises(EalArgsError, match="--proc-type: expected primary or auto .* got 'secondary'"):
        parse("-l", "0", "--proc-type", "secondary")


@pytest.mark.parametrize("argv, usage", [
    (["-h"], "help"),
    (["--help"], "help"),
    (["--version"], "version"),
    (["-l", "0", "--help", "-l", "99999"], "help"),  # what follows is not parsed (DPDK prints at once)
])
def test_help_and_version_stop_parsing(argv, usage):
    assert parse(*argv).usage == usage


def test_every_option_has_a_usage_line():
    from dataplane.lcores.eal_args import eal_options_help

    rows = eal_options_help()
    assert all(help_text for _, help_text in rows)
    spellings = " ".join(s for s, _ in rows)
    for name in CLI_NAMES.values():
        for alias in name.split("/"):
            assert alias in spellings, alias
