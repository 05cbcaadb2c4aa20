"""The compiled (ONNX) form of a served model, without a server: real skl2onnx and ONNX
Runtime on pipelines `build_pipeline` builds from the demo's data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from driftloop.app.demo.churn import generate_batch
from driftloop.app.serving.compiled import NotCompiled, compile_model
from driftloop.core.contracts import FeatureColumn
from driftloop.core.modeling import build_pipeline, feature_matrix, positive_proba
from driftloop.core.params import LogisticRegressionSpec, RandomForestSpec

CATEGORICAL = ["plan", "contract", "payment_method", "region"]
NUMERIC = ["tenure_months", "monthly_charges", "logins_30d", "avg_session_minutes",
           "support_tickets_30d", "days_since_last_login", "late_payments_90d"]  # fmt: skip
COLUMNS = tuple(
    [FeatureColumn(name=c, ref=f"v:{c}", feast_type="String", kind="categorical")
     for c in CATEGORICAL]
    + [FeatureColumn(name=c, ref=f"v:{c}", feast_type="Float64", kind="numeric")
       for c in NUMERIC]
)  # fmt: skip


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Demo customers: a training frame, its labels, and later customers to score."""
    end = datetime(2026, 1, 1, tzinfo=UTC)
    frames = []
    for batch in (0, 1):
        b = generate_batch(batch=batch, rows=1500, start=end - timedelta(days=30), end=end)
        frame = b.labels.merge(b.profile.drop(columns=["event_timestamp", "created"]),
                               on="customer_id")  # fmt: skip
        frame = frame.merge(b.activity.drop(columns=["event_timestamp", "created"]),
                            on="customer_id")  # fmt: skip
        frames.append(frame)
    train, later = frames
    return train, train["churned"].to_numpy(), later


@pytest.mark.parametrize(
    "spec", [RandomForestSpec(n_estimators=40), LogisticRegressionSpec()], ids=lambda s: s.family
)
def test_the_compiled_model_gives_the_pipelines_answers(data, spec):
    train, labels, later = data
    matrix = feature_matrix(train, COLUMNS)
    pipeline = build_pipeline(spec, COLUMNS, 0).fit(matrix, labels)
    compiled = compile_model(pipeline, COLUMNS, train)
    assert compiled.parity is not None
    assert compiled.parity.rows > 1000
    assert compiled.parity.max_difference < 1e-5
    # Rows it was not checked on: later customers, with missing values and unseen categories.
    scored = later.copy()
    scored.loc[:99, "avg_session_minutes"] = None
    scored.loc[50:149, "plan"] = None
    scored.loc[150:159, "region"] = "atlantis"
    expected = positive_proba(pipeline.predict_proba(feature_matrix(scored, COLUMNS)))
    got = compiled.score(feature_matrix(scored, COLUMNS))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert got.dtype == np.float64


def test_a_model_that_differs_beyond_the_tolerance_is_refused(data):
    train, labels, _ = data
    pipeline = build_pipeline(RandomForestSpec(n_estimators=10), COLUMNS, 0).fit(
        feature_matrix(train, COLUMNS), labels
    )
    # ONNX Runtime's probabilities are float32: no tolerance at all cannot be met.
    with pytest.raises(NotCompiled, match=r"differ from the MLflow model's by up to .* rows"):
        compile_model(pipeline, COLUMNS, train, tolerance=0.0)


def test_a_pipeline_skl2onnx_cannot_convert_is_refused_with_the_cause(data):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    train, labels, _ = data
    numeric = [c for c in COLUMNS if c.kind == "numeric"]
    pipeline = Pipeline([
        ("preprocess", ColumnTransformer([(
            "numeric",
            Pipeline([("impute", SimpleImputer()), ("log", FunctionTransformer(np.log1p))]),
            [c.name for c in numeric],
        )])),
        ("model", LogisticRegression()),
    ]).fit(feature_matrix(train, numeric), labels)  # fmt: skip
    with pytest.raises(NotCompiled, match=r"could not convert LogisticRegression: .+"):
        compile_model(pipeline, numeric, train)


def test_a_pipeline_of_another_shape_is_refused(data):
    from sklearn.linear_model import LogisticRegression

    train, labels, _ = data
    numeric = [c for c in COLUMNS if c.kind == "numeric"]
    bare = LogisticRegression().fit(train[[c.name for c in numeric]].fillna(0), labels)
    with pytest.raises(NotCompiled, match="not driftloop's two-step pipeline"):
        compile_model(bare, numeric, train)


def test_a_sample_without_the_features_is_refused(data):
    train, labels, _ = data
    pipeline = build_pipeline(LogisticRegressionSpec(), COLUMNS, 0).fit(
        feature_matrix(train, COLUMNS), labels
    )
    with pytest.raises(NotCompiled, match="no column"):
        compile_model(pipeline, COLUMNS, train.drop(columns=["region"]))
