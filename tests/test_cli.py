"""The ``dataplane`` command: demo, argument errors, signals, cleanup."""

import os
import signal
import subprocess
import sys
import time

import pytest

CPUS = sorted(os.sched_getaffinity(0))
LCORES = f"{CPUS[0]}-{CPUS[-1]}" if len(CPUS) > 1 else str(CPUS[0])


def _run(args, env_runtime, timeout=120, **kw):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(env_runtime))
    return subprocess.run(
        [sys.executable, "-m", "dataplane.cli", *args], capture_output=True, text=True, env=env, timeout=timeout, **kw
    )


def _children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_demo_shows_pinned_workers_and_shared_counter(tmp_path):
    r = _run(["-l", LCORES, "--no-huge", "--file-prefix", "clidemo", "--", "--demo", "--demo-count", "10000"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("lcore ")]
    assert len(lines) == len(CPUS)
    for i, line in enumerate(lines):
        assert line.startswith(f"lcore {i} ") and f"pinned to cpus {CPUS[i]}:" in line
    assert f"shared counter = {10000 * len(CPUS)} (expected {10000 * len(CPUS)})" in r.stdout
    assert "using memfd" in r.stderr  # --no-huge falls back and says so
    assert not os.path.exists(tmp_path / "clidemo")


@pytest.mark.parametrize(
    "args, names",
    [
        (["-l", "0-", "--", "--demo"], "-l"),
        (["--bogus-option"], "--bogus-option"),
        (["-l", "0", "-c", "0x1"], "-c"),
        (["--vdev", "net_vhost0,iface=a,iface=b"], "iface"),
        (["-l", "0", "--main-lcore", "5"], "--main-lcore"),
        (["-l", "0", "--no-huge", "--", "--no-such-app-option"], "--no-such-app-option"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(tmp_path, args, names):
    r = _run(args, tmp_path)
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("usage:")]
    assert len(err) == 1 and names in err[0], r.stderr
    assert not any(tmp_path.iterdir())  # nothing left behind


def test_sigint_stops_every_worker_and_cleans_up(tmp_path):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(tmp_path))
    # A demo long enough to be interrupted while the workers run.
    p = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "-l", LCORES, "--no-huge", "--file-prefix", "clisig", "--", "--demo",
         "--demo-count", "2000000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(_children_of(p.pid)) >= len(CPUS) - 1 and (tmp_path / "clisig").exists()):
            time.sleep(0.1)
        time.sleep(1.0)
        workers = _children_of(p.pid)
        assert len(workers) == len(CPUS) - 1
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    for w in workers:
        assert not os.path.exists(f"/proc/{w}") or open(f"/proc/{w}/stat").read().split()[2] == "Z"
    assert not (tmp_path / "clisig").exists()


def test_run_default_config_forwards_and_summarises(tmp_path):
    r = _run(["run", "--duration", "2"], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(line.strip().startswith("1.0s") and "Mpps" in line for line in lines), r.stdout
    summary = [line for line in lines if line.startswith("summary:")]
    assert summary and "dropped 0" in summary[0] and "Gbit/s" in summary[0]
    assert int(summary[0].split("forwarded ")[1].split()[0]) > 0


@pytest.mark.parametrize(
    "body, expected",
    [
        ('[forward]\nmode = "warp"\n', "cfg.toml:2: forward.mode: unknown forwarding mode 'warp'"),
        ('[eal]\nlcores = "0@64"\n', "cfg.toml:2: eal.lcores: lcore 0 -> cpu 64"),
        ('[[port]]\nvdev = "net_vhost0,iface=/proc/nope/x.sock"\n', "cfg.toml:2: port[0].vdev: socket path"),
        ('[forward]\nburst = "many"\n', 'cfg.toml:2: forward.burst: expected an integer, got "many"'),
        ('[eal]\nlcores = "0-1"\n[forward]\ncolour = 1\n', "cfg.toml:4: forward.colour: unknown key"),
    ],
)
def test_run_config_errors_are_one_line_exit_2(tmp_path, body, expected):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(body)
    r = _run(["run", str(cfg)], tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and expected in err[0], r.stderr


def test_batch_mode_prints_stats_every_period_and_summary_on_sigint(tmp_path):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(tmp_path))
    p = subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "-l", LCORES, "--no-huge", "-m", "128", "--vdev", "net_ring0",
         "--", "--forward-mode=io", "--tx-first", "--stats-period=0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 240
        lines = []
        while sum("NIC statistics for port 0" in line for line in lines) < 2 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = "".join(lines) + out
    assert p.returncode == 0, err[-3000:]
    assert text.count("NIC statistics for port 0") >= 2
    acc = text.split("Accumulated forward statistics")[1]
    rx = int(acc.split("RX-packets:")[1].split()[0])
    assert rx > 0 and "TX-dropped: 0" in acc and "Bye..." in text
