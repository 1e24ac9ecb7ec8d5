"""`skyfix` command line: a thin layer over the library.

Bad input raises SkyfixError somewhere below; it is printed here as one line
(`skyfix: error: ...`) with exit status 2, like operating-system errors (an existing
output, a full or read-only disk). Anything else is a bug: one line naming a crash report
with the traceback, exit status 70 (see `runtime/apps/boundary.py`).
"""

from __future__ import annotations

import argparse
import sys

import shtab

from skyfix.runtime.apps import cmd_flights, cmd_maps, cmd_models, cmd_sim, cmd_tools


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skyfix", description="Visual navigation for drones.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (cmd_flights, cmd_maps, cmd_sim, cmd_tools, cmd_models):
        module.add_parsers(sub)
    co = sub.add_parser("completion", help="print a shell completion script "
                                           "(e.g. skyfix completion bash > ~/.skyfix-complete)")
    co.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    co.set_defaults(func=lambda a: print(shtab.complete(p, shell=a.shell)))
    return p


def main(argv: list[str] | None = None) -> int:
    from skyfix.runtime.apps.boundary import run_guarded

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return run_guarded(lambda: args.func(args), ["skyfix", *argv], getattr(args, "config", None))


if __name__ == "__main__":
    sys.exit(main())
