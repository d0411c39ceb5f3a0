"""The HTML report and the run's descriptions, on hand-made metrics and facts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from churnlens.training.report import metric_frames, render, report_title
from churnlens.training.summary import calibration_line, description, survival_line

METRICS = {
    "test.risk.roc_auc": 0.83, "test.risk.brier": 0.047,
    "test.risk_uncalibrated.roc_auc": 0.83, "test.risk_uncalibrated.brier": 0.048,
    "test.logistic.roc_auc": 0.81, "test.base_rate.roc_auc": 0.5,
    "test.base_rate.top_decile_lift": 1.0, "test.oracle.roc_auc": 0.85,
    "test.survival.concordance": 0.76, "test.kaplan_meier.concordance": 0.5,
    "test.survival.time_auc_180": float("nan"),
    "test.ltv.spearman": 0.91, "test.ltv.total_error_pct": -9.7,
    "test.bg_nbd.spearman": 0.7,  # a baseline this module does not know: placed by metric
}
FACTS = {
    "data.source": "data/sample", "data.customers_loaded": "20,000", "data.rows": "230,041",
    "data.cutoffs": "35", "split.method": "time",
    "split.rows": "train 88,721, validation 18,520, calibration 20,291, test 23,909",
    "split.test_cutoffs": "2026-06-01, 2026-07-01", "risk.trees": "141",
    "risk.calibration": "platt", "risk.calibration_log_loss.none": "0.19020",
    "risk.calibration_log_loss.platt": "0.18712", "risk.calibration_log_loss.isotonic": "0.18730",
    "survival.model": "discrete_lgbm",
    "survival.validation.weibull_aft": "IBS 0.0805, concordance 0.7179",
    "survival.validation.discrete_lgbm": "IBS 0.0788, concordance 0.7184",
    "registered_version": "3",
}


def _tables(page: str) -> dict[str, str]:
    """Each task heading with the table that follows it and the lines below the table."""
    return dict(re.findall(r"<h3>([^<]+)</h3>(<table>.*?)(?=<h3>|<h2>)", page, flags=re.S))


def test_metrics_are_grouped_by_task_with_the_baselines_beside_the_model():
    page = render("churnlens v3", METRICS, ["a note"], {}, FACTS)
    tables = _tables(page)
    assert [t.split(":")[0] for t in tables] == ["Risk", "Survival", "LTV"]
    risk, survival, ltv = tables.values()
    def heads(table):
        return re.findall(r"<th>([^<]+)</th>", table.split("</tr>")[0])[1:]
    assert heads(risk) == ["model", "model, uncalibrated", "logistic", "base rate", "oracle"]
    assert heads(survival) == ["model", "Kaplan-Meier"]
    assert heads(ltv) == ["model", "bg nbd"]
    assert "concordance" not in risk and "ROC-AUC" not in survival


def test_units_signs_and_the_oracle_are_explained():
    page = render("churnlens v3", METRICS, [], {}, FACTS)
    ltv = _tables(page)["LTV: revenue over the LTV horizon"]
    assert "predicted minus realised total, in % of realised" in ltv
    assert "-9.7000" in ltv
    assert "the sample generator&#x27;s true churn probabilities" in page
    assert "sample data only" in page


def test_a_metric_that_could_not_be_measured_is_an_empty_cell():
    survival = _tables(render("t", METRICS, [], {}, FACTS))["Survival: time to churn"]
    row = re.search(r"<tr><th>AUC at 180 days</th>(.*?)</tr>", survival).group(1)
    assert row.startswith("<td></td><td></td>") and "nan" not in row


def test_the_kept_calibration_and_survival_model_are_named_with_their_reason():
    assert calibration_line(FACTS) == (
        "Calibration kept: Platt scaling, the simplest method within one standard error of the "
        "lowest log loss when fitted on one half of the calibration slice and scored on the "
        "other (platt 0.18712; none 0.19020; isotonic 0.18730; lower is better).")
    small = {"risk.calibration": "none", "risk.calibration_log_loss.none": "0.35100",
             "risk.calibration_log_loss.platt": "0.35300",
             "risk.calibration_note": "isotonic not tried: the calibration slice holds 645 "
                                      "rows and 52 churners; it needs at least 1,000 and 100"}
    assert calibration_line(small) == (
        "Calibration kept: none (LightGBM's own probabilities), the simplest method within one "
        "standard error of the lowest log loss when fitted on one half of the calibration slice "
        "and scored on the other (none 0.35100; platt 0.35300; lower is better). Isotonic not "
        "tried: the calibration slice holds 645 rows and 52 churners; it needs at least 1,000 "
        "and 100.")
    old_run = {"risk.calibration": "platt", "risk.calibration_brier.platt": "0.04712"}
    assert calibration_line(old_run).startswith("Calibration kept: Platt scaling, the lowest "
                                                "Brier score when fitted")
    assert survival_line(FACTS).startswith("Survival model kept: discrete_lgbm, the lowest")
    risk, survival, _ = _tables(render("churnlens v3", METRICS, [], {}, FACTS)).values()
    assert "Calibration kept: Platt scaling" in risk and "weibull_aft: IBS 0.0805" in survival
    assert calibration_line({}) == "" and survival_line({}) == ""


@pytest.mark.parametrize(("facts", "title"), [
    ({"registered_version": "3"}, "churnlens v3"), ({}, "churnlens (not registered)")])
def test_the_title_is_the_model_and_its_version(facts, title):
    assert report_title(facts, "churnlens") == title


def test_description_says_what_data_what_won_and_by_how_much():
    text = description(FACTS, METRICS, "churnlens", "3", "no champion yet")
    assert text.startswith("**churnlens v3**. Trained on data/sample (20,000 customers;")
    assert "test ROC-AUC 0.8300 vs 0.8100 for logistic regression (+0.0200)" in text
    assert "true probabilities reach 0.8500" in text
    assert "test concordance 0.7600 vs 0.5000 for Kaplan-Meier (+0.2600)" in text
    assert "total error -9.7% (predicted minus realised)" in text
    assert text.rstrip().endswith("Promotion: no champion yet")


def test_metric_frames_hold_the_report_tables_for_notebooks():
    frames = metric_frames(METRICS)
    risk = frames["Risk: P(churn within the horizon)"]
    assert risk.columns.tolist() == ["model", "model, uncalibrated", "logistic", "base rate",
                                     "oracle"]
    assert risk.loc["ROC-AUC", "logistic"] == pytest.approx(0.81)
    assert np.isnan(risk.loc["Brier", "oracle"])
    assert frames["LTV: revenue over the LTV horizon"].index.tolist() == [
        "Spearman", "total error %"]
