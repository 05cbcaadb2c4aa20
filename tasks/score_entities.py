"""Scoring step 4: score the entities with the champion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task

from driftloop.core import names
from driftloop.core.contracts import ResolvedFeatures
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="score-entities", cache_policy=UNCACHED, **NO_RETRIES)
def score_entities(
    model: Any, frame: pd.DataFrame, features: ResolvedFeatures, keys: list[str]
) -> pd.DataFrame:
    """Positive-class probabilities for each entity, with the inputs they were scored on (the
    drift monitor can compare those with the training reference)."""
    from driftloop.core.modeling import feature_matrix, positive_proba

    inputs = feature_matrix(frame, list(features.columns))
    scored = frame[keys + features.names].copy()
    scored[names.SCORE_COLUMN] = positive_proba(model.predict(inputs))
    return scored
