"""``dataplane-hugepages``: show and set up hugepages, like dpdk-hugepages.py.

Commands::

    dataplane-hugepages show                       pools, free pages and mounts
    dataplane-hugepages reserve SIZE [-p PAGESIZE] size the pool to SIZE (1G, 512M)
    dataplane-hugepages mount [DIR] [-p PAGESIZE]  mount hugetlbfs (default /dev/hugepages)
    dataplane-hugepages unmount [DIR]              unmount DIR, or every hugetlbfs
    dataplane-hugepages clear                      set every pool to 0 pages

Exit status: 0 on success, 1 when the system refused (permissions, not
enough memory), 2 on bad arguments, with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from dataplane import log as dplog

from dataplane.lcores.usage import UsageParser
from dataplane.memory import hugepages
from dataplane.memory.units import format_size, parse_size

PROG = "dataplane-hugepages"


class _Parser(UsageParser):
    """The common usage layout, with this tool's one-line error message (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


class _UsageError(Exception):
    """Bad arguments found after parsing (exit 2)."""


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _page_size(arg: int | None) -> int:
    """The page size of ``-p`` (validated) or the kernel's default."""
    size = arg if arg is not None else hugepages.default_page_size()
    try:
        hugepages.page_size_info(size)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    return size


def cmd_show(args, out) -> int:
    """Print every pool and every hugetlbfs mount."""
    pools = hugepages.page_sizes()
    if not pools:
        print("this kernel has no hugepage support", file=out)
        return 0
    default = hugepages.default_page_size()
    print(f"{'Page size':<12}{'Total':>8}{'Free':>8}{'Reserved':>10}{'Surplus':>9}  Memory", file=out)
    for p in pools:
        mark = " (default)" if p.size == default else ""
        print(
            f"{format_size(p.size):<12}{p.nr:>8}{p.free:>8}{p.resv:>10}{p.surplus:>9}  "
            f"{format_size(p.nr * p.size)}{mark}",
            file=out,
        )
    mounts = hugepages.mounts()
    if not mounts:
        print("no hugetlbfs mounted", file=out)
    for m in mounts:
        print(f"hugetlbfs on {m.path} with {format_size(m.page_size)} pages ({m.options})", file=out)
    return 0


def cmd_reserve(args, out) -> int:
    """Size the pool of one page size to hold SIZE bytes (rounded up)."""
    page_size = _page_size(args.pagesize)
    nr = -(-args.size // page_size)
    got = hugepages.reserve(nr, page_size)
    print(f"{format_size(page_size)} pages: {got} reserved ({format_size(got * page_size)})", file=out)
    if got < nr:
        print(f"{PROG}: warning: asked for {nr} pages, the kernel gave {got}", file=sys.stderr)
        return 1
    return 0


def cmd_mount(args, out) -> int:
    """Mount a hugetlbfs (once per directory)."""
    page_size = _page_size(args.pagesize)
    existing = hugepages.mount_of(args.dir)
    if existing is not None:
        print(f"hugetlbfs with {format_size(existing.page_size)} pages already mounted on {args.dir}", file=out)
        return 0
    hugepages.mount(args.dir, page_size)
    print(f"mounted hugetlbfs with {format_size(page_size)} pages on {args.dir}", file=out)
    return 0


def cmd_unmount(args, out) -> int:
    """Unmount one hugetlbfs, or all of them."""
    if args.dir is not None:
        if hugepages.mount_of(args.dir) is None:
            raise _UsageError(f"{args.dir} is not a hugetlbfs mount point")
        targets = [args.dir]
    else:
        targets = [m.path for m in reversed(hugepages.mounts())]
    for path in targets:
        hugepages.umount(path)
        print(f"unmounted {path}", file=out)
    return 0


def cmd_clear(args, out) -> int:
    """Give every hugepage pool back to the kernel."""
    status = 0
    for p in hugepages.page_sizes():
        got = hugepages.reserve(0, p.size)
        print(f"{format_size(p.size)} pages: {got} reserved", file=out)
        if got:
            print(f"{PROG}: warning: {got} {format_size(p.size)} pages are still in use", file=sys.stderr)
            status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the tool."""
    parser = _Parser(prog=PROG, description="Show and set up hugepages for the dataplane.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("show", help="show page sizes, totals, free pages and mounts")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("reserve", help="size the pool to SIZE bytes (e.g. 1G, 512M)")
    p.add_argument("size", metavar="SIZE", type=_size_arg, help="memory to reserve, e.g. 1G or 512M")
    p.add_argument("-p", "--pagesize", type=_size_arg, help="page size, e.g. 2M or 1G (default: the kernel's)")
    p.set_defaults(func=cmd_reserve)

    p = sub.add_parser("mount", help="mount hugetlbfs")
    p.add_argument("dir", metavar="DIR", nargs="?", default=hugepages.DEFAULT_MOUNT_DIR)
    p.add_argument("-p", "--pagesize", type=_size_arg, help="page size, e.g. 2M or 1G (default: the kernel's)")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("unmount", aliases=["umount"], help="unmount DIR, or every hugetlbfs")
    p.add_argument("dir", metavar="DIR", nargs="?")
    p.set_defaults(func=cmd_unmount)

    p = sub.add_parser("clear", help="set every hugepage pool to 0 pages")
    p.set_defaults(func=cmd_clear)
    return parser


def configure_logging() -> None:
    """Library log lines at warning and above, on stderr: stdout carries only
    the tool's own output."""
    dplog.configure_logging([(None, "warning")], stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status (see module doc)."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return args.func(args, sys.stdout)
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
