"""The ``dataplane`` command: ``dataplane [EAL options] -- [application options]``."""

from __future__ import annotations

import argparse
import sys

from dataplane.config import ConfigError
from dataplane.lcores.eal_args import EalArgsError, parse_eal_args
from dataplane.memory.errors import MemoryLayerError


def _app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dataplane [EAL options] --", add_help=True)
    p.add_argument("--demo", action="store_true", help="run the launcher demo: pinned workers and a shared counter")
    p.add_argument("--demo-count", type=int, default=1_000_000, help="increments per worker in the demo")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_eal_args(argv)
    except (EalArgsError, ConfigError) as exc:
        print(f"dataplane: {exc}", file=sys.stderr)
        return 2
    app = _app_parser()
    try:
        opts = app.parse_args(cfg.app_args)
    except SystemExit as exc:  # argparse already printed the one-line error
        return int(exc.code or 0)
    from dataplane.lcores.eal import Eal

    try:
        eal = Eal(cfg)
    except (MemoryLayerError, OSError, ValueError) as exc:  # no hugepages, prefix in use, ...
        print(f"dataplane: {exc}", file=sys.stderr)
        return 1
    try:
        if opts.demo:
            from dataplane.apps.demo import run_demo

            return run_demo(eal, opts.demo_count)
        print("dataplane: nothing to run (try: dataplane -l 0-1 --no-huge -- --demo)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dataplane: stopped", file=sys.stderr)
        return 130
    finally:
        eal.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
