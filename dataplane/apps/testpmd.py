"""``dataplane [EAL options] -- [testpmd options]``: the forwarding engine driven like ``dpdk-testpmd``.

Application options (testpmd's names and meanings): ``-i`` (interactive
shell on stdin), ``-a/--auto-start``, ``--forward-mode=MODE``,
``--nb-cores=N``, ``--rxq=N``, ``--txq=N``, ``--rxd=N``, ``--txd=N``,
``--burst=N``, ``--tx-first``, ``--stats-period=S``, ``--txpkts=L[,L...]``,
``--txonly-multi-flow``, ``--no-flush-rx``, ``--total-num-mbufs=N``,
``--eth-peer=PORT,MAC``.

Without ``-i`` forwarding starts at once and runs until SIGINT/SIGTERM,
printing port statistics every ``--stats-period`` seconds; the forward
statistics summary is printed on exit.  With ``-i`` the shell reads
commands from stdin (so they can be piped in); output is shaped like
testpmd's, with the same field names, so scripts written for testpmd
parse it.
"""

from __future__ import annotations

import argparse
import sys
import time

from dataplane.apps.engine import Engine, FwdConfig, mac_str
from dataplane.apps.fwd_loop import MODES
from dataplane.config import MAX_MBUF_SIZE, MAX_PKT_LEN, MIN_MBUF_SIZE, MIN_PKT_LEN, PORT_TOPOLOGIES
from dataplane.ethdev import EthdevError
from dataplane.lcores.usage import UsageParser

__all__ = ["app_parser", "fwd_config", "run", "Shell"]

PROMPT = "testpmd> "


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"lengths must be positive: {text!r}")
    return out


def _eth_peer(text: str) -> tuple[int, str]:
    port, _, mac = text.partition(",")
    try:
        pid = int(port)
        parts = mac.split(":")
        if len(parts) != 6 or any(not 0 <= int(p, 16) <= 255 for p in parts):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT,XX:XX:XX:XX:XX:XX, got {text!r}") from None
    return pid, mac


def app_parser() -> UsageParser:
    """testpmd's options (after ``--``); ``-h``/``--help`` print the EAL options too."""
    p = UsageParser("dataplane", eal=True, app="testpmd", description="testpmd-compatible forwarding")
    p.add_argument("-i", "--interactive", action="store_true", help="interactive shell on stdin")
    p.add_argument("-a", "--auto-start", action="store_true", help="start forwarding at once (with -i)")
    p.add_argument("--forward-mode", default="io", metavar="MODE", help=f"one of {', '.join(sorted(MODES))}")
    p.add_argument("--nb-cores", type=int, default=None, metavar="N", help="forwarding lcores (default: all workers)")
    p.add_argument("--rxq", type=int, default=1, metavar="N", help="RX queues per port")
    p.add_argument("--txq", type=int, default=1, metavar="N", help="TX queues per port")
    p.add_argument("--rxd", type=int, default=256, metavar="N", help="accepted; vhost ring sizes come from the guest")
    p.add_argument("--txd", type=int, default=256, metavar="N", help="accepted; vhost ring sizes come from the guest")
    p.add_argument("--burst", type=int, default=32, metavar="N", help="packets per burst (1-512)")
    p.add_argument("--tx-first", action="store_true", help="send a first burst before forwarding")
    p.add_argument("--stats-period", type=float, default=0.0, metavar="S",
                   help="print port statistics every S seconds (without -i)")
    p.add_argument("--txpkts", type=_int_list, default=[64], metavar="L[,L...]", help="txonly packet segment lengths")
    p.add_argument("--txonly-multi-flow", action="store_true", help="txonly: vary the source IP per packet")
    p.add_argument("--no-flush-rx", action="store_true", help="accepted; nothing is flushed at start")
    p.add_argument("--total-num-mbufs", type=int, default=8192, metavar="N", help="mbufs in the pool")
    p.add_argument("--mbuf-size", type=_int_list, default=None, metavar="N[,N...]",
                   help=f"mbuf data room in bytes, headroom included, {MIN_MBUF_SIZE}-{MAX_MBUF_SIZE} (default: 2176; "
                        "one pool: a list's first size)")
    p.add_argument("--max-pkt-len", type=int, default=None, metavar="N",
                   help=f"largest frame to receive, {MIN_PKT_LEN}-{MAX_PKT_LEN} bytes: sizes virtio-user Rx buffers "
                        "(default: 1518, or the --txpkts total)")
    p.add_argument("--port-topology", choices=PORT_TOPOLOGIES, default="paired",
                   help="paired (0<->1, 2<->3, ...), chained (0->1->...->0) or loop (each port to itself)")
    p.add_argument("--eth-peer", type=_eth_peer, action="append", default=[], metavar="PORT,MAC",
                   help="destination MAC of the mac forwarding mode for PORT")
    p.add_argument("--demo", action="store_true", help="run the launcher demo instead")
    p.add_argument("--demo-count", type=int, default=1_000_000, metavar="N", help="increments per lcore in the demo")
    return p


def fwd_config(opts) -> FwdConfig:
    return FwdConfig(
        mode=opts.forward_mode, nb_cores=opts.nb_cores, rxq=opts.rxq, txq=opts.txq, burst=opts.burst,
        txpkts=list(opts.txpkts), eth_peer=dict(opts.eth_peer), total_num_mbufs=opts.total_num_mbufs,
        txonly_multi_flow=opts.txonly_multi_flow, tx_first=opts.tx_first, stats_period=opts.stats_period,
        port_topology=opts.port_topology, mbuf_size=opts.mbuf_size[0] if opts.mbuf_size else None,
        max_pkt_len=opts.max_pkt_len,
    )


# -- output, shaped like testpmd's -----------------------------------------------------


def format_port_stats(eng: Engine, pid: int, last: dict) -> str:
    s = eng.port_stats(pid)
    now = time.monotonic()
    prev = last.get(pid)
    rx_pps = tx_pps = rx_bps = tx_bps = 0
    if prev is not None and now > prev[0]:
        dt = now - prev[0]
        rx_pps = int((s["ipackets"] - prev[1]["ipackets"]) / dt)
        tx_pps = int((s["opackets"] - prev[1]["opackets"]) / dt)
        rx_bps = int((s["ibytes"] - prev[1]["ibytes"]) * 8 / dt)
        tx_bps = int((s["obytes"] - prev[1]["obytes"]) * 8 / dt)
    last[pid] = (now, s)
    return (
        f"\n  ######################## NIC statistics for port {pid}  ########################\n"
        f"  RX-packets: {s['ipackets']:<10} RX-missed: {s['imissed']:<10} RX-bytes:  {s['ibytes']}\n"
        f"  RX-errors: {s['ierrors']}\n"
        f"  RX-nombuf:  {s['rx_nombuf']:<10}\n"
        f"  TX-packets: {s['opackets']:<10} TX-errors: {s['oerrors']:<10} TX-bytes:  {s['obytes']}\n"
        "\n  Throughput (since last show)\n"
        f"  Rx-pps: {rx_pps:>12}          Rx-bps: {rx_bps:>12}\n"
        f"  Tx-pps: {tx_pps:>12}          Tx-bps: {tx_bps:>12}\n"
        "  ############################################################################\n"
    )


def _fwd_block(title: str, rx: int, dropped_rx: int, tx: int, dropped_tx: int, bar: str) -> str:
    return (
        f"  {title}\n"
        f"  RX-packets: {rx:<14} RX-dropped: {dropped_rx:<14} RX-total: {rx + dropped_rx}\n"
        f"  TX-packets: {tx:<14} TX-dropped: {dropped_tx:<14} TX-total: {tx + dropped_tx}\n"
        f"  {bar}\n"
    )


def format_forward_stats(eng: Engine, fs: dict) -> str:
    out = ["\n"]
    for pid in range(eng.nb_ports):
        rx = sum(s["rx"] for s in fs["streams"] if s["rx_port"] == pid)
        tx = sum(s["tx"] for s in fs["streams"] if s["tx_port"] == pid)
        dropped = sum(s["dropped"] for s in fs["streams"] if s["tx_port"] == pid)
        out.append(_fwd_block(f"---------------------- Forward statistics for port {pid}  ----------------------",
                              rx, 0, tx, dropped, "-" * 76))
        out.append("\n")
    out.append(_fwd_block("+++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++",
                          fs["rx"], 0, fs["tx"], fs["dropped"], "+" * 76))
    return "".join(out)


def format_port_info(eng: Engine, pid: int) -> str:
    p = eng.ports[pid]
    ls = p.link_status()
    up = eng.link_up(pid)
    return (
        f"\n********************* Infos for port {pid}  *********************\n"
        f"MAC address: {mac_str(p.mac)}\n"
        f"Device name: {p.name}\n"
        f"Link status: {'up' if up else 'down'}\n"
        f"Link speed: {ls.get('link_speed', 0) if up else 'None'} Mbps\n"
        f"Link duplex: {ls.get('link_duplex', 'full-duplex')}\n"
        f"Current number of RX queues: {eng.fwd.rxq}\n"
        f"Current number of TX queues: {eng.fwd.txq}\n"
    )


def format_fwd_config(eng: Engine) -> str:
    """testpmd's ``show config fwd``: the streams of each forwarding lcore, in ``--port-topology`` order."""
    lcores = sorted({s.lcore for s in eng.streams})
    out = [f"{eng.fwd.mode} packet forwarding - ports={eng.nb_ports} - cores={len(lcores)} - "
           f"streams={len(eng.streams)} - port topology={eng.fwd.port_topology}\n"]
    for lc in lcores:
        streams = [s for s in eng.streams if s.lcore == lc]
        out.append(f"Logical Core {lc} (socket 0) forwards packets on {len(streams)} streams:\n")
        out += [f"  RX P={s.rx_port}/Q={s.rx_queue} (socket 0) -> TX P={s.tx_port}/Q={s.tx_queue} (socket 0) "
                f"peer={mac_str(eng.peer_mac(s.tx_port))}\n" for s in streams]
    return "".join(out) + "\n"


class Shell:
    """testpmd's interactive commands over an :class:`Engine` (``handle(line)`` returns the output text)."""

    def __init__(self, eng: Engine):
        self.eng = eng
        self.last: dict = {}

    def _ports(self, which: str) -> list[int]:
        if which == "all":
            return list(range(self.eng.nb_ports))
        pid = int(which)
        if not 0 <= pid < self.eng.nb_ports:
            raise ValueError(f"Invalid port {pid}")
        return [pid]

    def handle(self, line: str) -> str | None:
        """Run one command; None means quit."""
        w = line.split()
        if not w:
            return ""
        eng = self.eng
        try:
            if w == ["quit"] or w == ["exit"]:
                return None
            if w[0] == "start":
                if eng.running:
                    return "Packet forwarding already started\n"
                tx_first = 0
                if len(w) >= 2 and w[1] == "tx_first":
                    tx_first = int(w[2]) if len(w) >= 3 else 1
                    if not 1 <= tx_first <= 64:
                        return "tx_first burst count must be in 1..64\n"
                eng.start(tx_first=tx_first)
                return f"{eng.fwd.mode} packet forwarding - ports={eng.nb_ports} - cores={len({s.lcore for s in eng.streams})} - streams={len(eng.streams)}\n"
            if w == ["stop"]:
                if not eng.running:
                    return "Packet forwarding not started\n"
                fs = eng.stop()
                return "Telling cores to stop...\nWaiting for lcores to finish...\n" + format_forward_stats(eng, fs) + "\nDone.\n"
            if w[:3] == ["show", "port", "stats"] and len(w) == 4:
                return "".join(format_port_stats(eng, p, self.last) for p in self._ports(w[3]))
            if w[:3] == ["show", "port", "xstats"] and len(w) == 4:
                out = []
                for p in self._ports(w[3]):
                    out.append(f"###### NIC extended statistics for port {p}\n")
                    out += [f"{k}: {v}\n" for k, v in eng.xstats(p).items()]
                return "".join(out)
            if w == ["show", "config", "fwd"]:
                return format_fwd_config(eng)
            if w[:3] == ["show", "port", "info"] and len(w) == 4:
                return "".join(format_port_info(eng, p) for p in self._ports(w[3]))
            if w[:3] == ["clear", "port", "stats"] and len(w) == 4:
                out = []
                for p in self._ports(w[3]):
                    eng.clear_port_stats(p)
                    self.last.pop(p, None)
                    out.append(f"\n  NIC statistics for port {p} cleared\n")
                return "".join(out)
            if w[0] == "port" and len(w) == 3 and w[1] in ("stop", "start"):
                out = []
                for p in self._ports(w[2]):
                    if w[1] == "stop":
                        eng.port_stop(p)
                        out.append(f"Stopping ports...\nPort {p}: stopped\nDone\n")
                    else:
                        eng.port_start(p)
                        out.append(f"Port {p}: {mac_str(eng.ports[p].mac)}\nChecking link statuses...\nDone\n")
                return "".join(out)
            if w[:2] == ["set", "fwd"] and len(w) == 3:
                if w[2] not in MODES:
                    return f"Invalid forwarding mode {w[2]!r} (known: {' '.join(sorted(MODES))})\n"
                if eng.running:
                    return "Please stop forwarding first\n"
                eng.fwd.mode = w[2]
                return f"Set {w[2]} packet forwarding mode\n"
            if w[:2] == ["set", "burst"] and len(w) == 3:
                n = int(w[2])
                if not 1 <= n <= 512:
                    return f"burst must be >= 1 && <= 512\n"
                eng.fwd.burst = n
                return "Number of packets per burst set to %d\n" % n
            if w[:2] == ["set", "txpkts"] and len(w) == 3:
                eng.fwd.txpkts = _int_list(w[2])
                return ""
            return f"Bad arguments: unknown command {line.strip()!r}\n"
        except (ValueError, EthdevError, argparse.ArgumentTypeError) as e:
            return f"Bad arguments: {e}\n"


def run(eal, opts) -> int:
    """Build the engine from the EAL's vdevs and run it (shell or until a signal)."""
    from dataplane.compile_progress import show_compile_progress

    try:
        with show_compile_progress():  # a cold cache compiles the loop here: say so while it does
            eng = Engine(eal, fwd_config(opts))
    except (EthdevError, ValueError) as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    with eng:
        if opts.interactive:
            return _interactive(eng, opts)
        return _batch(eng, opts)


def _interactive(eng: Engine, opts) -> int:
    sh = Shell(eng)
    print("Interactive-mode selected", flush=True)
    if opts.auto_start:
        print(sh.handle("start tx_first" if opts.tx_first else "start"), end="", flush=True)
    while True:
        print(PROMPT, end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        out = sh.handle(line)
        if out is None:
            break
        print(out, end="", flush=True)
    eng.eal.mark_exiting()  # a successor started on "Bye..." waits for our teardown
    if eng.running:
        print(sh.handle("stop"), end="", flush=True)
    print("Bye...", flush=True)
    return 0


def _batch(eng: Engine, opts) -> int:
    sh = Shell(eng)
    print(sh.handle("start tx_first" if opts.tx_first else "start"), end="", flush=True)
    stop = eng.launcher.stop_flag
    next_stats = time.monotonic() + opts.stats_period if opts.stats_period > 0 else None
    try:
        while not stop[0]:
            time.sleep(0.05)
            if next_stats is not None and time.monotonic() >= next_stats:
                next_stats += opts.stats_period
                print(sh.handle("show port stats all"), end="", flush=True)
    except KeyboardInterrupt:
        pass
    eng.eal.mark_exiting()
    print(sh.handle("stop"), end="", flush=True)
    print("Bye...", flush=True)
    return 0
