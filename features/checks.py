"""The contract's checks on raw and typed tables: types, finite numbers, dates, keys, rules.

Each check is one SQL count over a table (no Python loop over rows) and raises `DataError`
naming the table, the column, how many rows, a few of their values and customer ids, and
how to fix them. Column names reach SQL quoted (`quote_ident`), values as parameters.
"""

from __future__ import annotations

import duckdb

from churnlens.features.contract import TABLES, VALUE_RULES, TableSpec
from churnlens.features.reading import DataError, quote_ident

SQL_TYPES = {"str": "VARCHAR", "timestamp": "TIMESTAMP", "float": "DOUBLE"}
# Timestamps pandas and the models can hold, and that are plausible for customer records:
# a date before 1970 or after 2262 is a placeholder (0001-01-01, 9999-12-31) or a typo.
EARLIEST, LATEST = "1970-01-01", "2262-04-11"
# A customer attribute is numeric when at most this share of its values are not numbers
# (those few are read as empty and counted): one "1,200" must not make a category.
NOT_NUMERIC_SHARE = 0.01


def examples(con: duckdb.DuckDBPyConnection, table: str, condition: str,
             n: int = 3) -> tuple[int, str]:
    """How many rows of TABLE meet CONDITION (SQL), and a few of their customer ids."""
    count, ids = con.execute(f"""
        SELECT count(*), list(DISTINCT CAST(customer_id AS VARCHAR) ORDER BY
                              CAST(customer_id AS VARCHAR))
                         FILTER (WHERE trim(CAST(customer_id AS VARCHAR)) <> '')
        FROM {table} WHERE {condition}""").fetchall()[0]
    return count, ", ".join(repr(i) for i in (ids or [])[:n])


def values_of(con, table: str, column: str, condition: str, n: int = 3) -> str:
    """A few distinct values (as text) of COLUMN in the rows of TABLE meeting CONDITION."""
    found = con.execute(f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) AS v FROM "
                        f"{table} WHERE {condition} ORDER BY v LIMIT {int(n)}").fetchall()
    return ", ".join(repr(row[0]) for row in found)


def cast_expr(column: str, kind: str, raw_type: str | None = None) -> str:
    """SQL casting raw COLUMN (of DuckDB type RAW_TYPE, when known) to the contract KIND;
    NULL where it does not parse. A column already of its type is read as it is: the
    events view casts on every read, and a timestamp's way through TIMESTAMPTZ is slow."""
    ident = quote_ident(column)
    if raw_type == SQL_TYPES[kind]:
        return ident
    if kind == "timestamp":
        if raw_type is not None and (raw_type.startswith("TIMESTAMP") or raw_type == "DATE"):
            return f"CAST({ident} AS TIMESTAMP)"  # with a zone: converted in the UTC session
        return f"TRY_CAST(TRY_CAST({ident} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST({ident} AS {SQL_TYPES[kind]})"


def check_types(con, spec: TableSpec, cols: dict[str, str]) -> None:
    """Every present contract column of raw_SPEC parses as its kind, is finite (numbers) or
    between 1970 and 2262 (timestamps), and is not empty where required. COLS: the raw
    columns and their DuckDB types.

    Each rule is its own count: DuckDB skips the row groups whose statistics rule a
    condition out, which one scan counting every rule at once would forgo.
    """
    table = f"raw_{spec.name}"
    rules = [rule for col in spec.columns if col.name in cols
             for rule in _type_rules(col, cols[col.name])]
    for column, condition, what, fix in rules:
        count, ids = examples(con, table, condition)
        if not count:
            continue
        if what == "are empty":
            raise DataError(f"table {spec.name}, column {column}: {count:,} row(s) are empty "
                            f"(customers {ids or 'with no id'}); {fix}")
        raise DataError(f"table {spec.name}, column {column}: {count:,} row(s) {what} (values "
                        f"{values_of(con, table, column, condition)}; customers {ids}); {fix}")


def _type_rules(col, raw_type: str) -> list[tuple[str, str, str, str]]:
    """(column, SQL condition true for a bad row, what such rows hold, how to fix) of COL."""
    ident, cast = quote_ident(col.name), cast_expr(col.name, col.kind, raw_type)
    what = ("timestamp that does not parse" if col.kind == "timestamp"
            else f"value that is not a {col.kind}")
    fix = "ISO 8601 UTC timestamps" if col.kind == "timestamp" else col.kind
    rules = [(col.name, f"{ident} IS NOT NULL AND {cast} IS NULL", f"hold a {what}",
              f"fix them to {fix}")]
    if col.kind == "float":
        rules.append((col.name, f"NOT isfinite({cast})",
                      "hold a number that is not finite (inf, -inf, NaN or beyond 1.8e308)",
                      "write finite numbers" + ("" if col.required
                                                else ", or leave unknown values empty")))
    if col.kind == "timestamp":
        rules.append((col.name,
                      f"({cast} < TIMESTAMP '{EARLIEST}' OR {cast} >= TIMESTAMP '{LATEST}')",
                      f"hold a timestamp before {EARLIEST} or after {LATEST}",
                      "fix them, and leave a moment that has not happened (an open end) empty "
                      "rather than a placeholder such as 9999-12-31"))
    if col.required:
        empty = f"{ident} IS NULL"
        if col.kind == "str":  # a blank id or name is as empty as a missing one
            empty += f" OR trim(CAST({ident} AS VARCHAR)) = ''"
        rules.append((col.name, empty, "are empty", "this column is required"))
    return rules


def attribute_kinds(con, spec: TableSpec, cols, report) -> dict[str, str]:
    """Static attributes of customers: numeric when (nearly) every value is a finite number.

    A column whose values are numbers except at most NOT_NUMERIC_SHARE of them is numeric:
    those few are read as empty, and REPORT gets a line naming them.
    """
    extra = [c for c in cols if c not in {col.name for col in spec.columns}]
    if not extra:
        return {}
    quoted = [c for c in extra if '"' in c]
    if quoted:  # an attribute's name becomes a feature column's name in every feature query
        raise DataError(f"table customers: column name(s) {', '.join(map(repr, quoted))} hold "
                        'a double quote ("); rename them (letters, digits, _ and spaces)')
    numeric = ", ".join(
        f"count({quote_ident(c)}), count(*) FILTER (WHERE {quote_ident(c)} IS NOT NULL AND "
        f"NOT coalesce(isfinite(TRY_CAST({quote_ident(c)} AS DOUBLE)), false))" for c in extra)
    counts = con.execute(f"SELECT {numeric} FROM raw_customers").fetchall()[0]
    kinds = {}
    for i, col in enumerate(extra):
        present, not_numeric = counts[2 * i], counts[2 * i + 1]
        few = 0 < not_numeric <= NOT_NUMERIC_SHARE * present
        kinds[col] = "float" if not not_numeric or few else "str"
        if few:
            bad = (f"{quote_ident(col)} IS NOT NULL AND NOT coalesce(isfinite("
                   f"TRY_CAST({quote_ident(col)} AS DOUBLE)), false)")
            report.check("customers", (
                f"attribute {col!r}: numbers except {not_numeric:,} of {present:,} values "
                f"({values_of(con, 'raw_customers', col, bad)}): read as a number, those "
                "values as empty; fix them in the source to keep them"))
    return kinds


def check_keys(con) -> None:
    """Customer ids are unique, and every other table's rows belong to a known customer."""
    count, ids = examples(
        con, "customers",
        "customer_id IN (SELECT customer_id FROM customers GROUP BY 1 HAVING count(*) > 1)")
    if count:
        raise DataError(f"table customers, column customer_id: {count:,} rows share a "
                        f"customer_id (e.g. {ids}); each customer must appear once")
    for name in TABLES:
        if name == "customers":
            continue
        unknown = "customer_id NOT IN (SELECT customer_id FROM customers)"
        count, ids = examples(con, name, unknown)
        if count:
            raise DataError(
                f"table {name}, column customer_id: {count:,} row(s) for customers not in "
                f"the customers table (e.g. {ids}){_spaces_hint(con, name, unknown)}; add those "
                "customers or remove the rows")


def _spaces_hint(con, name: str, unknown: str) -> str:
    """Why ids fail to match when spaces or case are the cause (they are invisible in a list)."""
    near, given, known = con.execute(f"""
        SELECT count(*), min(record.customer_id), arg_min(customer.customer_id, record.customer_id)
        FROM (SELECT customer_id FROM {name} WHERE {unknown}) AS record
        JOIN customers AS customer
          ON lower(trim(record.customer_id)) = lower(trim(customer.customer_id))""").fetchall()[0]
    if not near:
        return ""
    return (f"; {near:,} of them match a customer once surrounding spaces and case are "
            f"ignored (e.g. {given!r} in {name}, {known!r} in customers): make the ids "
            "identical in both tables")


def check_values(con) -> None:
    """The contract's value rules (contract.VALUE_RULES) on the typed tables."""
    for table, column, condition, rule in VALUE_RULES:
        count, ids = examples(con, table, condition)
        if count:
            raise DataError(f"table {table}, column {column}: {count:,} row(s) break the rule: "
                            f"{rule} (customers {ids})")
