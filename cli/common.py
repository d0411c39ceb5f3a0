"""What every sub-command shares: a parser whose errors are one line, argument types that
check what can be checked without data, the printer, and the settings read after parsing.

Nothing here imports pandas, DuckDB, MLflow or pydantic: `churnlens --help` and every
argument error must answer before any of them would have finished importing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from datetime import date
from pathlib import Path

DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
RUN_ID = re.compile(r"[0-9a-f]{32}")
MODEL_URI = re.compile(r"models:/[^/@]+(@[^/@]+|/\d+)")


class UsageError(ValueError):
    """A command-line argument is wrong; the message says how to fix it."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, and which points at the command's help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None and False (those say theirs in words); keeps
    the line breaks of descriptions and epilogs."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never wrap inside an option name (`--as-` / `of`).
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_command(sub, name: str, summary: str, parents=(), details: str = "") -> Parser:
    """A sub-command: SUMMARY (one line) is its entry in `churnlens --help` and heads its own
    help, followed by DETAILS."""
    head = f"{summary[0].upper()}{summary[1:]}."
    description = f"{head}\n\n{details}" if details else head
    return sub.add_parser(name, help=summary, description=description, parents=list(parents),
                          formatter_class=HelpFormatter)


def params_option(parser: argparse.ArgumentParser, default) -> None:
    """--params, on the main parser (default None) and on each sub-command (SUPPRESS, so a
    value given before the sub-command is not reset by the sub-command's own default)."""
    parser.add_argument("--params", type=existing_file, default=default, metavar="PATH",
                        help="settings file (default: params.yaml in the working directory "
                             "if there is one, else the built-in defaults: `churnlens init` "
                             "writes them out to edit)")


# ---------------------------------------------------------------- argument types


def iso_date(text: str) -> str:
    """A calendar date written YYYY-MM-DD, returned as given."""
    try:
        if not DATE_FORMAT.fullmatch(text):
            raise ValueError(text)
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-10-31") from None
    return text


def at_least(lowest: int):
    """The type of a whole-number argument that must be LOWEST or more."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lowest:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {lowest}, got {text!r}")
        return value

    return whole_number


def port(text: str) -> int:
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {text!r}")
    return value


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text!r} {what}")
    return path


def run_id(text: str) -> str:
    """An MLflow run id: 32 lower-case hex digits."""
    if not RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an MLflow run id (32 hex digits, as the MLflow UI or "
            "`churnlens train` shows it)")
    return text


def model_uri(text: str) -> str:
    """An MLflow model URI; a registry one must name a version or an alias."""
    if text.startswith("models:/") and not MODEL_URI.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a registry model URI: use models:/NAME@ALIAS or "
            "models:/NAME/VERSION, e.g. models:/churnlens@champion")
    return text


# ---------------------------------------------------------------- running a command


def say(msg: str) -> None:
    """One line of the command's output, flushed at once (the long commands report stages)."""
    print(msg, flush=True)


def settings_of(args: argparse.Namespace):
    """The validated settings of this invocation (read here, after parsing: pydantic and the
    settings models cost about a second to import)."""
    from churnlens.settings import load_settings

    return load_settings(args.params)


def tracking_uri(mlflow_settings) -> str:
    """The MLflow store `churnlens train` writes to: MLFLOW_TRACKING_URI, else the settings'
    tracking_uri, else mlflow.db in the working directory (churnlens.training.tracking's rule)."""
    return (os.environ.get("MLFLOW_TRACKING_URI") or mlflow_settings.tracking_uri
            or f"sqlite:///{Path.cwd() / 'mlflow.db'}")


def quiet_mlflow() -> None:
    """No artifact download bars: a command that fetches a model or a report's plots shows
    its own progress, and MLflow's bars (one per file) only scroll its output away."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def require_store(uri: str) -> None:
    """Refuse a local SQLite store that does not exist yet: opening it would create an empty
    one (and take seconds to migrate) only to find no model in it."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.is_file():
            raise UsageError(f"no MLflow store at {path}: train a model first (`churnlens "
                             "train`), or point MLFLOW_TRACKING_URI at your tracking server")


def tool(name: str) -> str:
    """How to call console script NAME installed beside this Python (a venv's bin folder),
    relative to the working directory when it lies below it (`.venv/bin/mlflow`)."""
    path = Path(sys.executable).parent / name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
