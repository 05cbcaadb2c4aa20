"""Feature definitions of the customer-churn demo.

Two feature views with different freshness: a slowly changing profile (long TTL) and recent
activity (30-day TTL). Their parquet sources are written by ``driftloop.demo`` into the state
folder; paths are relative to this repo.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

DATA = "../.driftloop/feast/data"

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A subscriber of the service.",
)

customer_profile_source = FileSource(
    name="customer_profile_source",
    path=f"{DATA}/customer_profile.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

customer_activity_source = FileSource(
    name="customer_activity_source",
    path=f"{DATA}/customer_activity.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[
        Field(name="tenure_months", dtype=Int64, description="Months since sign-up."),
        Field(name="plan", dtype=String, description="basic, standard or premium."),
        Field(name="contract", dtype=String, description="month-to-month, one-year, two-year."),
        Field(name="payment_method", dtype=String),
        Field(name="region", dtype=String),
    ],
    source=customer_profile_source,
    online=True,
    tags={"owner": "driftloop-demo"},
)

customer_activity = FeatureView(
    name="customer_activity",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="monthly_charges", dtype=Float64, description="Current monthly bill."),
        Field(name="logins_30d", dtype=Int64),
        Field(name="avg_session_minutes", dtype=Float64, description="Null when not tracked."),
        Field(name="support_tickets_30d", dtype=Int64),
        Field(name="days_since_last_login", dtype=Int64),
        Field(name="late_payments_90d", dtype=Int64),
    ],
    source=customer_activity_source,
    online=True,
    tags={"owner": "driftloop-demo"},
)

churn_model_v1 = FeatureService(
    name="churn_model_v1",
    features=[customer_profile, customer_activity],
    description="Every feature the churn model is trained and scored on.",
)
