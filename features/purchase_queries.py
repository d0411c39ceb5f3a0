"""Payment features: billing problems, amounts paid, and the full-history purchase process.

A purchase is a UTC day with a paid payment (its order value: the day's paid amounts);
failed payments and refunds are counted apart and never count as purchases. The purchase
process is read over the whole history before each cutoff, as the classic models of
businesses without contracts read it (frequency, recency, customer age, order value and the
time between purchases, Fader, Hardie and Lee 2005), through running figures per purchase
day and `churnlens.features.known.latest_before`, so the cost is linear in the data.
"""

from __future__ import annotations

from churnlens.features.exact_sums import exact_sum
from churnlens.features.known import days_between, latest_before, utc_day, visible

# Payment windows: the longest window read, in days.
_PAYMENT_SPAN = 365


def payment_sql(payments: str, cutoffs: str) -> str:
    """Per customer and cutoff: failed payments and refunds, amounts paid per window.

    Columns failed_payments_90d, failed_payments_30d, refunds_90d, paid_amount_90d,
    paid_amount_prev_90d (the 90 days before the last 90) and paid_amount_365d.
    """
    def within(days: int) -> str:
        return f"occurred_at >= cutoff - INTERVAL {days} DAY"

    before_last_90 = f"{within(180)} AND occurred_at < cutoff - INTERVAL 90 DAY"
    return f"""
        SELECT customer_id, cutoff,
            count(*) FILTER (WHERE status = 'failed' AND {within(90)}) AS failed_payments_90d,
            count(*) FILTER (WHERE status = 'failed' AND {within(30)}) AS failed_payments_30d,
            count(*) FILTER (WHERE status = 'refunded' AND {within(90)}) AS refunds_90d,
            {exact_sum('amount', f"status = 'paid' AND {within(90)}")} AS paid_amount_90d,
            {exact_sum('amount', f"status = 'paid' AND {before_last_90}")}
                AS paid_amount_prev_90d,
            {exact_sum('amount', "status = 'paid'")} AS paid_amount_365d
        FROM ({visible('payments', payments, cutoffs=cutoffs, window_days=_PAYMENT_SPAN)})
            AS payment
        GROUP BY customer_id, cutoff
    """


def purchase_history_sql(payments: str, cutoffs: str) -> str:
    """Per customer and cutoff with a purchase before it: the purchase process so far.

    Columns purchases (purchase days), first_day, last_day, order_value_mean,
    order_value_std (two purchases or more), purchase_gap_mean_days (two or more) and
    purchase_gap_std_days (three or more).
    """
    order = "PARTITION BY customer_id ORDER BY day"
    running = f"{order} ROWS UNBOUNDED PRECEDING"
    # Order values are summed shifted by the first one, so that near-equal values (a monthly
    # invoice) give a spread of 0 instead of the rounding left by a sum of squares.
    rows = f"""
        WITH purchase_days AS (
            SELECT customer_id, day, {exact_sum('amount')} AS order_value
            FROM (SELECT customer_id, {utc_day('occurred_at')} AS day, amount
                  FROM {payments} AS payment WHERE status = 'paid') AS paid
            GROUP BY customer_id, day),
        steps AS (
            SELECT customer_id, day,
                   first_value(order_value) OVER ({order}) AS first_order_value,
                   order_value - first_value(order_value) OVER ({order}) AS shifted,
                   {days_between(f'lag(day) OVER ({order})', 'day')} AS gap
            FROM purchase_days)
        SELECT customer_id, day, first_order_value,
               count(*) OVER ({running}) AS purchases,
               min(day) OVER ({running}) AS first_day,
               sum(shifted) OVER ({running}) AS shifted_sum,
               sum(shifted * shifted) OVER ({running}) AS shifted_squares,
               sum(gap * gap) OVER ({running}) AS gap_squares
        FROM steps
    """
    last = latest_before(f"({rows})", ("first_order_value", "purchases", "first_day", "shifted_sum",
                                        "shifted_squares", "gap_squares"),
                         cutoffs=cutoffs, time_column="day")
    gap_sum = days_between("first_day", "day")
    return f"""
        SELECT customer_id, cutoff, purchases, first_day, day AS last_day,
            first_order_value + shifted_sum / purchases AS order_value_mean,
            CASE WHEN purchases >= 2 THEN sqrt(greatest(
                (shifted_squares - shifted_sum * shifted_sum / purchases) / (purchases - 1), 0))
            END AS order_value_std,
            CASE WHEN purchases >= 2 THEN {gap_sum} / (purchases - 1) END
                AS purchase_gap_mean_days,
            CASE WHEN purchases >= 3 THEN sqrt(greatest(
                (gap_squares - {gap_sum} * {gap_sum} / (purchases - 1)) / (purchases - 2), 0))
            END AS purchase_gap_std_days
        FROM ({last}) AS purchase_state
    """
