"""The demo data generator: deterministic, realistic, and drifts as asked."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from driftloop.app.demo.churn import STRONG_DRIFT, DriftSpec, batch_windows, generate_batch

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=7)


def batch(**kwargs):
    return generate_batch(batch=0, rows=3000, start=START, end=END, **kwargs)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = batch(seed=1), batch(seed=1), batch(seed=2)
    assert a.labels.equals(b.labels)
    assert a.activity.equals(b.activity)
    assert not a.labels.equals(c.labels)


def test_columns_types_and_keys():
    data = batch()
    assert list(data.labels.columns) == ["customer_id", "event_timestamp", "churned"]
    assert str(data.labels["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert set(data.labels["churned"].unique()) == {0, 1}
    assert not data.labels.duplicated(["customer_id", "event_timestamp"]).any()
    ts = data.labels["event_timestamp"]
    assert ts.min() >= START
    assert ts.max() < END
    # Features are snapshots taken before the observation they describe.
    assert (data.activity["event_timestamp"] < data.labels["event_timestamp"]).all()
    assert 0.08 < data.labels["churned"].mean() < 0.3


def test_label_depends_on_features_realistically():
    data = batch(seed=3)
    frame = data.labels.join(data.profile.drop(columns=["customer_id", "event_timestamp"]))
    by_contract = frame.groupby("contract")["churned"].mean()
    assert by_contract["month-to-month"] > by_contract["one-year"] > by_contract["two-year"]


def test_drift_shifts_covariates_labels_and_adds_categories():
    base, drifted = batch(seed=5), batch(seed=5, drift=STRONG_DRIFT)
    assert drifted.activity["monthly_charges"].mean() > base.activity["monthly_charges"].mean() + 5
    assert drifted.labels["churned"].mean() > base.labels["churned"].mean() + 0.1
    assert "fiber_max" in set(drifted.profile["plan"])
    assert "fiber_max" not in set(base.profile["plan"])


def test_invalid_drift_spec_names_the_column():
    with pytest.raises(ValueError, match="unknown numeric columns \\['nope'\\]"):
        DriftSpec(covariate_shift={"nope": 1.0})
    with pytest.raises(ValueError, match="unknown categorical columns"):
        DriftSpec(new_categories={"monthly_charges": "x"})


def test_batch_windows_are_consecutive():
    windows = batch_windows(END, 3, 7)
    assert windows[-1][1] == END
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
