"""Typed flow parameters. The Prefect UI renders these as validated forms with help text.

Invalid values (a negative margin, a share above 1, an unknown model family) are rejected by
pydantic before a run starts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSelection(_Params):
    """Which Feast features to train on: a feature service, or explicit feature refs."""

    feature_service: str | None = Field(
        default=None, description="Name of a Feast feature service, e.g. `churn_model_v1`."
    )
    features: list[str] = Field(
        default_factory=list,
        description="Feature refs as `feature_view:feature`; used when no service is given.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FeatureSelection:
        if bool(self.feature_service) == bool(self.features):
            raise ValueError("give exactly one of `feature_service` or `features`")
        bad = [ref for ref in self.features if ref.count(":") != 1 or ref.startswith(":")]
        if bad:
            raise ValueError(f"feature refs must look like `view:feature`, got {bad}")
        return self


class LogisticRegressionSpec(_Params):
    """L2-regularised logistic regression on standardised, one-hot encoded features."""

    family: Literal["logistic_regression"] = "logistic_regression"
    C: float = Field(default=1.0, gt=0, description="Inverse regularisation strength.")
    class_weight: Literal["balanced"] | None = Field(
        default=None, description="`balanced` reweights classes inversely to their frequency."
    )
    max_iter: int = Field(default=1000, ge=50, le=100_000)


class RandomForestSpec(_Params):
    """A random forest of decision trees."""

    family: Literal["random_forest"] = "random_forest"
    n_estimators: int = Field(default=200, ge=1, le=5000)
    max_depth: int | None = Field(default=None, ge=1, le=100, description="None grows fully.")
    min_samples_leaf: int = Field(default=5, ge=1)
    max_features: float = Field(
        default=0.5, gt=0, le=1, description="Share of features considered at each split."
    )
    class_weight: Literal["balanced"] | None = None


class GradientBoostingSpec(_Params):
    """Histogram-based gradient boosting (scikit-learn's HistGradientBoostingClassifier)."""

    family: Literal["gradient_boosting"] = "gradient_boosting"
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    max_iter: int = Field(default=150, ge=1, le=10_000, description="Boosting rounds.")
    max_leaf_nodes: int = Field(default=8, ge=2, le=1024)
    min_samples_leaf: int = Field(default=50, ge=1)
    l2_regularization: float = Field(default=1.0, ge=0)


ModelSpec = Annotated[
    LogisticRegressionSpec | RandomForestSpec | GradientBoostingSpec,
    Field(discriminator="family"),
]
ModelFamily = Literal["logistic_regression", "random_forest", "gradient_boosting"]


class SplitPolicy(_Params):
    """Time-aware holdout: the most recent share of rows is held out for evaluation."""

    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=0.9, description="Share of the newest rows held out."
    )
    refit_on_holdout: bool = Field(
        default=True,
        description="After the holdout has judged the model, fit it again on training plus "
        "holdout rows and register that fit, so the version has seen the newest labeled data.",
    )


class DataQualityPolicy(_Params):
    """Limits on what the training data may contain."""

    max_feature_null_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Largest share of nulls allowed in any one feature after the Feast join.",
    )


Metric = Literal["roc_auc", "f1", "accuracy", "log_loss"]


class PromotionPolicy(_Params):
    """The metric gate a challenger must pass to become champion."""

    metric: Metric = Field(default="roc_auc", description="Metric compared on the same holdout.")
    min_improvement: float = Field(
        default=0.002,
        ge=0,
        description="How much the challenger must beat the champion by on `metric`.",
    )
    floor: float = Field(
        default=0.6,
        ge=0,
        description=(
            "Absolute bar every candidate must clear (the first model only needs this): "
            "at least this for roc_auc/f1/accuracy, at most this for log_loss."
        ),
    )
    max_degradation: float = Field(
        default=0.03,
        ge=0,
        description="The champion counts as degraded when, on labeled rows it has not seen, "
        "`metric` is worse than on its own holdout by more than this (or misses the floor).",
    )


class SearchPolicy(_Params):
    """Model search: Optuna proposes trials in batches that run in parallel on Ray."""

    n_trials: int = Field(
        default=16, ge=0, le=1000, description="Trials to evaluate; 0 trains `model` as given."
    )
    parallelism: int = Field(
        default=0, ge=0, le=1024, description="Trials per batch; 0 uses every CPU Ray has."
    )
    metric: Metric = Field(default="roc_auc", description="What the search optimises.")
    families: list[ModelFamily] = Field(
        default_factory=lambda: list(get_args(ModelFamily)),
        min_length=1,
        description="Model families the search may choose from.",
    )
    validation_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=0.9,
        description="Newest share of the training rows that trials are scored on.",
    )
    seed: int = Field(default=0, description="Seed of the search's sampler.")


class TriggerContext(_Params):
    """Why a run was started; recorded as MLflow tags and shown in the Prefect UI."""

    reason: str = Field(default="manual", max_length=200, description="e.g. manual, schedule.")
    drifted_columns: list[str] = Field(
        default_factory=list, description="Columns a drift check flagged, if drift started it."
    )
    performance_drop: str | None = Field(
        default=None,
        description="How the champion's score fell on new labels, if that is why it retrains.",
    )


class DriftWindow(_Params):
    """The window of production features a drift check compares with the training reference."""

    days: float = Field(default=7.0, gt=0, le=366, description="Length of the window in days.")
    end: datetime | None = Field(
        default=None,
        description="End of the window (UTC). Empty: the newest feature timestamp in the "
        "offline store, so the check always looks at the latest data.",
    )
    max_rows: int = Field(
        default=20_000, ge=100, le=5_000_000, description="Newest rows of the window to test."
    )
    source: Literal["feature-store", "served"] = Field(
        default="feature-store",
        description=(
            "Where the window's production features come from: `feature-store`, the Feast "
            "offline store (as of each entity row in the window), or `served`, the serving "
            "application's prediction log (the features the champion was really given; the "
            "window ends now unless `end` is set)."
        ),
    )


class ScoringBatch(_Params):
    """Which entities the scoring flow scores, and how it prepares the online store."""

    entity_ids: list[int | str] = Field(
        default_factory=list,
        description="Entities to score. Empty: every entity of the dataset's newest rows "
        "(up to `max_entities`).",
    )
    max_entities: int = Field(default=5000, ge=1, le=1_000_000)
    materialize_first: bool = Field(
        default=True,
        description="Run Feast materialize_incremental before reading the online store.",
    )
