"""Relations the feature steps pass to each other, and where the SQL reads its inputs.

Every feature step takes the relations it reads and returns the one it computes (a DuckDB
relation); no step relies on a table of an agreed name being on the connection. The SQL
builders of `churnlens.features.queries` take the names to read as arguments: `Sources`
says where each contract table is, and `from_item` turns a relation into something SQL can
read FROM. A relation that is read several times is computed once by `materialise` into a
temporary table of its own; `drop` removes such tables when the caller is done with them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # the scoring path reads LOADED and builds SQL text without DuckDB
    import duckdb


@dataclass(frozen=True)
class Sources:
    """Where the SQL reads each contract table: a table or view name, or a parenthesised query.

    The defaults are the tables `churnlens.features.loading.load_source` creates. A batch
    engine passes queries restricted to a chunk of customers; the Spark engine its views.
    """

    customers: str = "customers"
    subscriptions: str = "subscriptions"
    events: str = "events"
    payments: str = "payments"
    tickets: str = "tickets"
    surveys: str = "surveys"

    def of(self, table: str) -> str:
        """The from-item of contract table TABLE (one of the field names)."""
        return getattr(self, table)

    def where(self, condition: str) -> Sources:
        """These sources with each table read only where CONDITION (SQL on its columns) holds."""
        return Sources(**{f.name: f"(SELECT * FROM {getattr(self, f.name)} AS whole "
                                  f"WHERE {condition})" for f in fields(self)})


LOADED = Sources()  # the tables of a loaded DataSet, under their contract names


def timestamp_literal(moment: pd.Timestamp) -> str:
    """MOMENT (tz-naive, UTC) as a SQL timestamp literal, exact to the microsecond."""
    return f"TIMESTAMP '{pd.Timestamp(moment).isoformat(sep=' ')}'"


def from_item(relation: duckdb.DuckDBPyRelation) -> str:
    """RELATION as a parenthesised query, to be read FROM inside other SQL."""
    return f"({relation.sql_query()})"


def materialise(con: duckdb.DuckDBPyConnection, sql: str, name: str) -> duckdb.DuckDBPyRelation:
    """Run SQL once into a new temporary table and return a relation reading that table.

    The table's name starts with NAME and ends with a random suffix, so two computations on
    one connection never overwrite each other. It lives until `drop` or the connection ends.
    """
    table = f"{name}_{secrets.token_hex(6)}"
    con.execute(f"CREATE TEMP TABLE {table} AS {sql}")
    return con.table(table)


def drop(con: duckdb.DuckDBPyConnection, *relations: duckdb.DuckDBPyRelation | None) -> None:
    """Drop the temporary tables behind RELATIONS (from `materialise`); None is skipped.

    Raises ValueError for a relation that does not read a temporary table as a whole, so a
    loaded table or a derived query is never dropped by mistake.
    """
    for relation in relations:
        if relation is None:
            continue
        temporary = relation.type == "TABLE_RELATION" and con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?",
            [relation.alias]).fetchall()[0][0]
        if not temporary:
            raise ValueError(f"relation {relation.alias!r} is not a temporary table from "
                             "materialise(); only those can be dropped")
        con.execute(f"DROP TABLE {relation.alias}")
