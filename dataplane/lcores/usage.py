"""Usage and version text of every entry point, in dpdk-testpmd's layout, from one source.

An EAL application (``dataplane``, ``dataplane-vhost-blk``, ``dataplane-vdpa``, ...)
prints, for ``-h``/``--help`` before or after ``--``::

    Usage: dataplane [EAL options] -- [testpmd options]

    EAL options:
      -l CORELIST            lcores to run on, ...
      ...

    testpmd options:
      -i, --interactive      interactive shell on stdin
      ...

The EAL section is made from the EAL option table of
:mod:`dataplane.lcores.eal_args`; the application section from the
application's :class:`UsageParser` (argparse).  A tool without EAL options
(``dataplane-hugepages``, ``dataplane-nic``, ``dataplane run``) prints the same
layout without the EAL section.  ``--version`` prints ``PROG VERSION``.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from dataplane._version import __version__
from dataplane.lcores.eal_args import eal_options_help

__all__ = ["UsageParser", "eal_section", "usage_text", "version_text"]

#: Column where the help of an option starts.
HELP_COLUMN = 30
WIDTH = 100


def version_text(prog: str) -> str:
    """``dataplane-vdpa 0.1.0``: what ``--version`` prints."""
    return f"{prog.split()[0]} {__version__}\n"


def _section(title: str, rows: list[tuple[str, str]]) -> str:
    """``title:`` then one line per ``(spelling, help)``, the helps aligned (long spellings on their own line)."""
    lines = [f"{title}:"]
    for spelling, text in rows:
        head = f"  {spelling}"
        if len(head) + 2 > HELP_COLUMN:
            lines.append(head)
            head = ""
        lines.append(f"{head:<{HELP_COLUMN}}{text}".rstrip())
    return "\n".join(lines) + "\n"


def eal_section() -> str:
    """The ``EAL options:`` section."""
    return _section("EAL options", eal_options_help())


class _HelpAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        parser.exit(0)


class _VersionAction(_HelpAction):
    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(version_text(parser.prog))
        parser.exit(0)


class UsageParser(argparse.ArgumentParser):
    """An entry point's own options, printing the common usage layout.

    ``eal``: the program takes EAL options before ``--`` (the EAL section is
    printed and the head reads ``PROG [EAL options] -- [APP options]``).
    ``app``: what the application options are called (``testpmd``).
    ``head``: the usage head of a tool without EAL options (default:
    ``PROG [options]``, plus ``COMMAND ...`` with subcommands).
    ``sections``: more ``(title, [(spelling, help), ...])`` after the options.
    Bad options: one line on stderr naming the option, exit status 2.
    """

    def __init__(self, prog: str, *, eal: bool = False, app: str | None = None, head: str | None = None,
                 sections: list[tuple[str, list[tuple[str, str]]]] = (), **kw):
        kw.setdefault("formatter_class", lambda prog: argparse.HelpFormatter(prog, max_help_position=HELP_COLUMN,
                                                                             width=WIDTH))
        super().__init__(prog=prog, add_help=False, **kw)
        self.eal = eal
        self.app = app or prog.split()[0]
        self.head = head
        self.sections = list(sections)
        self.add_argument("-h", "--help", action=_HelpAction, help="print this usage and exit")
        self.add_argument("--version", action=_VersionAction, help="print the version and exit")

    def format_usage(self) -> str:
        if self.eal:
            return f"Usage: {self.prog} [EAL options] -- [{self.app} options]\n"
        head = self.head
        if head is None:
            words = ["[options]"]
            for action in self._get_positional_actions():
                if isinstance(action, argparse._SubParsersAction):
                    words.append("COMMAND ...")
                else:
                    name = action.metavar or action.dest.upper()
                    words.append(f"[{name}]" if action.nargs == "?" else name)
            head = " ".join(words)
        return f"Usage: {self.prog} {head}\n"

    def format_help(self) -> str:
        parts = [self.format_usage()]
        if self.description:
            parts.append(f"{self.description}\n")
        if self.eal:
            parts.append(eal_section())
        formatter = self._get_formatter()
        for group in self._action_groups:
            if not group._group_actions:
                continue
            if group.title in ("options", "optional arguments"):
                title = f"{self.app} options" if self.eal else "Options"
            elif group.title == "positional arguments":
                title = "Commands" if any(isinstance(a, argparse._SubParsersAction) for a in group._group_actions) \
                    else "Arguments"
            else:
                title = group.title
            formatter.start_section(title)
            formatter.add_text(group.description)
            formatter.add_arguments(group._group_actions)
            formatter.end_section()
        parts.append(formatter.format_help())
        for title, rows in self.sections:
            parts.append(_section(title, rows))
        if self.epilog:
            parts.append(f"{self.epilog}\n")
        return "\n".join(p.rstrip("\n") + "\n" for p in parts if p.strip())

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog.split()[0]}: {message} (see: {self.prog} --help)\n")

