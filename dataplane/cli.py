"""The ``dataplane`` command: ``dataplane [EAL options] -- [application options]``."""

from __future__ import annotations

import argparse
import sys

from dataplane.config import ConfigError
from dataplane.lcores.eal_args import EalArgsError, parse_eal_args
from dataplane.lcores.usage import version_text
from dataplane.memory.errors import MemoryLayerError


#: The subcommands, for the usage.
COMMANDS = [
    ("run [FILE.toml]", "run the forwarding engine from a TOML config (see: dataplane run --help)"),
    ("vdpa OBJECT COMMAND", "the vdpa tool of iproute2, on this dataplane's vDPA devices (dataplane vdpa --help)"),
    ("vdpa features", "the table of the vDPA drivers' features"),
    ("precompile", "compile the forwarding loop and every port kind's and mode's entries into the cache (.ci/setup runs it)"),
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["vdpa", "features"]:
        from dataplane.vdpa.features_table import main as features_main

        return features_main(argv[2:])
    if argv[:1] == ["vdpa"]:
        from dataplane.vdpa.mgmt.tool import main as vdpa_main

        return vdpa_main(argv[1:])
    if argv[:1] == ["precompile"]:
        from dataplane.apps.precompile import main as precompile_main

        return precompile_main(argv[1:])
    if argv[:1] == ["run"]:
        from dataplane.apps.run import main as run_main

        return run_main(argv[1:])
    try:
        cfg = parse_eal_args(argv)
    except (EalArgsError, ConfigError) as exc:
        print(f"dataplane: {exc}", file=sys.stderr)
        return 2
    from dataplane.apps.testpmd import app_parser

    app = app_parser()
    app.sections.append(("Commands (instead of options)", COMMANDS))
    if cfg.usage == "help":
        app.print_help()
        return 0
    if cfg.usage == "version":
        sys.stdout.write(version_text("dataplane"))
        return 0
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
        if not cfg.vdevs:
            print("dataplane: no ports: give --vdev net_vhostN,iface=PATH or --vdev net_ringN "
                  "(or -- --demo for the launcher demo)", file=sys.stderr)
            return 2
        from dataplane.apps.testpmd import run

        return run(eal, opts)
    except KeyboardInterrupt:
        print("dataplane: stopped", file=sys.stderr)
        return 130
    finally:
        eal.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
