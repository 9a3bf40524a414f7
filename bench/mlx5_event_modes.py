#!/usr/bin/env python3
"""The mlx5 vDPA event thread per ``event_mode``: its CPU use at idle and under load, and the guests' ping latency.

Usage::

    python bench/mlx5_event_modes.py [--modes 0,1:100,1:1000,2] [--idle-seconds 10] [--load-seconds 10]
                                     [--pings 100] [--rounds 1]

A mode is ``M`` or ``M:EVENT_US`` (facts §3.6: 0 dynamic timer, 1 fixed timer, the default, 2
interrupts only; ``event_us`` is mode 0's step and mode 1's fixed delay).  For each, in turn:
the emulated ConnectX-6 Dx (``dataplane-nic``, model mlx5, two VFs) and ``dataplane-vdpa -a
0000:00:06.1,class=vdpa,event_mode=M[,event_us=U] -a 0000:00:06.2,...`` (one event thread
per VF, ``vDPA-mlx5-<vid>``: the driver names it for the kernel), and two Linux guests
(QEMU TCG, one queue pair each), 10.0.0.1 (the client) and 10.0.0.2:

1. **idle**: both guests up (they pinged each other once), no traffic: the CPU time
   (the run time of ``/proc/PID/task/TID/schedstat``, else utime + stime of ``stat``) of each
   event thread over ``--idle-seconds``,
   as % of one CPU;
2. **ping idle**: the client pings the server ``--pings`` times, 50 ms apart; the RTTs
   are read from its console;
3. **load**: the client streams zeros over TCP to the server (busybox ``nc``) and
   pings meanwhile: the event threads' CPU over ``--load-seconds``, the RTTs under load, and
   what reached the server's RX virtq in that window (MB/s, the card's queue byte counter).

With ``--rounds N`` the modes take turns N times and a row gives the medians of its rounds
(the RTTs pooled).  The table has one row per mode: each VF's event thread's CPU % (idle, load); the
**completion delay** per VF (median, 90th percentile, max, µs, over every completion of the
run: the driver's figures at stop); the RTT median (and 10th/90th percentiles) in ms idle and
under load; the load's throughput; the driver's counts at stop (guest interrupts, times the
timer thread blocked on the event channel).

The completion delay is what an event mode costs a completion, measured without the guests'
noise: the card stamps each CQE with the time it wrote it (the CQE's timestamp field; the
emulated card's clock is the host's CLOCK_MONOTONIC, in ns) and the event thread subtracts it
from the time it writes the guest's callfd.  Mode 2 and a blocked timer thread pay the event's
delivery (eventfd, epoll, Python: tens of µs); a polling timer thread pays the wait for its
next poll, up to ``event_us`` (about half of it on average) plus a poll's own cost.

How to read it.  Compare the rows of one run only (the same machine, the same load), and
medians.  "Mode 1 adds at most event_us": mode 1's median completion delay minus mode 2's
should stay below ``event_us``; its p90 near ``event_us`` plus mode 2's.  The 2-core machine
with two TCG guests makes the max and the tail scheduler noise (the thread waits for a CPU).
QEMU TCG puts the ping RTT in the milliseconds and makes it noisy: a timer mode's effect on it
(up to ``event_us`` on the echo reply, which arrives while the request's TX completion keeps
the client's thread polling for ``no_traffic_time`` polls) is below that noise for 100 µs and
about at it for 1000 µs; the RTT also carries the polling threads' CPU taken from the
guests.  At idle every mode should block: mode 2 always, modes 0/1 after their empty polls;
an idle CPU share above a few % means the thread polls when it should sleep.

The LAST lines are the headline, mode 2 (measured in the same run) the reference:
``idle_cpu_mode2_pct=<the larger of the two event threads' idle share in mode 2>``,
``added_latency_us=<median completion delay of mode 1 with the largest event_us minus mode
2's (the larger VF's each)>``, ``event_us=<that event_us>`` and ``added_latency_ratio=<the two's
ratio: at most 1 keeps the promise>``; the line before them, ``rtt_added_us``, is the same
difference in ping RTT medians (noise included).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataplane.nic.kernels import Q_BYTES  # noqa: E402
from dataplane.nic.shm import CardShm  # noqa: E402
from dataplane.testing.linux_guest import QEMU, Guest, Nic, guest_image, run_guests  # noqa: E402
from dataplane.testing.nic_card import card_in_runtime  # noqa: E402
from dataplane.testing.vdpa_proc import VdpaProcess  # noqa: E402

VF1, VF2 = "0000:00:06.1", "0000:00:06.2"
A, B = "10.0.0.1", "10.0.0.2"
THREAD_PREFIX = "vDPA-mlx5-"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCRIPT = """
wait_host() {
    _t=$(( $2 * 5 ))
    while ! host_said $1; do
        _t=$(( _t - 1 )); [ $_t -gt 0 ] || fail "the host never said $1"
        sleep 0.2
    done
}
pings() {
    echo "== ping $1 =="
    ping -c $count -i 0.05 -W 5 $peer || true
    echo "== end $1 =="
}
ip addr add $ip/24 dev eth0
ip link set eth0 up
wait_until 60 ping -c 1 -W 1 $peer || fail "no ping reply from $peer"
if [ "$role" = server ]; then
    nc_listen 5002 /dev/null
    echo "bench: up"
    wait_host stop 900
    result done=1
else
    echo "bench: up"
    wait_host ping 900
    pings idle
    wait_host load 900
    (dd if=/dev/zero bs=64k count=1000000 2>/dev/null | nc $peer 5002) &
    LOAD=$!
    echo "bench: loading"
    sleep 1
    pings load
    wait_host stop 900
    kill $LOAD 2>/dev/null || true
    killall nc 2>/dev/null || true
    result done=1
fi
"""


def event_threads(pid: int) -> dict[int, str]:
    """The tids of ``pid``'s mlx5 event threads (the kernel names them ``vDPA-mlx5-<vid>``) and their names."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(THREAD_PREFIX):
            out[int(tid)] = name
    return out


def thread_cpu_s(pid: int, tid: int) -> float | None:
    """The CPU time of thread ``tid`` in seconds (None once it is gone): the scheduler's run time
    (``schedstat``, ns) where the kernel keeps it, else utime + stime of ``stat`` (clock ticks)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_window(pid: int, seconds: float) -> dict[str, float]:
    """Each event thread's CPU share (% of one CPU) over ``seconds``, by thread name (threads alive throughout)."""
    threads = event_threads(pid)
    c0 = {tid: thread_cpu_s(pid, tid) for tid in threads}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    out = {}
    for tid, name in threads.items():
        c1 = thread_cpu_s(pid, tid)
        if c0[tid] is not None and c1 is not None:
            out[name] = 100.0 * (c1 - c0[tid]) / dt
    return out


def rtts(console: str, phase: str) -> list[float]:
    """The ping RTTs (ms) the client printed between ``== ping PHASE ==`` and ``== end PHASE ==``."""
    m = re.search(rf"== ping {phase} ==(.*?)== end {phase} ==", console, re.S)
    return [float(x) for x in re.findall(r"time=([0-9.]+) ms", m.group(1))] if m else []


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def run_mode(image, mode: int, event_us: int | None, args) -> dict:
    devargs = f"class=vdpa,event_mode={mode}" + (f",event_us={event_us}" if event_us is not None else "")
    label = f"{mode}" + (f":{event_us}" if event_us is not None else "")
    print(f"mode {label}: {devargs}", flush=True)
    row: dict = {"label": label, "mode": mode, "event_us": event_us}
    with card_in_runtime(vfs=2, prefix=f"m5e{mode}", model="mlx5") as card:
        with VdpaProcess(allow=[f"{bdf},{devargs}" for bdf in (VF1, VF2)]) as app:
            params = {"count": args.pings}
            guests = [Guest(image, SCRIPT, name=f"ev{mode}g{i}", script_timeout=1200,
                            params={**params, "ip": ip, "peer": peer, "role": role}, nics=[Nic(app.socket(i))])
                      for i, (ip, peer, role) in enumerate(((A, B, "client"), (B, A, "server")))]
            client, server = guests
            with contextlib.ExitStack() as stack:
                for g in guests:
                    stack.enter_context(g)
                for g in guests:
                    g.wait_console(r"^bench: up", 400)
                pid = app.proc.pid
                deadline = time.monotonic() + 30
                while len(event_threads(pid)) < 2 and time.monotonic() < deadline:
                    time.sleep(0.2)
                row["threads"] = sorted(event_threads(pid).values())
                time.sleep(args.settle)
                row["idle_cpu"] = cpu_window(pid, args.idle_seconds)
                print(f"  idle: event threads' CPU % {_fmt_cpu(row['idle_cpu'])}", flush=True)
                client.tell("ping")
                client.wait_console(r"^== end idle ==", 120)
                client.tell("load")
                client.wait_console(r"^bench: loading", 120)
                shm = CardShm(os.path.join(card.dir, "counters"))
                try:
                    rx0, t0 = int(shm.queues[1][0, Q_BYTES]), time.monotonic()  # the server's RX virtq
                    row["load_cpu"] = cpu_window(pid, args.load_seconds)
                    row["load_mbps"] = (int(shm.queues[1][0, Q_BYTES]) - rx0) / 1e6 / (time.monotonic() - t0)
                finally:
                    shm.close()
                print(f"  load: event threads' CPU % {_fmt_cpu(row['load_cpu'])}, {row['load_mbps']:.2f} MB/s "
                      "to the server", flush=True)
                client.wait_console(r"^== end load ==", 120)
                client.tell("stop")
                server.tell("stop")
                results = run_guests(*guests)
                for r in results:
                    if not r.passed:
                        raise RuntimeError(f"guest failed: {r.line}\n{r.console[-3000:]}\n{app.output[-3000:]}")
                figures = app.stop()
    row["rtt_idle"] = rtts(results[0].console, "idle")
    row["rtt_load"] = rtts(results[0].console, "load")
    devs = {k: f for k, f in sorted(figures.get("devices", {}).items()) if isinstance(f, dict)}
    row["interrupts"] = sum(int(f.get("interrupts", 0)) for f in devs.values())
    row["blocks"] = sum(int(f.get("event_thread_blocks", 0)) for f in devs.values())
    row["delay"] = [f.get("completion_delay_us", {}) for f in devs.values()]
    print(f"  ping idle median {median(row['rtt_idle']):.3f} ms ({len(row['rtt_idle'])} replies), "
          f"under load {median(row['rtt_load']):.3f} ms ({len(row['rtt_load'])}); load {row['load_mbps']:.2f} MB/s; "
          f"interrupts {row['interrupts']}, blocks {row['blocks']}; completion delays µs {row['delay']}", flush=True)
    return row


def _fmt_cpu(cpu: dict[str, float]) -> str:
    return " / ".join(f"{v:.2f}" for _k, v in sorted(cpu.items())) or "-"


def _fmt_delay(delays: list[dict], key: str) -> str:
    return " / ".join(f"{d[key]:.0f}" if key in d else "-" for d in delays) or "-"


def delay_of(row: dict, key: str) -> float:
    """The larger of the two VFs' completion delay ``key`` (µs)."""
    return max((d[key] for d in row["delay"] if key in d), default=float("nan"))


def merge(runs: list[dict]) -> dict:
    """One row from a mode's rounds: medians of the CPU shares, throughput, counts and each VF's delay figures;
    the RTTs pooled."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[0])
    for key in ("idle_cpu", "load_cpu"):
        names = sorted({n for r in runs for n in r[key]})
        row[key] = {n: median(r[key][n] for r in runs if n in r[key]) for n in names}
    for key in ("rtt_idle", "rtt_load"):
        row[key] = [x for r in runs for x in r[key]]
    for key in ("load_mbps", "interrupts", "blocks"):
        row[key] = median(r[key] for r in runs)
    nvf = max(len(r["delay"]) for r in runs)
    row["delay"] = [{k: median(r["delay"][i][k] for r in runs if i < len(r["delay"]) and k in r["delay"][i])
                     for k in ("n", "median", "p90", "p99", "max")
                     if any(i < len(r["delay"]) and k in r["delay"][i] for r in runs)} for i in range(nvf)]
    return row


def parse_modes(text: str) -> list[tuple[int, int | None]]:
    out = []
    for item in text.split(","):
        mode, _, us = item.strip().partition(":")
        out.append((int(mode), int(us) if us else None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="0,1:100,1:1000,2", help="M or M:EVENT_US, comma-separated")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--load-seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after both guests are up, before the idle window")
    ap.add_argument("--pings", type=int, default=100, help="pings per phase, 50 ms apart")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times each mode is measured, the modes taking turns; a row gives the rounds' medians")
    args = ap.parse_args()
    if QEMU is None:
        print("qemu-system-x86_64 not found (Debian package qemu-system-x86)", file=sys.stderr)
        return 2
    image = guest_image()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    modes = parse_modes(args.modes)
    runs: dict = {m: [] for m in modes}
    for rnd in range(args.rounds):
        for mode, us in modes:  # the modes take turns, so a change of load on the machine hits them all
            if args.rounds > 1:
                print(f"round {rnd + 1}/{args.rounds}", flush=True)
            runs[(mode, us)].append(run_mode(image, mode, us, args))
    rows = [merge(runs[m]) for m in modes]
    print(f"load average at end: {os.getloadavg()}", flush=True)
    print()
    print("| mode | event_us | idle CPU % (per VF) | load CPU % (per VF) | completion delay µs median (per VF) "
          "| p90 | max | RTT idle ms median (p10-p90) | RTT load ms median (p10-p90) | load MB/s | interrupts "
          "| blocks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        us = "-" if r["event_us"] is None else str(r["event_us"])
        ri, rl = r["rtt_idle"], r["rtt_load"]
        print(f"| {r['mode']} | {us} | {_fmt_cpu(r['idle_cpu'])} | {_fmt_cpu(r['load_cpu'])} "
              f"| {_fmt_delay(r['delay'], 'median')} | {_fmt_delay(r['delay'], 'p90')} "
              f"| {_fmt_delay(r['delay'], 'max')} "
              f"| {median(ri):.3f} ({pct(ri, 0.1):.3f}-{pct(ri, 0.9):.3f}) "
              f"| {median(rl):.3f} ({pct(rl, 0.1):.3f}-{pct(rl, 0.9):.3f}) "
              f"| {r['load_mbps']:.2f} | {r['interrupts']:.0f} | {r['blocks']:.0f} |")
    print()
    m2 = [r for r in rows if r["mode"] == 2]
    m1 = sorted((r for r in rows if r["mode"] == 1 and r["event_us"]), key=lambda r: r["event_us"])
    idle2 = max(m2[0]["idle_cpu"].values(), default=float("nan")) if m2 else float("nan")
    if m1 and m2:
        us = m1[-1]["event_us"]
        rtt = (median(m1[-1]["rtt_idle"]) - median(m2[0]["rtt_idle"])) * 1000.0
        print(f"rtt_added_us={rtt:.0f} (mode 1, event_us={us}, minus mode 2: ping RTT medians, TCG noise included)")
        added = delay_of(m1[-1], "median") - delay_of(m2[0], "median")
        print(f"idle_cpu_mode2_pct={idle2:.2f}")
        print(f"added_latency_us={added:.0f}")
        print(f"event_us={us}")
        print(f"added_latency_ratio={added / us:.2f}")
    else:
        print(f"idle_cpu_mode2_pct={idle2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
