"""``dataplane-nic``: run, list and stop emulated cards.

::

    dataplane-nic start ifcvf --pf 0000:00:05.0 --vfs N [--mac-base MAC] [--queue-pairs P]
                              [--file-prefix P] [--daemon] [--log-level L]
    dataplane-nic start mlx5 --pf 0000:00:06.0 --vfs N [same options]
    dataplane-nic show [--file-prefix P] [-j]
    dataplane-nic stop PF [--file-prefix P]
    dataplane-nic link PF VF up|down [--file-prefix P]

``start`` runs a card (``ifcvf``: :mod:`dataplane.nic.card`; ``mlx5``, a ConnectX-6 Dx:
:mod:`dataplane.nic.mlx5.card`) in the foreground until SIGTERM / SIGINT (``stop``
sends SIGTERM); it prints ``ready <card dir>`` on stdout once every VF's files
exist.  ``--daemon`` forks: the command returns once the card is ready, and
the card runs on in the background (its log goes to ``<card dir>.log``,
removed by ``stop``).  A stopped card removes its directory.  The card
directory is ``<runtime parent>[/<file prefix>]/nic-<pf>`` (runtime parent:
``$DATAPLANE_RUNTIME_DIR``, else as :mod:`dataplane.memory.runtime` says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

from dataplane import log as dplog
from dataplane.lcores.usage import UsageParser
from dataplane.perf_map import write_perf_map_if_wanted
from dataplane._jitcache import init_target
from dataplane.memory.runtime import runtime_parent, validate_prefix

from .pci import BarFile, CC, DEVICE_OFF, parse_bdf

__all__ = ["main", "cards_parent", "list_cards"]

DEFAULT_MAC_BASE = "02:00:00:00:00:01"
STOP_WAIT_S = 20.0
DEFAULT_PAIRS = {"ifcvf": 4, "mlx5": 16}


def cards_parent(prefix: str | None) -> str:
    parent = runtime_parent()
    return os.path.join(parent, validate_prefix(prefix)) if prefix else parent


def _parse_mac(s: str) -> bytes:
    parts = s.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"bad MAC {s!r}")
    return bytes(int(p, 16) for p in parts)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(card: str) -> int:
    try:
        with open(os.path.join(card, "pid")) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_STATUS_NAMES = ((0x01, "ACK"), (0x02, "DRIVER"), (0x08, "FEATURES_OK"), (0x04, "DRIVER_OK"),
                 (0x40, "NEEDS_RESET"), (0x80, "FAILED"))


def list_cards(parent: str) -> list[dict]:
    """The cards under ``parent`` and their VFs (read from their files)."""
    from .kernels import QUEUE_COUNTER_NAMES, Q_FAULTS, Q_RUNNING
    from .shm import HDR_PAIRS, VF_COUNTER_NAMES, CardShm, V_CONNECTED, V_FAULTS, V_MAC, V_STATUS

    out = []
    if not os.path.isdir(parent):
        return out
    for name in sorted(os.listdir(parent)):
        d = os.path.join(parent, name)
        if not name.startswith("nic-") or not os.path.isdir(d):
            continue
        pid = _read_pid(d)
        try:
            shm = CardShm(os.path.join(d, "counters"))
        except (OSError, ValueError):
            shm = None
        model = shm.model if shm is not None else "unknown"
        card = {"pf": name[4:], "dir": d, "pid": pid, "running": bool(pid) and _alive(pid), "model": model,
                "vfs": []}
        vfs = sorted(v for v in os.listdir(d) if os.path.isdir(os.path.join(d, v)))
        for i, bdf in enumerate(vfs):
            if model != "mlx5":
                try:
                    b0 = BarFile(os.path.join(d, bdf, "resource0"))
                except (OSError, ValueError):
                    continue
                mac = ":".join(f"{x:02x}" for x in b0.u8[DEVICE_OFF : DEVICE_OFF + 6])
                st = b0.r8(CC.DEVICE_STATUS)
                nq, pairs = b0.r16(CC.NUM_QUEUES), b0.r16(DEVICE_OFF + 8)
                b0.close()
            elif shm is not None and i < shm.nvfs:  # mlx5: no virtio registers; the card's words say it
                m = int(shm.vf[i][V_MAC])
                mac = ":".join(f"{(m >> (8 * (5 - k))) & 0xFF:02x}" for k in range(6))
                st = int(shm.vf[i][V_STATUS])
                pairs = int(shm.hdr[HDR_PAIRS])
                nq = 2 * pairs
            else:
                continue
            vf = {"bdf": bdf, "mac": mac, "status": st,
                  "status_names": [n for bit, n in _STATUS_NAMES if st & bit] if model != "mlx5" else [],
                  "num_queues": nq, "max_queue_pairs": pairs}
            if shm is not None and i < shm.nvfs:
                rows = shm.queues[i]
                vf["queues_running"] = [q for q in range(vf["num_queues"]) if rows[q][Q_RUNNING]]
                vf["queue_faults"] = {q: int(rows[q][Q_FAULTS]) for q in range(vf["num_queues"]) if rows[q][Q_FAULTS]}
                vf["driver"] = bool(shm.vf[i][V_CONNECTED])
                vf["faults"] = int(shm.vf[i][V_FAULTS])
                vf["counters"] = {n: int(shm.vf[i][k]) for k, n in enumerate(VF_COUNTER_NAMES)}
                vf["queue_counters"] = {
                    str(q): {n: int(rows[q][k]) for k, n in enumerate(QUEUE_COUNTER_NAMES)}
                    for q in range(vf["num_queues"]) if rows[q].any()}
            card["vfs"].append(vf)
        if shm is not None:
            card["fdb"] = shm.fdb_entries()
            shm.close()
        out.append(card)
    return out


def _show(args) -> int:
    cards = list_cards(cards_parent(args.file_prefix))
    if args.json:
        print(json.dumps({"cards": cards}))
        return 0
    for c in cards:
        state = f"pid {c['pid']}" if c["running"] else "not running (stale: `dataplane-nic stop` cleans it)"
        print(f"card {c['pf']} {c['model']} {state} vfs {len(c['vfs'])}")
        for v in c["vfs"]:
            names = "|".join(v["status_names"]) or ("RESET" if c["model"] != "mlx5" else "-")
            q = ",".join(str(x) for x in v.get("queues_running", [])) or "-"
            drv = "driver" if v.get("driver") else "no driver"
            print(f"  {v['bdf']} mac {v['mac']} status {v['status']:#04x} ({names}) {drv} "
                  f"queues {v['num_queues']} running {q} faults {v.get('faults', 0)}")
    return 0


def _stop(args) -> int:
    parse_bdf(args.pf)
    parent = cards_parent(args.file_prefix)
    d = os.path.join(parent, f"nic-{args.pf}")
    if not os.path.isdir(d):
        print(f"dataplane-nic: no card {args.pf} under {parent}", file=sys.stderr)
        return 1
    pid = _read_pid(d)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            print(f"dataplane-nic: card {args.pf} (pid {pid}) did not stop", file=sys.stderr)
            return 1
    shutil.rmtree(d, ignore_errors=True)  # a card that was killed leaves its directory
    try:
        os.unlink(d + ".log")
    except FileNotFoundError:
        pass
    return 0


def _link(args) -> int:
    import socket

    parse_bdf(args.pf)
    parse_bdf(args.vf)
    path = os.path.join(cards_parent(args.file_prefix), f"nic-{args.pf}", "card.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5.0)
    try:
        s.connect(path)
        s.send(json.dumps({"op": "link", "vf": args.vf, "up": args.state == "up"}).encode())
        reply = json.loads(s.recv(65536))
    except OSError as e:
        print(f"dataplane-nic: card {args.pf}: {e}", file=sys.stderr)
        return 1
    finally:
        s.close()
    if not reply.get("ok"):
        print(f"dataplane-nic: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0


def _start(args) -> int:
    from .card import Card
    from .cardproc import install_signals
    from .kernels import warm_up, warm_up_switch
    from .mlx5.steer import warm_up_steer
    from .mlx5.card import Mlx5Card

    parse_bdf(args.pf)
    mac = _parse_mac(args.mac_base)
    parent = cards_parent(args.file_prefix)
    os.makedirs(parent, exist_ok=True)
    ready_w = -1
    if args.daemon:
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            with os.fdopen(r) as f:
                line = f.readline().strip()
            if not line.startswith("ready"):
                print(f"dataplane-nic: the card did not start: {line}", file=sys.stderr)
                return 1
            print(line, flush=True)
            return 0
        os.close(r)
        os.setsid()
        ready_w = w
        logf = os.open(os.path.join(parent, f"nic-{args.pf}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(logf, 1)
        os.dup2(logf, 2)
        os.close(devnull)
        os.close(logf)
    try:
        init_target()  # numba's target without its BLAS probe (0.2 s of every card start)
        warm_up()
        warm_up_switch(args.vfs)
        if args.model == "mlx5":
            warm_up_steer()
        cls = Mlx5Card if args.model == "mlx5" else Card
        pairs = args.queue_pairs if args.queue_pairs is not None else DEFAULT_PAIRS[args.model]
        card = cls(parent, args.pf, args.vfs, mac_base=mac, pairs=pairs)
        write_perf_map_if_wanted()
    except (ValueError, OSError) as e:
        msg = f"dataplane-nic: {e}"
        print(msg, file=sys.stderr)
        if ready_w >= 0:
            os.write(ready_w, (msg + "\n").encode())
            os._exit(1)
        return 1
    install_signals(card)
    try:
        card.write_pid()
        line = f"ready {card.dir}\n"
        if ready_w >= 0:
            os.write(ready_w, line.encode())
            os.close(ready_w)
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
        card.run()
    finally:
        card.close()
    if ready_w >= 0:
        os._exit(0)
    return 0


def main(argv=None) -> int:
    ap = UsageParser("dataplane-nic", description="Emulated vDPA-capable NICs.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    st = sub.add_parser("start", help="run a card")
    st.add_argument("model", choices=["ifcvf", "mlx5"])
    st.add_argument("--pf", required=True, help="the PF's PCI address; VFs are the following functions")
    st.add_argument("--vfs", type=int, required=True)
    st.add_argument("--mac-base", default=DEFAULT_MAC_BASE, help="VF i gets this MAC + i")
    st.add_argument("--queue-pairs", type=int, default=None,
                    help="queue pairs of each VF (1..32; ifcvf: max_virtqueue_pairs, default 4; mlx5: "
                         "max_num_virtio_queues / 2, default 16)")
    st.add_argument("--file-prefix", default=None)
    st.add_argument("--daemon", action="store_true", help="return once ready; the card runs in the background")
    st.add_argument("--log-level", default="info")
    sh = sub.add_parser("show", help="list the cards and their VFs")
    sh.add_argument("--file-prefix", default=None)
    sh.add_argument("-j", "--json", action="store_true")
    sp = sub.add_parser("stop", help="stop a card")
    sp.add_argument("pf")
    sp.add_argument("--file-prefix", default=None)
    lk = sub.add_parser("link", help="set a VF's link up or down (the driver gets a config interrupt)")
    lk.add_argument("pf")
    lk.add_argument("vf")
    lk.add_argument("state", choices=["up", "down"])
    lk.add_argument("--file-prefix", default=None)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "start":
            dplog.configure_logging([(None, args.log_level)])
            return _start(args)
        if args.cmd == "show":
            return _show(args)
        if args.cmd == "link":
            return _link(args)
        return _stop(args)
    except ValueError as e:
        print(f"dataplane-nic: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
