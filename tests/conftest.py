"""Shared fixtures for every test package, and the order the test files run in."""

from __future__ import annotations

pytest_plugins = ["tests.fixtures_model"]

# The longest files first (measured), so that under `-n 2 --dist loadfile` (pyproject's
# addopts keep this order: --no-loadscope-reorder) the two workers start on the longest
# work and finish together on short files. Files that reuse a run-wide build
# (fixtures_model.built_once: the trained model, the survival sample) come after the file
# that builds it, so no worker waits for the other's build. Files not listed keep pytest's
# order after these.
LONGEST_FIRST = (
    "tests/training/test_pipeline.py",  # slow only: two trainings, 20,000 + 3,000 customers
    "tests/serving/test_spark_cluster.py",  # slow only: a standalone cluster, three Spark jobs
    "tests/test_shapes_e2e.py",  # slow only: three CLI trainings
    "tests/serving/test_spark_job.py",  # slow: Spark jobs in local mode
    "tests/features/test_spark_loading.py",  # slow: a Spark query per loader rule
    "tests/test_mlflow_server.py",  # slow only: an MLflow server, one CLI training
    "tests/serving/test_core.py",  # builds the trained model (the fast suite's longest)
    "tests/test_cli_errors.py",
    "tests/serving/test_http.py",
    "tests/serving/test_startup.py",
    "tests/training/test_survival.py",  # builds the survival sample
    "tests/serving/test_fuzz.py",
    "tests/serving/test_spark.py",
    "tests/serving/test_batch.py",
    "tests/serving/test_batch_safety.py",
    "tests/serving/test_openapi.py",
    "tests/training/test_promotion.py",
    "tests/test_install.py",
    "tests/notebooks/test_notebooks.py",
    "tests/features/test_leakage.py",
    "tests/training/test_shap_table.py",
    "tests/features/test_sample.py",
    "tests/serving/test_revenue_at_risk.py",
    "tests/features/test_queries_spark.py",
    "tests/training/test_risk.py",
    "tests/training/test_calibration.py",
    "tests/training/test_split.py",
    "tests/training/test_tenure.py",
    "tests/training/test_purchase.py",
    "tests/training/test_ltv_models.py",
    "tests/training/test_tracking.py",
    "tests/training/test_ltv.py",  # reuses the survival sample
)


def pytest_collection_modifyitems(items) -> None:
    """Run the files of LONGEST_FIRST first, in that order (a stable sort: the tests of a
    file keep theirs)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
