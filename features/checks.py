"""The contract's checks on raw and typed tables: types, finite numbers, dates, keys, rules.

Each check is one SQL count over a table (no Python loop over rows) and raises `DataError`
naming the table, the column, how many rows, a few of their values and customer ids, and
how to fix them. Column names reach SQL quoted (`quote_ident`), values as literals. The
SQL runs on a `churnlens.features.sql_runner.SqlRunner`: DuckDB or Spark, one text for both.
"""

from __future__ import annotations

from churnlens.features.contract import TABLES, VALUE_RULES, TableSpec
from churnlens.features.reading import DataError, quote_ident
from churnlens.features.sql_runner import SqlRunner

SQL_TYPES = {"str": "VARCHAR", "timestamp": "TIMESTAMP", "float": "DOUBLE"}
# Timestamps pandas and the models can hold, and that are plausible for customer records:
# a date before 1970 or after 2262 is a placeholder (0001-01-01, 9999-12-31) or a typo.
EARLIEST, LATEST = "1970-01-01", "2262-04-11"
# A customer attribute is numeric when at most this share of its values are not numbers
# (those few are read as empty and counted): one "1,200" must not make a category.
NOT_NUMERIC_SHARE = 0.01


def examples(runner: SqlRunner, table: str, condition: str, n: int = 3) -> tuple[int, str]:
    """How many rows of TABLE meet CONDITION (SQL), and a few of their customer ids."""
    count = runner.counts(table, [condition])[0]
    return count, example_ids(runner, table, condition, n) if count else ""


def example_ids(runner: SqlRunner, table: str, condition: str, n: int = 3) -> str:
    """A few customer ids (quoted, the first in text order) of the rows of TABLE meeting
    CONDITION; blank ids are left out."""
    found = runner.rows(f"""
        SELECT DISTINCT CAST(customer_id AS VARCHAR) AS id FROM {table}
        WHERE ({condition}) AND trim(CAST(customer_id AS VARCHAR)) <> ''
        ORDER BY id LIMIT {int(n)}""")
    return ", ".join(repr(row[0]) for row in found)


def values_of(runner: SqlRunner, table: str, column: str, condition: str, n: int = 3) -> str:
    """A few distinct values (as text) of COLUMN in the rows of TABLE meeting CONDITION."""
    found = runner.rows(f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) AS v FROM "
                        f"{table} WHERE {condition} ORDER BY v LIMIT {int(n)}")
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


def check_types(runner: SqlRunner, spec: TableSpec, cols: dict[str, str]) -> int:
    """Every present contract column of raw_SPEC parses as its kind, is finite (numbers) or
    between 1970 and 2262 (timestamps), and is not empty where required. COLS: the raw
    columns and their DuckDB types. Returns the table's row count.

    The first rule (in column order) that rows break raises DataError; the counts are
    the runner's (one per rule on DuckDB, one scan for all on Spark).
    """
    table = f"raw_{spec.name}"
    rules = [rule for col in spec.columns if col.name in cols
             for rule in _type_rules(col, cols[col.name])]
    *broken, total = runner.counts(table, [condition for _, condition, _, _ in rules] + ["TRUE"])
    for (column, condition, what, fix), count in zip(rules, broken, strict=True):
        if not count:
            continue
        ids = example_ids(runner, table, condition)
        if what == "are empty":
            raise DataError(f"table {spec.name}, column {column}: {count:,} row(s) are empty "
                            f"(customers {ids or 'with no id'}); {fix}")
        raise DataError(f"table {spec.name}, column {column}: {count:,} row(s) {what} (values "
                        f"{values_of(runner, table, column, condition)}; customers {ids}); {fix}")
    return total


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


def attribute_kinds(runner: SqlRunner, spec: TableSpec, cols, report) -> dict[str, str]:
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
    not_numeric = {c: (f"{quote_ident(c)} IS NOT NULL AND NOT coalesce(isfinite("
                       f"TRY_CAST({quote_ident(c)} AS DOUBLE)), false)") for c in extra}
    counts = runner.counts("raw_customers", [f"{quote_ident(c)} IS NOT NULL" for c in extra]
                           + list(not_numeric.values()))
    kinds = {}
    for col, present, bad in zip(extra, counts[:len(extra)], counts[len(extra):], strict=True):
        few = 0 < bad <= NOT_NUMERIC_SHARE * present
        kinds[col] = "float" if not bad or few else "str"
        if few:
            report.check("customers", (
                f"attribute {col!r}: numbers except {bad:,} of {present:,} values "
                f"({values_of(runner, 'raw_customers', col, not_numeric[col])}): read as a "
                "number, those values as empty; fix them in the source to keep them"))
    return kinds


def unknown_customer(table: str) -> str:
    """SQL true for a row of TABLE whose customer_id is not in customers (an anti join;
    NOT IN would make Spark compare every pair of rows)."""
    return (f"NOT EXISTS (SELECT 1 FROM customers AS known "
            f"WHERE known.customer_id = {table}.customer_id)")


def check_keys(runner: SqlRunner) -> None:
    """Customer ids are unique, and every other table's rows belong to a known customer."""
    count, ids = examples(
        runner, "customers",
        "customer_id IN (SELECT customer_id FROM customers GROUP BY 1 HAVING count(*) > 1)")
    if count:
        raise DataError(f"table customers, column customer_id: {count:,} rows share a "
                        f"customer_id (e.g. {ids}); each customer must appear once")
    for name in TABLES:
        if name == "customers":
            continue
        count, ids = examples(runner, name, unknown_customer(name))
        if count:
            raise DataError(
                f"table {name}, column customer_id: {count:,} row(s) for customers not in "
                f"the customers table (e.g. {ids}){_spaces_hint(runner, name)}; add those "
                "customers or remove the rows")


def _spaces_hint(runner: SqlRunner, name: str) -> str:
    """Why ids fail to match when spaces or case are the cause (they are invisible in a list)."""
    near, given, known = runner.rows(f"""
        SELECT count(*), min(record.customer_id), min_by(customer.customer_id, record.customer_id)
        FROM (SELECT customer_id FROM {name} WHERE {unknown_customer(name)}) AS record
        JOIN customers AS customer
          ON lower(trim(record.customer_id)) = lower(trim(customer.customer_id))""")[0]
    if not near:
        return ""
    return (f"; {near:,} of them match a customer once surrounding spaces and case are "
            f"ignored (e.g. {given!r} in {name}, {known!r} in customers): make the ids "
            "identical in both tables")


def check_values(runner: SqlRunner) -> None:
    """The contract's value rules (contract.VALUE_RULES) on the typed tables; the first
    rule (in their order) that rows break raises DataError."""
    conditions: dict[str, list[str]] = {}
    for table, _column, condition, _rule in VALUE_RULES:
        conditions.setdefault(table, []).append(condition)
    counts = {table: dict(zip(found, runner.counts(table, found), strict=True))
              for table, found in conditions.items()}
    for table, column, condition, rule in VALUE_RULES:
        count = counts[table][condition]
        if count:
            raise DataError(f"table {table}, column {column}: {count:,} row(s) break the rule: "
                            f"{rule} (customers {example_ids(runner, table, condition)})")
