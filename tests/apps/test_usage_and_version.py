"""``--help``/``-h`` and ``--version`` of every entry point (pyproject's [project.scripts]), run as
subprocesses through their modules: testpmd's usage layout, one EAL section for every EAL application."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

import dataplane

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

#: entry point -> the module `python3 -m` runs for it (and the words before its own arguments)
ENTRY_POINTS = {
    "dataplane": ["dataplane.cli"],
    "dataplane-hugepages": ["dataplane.tools.hugepages"],
    "dataplane-vhost-blk": ["dataplane.apps.vhost_blk"],
    "dataplane-vdpa": ["dataplane.apps.vdpa"],
    "dataplane-nic": ["dataplane.nic.cli"],
}
#: EAL applications: (entry point, what their options are called, one of their options)
EAL_APPS = [
    ("dataplane", "testpmd", "--forward-mode MODE"),
    ("dataplane-vhost-blk", "vhost-blk", "--socket SOCKET"),
    ("dataplane-vdpa", "vdpa", "--iface PREFIX"),
]
EAL_LINES = ["-l CORELIST", "--lcores COREMAP", "--vdev DEVARGS", "--no-huge", "--file-prefix PREFIX",
             "--log-level [PATTERN:]LEVEL", "-h, --help", "--version"]


def _run(prog: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *ENTRY_POINTS[prog], *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def _section(text: str, title: str) -> str:
    """The lines of section ``title:`` up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(f"{title}:")
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def test_every_script_of_pyproject_is_covered():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(ENTRY_POINTS)
    for name, target in scripts.items():
        assert target.split(":")[0] == ENTRY_POINTS[name][0]
    assert dataplane.__version__ == VERSION


@pytest.mark.parametrize("prog, app, option", EAL_APPS)
@pytest.mark.parametrize("where", ["--help", "-h", "-- --help", "-- -h"])
def test_eal_application_usage(prog, app, option, where):
    """Before or after ``--``, the same text: head, EAL options, then the application's."""
    r = _run(prog, *where.split())
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out = r.stdout
    assert out.startswith(f"Usage: {prog} [EAL options] -- [{app} options]\n")
    eal = _section(out, "EAL options")
    for line in EAL_LINES:
        assert f"\n  {line}" in eal, line
    own = _section(out, f"{app} options")
    assert f"  {option}" in own and "  --version" in own
    assert out.index("EAL options:") < out.index(f"{app} options:")


def test_one_eal_section_for_every_application():
    sections = {_section(_run(prog, "--help").stdout, "EAL options") for prog, _, _ in EAL_APPS}
    assert len(sections) == 1


def test_dataplane_usage_lists_the_dts_options_and_the_commands():
    out = _run("dataplane", "--help").stdout
    own = _section(out, "testpmd options")
    for option in ("--port-topology {paired,chained,loop}", "--max-pkt-len N", "--mbuf-size N[,N...]",
                   "-i, --interactive", "--rxq N", "--total-num-mbufs N"):
        assert f"  {option}" in own, option
    commands = _section(out, "Commands (instead of options)")
    assert "  run [FILE.toml]" in commands and "  vdpa features" in commands and "  precompile" in commands


@pytest.mark.parametrize("args, head, sections", [
    (["run", "--help"], "Usage: dataplane run [FILE.toml] [options]",
     ["Arguments", "Options", "[eal] settings of FILE.toml", "[forward] settings of FILE.toml"]),
    (["vdpa", "features", "--help"], "Usage: dataplane vdpa features", []),
    (["precompile", "--help"], "Usage: dataplane precompile [options]", ["Options"]),
])
def test_dataplane_subcommand_usage(args, head, sections):
    r = _run("dataplane", *args)
    assert r.returncode == 0 and r.stdout.startswith(head + "\n"), r.stdout + r.stderr
    for title in sections:
        assert any(line.startswith(title) and line.endswith(":") for line in r.stdout.splitlines()), title
    if args[0] == "run":
        eal = next(line for line in r.stdout.splitlines() if line.startswith("[eal] settings"))
        block = _section(r.stdout, eal[:-1])
        assert "  file_prefix" in block and "--file-prefix" in block


def test_dataplane_vdpa_keeps_iproute2_s_usage():
    """``dataplane vdpa`` is iproute2's vdpa tool: its help is iproute2's (on stderr, status 0)."""
    r = _run("dataplane", "vdpa", "--help")
    assert r.returncode == 0 and r.stderr.startswith("Usage: vdpa [ OPTIONS ] OBJECT { COMMAND | help }")


@pytest.mark.parametrize("prog, args, head, commands", [
    ("dataplane-hugepages", [], "Usage: dataplane-hugepages [options] COMMAND ...", ["show", "reserve", "mount"]),
    ("dataplane-hugepages", ["reserve"], "Usage: dataplane-hugepages reserve [options] SIZE", []),
    ("dataplane-nic", [], "Usage: dataplane-nic [options] COMMAND ...", ["start", "show", "stop", "link"]),
    ("dataplane-nic", ["start"], "Usage: dataplane-nic start [options] MODEL", []),
])
def test_tool_usage(prog, args, head, commands):
    r = _run(prog, *args, "--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(head + "\n"), r.stdout
    assert "EAL options:" not in r.stdout
    assert "  -h, --help" in _section(r.stdout, "Options")
    if commands:
        listed = _section(r.stdout, "Commands")
        for c in commands:
            assert f"\n    {c} " in listed, c


@pytest.mark.parametrize("prog, args", [
    ("dataplane", ["--version"]), ("dataplane", ["--", "--version"]), ("dataplane", ["run", "--version"]),
    ("dataplane", ["vdpa", "features", "--version"]), ("dataplane", ["precompile", "--version"]),
    ("dataplane-hugepages", ["--version"]),
    ("dataplane-vhost-blk", ["--version"]), ("dataplane-vhost-blk", ["--", "--version"]),
    ("dataplane-vdpa", ["--version"]), ("dataplane-nic", ["--version"]),
])
def test_version(prog, args):
    r = _run(prog, *args)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{prog} {VERSION}\n", "")


def test_bad_application_option_is_one_line_pointing_at_the_usage():
    r = _run("dataplane", "--no-huge", "--", "--port-topology=ring")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--port-topology" in r.stderr and "dataplane --help" in r.stderr


def test_eal_v_logs_the_version_and_compat_options_are_logged(tmp_path):
    """DPDK's ``-v`` shows the version at start-up; --no-telemetry and --proc-type=auto are no-ops, logged."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DATAPLANE_RUNTIME_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "dataplane.cli", "-v", "-l", str(sorted(os.sched_getaffinity(0))[0]),
                        "--no-huge", "-m", "16", "--no-telemetry", "--proc-type=auto", "--file-prefix", "ver",
                        "--", "--demo", "--demo-count", "10"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any("] version " in line and f"version='dataplane {VERSION}'" in line for line in lines), r.stderr
    for option in ("--no-telemetry", "--proc-type"):
        assert any("option accepted for compatibility, no effect" in line and f"option={option} " in line
                   for line in lines), option
