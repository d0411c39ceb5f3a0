"""The parser of the `churnlens` command and its entry point.

Expected failures (bad settings, bad data, bad arguments, a missing run or model) print one
line, `churnlens COMMAND: error: ...`, and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from churnlens.cli import data, model, project, scoring
from churnlens.cli.common import HelpFormatter, Parser, params_option

GROUPS = (project, data, model, scoring)
EPILOG = """\
first steps, in an empty folder:
  churnlens sample-data                  a synthetic base in data/sample
  churnlens features                     its training set in work/
  churnlens train                        a model, tracked in mlflow.db
  churnlens features --as-of 2026-10-31  the snapshot the server looks customers up in
  churnlens serve                        http://127.0.0.1:3000
`churnlens COMMAND --help` shows a command's options."""


def build_parser() -> Parser:
    """The command's parser; building it imports nothing beyond the standard library."""
    parser = Parser(
        prog="churnlens",
        description="Predict which customers will churn, when, what they are worth, and why.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    params_option(parser, default=None)
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    common = argparse.ArgumentParser(add_help=False)
    params_option(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    for group in GROUPS:
        group.add_commands(sub, [common])
    return parser


class VersionAction(argparse.Action):
    """--version, looking the version up only when asked (the lookup scans site-packages)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("churnlens")
        except PackageNotFoundError:
            found = "(not installed)"
        print(f"churnlens {found}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns the exit status (0, or 2 for an expected failure)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    # The library reports bad input as ValueError (SettingsError, DataError, BatchError and
    # UsageError are ValueErrors); OSError is a file that cannot be read or written.
    except (ValueError, OSError) as exc:
        print(f"churnlens {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"churnlens {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
