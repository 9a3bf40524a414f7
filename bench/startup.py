"""How long ``dataplane run`` takes to forward its first packet: cold, warm, and a new shape.

Three starts, one after the other, each ``dataplane run --duration 1``, timed from the exec to the
engine's ``forwarding started`` line (the loop sets that flag once it forwards, after its
``tx_first`` burst, so packets are moving):

1. **cold**: the embedded default configuration with a fresh, empty numba cache directory
   (``NUMBA_CACHE_DIR``): everything is compiled.  The number of progress lines it printed while
   compiling is shown too (``dataplane: compiling ...``).
2. **warm**: the same again, with the cache the cold start filled.
3. **precompile**: ``dataplane precompile`` (what ``.ci/setup`` runs, so what a user who followed
   README has done): it compiles every port kind's and every forwarding mode's entry kernels
   into the same cache (the loop itself has one type for every shape).
4. **new shape**: right after, a configuration of the same port kinds with 2 queues per port
   (the default's vhost-user/virtio-user pair with ``queues=2``, so 4 streams), same cache.
   The loop takes its queues as rows, so this shape compiles nothing new.

The reference is DPDK: ``dpdk-testpmd`` with the same two kinds of ports (``net_vhost`` and
``net_virtio_user`` over one socket, io forwarding, ``--tx-first``), timed from exec to its first
forwarded packets (its ``Start automatic packet forwarding`` line with ``--auto-start``).

Output: one line per step, then ``precompile_s=``, ``warm_start_s=``, ``new_shape_s=`` and last
``cold_start_s=``.
The issue's goals: cold ≤ 60 s (with progress shown), warm ≤ 1 s, new shape ≤ 10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

SOCK = "/tmp/dataplane-startup-bench.sock"

NEW_SHAPE = f"""
[eal]
lcores = "0-1"
no_huge = true
memory_mb = 256
file_prefix = "dataplane_startup_bench"

[[port]]
vdev = "net_vhost0,iface={SOCK},queues=2"

[[port]]
vdev = "net_virtio_user0,path={SOCK},queues=2"

[forward]
mode = "io"
tx_first = true
txpkts = [64]
rxq = 2
txq = 2
stats_period = 0.0
"""


def timed_start(cmd: list[str], env: dict, marker: str, timeout: float) -> tuple[float, int, str]:
    """Run ``cmd`` until it exits; (seconds from exec to the first output line containing ``marker``
    (nan if none), progress lines seen, the output's tail)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = float("nan")
    progress = 0
    tail: list[str] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if marker in line and first != first:
                first = time.monotonic() - t0
            if "dataplane: compiling" in line or "dataplane: compiled" in line:
                progress += 1
            tail = (tail + [line])[-20:]
            if time.monotonic() - t0 > timeout:
                break
    finally:
        _end(p)
    return first, progress, "".join(tail)


def _end(p: subprocess.Popen) -> None:
    """Stop our child ``p`` (SIGTERM, then SIGKILL after 30 s) and reap it."""
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def dpdk_start(timeout: float) -> float:
    """dpdk-testpmd, net_vhost + net_virtio_user over one socket, io, tx_first: exec to forwarding."""
    exe = shutil.which("dpdk-testpmd")
    if not exe:
        return float("nan")
    sock = SOCK + ".dpdk"
    cmd = [exe, "-l", "0-1", "--no-pci", "--no-huge", "-m", "512", "--file-prefix", "startup_bench_dpdk",
           f"--vdev=net_vhost0,iface={sock},queues=1", f"--vdev=net_virtio_user0,path={sock},queues=1",
           "--", "--forward-mode=io", "--tx-first", "--auto-start", "--stats-period=1", "--no-mlockall"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got = float("nan")
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if "Start automatic packet forwarding" in line or "io packet forwarding" in line:
                got = time.monotonic() - t0
                break
            if time.monotonic() - t0 > timeout:
                break
    finally:
        _end(p)
        try:
            os.unlink(sock)
        except OSError:
            pass
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds each start may take")
    ap.add_argument("--cache", help="numba cache directory to use (default: a fresh temporary one, removed after)")
    opts = ap.parse_args(argv)
    cache = opts.cache or tempfile.mkdtemp(prefix="dataplane-startup-numba-")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    run = [sys.executable, "-m", "dataplane.cli", "run", "--duration", "1"]
    marker = "forwarding started"
    try:
        cold, cold_progress, tail = timed_start(run, env, marker, opts.timeout)
        print(f"cold      {cold:8.2f} s  (empty cache; {cold_progress} progress lines while compiling)", flush=True)
        if cold != cold:
            print(tail, file=sys.stderr)
        warm, _, tail = timed_start(run, env, marker, opts.timeout)
        print(f"warm      {warm:8.2f} s", flush=True)
        t0 = time.monotonic()
        pre = subprocess.run([sys.executable, "-m", "dataplane.cli", "precompile"], env=env, capture_output=True,
                             text=True, timeout=opts.timeout)
        precompile = time.monotonic() - t0 if pre.returncode == 0 else float("nan")
        steps = sum(1 for line in pre.stderr.splitlines() if line.startswith("dataplane: compil"))
        print(f"precompile {precompile:7.2f} s  (dataplane precompile: 1 and 2 queues per port; "
              f"{steps} progress lines)", flush=True)
        if pre.returncode != 0:
            print(pre.stdout[-2000:] + pre.stderr[-2000:], file=sys.stderr)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(NEW_SHAPE)
        try:
            shape, shape_progress, tail = timed_start(run[:-2] + [f.name, "--duration", "1"], env, marker,
                                                      opts.timeout)
        finally:
            os.unlink(f.name)
        print(f"new shape {shape:8.2f} s  (2 ports x 2 queues after the precompile; "
              f"{shape_progress} progress lines)", flush=True)
        if shape != shape:
            print(tail, file=sys.stderr)
        ref = dpdk_start(120.0)
        print(f"dpdk-testpmd (reference, same port kinds) {ref:.2f} s to forwarding", flush=True)
        if ref == ref and warm == warm and warm > 0:
            print(f"warm_vs_dpdk_ratio={ref / warm:.2f}  (above 1: our warm start is quicker)")
        print(f"precompile_s={precompile:.2f}")
        print(f"warm_start_s={warm:.2f}")
        print(f"new_shape_s={shape:.2f}")
        print(f"cold_start_s={cold:.2f}")
    finally:
        if not opts.cache:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
