"""The frame of an EAL application (``vhost_echo``, ``dataplane-vhost-blk``): arguments, the wait, the stop.

:func:`eal_main` parses EAL options, then the application's own after ``--``,
and runs ``run(eal, opts)`` inside the EAL; :func:`wait_for_stop` is the main
lcore's wait (SIGINT/SIGTERM, a duration, or a failed lcore) and
:func:`stop_lcores` ends the worker loops.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from typing import Callable

from dataplane import log as dplog

__all__ = ["eal_main", "wait_for_stop", "stop_lcores", "StdinLines", "StdinShell"]

log = dplog.get_logger("dataplane.apps")


def eal_main(prog: str, parser: argparse.ArgumentParser, run: Callable, argv: list[str] | None = None,
             check: Callable | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), then ``run(eal, opts)``; 2 on bad arguments.

    ``-h``/``--help`` and ``--version``, before or after ``--``, print the usage (EAL and
    application options: ``parser`` is a :class:`~dataplane.lcores.usage.UsageParser`) or the
    version.  ``check(opts)`` may return an error message for options argparse cannot judge.
    """
    from dataplane.lcores.eal import Eal
    from dataplane.lcores.eal_args import EalArgsError, parse_eal_args
    from dataplane.lcores.usage import version_text

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_eal_args(argv)
        if cfg.usage == "help":
            parser.print_help()
            return 0
        if cfg.usage == "version":
            sys.stdout.write(version_text(prog))
            return 0
        opts = parser.parse_args(cfg.app_args)
    except EalArgsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    err = check(opts) if check is not None else None
    if err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    with Eal(cfg) as eal:
        return run(eal, opts)


def wait_for_stop(eal, duration: float = 0.0, *, every: float = 0.1, tick: Callable | None = None) -> None:
    """Return at SIGINT/SIGTERM (the stop flag), after ``duration`` seconds (0: never) or when an lcore failed.

    ``tick()`` runs every ``every`` seconds meanwhile (e.g. to write a stats file); it returning
    True ends the wait too (e.g. ``quit`` in a shell).
    """
    deadline = time.monotonic() + duration if duration > 0 else None
    stop = eal.launcher.stop_flag
    while not stop[0]:
        if deadline is not None and time.monotonic() >= deadline:
            return
        if eal.launcher.failures:
            log.error("an lcore failed", errors=[str(e) for e in eal.launcher.failures])
            return
        if tick is not None and tick():
            return
        time.sleep(every)


def stop_lcores(eal, timeout: float = 10.0) -> None:
    """Raise the stop flag and wait for every worker's loop to end (logged if one ends badly)."""
    eal.launcher.request_stop()
    try:
        eal.launcher.mp_wait_lcore(timeout=timeout)
    except Exception as e:
        log.error("lcore ended badly", error=str(e))


class StdinLines:
    """Whole lines from stdin without blocking the main lcore's wait (an interactive shell's input)."""

    def __init__(self):
        self.buf = b""
        self.eof = False

    def lines(self) -> list[str]:
        while not self.eof and select.select([0], [], [], 0)[0]:
            data = os.read(0, 4096)
            self.eof = not data
            self.buf += data
        *done, self.buf = self.buf.split(b"\n")
        if self.eof and self.buf:
            done, self.buf = done + [self.buf], b""
        return [d.decode(errors="replace") for d in done]


class StdinShell:
    """An interactive shell on stdin for the main lcore's wait (:func:`wait_for_stop`'s ``tick``).

    Prints ``prompt`` at once and after each answer; ``handle(line)`` returns the text to print,
    or None for ``quit``; :meth:`tick` returns True when the shell ended (quit or end of input).
    """

    def __init__(self, handle: Callable[[str], str | None], prompt: str, write: Callable[[str], None] | None = None):
        self.handle = handle
        self.prompt = prompt
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.stdin = StdinLines()
        self.write(prompt)

    def tick(self) -> bool:
        for line in self.stdin.lines():
            out = self.handle(line)
            if out is None:
                return True
            self.write(out + self.prompt)
        return self.stdin.eof
