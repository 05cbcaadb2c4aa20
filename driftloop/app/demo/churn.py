"""A deterministic generator of customer-churn data, with configurable drift.

Each batch is a window of time in which customers are observed once: a labeled entity row
(``customer_id``, ``event_timestamp``, ``churned``) plus feature snapshots taken shortly before
it, split the way a feature store holds them (a slowly changing profile, recent activity).

Churn depends on the features the way it does in real subscription businesses: short tenure,
month-to-month contracts, high bills, support trouble, late payments and disengagement raise it.
The same ``(seed, batch, start, end, rows, drift)`` always gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from driftloop.app.demo import DEMO_ENTITY, DEMO_LABEL, DEMO_TIMESTAMP

PLANS = ("basic", "standard", "premium")
CONTRACTS = ("month-to-month", "one-year", "two-year")
PAYMENT_METHODS = ("electronic_check", "mailed_check", "bank_transfer", "credit_card")
REGIONS = ("north", "south", "east", "west")

PROFILE_COLUMNS = ("tenure_months", "plan", "contract", "payment_method", "region")
ACTIVITY_COLUMNS = (
    "monthly_charges",
    "logins_30d",
    "avg_session_minutes",
    "support_tickets_30d",
    "days_since_last_login",
    "late_payments_90d",
)
NUMERIC_COLUMNS = ("tenure_months", *ACTIVITY_COLUMNS)
CATEGORICAL_COLUMNS = ("plan", "contract", "payment_method", "region")
LABEL = DEMO_LABEL
ENTITY = DEMO_ENTITY
TIMESTAMP = DEMO_TIMESTAMP

# Churn effect of a category that only appears under drift (see DriftSpec.new_categories).
NEW_CATEGORY_EFFECT = 1.6


@dataclass(frozen=True)
class DriftSpec:
    """How a batch departs from the reference population.

    - ``covariate_shift``: numeric column -> shift of its mean, in units of its std. The label
      still depends on the shifted values the same way (pure covariate shift).
    - ``label_shift``: added to the churn log-odds (label-rate shift).
    - ``concept_shift``: how far churn stops depending on the features the way it did (concept
      drift, the features unchanged): their effect is scaled by ``1 - 2 * concept_shift``, so
      0.5 removes it and 1 reverses it.
    - ``new_categories``: categorical column -> new category, introduced in
      ``new_category_share`` of rows, with a strong effect on churn that an old model cannot know.
    """

    covariate_shift: dict[str, float] = field(default_factory=dict)
    label_shift: float = 0.0
    concept_shift: float = 0.0
    new_categories: dict[str, str] = field(default_factory=dict)
    new_category_share: float = 0.3

    def __post_init__(self) -> None:
        unknown = set(self.covariate_shift) - set(NUMERIC_COLUMNS)
        if unknown:
            raise ValueError(
                f"covariate_shift names unknown numeric columns {sorted(unknown)}; "
                f"choose from {list(NUMERIC_COLUMNS)}"
            )
        unknown = set(self.new_categories) - set(CATEGORICAL_COLUMNS)
        if unknown:
            raise ValueError(
                f"new_categories names unknown categorical columns {sorted(unknown)}; "
                f"choose from {list(CATEGORICAL_COLUMNS)}"
            )
        if not 0 <= self.new_category_share <= 1:
            raise ValueError("new_category_share must be between 0 and 1")

    @property
    def is_drifted(self) -> bool:
        return bool(
            self.covariate_shift or self.label_shift or self.concept_shift or self.new_categories
        )


# A drift that is unmistakable both to a drift test and to a model: a costlier population, more
# support trouble, a higher churn rate, and a new plan with churn of its own.
STRONG_DRIFT = DriftSpec(
    covariate_shift={"monthly_charges": 1.0, "support_tickets_30d": 1.0, "logins_30d": -0.8},
    label_shift=0.4,
    new_categories={"plan": "fiber_max"},
    new_category_share=0.35,
)


@dataclass(frozen=True)
class ChurnBatch:
    labels: pd.DataFrame  # customer_id, event_timestamp, churned
    profile: pd.DataFrame  # customer_id, event_timestamp, created, profile features
    activity: pd.DataFrame  # customer_id, event_timestamp, created, activity features


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_batch(
    *,
    batch: int,
    rows: int,
    start: datetime,
    end: datetime,
    seed: int = 42,
    drift: DriftSpec | None = None,
    customer_pool: int | None = None,
) -> ChurnBatch:
    """Generate one batch of labeled customers observed in ``[start, end)``."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if end <= start:
        raise ValueError(f"batch window is empty: start {start} is not before end {end}")
    drift = drift or DriftSpec()
    rng = np.random.default_rng(np.random.SeedSequence([seed, batch]))
    pool = max(customer_pool or 0, rows * 2, 1000)

    customer_id = rng.choice(np.arange(1, pool + 1, dtype=np.int64), size=rows, replace=False)
    span_s = (end - start).total_seconds()
    offsets = np.sort(rng.uniform(0, span_s, size=rows))
    event_ts = pd.to_datetime(start) + pd.to_timedelta(offsets, unit="s")
    event_ts = pd.DatetimeIndex(event_ts).floor("s")
    event_ts = event_ts.tz_convert("UTC") if event_ts.tz else event_ts.tz_localize("UTC")

    contract = rng.choice(CONTRACTS, size=rows, p=[0.55, 0.25, 0.20])
    plan = rng.choice(PLANS, size=rows, p=[0.35, 0.45, 0.20]).astype(object)
    payment = rng.choice(PAYMENT_METHODS, size=rows, p=[0.35, 0.20, 0.25, 0.20]).astype(object)
    region = rng.choice(REGIONS, size=rows).astype(object)

    tenure_scale = np.select(
        [contract == "month-to-month", contract == "one-year"], [9.0, 16.0], default=22.0
    )
    tenure = np.clip(rng.gamma(2.0, tenure_scale), 0, 72).round().astype(np.int64)
    plan_base = np.select([plan == "basic", plan == "standard"], [35.0, 65.0], default=95.0)
    charges = np.clip(plan_base + rng.normal(0, 10, rows), 15, None)
    engagement = rng.gamma(4.0, 0.25, rows)  # latent, mean 1
    logins = rng.poisson(18 * engagement).astype(np.int64)
    session = rng.lognormal(np.log(12) + 0.3 * (engagement - 1), 0.4, rows)
    tickets = rng.poisson(0.35 + 0.25 * (plan == "premium") + 0.6 * (engagement < 0.5))
    days_idle = np.clip(rng.exponential(30 / (logins + 1)), 0, 90).round().astype(np.int64)
    late = rng.poisson(0.15 + 0.45 * (payment == "electronic_check")).astype(np.int64)

    numeric: dict[str, np.ndarray] = {
        "tenure_months": tenure.astype(float),
        "monthly_charges": charges,
        "logins_30d": logins.astype(float),
        "avg_session_minutes": session,
        "support_tickets_30d": tickets.astype(float),
        "days_since_last_login": days_idle.astype(float),
        "late_payments_90d": late.astype(float),
    }
    for column, shift_std in drift.covariate_shift.items():
        values = numeric[column]
        numeric[column] = values + shift_std * max(float(values.std()), 1e-9)
    # Counts stay counts after a shift.
    for column in NUMERIC_COLUMNS:
        if column not in ("monthly_charges", "avg_session_minutes"):
            numeric[column] = np.clip(np.round(numeric[column]), 0, None)
    numeric["monthly_charges"] = np.clip(numeric["monthly_charges"], 5, None).round(2)
    numeric["avg_session_minutes"] = np.clip(numeric["avg_session_minutes"], 0.5, None).round(2)

    categorical = {
        "plan": plan,
        "contract": contract.astype(object),
        "payment_method": payment,
        "region": region,
    }
    new_flag = np.zeros(rows, dtype=bool)
    for column, category in drift.new_categories.items():
        chosen = rng.random(rows) < drift.new_category_share
        categorical[column] = np.where(chosen, category, categorical[column]).astype(object)
        new_flag |= chosen

    effects = (
        np.select(
            [categorical["contract"] == "month-to-month", categorical["contract"] == "one-year"],
            [1.1, -0.4],
            default=-1.3,
        )
        - 0.04 * numeric["tenure_months"]
        + 0.02 * (numeric["monthly_charges"] - 65)
        + 0.45 * numeric["support_tickets_30d"]
        - 0.035 * numeric["logins_30d"]
        + 0.03 * numeric["days_since_last_login"]
        + 0.5 * numeric["late_payments_90d"]
        + 0.45 * (categorical["payment_method"] == "electronic_check")
        - 0.25 * (categorical["plan"] == "premium")
        - 0.02 * (numeric["avg_session_minutes"] - 12)
    )
    logit = (
        -1.6
        + (1 - 2 * drift.concept_shift) * effects
        + drift.label_shift
        + NEW_CATEGORY_EFFECT * new_flag
    )
    churned = (rng.random(rows) < _sigmoid(logit)).astype(np.int64)

    # Tracking gaps: a few sessions are not measured. Feast returns them as nulls.
    missing = rng.random(rows) < 0.02
    session_out = np.where(missing, np.nan, numeric["avg_session_minutes"])

    # Features are computed shortly before the observation (point-in-time correct).
    lag = pd.to_timedelta(rng.uniform(3600, 5 * 86400, size=rows), unit="s")
    feature_ts = (event_ts - lag).floor("s")
    created = feature_ts + pd.Timedelta(minutes=5)

    labels = pd.DataFrame({ENTITY: customer_id, TIMESTAMP: event_ts, LABEL: churned})
    profile = pd.DataFrame(
        {
            ENTITY: customer_id,
            TIMESTAMP: feature_ts,
            "created": created,
            "tenure_months": numeric["tenure_months"].astype(np.int64),
            "plan": categorical["plan"],
            "contract": categorical["contract"],
            "payment_method": categorical["payment_method"],
            "region": categorical["region"],
        }
    )
    activity = pd.DataFrame(
        {
            ENTITY: customer_id,
            TIMESTAMP: feature_ts,
            "created": created,
            "monthly_charges": numeric["monthly_charges"],
            "logins_30d": numeric["logins_30d"].astype(np.int64),
            "avg_session_minutes": session_out,
            "support_tickets_30d": numeric["support_tickets_30d"].astype(np.int64),
            "days_since_last_login": numeric["days_since_last_login"].astype(np.int64),
            "late_payments_90d": numeric["late_payments_90d"].astype(np.int64),
        }
    )
    return ChurnBatch(labels=labels.reset_index(drop=True), profile=profile, activity=activity)


def batch_windows(end: datetime, batches: int, days: float) -> list[tuple[datetime, datetime]]:
    """Consecutive windows of ``days`` that end at ``end``, oldest first."""
    width = timedelta(days=days)
    return [(end - width * (batches - i), end - width * (batches - i - 1)) for i in range(batches)]
