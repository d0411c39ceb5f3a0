"""Leakage guard: records at or after a cutoff never change that cutoff's features.

The feature list is fixed (every built-in feature, the purchase process and per-type event
counts included), as a trained model fixes it: which features a source can give is decided
once, at training time (`churnlens.features.catalog`), not by each snapshot.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnlens.features.build import build_snapshot
from churnlens.features.catalog import SourceContents, feature_list
from churnlens.features.loading import load_source
from churnlens.settings import Settings

# Builds the sample's features once per mutated copy of the data: make test, not test-fast.
pytestmark = pytest.mark.slow

DAY0 = pd.Timestamp("2024-01-01")
CUSTOMERS = ["a", "b", "c"]
END = "2025-06-01"
SETTINGS = Settings()
EVENT_TYPES = ("login", "report_created", "export")
FEATURES = feature_list(SETTINGS.features, {"segment": "str"},
                        SourceContents.complete(SETTINGS.features, EVENT_TYPES))
# Both churn definitions: the spine of inactivity (any history before the cutoff) must obey
# the same rule as the contract one.
DEFINITIONS = {name: Settings(churn={"definition": name, "activity": "any"})
               for name in ("contract", "inactivity")}

day = st.integers(min_value=0, max_value=240)
cust = st.sampled_from(CUSTOMERS)


def _ts(d: int) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=d)


event = st.tuples(cust, day, st.sampled_from(EVENT_TYPES), st.integers(1, 5))
payment = st.tuples(cust, day, st.floats(1, 500),
                    st.sampled_from(["paid", "paid", "failed", "refunded"]))
ticket = st.tuples(cust, day, st.one_of(st.none(), st.integers(0, 60)),
                   st.sampled_from(["low", "normal", "high"]), st.integers(1, 5))
survey = st.tuples(cust, day, st.integers(0, 10))
subscription = st.tuples(cust, day, st.one_of(st.none(), st.integers(1, 200)),
                         st.floats(0, 1000), st.sampled_from(["month", "year"]))


def _frames(events, payments, tickets, surveys, subs) -> dict[str, pd.DataFrame]:
    return {
        "customers": pd.DataFrame({"customer_id": CUSTOMERS,
                                   "signed_up_at": [DAY0] * 3, "segment": ["x", "y", "x"]}),
        "events": pd.DataFrame(
            [(c, _ts(d), e, float(q)) for c, d, e, q in events],
            columns=["customer_id", "occurred_at", "event", "quantity"]),
        "payments": pd.DataFrame(
            [(c, _ts(d), a, s) for c, d, a, s in payments],
            columns=["customer_id", "occurred_at", "amount", "status"]),
        "tickets": pd.DataFrame(
            [(c, _ts(d), None if dur is None else _ts(d + dur), p, float(cs) if dur else None)
             for c, d, dur, p, cs in tickets],
            columns=["customer_id", "opened_at", "closed_at", "priority", "csat"]),
        "surveys": pd.DataFrame([(c, _ts(d), n) for c, d, n in surveys],
                                columns=["customer_id", "answered_at", "nps"]),
        "subscriptions": pd.DataFrame(
            # customer a always holds an open subscription, so the spine is never empty
            [("a", DAY0, None, 50.0, "month")]
            + [(c, _ts(d), None if dur is None else _ts(d + dur), m, b) for c, d, dur, m, b in subs],
            columns=["customer_id", "started_at", "ended_at", "mrr", "billing_interval"]),
    }


def _features(frames, cutoff, settings: Settings = SETTINGS) -> pd.DataFrame:
    ds = load_source(frames, observed_until=END)
    return build_snapshot(ds, cutoff, settings, FEATURES).frame.reset_index(drop=True)


def _late(rows, cutoff_day, ts_index=1):
    return [r for r in rows if r[ts_index] >= cutoff_day]


def _mutate(rows, cutoff_day, data, strategy):
    """Drop, change and add rows recorded at or after the cutoff; keep earlier rows as they are."""
    early = [r for r in rows if r[1] < cutoff_day]
    late = [r for r in _late(rows, cutoff_day) if data.draw(st.booleans())]
    late_day = st.integers(min_value=cutoff_day, max_value=300)
    changed = [data.draw(strategy.map(lambda r: (r[0], 0, *r[2:]))) for _ in late]
    changed = [(r[0], data.draw(late_day), *r[2:]) for r in changed]
    added = [(r[0], data.draw(late_day), *r[2:])
             for r in data.draw(st.lists(strategy, max_size=3))]
    return early + changed + added


# 15 examples per definition (each builds two snapshots, ~1 s of DuckDB): every example
# drops, moves and adds late rows of all five tables at once, so more examples mostly repeat.
@pytest.mark.parametrize("definition", sorted(DEFINITIONS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event, min_size=1, max_size=25),
    payments=st.lists(payment, max_size=12),
    tickets=st.lists(ticket, max_size=6),
    surveys=st.lists(survey, max_size=5),
    subs=st.lists(subscription, min_size=1, max_size=5),
    cutoff_day=st.integers(min_value=20, max_value=200),
    data=st.data(),
)
def test_records_at_or_after_cutoff_never_change_its_features(
    definition, events, payments, tickets, surveys, subs, cutoff_day, data
):
    cutoff = _ts(cutoff_day)
    chosen = DEFINITIONS[definition]
    before = _features(_frames(events, payments, tickets, surveys, subs), cutoff, chosen)
    # Subscriptions and tickets also carry a later-known time (end, close): move those
    # around freely as long as they stay at or after the cutoff.
    late_end = st.integers(min_value=cutoff_day, max_value=400)
    subs_changed = [
        (c, d, dur if dur is None or d + dur < cutoff_day else data.draw(late_end) - d, m, b)
        for c, d, dur, m, b in subs if d < cutoff_day
    ]
    tickets_changed = [
        (c, d, dur if dur is None or d + dur < cutoff_day else data.draw(late_end) - d, p, cs)
        for c, d, dur, p, cs in tickets if d < cutoff_day
    ]
    after = _features(
        _frames(
            _mutate(events, cutoff_day, data, event),
            _mutate(payments, cutoff_day, data, payment),
            tickets_changed + _mutate(_late(tickets, cutoff_day), cutoff_day, data, ticket),
            _mutate(surveys, cutoff_day, data, survey),
            subs_changed + _mutate(_late(subs, cutoff_day), cutoff_day, data, subscription),
        ),
        cutoff,
        chosen,
    )
    pd.testing.assert_frame_equal(before, after, check_dtype=False)


def test_a_record_before_the_cutoff_does_change_features():
    """The guard above is not vacuous: the same machinery sees earlier records."""
    events = [("a", 10, "login", 1)]
    subs = [("a", 0, None, 100.0, "month")]
    base = _features(_frames(events, [], [], [], subs), _ts(30))
    more = _features(_frames(events + [("a", 29, "login", 4)], [], [], [], subs), _ts(30))
    assert base.loc[0, "events_30d"] == 1.0
    assert more.loc[0, "events_30d"] == 5.0
    assert more.loc[0, "days_since_last_event"] == 1.0


def test_purchase_and_event_type_features_see_earlier_records():
    """The all-history features are not vacuous either: earlier records move them."""
    events = [("a", 5, "export", 2), ("a", 100, "export", 1), ("a", 45, "login", 1)]
    payments = [("a", 10, 30.0, "paid"), ("a", 40, 50.0, "paid"), ("a", 41, 9.0, "refunded")]
    subs = [("a", 0, None, 100.0, "month")]
    row = _features(_frames(events, payments, [], [], subs), _ts(60)).iloc[0]
    assert row["type_export_since_signup"] == 2.0 and row["type_login_30d"] == 1.0
    assert row["purchases"] == 2.0 and row["order_value_mean"] == 40.0
    assert row["days_since_last_purchase"] == 20.0 and row["refunds_90d"] == 1.0
