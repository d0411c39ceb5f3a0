"""`churnlens init`: a settings file to edit, so a project starts from the documented defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from churnlens.cli.common import UsageError, add_command, say


def add_commands(sub, parents) -> None:
    p = add_command(sub, "init", "write a commented params.yaml with every default, to edit",
                    details="Without a params.yaml churnlens runs on these same defaults.")
    p.add_argument("dir", nargs="?", type=Path, default=Path("."), metavar="DIR",
                   help="folder to write params.yaml into, created if missing")
    p.add_argument("--force", action="store_true", help="overwrite an existing params.yaml")
    p.set_defaults(run=init)


def init(args: argparse.Namespace) -> None:
    folder: Path = args.dir
    target = folder / "params.yaml"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; pass the folder to write params.yaml into")
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; pass --force to overwrite it (its edits are lost)")
    from churnlens.settings import template_text

    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(template_text(), encoding="utf-8")
    tmp.replace(target)
    say(f"wrote {target}: every setting at its default, with a comment; edit data.source to "
        "point at your data, or run `churnlens sample-data` to try the sample")
