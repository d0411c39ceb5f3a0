"""Where the loader's rules run: one SQL text per rule, two engines.

Every check and repair of the load (`churnlens.features.checks`, `extent`, `suspicious`,
`shapes`) is written once, in DuckDB's SQL dialect, against a `SqlRunner`:

- `DuckRunner` runs it on a DuckDB connection (the local loader, `load_source`);
- `churnlens.features.spark_loading.SparkRunner` translates it to Spark SQL and runs it on
  Spark temp views (`load_source_spark`).

A rule only reads (`rows`, `counts`) and changes tables through `define`, `delete` and
`update`, which each engine carries out its own way: DuckDB deletes and updates rows in
place, Spark (whose temp views are immutable) redefines the view over its previous plan.
Values reach the SQL as quoted literals (`sql_string`, `timestamp_literal`), never as
parameters, so one text serves both engines.
"""

from __future__ import annotations

import duckdb

from churnlens.features.reading import quote_ident


class SqlRunner:
    """The operations the loader's rules use; `DuckRunner` and `SparkRunner` implement them.

    engine: the engine's name as messages show it ("DuckDB", "Spark"); errors: the
    exception types a failing read raises (reported as an unreadable file).
    """

    engine: str = ""
    errors: tuple[type[BaseException], ...] = ()

    def rows(self, sql: str) -> list[tuple]:
        """The rows of query SQL (few: counts, examples, per-day figures)."""
        raise NotImplementedError

    def columns(self, relation: str) -> dict[str, str]:
        """RELATION's columns and their types, as DuckDB names them (VARCHAR, DOUBLE, ...)."""
        raise NotImplementedError

    def counts(self, table: str, conditions: list[str]) -> list[int]:
        """How many rows of TABLE meet each of CONDITIONS (SQL), in their order."""
        raise NotImplementedError

    def define(self, name: str, sql: str, *, view: bool = False) -> None:
        """NAME (created or replaced) holds the rows of query SQL; VIEW: read through on
        every query rather than stored (the events, the largest table)."""
        raise NotImplementedError

    def delete(self, table: str, condition: str) -> None:
        """Remove the rows of TABLE where CONDITION holds; CONDITION may name TABLE's
        columns as TABLE.column (in a correlated subquery)."""
        raise NotImplementedError

    def update(self, table: str, assignments: dict[str, str], condition: str) -> int:
        """Set column = SQL expression (ASSIGNMENTS, computed from the row before the
        change) in the rows of TABLE where CONDITION holds; returns how many rows."""
        raise NotImplementedError

    def drop(self, name: str) -> None:
        """Forget the helper table NAME (from `define`), if it exists."""
        raise NotImplementedError


class DuckRunner(SqlRunner):
    """The loader's SQL on a DuckDB connection: tables changed in place, views redefined."""

    engine = "DuckDB"
    errors = (duckdb.Error,)

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self.views: set[str] = set()
        self.versions = 0

    def rows(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def columns(self, relation: str) -> dict[str, str]:
        # Not DESCRIBE: on a view it shows a column's source spelling, not a case-only rename.
        return {name: str(kind) for name, kind, *_ in self.con.execute(
            f"SELECT * FROM {relation} LIMIT 0").description}

    def counts(self, table: str, conditions: list[str]) -> list[int]:
        # One count per condition: DuckDB skips the row groups whose statistics rule a
        # condition out, which one scan counting every condition at once would forgo.
        return [self.con.execute(f"SELECT count(*) FROM {table} WHERE {condition}"
                                 ).fetchall()[0][0] for condition in conditions]

    def define(self, name: str, sql: str, *, view: bool = False) -> None:
        self.con.execute(f"CREATE OR REPLACE {'VIEW' if view else 'TABLE'} {name} AS {sql}")
        if view:
            self.views.add(name)

    def delete(self, table: str, condition: str) -> None:
        if table not in self.views:
            self.con.execute(f"DELETE FROM {table} WHERE {condition}")
            return
        # A view over the source: filtered rather than copied.
        self.versions += 1
        kept = f"{table}_kept_{self.versions}"
        self.con.execute(f"ALTER VIEW {table} RENAME TO {kept}")
        self.con.execute(f"CREATE VIEW {table} AS SELECT * FROM {kept} AS {table} "
                         f"WHERE NOT ({condition})")

    def update(self, table: str, assignments: dict[str, str], condition: str) -> int:
        sets = ", ".join(f"{quote_ident(column)} = {value}"
                         for column, value in assignments.items())
        return self.con.execute(f"UPDATE {table} SET {sets} WHERE {condition}").fetchall()[0][0]

    def drop(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {name}")


def runner_of(target: SqlRunner | duckdb.DuckDBPyConnection) -> SqlRunner:
    """TARGET as a runner: a DuckDB connection (as older callers pass) is wrapped."""
    return target if isinstance(target, SqlRunner) else DuckRunner(target)
