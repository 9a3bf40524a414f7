"""``dataplane run [FILE.toml] [--duration S]``: run the engine from a config file.

Without a file it runs the embedded default configuration
(:data:`DEFAULT_CONFIG`, also shipped as ``configs/default.toml``).  A
progress line every ``[forward] stats_period`` seconds; on exit (duration
over, or SIGINT/SIGTERM) a summary: packets forwarded, Mpps, Gbit/s, drops.
Config errors: one line (``file:line: key.path: reason``), exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources

from dataplane.config import ConfigError, load_config
from dataplane.lcores.usage import UsageParser

__all__ = ["main", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "default.toml"  # in the dataplane.configs package


def default_config_text() -> str:
    return resources.files("dataplane.configs").joinpath(DEFAULT_CONFIG).read_text()


def _parser() -> argparse.ArgumentParser:
    from dataplane.config import SCHEMA

    sections = [(f"[{'[' if t.array else ''}{t.name}{']' if t.array else ''}] settings of FILE.toml ({t.doc.rstrip('.')})",
                 [(f.name, f.doc or "") for f in t.fields]) for t in SCHEMA.tables]
    p = UsageParser("dataplane run", head="[FILE.toml] [options]", sections=sections,
                    description="Run the forwarding engine from a TOML config: EAL settings, ports, forwarding.")
    p.add_argument("config", nargs="?", metavar="FILE.toml",
                   help="the configuration (default: the embedded default configuration)")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="seconds to forward (0: until SIGINT)")
    return p


def _rate(n: int, seconds: float) -> float:
    return n / seconds / 1e6 if seconds > 0 else 0.0


def main(argv: list[str]) -> int:
    p = _parser()
    try:
        opts = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        cfg = load_config(opts.config) if opts.config else load_config(default_config_text())
    except ConfigError as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dataplane: {opts.config}: {e.strerror}", file=sys.stderr)
        return 2
    from dataplane.apps.embedded import Engine
    from dataplane.ethdev import EthdevError
    from dataplane.memory.errors import MemoryLayerError

    from dataplane.compile_progress import show_compile_progress

    try:
        with show_compile_progress():  # a cold cache compiles the loop here: say so while it does
            eng = Engine(cfg, handle_signals=True)
    except (EthdevError, ValueError) as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 2
    except (MemoryLayerError, OSError) as e:
        print(f"dataplane: {e}", file=sys.stderr)
        return 1
    with eng:
        names = ", ".join(f"{i}:{p.name}" for i, p in enumerate(eng.ports))
        print(f"dataplane: ports {names}; forwarding mode {cfg.forward.mode}", flush=True)
        period = cfg.forward.stats_period or 0.0
        stop = eng.eal.launcher.stop_flag
        try:
            eng.start()
            t0 = last_t = time.monotonic()
            last = eng.stats()["forward"]
            next_line = t0 + period if period > 0 else None
            while not stop[0]:
                now = time.monotonic()
                if opts.duration and now - t0 >= opts.duration:
                    break
                if next_line is not None and now >= next_line:
                    f = eng.stats()["forward"]
                    print(f"  {now - t0:6.1f}s  rx {_rate(f['rx'] - last['rx'], now - last_t):7.3f} Mpps  "
                          f"tx {_rate(f['tx'] - last['tx'], now - last_t):7.3f} Mpps  "
                          f"total rx {f['rx']}  dropped {f['dropped']}", flush=True)
                    last, last_t = f, now
                    next_line += period
                time.sleep(0.02)
        except KeyboardInterrupt:
            pass
        seconds = time.monotonic() - t0
        stats = eng.stop()
    f = stats["forward"]
    tx_bytes = sum(p["obytes"] for p in stats["ports"])
    print(f"summary: {seconds:.1f} s, forwarded {f['tx']} packets ({_rate(f['tx'], seconds):.3f} Mpps, "
          f"{tx_bytes * 8 / seconds / 1e9 if seconds else 0:.3f} Gbit/s), received {f['rx']}, dropped {f['dropped']}",
          flush=True)
    return 0
