"""Every sub-command, run as a user runs it, against wrong arguments: exit status 2 and one
line that says what is wrong, never a traceback.

The project is a fresh folder with no params.yaml (the built-in defaults apply): 300 sample
customers made once through the real command, and for the slow cases, which reach MLflow,
their snapshot and an empty MLflow store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# Every case is a fresh CLI process (about a second of imports each): make test only.
pytestmark = pytest.mark.slow

AS_OF = "2026-10-31"
HEX_ID = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    message: str  # regex the one line must contain
    slow: bool = False  # reaches the MLflow store first: importing MLflow alone costs ~7 s


def run_cli(cwd: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`churnlens ARGV...` in CWD, as a fresh process, without the caller's MLflow store."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", BENTOML_DO_NOT_TRACK="True")
    return subprocess.run([sys.executable, "-m", "churnlens.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A working folder like a newcomer's: sample data and a snapshot written by the CLI with
    no settings file, an empty MLflow store, and a few wrong inputs to point at."""
    root = tmp_path_factory.mktemp("cli-project")
    done = run_cli(root, "sample-data", "--customers", "300", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert not (root / "params.yaml").exists()
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "unknown_key.yaml").write_text("horizon_dayz: 90\n")
    (root / "not_yaml.yaml").write_text("horizon_days: [90\nchurn: {\n")
    (root / "has_params").mkdir()
    (root / "has_params" / "params.yaml").write_text("horizon_days: 60\n")
    dup = root / "duplicates"
    dup.mkdir()
    (dup / "customers.csv").write_text("customer_id,signed_up_at\nA,2024-01-01\nA,2024-02-01\n")
    (dup / "events.csv").write_text("customer_id,occurred_at,event\nA,2024-03-01,login\n")
    return root


def first_signup(project: Path) -> str:
    import pandas as pd

    signed = pd.read_parquet(project / "data" / "sample" / "customers.parquet")["signed_up_at"]
    return f"{signed.min():%Y-%m-%d}"


SCORE = ("score", "--as-of", AS_OF, "--out", "scores.parquet")
SNAPSHOT = f"work/snapshots/features-{AS_OF}.parquet"
CASES = [
    Case("no-command", (), r"^churnlens: error: the following arguments are required: COMMAND"),
    Case("unknown-command", ("predict",), r"invalid choice: 'predict'"),
    Case("params-without-value", ("--params",), r"argument --params: expected one argument"),
    Case("params-missing", ("features", "--params", "missing.yaml"),
         r"argument --params: 'missing.yaml' does not exist"),
    Case("params-unknown-key", ("features", "--params", "unknown_key.yaml"),
         r"^churnlens features: error: unknown_key.yaml: horizon_dayz: unknown key; remove it"),
    Case("params-not-yaml", ("--params", "not_yaml.yaml", "features"),
         r"not_yaml.yaml is not valid YAML at line 2"),
    Case("sample-zero-customers", ("sample-data", "--customers", "0"),
         r"argument --customers: must be a whole number of at least 1, got '0'"),
    Case("sample-word-customers", ("sample-data", "--customers", "many"),
         r"argument --customers: must be a whole number of at least 1, got 'many'"),
    Case("sample-negative-seed", ("sample-data", "--seed", "-1"),
         r"argument --seed: must be a whole number of at least 0"),
    Case("sample-out-is-a-file", ("sample-data", "--out", "a_file.txt"),
         r"--out a_file.txt is a file; .* pass a folder"),
    Case("features-word-date", ("features", "--as-of", "yesterday"),
         r"argument --as-of: 'yesterday' is not a date; write it as YYYY-MM-DD"),
    Case("features-impossible-date", ("features", "--as-of", "2026-02-30"),
         r"'2026-02-30' is not a date"),
    Case("features-before-the-data", ("features", "--as-of", "2019-01-01"),
         r"--as-of 2019-01-01 is outside the data, which run from the first signup on "
         r"{first} to (\d{{4}}-\d{{2}}-\d{{2}})"),
    Case("features-source-missing", ("features", "--source", "nope"),
         r"argument --source: no such file or folder: 'nope'"),
    Case("features-bad-data", ("features", "--source", "duplicates"),
         r"table customers, column customer_id: 2 rows share a customer_id \(e.g. 'A'\)"),
    Case("features-out-is-a-folder", ("features", "--out", "data"),
         r"--out data is a folder; pass the parquet file"),
    Case("train-bad-promote", ("train", "--promote", "maybe"),
         r"argument --promote: invalid choice: 'maybe'"),
    Case("train-source-missing", ("train", "--source", "nope"), r"no such file or folder"),
    Case("train-params-unknown-key", ("train", "--params", "unknown_key.yaml"),
         r"^churnlens train: error: unknown_key.yaml: horizon_dayz: unknown key"),
    Case("report-bad-run-id", ("report", "--run-id", "nope"),
         r"argument --run-id: 'nope' is not an MLflow run id"),
    Case("report-unknown-run", ("report", "--run-id", HEX_ID),
         rf"cannot report run {HEX_ID} from sqlite:.*mlflow.db: Run .*{HEX_ID}.* not found",
         slow=True),
    Case("report-no-run-yet", ("report",), r"no training run in sqlite:.*; run `churnlens train`",
         slow=True),
    Case("score-word-date", ("score", "--as-of", "yesterday", "--out", "s.parquet"),
         r"^churnlens score: error: argument --as-of: 'yesterday' is not a date"),
    Case("score-no-date", ("score", "--out", "s.parquet"),
         r"the following arguments are required: --as-of"),
    Case("score-zero-chunk", (*SCORE, "--chunk-size", "0"), r"argument --chunk-size: must be"),
    Case("score-bad-engine", (*SCORE, "--engine", "gpu"), r"argument --engine: invalid choice"),
    Case("score-master-without-spark", (*SCORE, "--master", "local[2]"),
         r"--master needs --engine spark"),
    Case("score-bad-model-uri", (*SCORE, "--model-uri", "models:/churnlens"),
         r"'models:/churnlens' is not a registry model URI: use models:/NAME@ALIAS"),
    Case("score-no-model", SCORE,
         r"cannot load model models:/churnlens@champion: .*; train one with `churnlens train`",
         slow=True),
    Case("serve-bad-port", ("serve", "--port", "70000"), r"a port is at most 65535"),
    Case("serve-snapshot-missing", ("serve", "--snapshot", "nope.parquet"),
         r"argument --snapshot: 'nope.parquet' does not exist"),
    Case("serve-no-model", ("serve", "--snapshot", SNAPSHOT),
         r"model models:/churnlens@champion not found in sqlite:.*; train one", slow=True),
    Case("init-into-a-file", ("init", "a_file.txt"), r"a_file.txt is a file"),
    Case("init-over-params", ("init", "has_params"),
         r"has_params/params.yaml exists; pass --force to overwrite it"),
]


@pytest.fixture(scope="module")
def outcomes(project, request) -> dict[str, subprocess.CompletedProcess]:
    """The run of every case this session selected, two at a time (most of a run is
    imports; the machine has 2 cores)."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.originalname == "test_wrong_arguments_get_one_line_and_status_2"]
    if any(c.slow for c in selected):
        # The snapshot serve needs, and an empty store, made in this process (the suite has
        # imported MLflow already).
        import mlflow

        done = run_cli(project, "features", "--as-of", AS_OF)
        assert done.returncode == 0, done.stderr
        mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_experiments()
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {c.id: pool.submit(run_cli, project, *c.argv, timeout=120) for c in selected}
        return {key: future.result() for key, future in runs.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] * c.slow)
                                  for c in CASES])
def test_wrong_arguments_get_one_line_and_status_2(case, project, outcomes):
    done = outcomes[case.id]
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("churnlens"), lines
    assert re.search(case.message.format(first=first_signup(project)), lines[0]), lines[0]


def test_every_command_is_in_the_table():
    from churnlens.cli.app import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    tried = {c.argv[0] for c in CASES if c.argv and not c.argv[0].startswith("-")}
    assert set(sub.choices) <= tried, set(sub.choices) - tried


def test_before_the_data_names_a_range_that_ends_after_it_starts(project, outcomes):
    case = next(c for c in CASES if c.id == "features-before-the-data")
    line = (outcomes.get(case.id) or run_cli(project, *case.argv)).stderr
    first, end = re.search(r"first signup on (\S+) to (\S+):", line).groups()
    assert first == first_signup(project) and end > first


def test_sample_data_needs_no_settings_file(project):
    # The fixture ran it in a folder without params.yaml: the defaults' data.source was used.
    # (`features` without one: tests/test_install.py.)
    assert (project / "data" / "sample" / "customers.parquet").is_file()
    assert not (project / "params.yaml").exists()
