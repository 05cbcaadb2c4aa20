"""The model's input contract and the scikit-learn pipelines driftloop trains.

`feature_matrix` is the one place that turns a frame of Feast features into model input; the
training, evaluation, logging (signature) and scoring steps all go through it, so a model is
always fed exactly what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from driftloop.core.contracts import FeatureColumn, Metrics
from driftloop.core.params import (
    GradientBoostingSpec,
    LogisticRegressionSpec,
    ModelSpec,
    RandomForestSpec,
)

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

# skops refuses to load types it does not know; these are the ones our pipelines contain beyond
# skops' defaults. Keeping the list explicit (instead of pickle) keeps model loading safe.
SKOPS_TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]


def feature_matrix(frame: pd.DataFrame, columns: Sequence[FeatureColumn]) -> pd.DataFrame:
    """Select and type the model inputs: numerics as float64 (nulls stay NaN), categoricals as
    strings (object dtype) with NaN for missing. Integers become floats so that a null served
    online does not break the model signature."""
    import pandas as pd

    # Column by column in NumPy, not pandas: online scoring calls this for every request,
    # where pandas' per-call overhead (three or four Series operations a column) cost more
    # than the model itself.
    out: dict[str, np.ndarray] = {}
    for col in columns:
        values = frame[col.name]
        if col.kind == "numeric":
            if values.dtype == np.float64:
                out[col.name] = values.to_numpy()
            else:
                numbers = pd.to_numeric(values, errors="raise")
                out[col.name] = numbers.astype("float64").to_numpy()  # a nullable NA -> NaN
        elif col.kind == "boolean":
            out[col.name] = values.astype("float64").to_numpy()
        else:
            data = values.to_numpy(dtype=object, copy=True)
            data[np.asarray(pd.isna(data), dtype=bool)] = np.nan
            # Object dtype even when every value is missing: a column of NaN alone would be
            # float64, which the model's string signature refuses (one online request can
            # have a categorical feature missing in all its rows).
            text = np.empty(len(data), dtype=object)
            text[:] = [v if isinstance(v, float) else str(v) for v in data]
            out[col.name] = text
    return pd.DataFrame(out, index=frame.index)


def build_pipeline(
    spec: ModelSpec, columns: Sequence[FeatureColumn], random_state: int
) -> Pipeline:
    """Preprocessing (impute, scale, one-hot) plus the estimator the spec describes."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c.name for c in columns if c.kind in ("numeric", "boolean")]
    categorical = [c.name for c in columns if c.kind == "categorical"]
    transformers = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        (
                            "onehot",
                            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                        ),
                    ]
                ),
                categorical,
            )
        )
    preprocess = ColumnTransformer(transformers, remainder="drop")

    if isinstance(spec, LogisticRegressionSpec):
        estimator = LogisticRegression(
            C=spec.C, class_weight=spec.class_weight, max_iter=spec.max_iter
        )
    elif isinstance(spec, RandomForestSpec):
        estimator = RandomForestClassifier(
            n_estimators=spec.n_estimators,
            max_depth=spec.max_depth,
            min_samples_leaf=spec.min_samples_leaf,
            max_features=spec.max_features,
            class_weight=spec.class_weight,
            random_state=random_state,
            n_jobs=1,
        )
    elif isinstance(spec, GradientBoostingSpec):
        estimator = HistGradientBoostingClassifier(
            learning_rate=spec.learning_rate,
            max_iter=spec.max_iter,
            max_leaf_nodes=spec.max_leaf_nodes,
            min_samples_leaf=spec.min_samples_leaf,
            l2_regularization=spec.l2_regularization,
            random_state=random_state,
        )
    else:  # pragma: no cover - pydantic's discriminator rejects unknown families first
        raise ValueError(f"unknown model family {spec!r}")
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def spec_params(spec: ModelSpec) -> dict[str, str | int | float | None]:
    """Flat `model.<name>` params for MLflow."""
    return {f"model.{k}": v for k, v in spec.model_dump().items()}


def score_probabilities(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> Metrics:
    """Holdout metrics from positive-class probabilities."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    proba = np.clip(np.asarray(proba, dtype=float), 1e-7, 1 - 1e-7)
    predicted = (proba >= threshold).astype(int)
    return Metrics(
        roc_auc=float(roc_auc_score(y_true, proba)),
        f1=float(f1_score(y_true, predicted, zero_division=0)),
        accuracy=float(accuracy_score(y_true, predicted)),
        log_loss=float(log_loss(y_true, proba, labels=[0, 1])),
        n_rows=len(y_true),
        positive_rate=float(y_true.mean()),
    )


def positive_proba(predictions: object) -> np.ndarray:
    """Positive-class probability from a pyfunc/sklearn `predict_proba` output."""
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        predictions = predictions.to_numpy()
    array = np.asarray(predictions, dtype=float)
    return array[:, 1] if array.ndim == 2 else array
