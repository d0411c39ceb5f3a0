"""The `churnlens` command's parser and output: fast to answer, self-describing, and
runnable without a settings file. (Wrong arguments: tests/test_cli_errors.py.)"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from churnlens.cli.app import build_parser, main
from churnlens.cli.model import metric_table

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
HEAVY = ("pandas", "numpy", "duckdb", "pyarrow", "mlflow", "pydantic", "yaml", "lightgbm",
         "sklearn", "bentoml")


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(sub.choices)


def test_parsing_and_help_import_nothing_heavy():
    # In a fresh process: what parsing every command line (and printing every help) loads.
    script = f"""
import contextlib, io, json, sys
from churnlens.cli.app import build_parser
lines = [["score", "--as-of", "2026-10-31", "--out", "x.parquet", "--chunk-size", "5"],
         ["features", "--as-of", "2026-10-31"], ["sample-data", "--customers", "9"],
         ["serve", "--port", "8080"], ["report"], ["train"], ["init"]]
for argv in lines:
    build_parser().parse_args(argv)
for argv in [["--help"]] + [[line[0], "--help"] for line in lines]:
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        build_parser().parse_args(argv)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({list(HEAVY)!r}))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == []


def test_every_command_has_a_one_line_summary():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    summaries = {action.dest: action.help for action in sub._choices_actions}
    assert set(summaries) == set(commands())
    for name, summary in summaries.items():
        assert summary and "\n" not in summary and len(summary) <= 60, (name, summary)
        assert commands()[name].description.startswith(summary[0].upper() + summary[1:])
    listing = parser.format_help()
    for name, summary in summaries.items():
        assert re.search(rf"(?m)^    {re.escape(name)} +{re.escape(summary)}$", listing), name


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_says_its_default(name):
    parser = commands()[name]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.required or action.nargs == 0:
            continue  # --help, required options and flags have no default to show
        shown = " ".join((action.help or "").split())
        assert shown, (name, action.dest)
        if action.default is None or action.default == argparse.SUPPRESS:
            assert "default:" in shown, (name, action.dest, "says its default in words")
        else:
            assert f"(default: {action.default})" in text, (name, action.dest)


@pytest.mark.parametrize("argv", [
    ["--params", "{p}", "features"],
    ["features", "--params", "{p}"],
])
def test_params_before_or_after_the_command(argv):
    args = build_parser().parse_args([a.format(p=PARAMS) for a in argv])
    assert args.params == PARAMS and args.command == "features"


def test_without_params_the_working_directory_decides():
    assert build_parser().parse_args(["features"]).params is None


def test_init_writes_the_commented_template_and_keeps_an_existing_file(tmp_path, capsys):
    from churnlens.settings import Settings, load_settings, template_text

    target = tmp_path / "project" / "params.yaml"
    assert main(["init", str(target.parent)]) == 0
    assert target.read_text() == template_text() == PARAMS.read_text()
    assert load_settings(target) == Settings()
    assert f"wrote {target}" in capsys.readouterr().out

    target.write_text("horizon_days: 30\n")
    assert main(["init", str(target.parent)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "horizon_days: 30\n"
    assert main(["init", "--force", str(target.parent)]) == 0
    assert target.read_text() == PARAMS.read_text()


def test_metric_table_aligns_the_model_beside_its_baselines():
    metrics = {"test.risk.roc_auc": 0.81234, "test.logistic.roc_auc": 0.7, "test.risk.brier": 0.07,
               "test.base_rate.roc_auc": 0.5, "test.survival.concordance": 0.69,
               "test.kaplan_meier.concordance": 0.5, "test.ltv.total_error_pct": -17.27}
    lines = metric_table(metrics)
    assert lines[0] == "test slice:"
    header = next(line for line in lines if line.strip().startswith("risk"))
    assert header.split() == ["risk", "model", "logistic", "base", "rate"]  # no oracle run
    roc = next(line for line in lines if "ROC-AUC" in line)
    assert roc.split() == ["ROC-AUC", "0.8123", "0.7000", "0.5000"]
    brier = next(line for line in lines if "Brier" in line)
    assert brier.split() == ["Brier", "0.0700"]  # baselines it lacks stay blank
    # Every figure's decimal point in the model column sits under the same character.
    model_col = {line.index(".", 20) for line in lines[1:] if re.search(r"\d\.\d{4}", line)
                 and not line.strip().startswith(("risk", "survival", "LTV"))}
    assert len(model_col) == 1, lines
    assert not any("PR-AUC" in line for line in lines)  # not measured, not printed
