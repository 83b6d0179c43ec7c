"""The ``tdx-stress`` command line.

Until the campaign commands land, it prints the version and the variants.  Every error a
user can cause is one sentence on stderr and exit code 2; the entry point returns an int.
"""
from __future__ import annotations

import argparse
import sys
from enum import IntEnum

from core import __version__
from core.variants import VARIANTS


class ExitCode(IntEnum):
    OK = 0
    FINDING = 1
    USAGE = 2
    INTERNAL = 3
    DIVERGED = 4
    INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2, no traceback
        self.exit(ExitCode.USAGE, f"tdx-stress: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tdx-stress",
                description="Concurrency stress tester for KVM's TDP MMU mirror page tables "
                            "against a simulated TDX module.")
    p.add_argument("--version", action="version", version=f"tdx-stress {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("variants", help="list the kernel variants and what each opens")
    return p


def cmd_variants() -> int:
    width = max(len(n) for n in VARIANTS)
    for v in VARIANTS.values():
        kind = ("as designed" if v.as_designed
                else f"hunt {v.hunt} (row {v.opens_row}, {v.hunt_kind})")
        print(f"{v.name:<{width}}  {kind}\n{'':<{width}}  {v.summary}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in (None, "variants"):
            print(f"tdx-stress {__version__}")
            return cmd_variants()
    except BrokenPipeError:
        return ExitCode.OK
    return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
