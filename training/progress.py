"""What training says while it works: a line per stage with its time, a progress bar on
stderr while a long stage runs, and third-party output a user cannot act on kept quiet.

`Stages` writes through the caller's `log` callback (the CLI passes its printer; tests a
no-op). Bars are tqdm's on stderr and switch themselves off when stderr is not a terminal
(a log file, a captured test), so they never end up in a saved log as carriage returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

STAGE_WIDTH = 22  # "survival discrete_lgbm"


class Stages:
    """Stage lines: `with stages("risk model") as stage: ...; stage.detail = "..."` logs
    "risk model       <detail>  (12.3 s)" when the block ends, and the total at `done`."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[_Stage]:
        stage = _Stage(name, time.perf_counter())
        yield stage
        self.line(name, stage.detail, time.perf_counter() - stage.started)

    def line(self, name: str, detail: str, seconds: float | None = None) -> None:
        """One stage line; SECONDS, when given, in brackets at its end."""
        took = "" if seconds is None else f"  ({seconds:.1f} s)"
        self.log(f"{name:<{STAGE_WIDTH}} {detail}{took}".rstrip())

    def done(self, detail: str) -> None:
        self.line("done", detail, time.perf_counter() - self.started)


class _Stage:
    def __init__(self, name: str, started: float):
        self.name, self.started, self.detail = name, started, ""


@contextlib.contextmanager
def boosting_bar(description: str) -> Iterator[Callable]:
    """A LightGBM callback that ticks a bar once per boosting round (no total: early
    stopping decides the count), closed when the block ends."""
    bar = tqdm(desc=description, unit=" rounds", file=sys.stderr, leave=False, disable=None)

    def tick(env) -> None:
        bar.update(1)

    try:
        yield tick
    finally:
        bar.close()


@contextlib.contextmanager
def candidates_bar(names: Sequence[str]) -> Iterator[tuple[Callable, Callable]]:
    """A bar over survival candidates: yields (LightGBM callback, on_candidate) for
    `SurvivalModel.fit`. The bar names the candidate being fitted and, for one that
    boosts, its round."""
    bar = tqdm(total=len(names), desc=f"survival: {names[0] if names else ''}", unit=" model",
               file=sys.stderr, leave=False, disable=None)

    def tick(env) -> None:
        bar.set_postfix_str(f"round {env.iteration + 1}", refresh=False)
        bar.refresh()

    def next_candidate(name: str, scores: dict) -> None:
        bar.update(1)
        if bar.n < len(names):
            bar.set_description(f"survival: {names[bar.n]}")
            bar.set_postfix_str("")

    try:
        yield tick, next_candidate
    finally:
        bar.close()


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Keep output that a user cannot act on off the screen while training runs.

    MLflow's INFO logs (database migrations, "Validating input example") and its artifact
    download bars (one per file when a model is read back); its warnings and errors still
    show. LightGBM is told `verbosity -1` by the models themselves, and lifelines and
    LightGBM raised no warning on sample data, so their warnings are left alone. Everything
    is restored when the block ends.
    """
    logger = logging.getLogger("mlflow")
    level = logger.level
    bar_env = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar_env is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar_env


@contextlib.contextmanager
def mlflow_prints_off() -> Iterator[None]:
    """Silence MLflow's direct prints to stderr ("Successfully registered model ...",
    "Created version ..."): the registry stage says what was registered itself."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was
