"""The Spark engine: DuckDB feature SQL translated faithfully, and the same records."""

from __future__ import annotations

import pytest

from churnlens.serving.batch import BatchError
from churnlens.serving.spark import java_missing, spark_session, to_spark_sql

pytest.importorskip("pyspark")
# The tests that need a Spark session (the translation run on Spark, the records of both
# engines) are in test_spark_job.py, beside the job's, sharing its session.


def test_without_java_the_engine_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert java_missing() == "Spark needs Java 17: no `java` on PATH and JAVA_HOME is not set"
    with pytest.raises(BatchError, match=r"spark engine cannot start: Spark needs Java 17.*"
                                         r"install a JDK 17"):
        spark_session("local[1]")


def test_translation_refuses_what_it_cannot_keep_exact():
    with pytest.raises(BatchError, match=r"date_diff\('day', \.\.\.\) has no exact Spark"):
        to_spark_sql("SELECT date_diff('day', a, b) FROM t")
