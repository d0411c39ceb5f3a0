"""Sums of floating-point columns that do not depend on the order of the rows.

DuckDB (and Spark) aggregate in parallel: each thread sums the rows it read and the partial
sums are added in whatever order the threads finish, so a sum of doubles can differ in its
last bit from one run to the next (a 4.4e-16 difference was seen), and a training set or a
score file would not be byte-reproducible. A sum over DECIMAL is integer arithmetic, exact
in any order; the values are rounded to DECIMAL_PLACES first (loading turns non-finite
numbers into NULL, so every value casts).
"""

from __future__ import annotations

# 9 places keep amounts in cents and fractions of a second exactly; 38 digits leave 29
# before the point.
DECIMAL_PLACES = 9
DECIMAL = f"DECIMAL(38, {DECIMAL_PLACES})"


def exact_sum(expression: str, where: str | None = None) -> str:
    """SQL for the sum of EXPRESSION (a number) as a DOUBLE, the same in any row order.

    where: an optional condition, as the aggregate's FILTER clause. NULL when no row counts.
    """
    condition = f" FILTER (WHERE {where})" if where else ""
    return f"CAST(sum(CAST({expression} AS {DECIMAL})){condition} AS DOUBLE)"
