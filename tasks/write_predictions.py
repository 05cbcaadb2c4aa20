"""Scoring steps 4-5: score the entities and write the predictions as parquet."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task

from driftloop.core.contracts import ModelVersionRef, ResolvedFeatures, ScoringResult
from tasks._policy import IO_RETRIES, NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd

SCORE_COLUMN = "score"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@task(name="score-entities", cache_policy=UNCACHED, **NO_RETRIES)
def score_entities(
    model: Any, frame: pd.DataFrame, features: ResolvedFeatures, keys: list[str]
) -> pd.DataFrame:
    """Positive-class probabilities for each entity, with the inputs they were scored on (the
    drift monitor can compare those with the training reference)."""
    from driftloop.core.modeling import feature_matrix, positive_proba

    inputs = feature_matrix(frame, list(features.columns))
    scored = frame[keys + features.names].copy()
    scored[SCORE_COLUMN] = positive_proba(model.predict(inputs))
    return scored


def predictions_path(root: Path, champion: ModelVersionRef, at: datetime) -> Path:
    """`<root>/<model>/v<version>/<UTC time>.parquet`."""
    return root / champion.name / f"v{champion.version}" / f"{at:%Y%m%dT%H%M%S%fZ}.parquet"


@task(name="write-predictions", cache_policy=UNCACHED, **IO_RETRIES)
def write_predictions(
    scored: pd.DataFrame, champion: ModelVersionRef, features: ResolvedFeatures, root: Path
) -> ScoringResult:
    """Write the predictions under a path naming the model version and the run time; log row
    counts and the distribution of scores."""
    at = datetime.now(UTC)
    path = predictions_path(Path(root), champion, at)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = scored.assign(model_name=champion.name, model_version=champion.version, scored_at=at)
    tmp = path.with_suffix(".tmp")
    out.to_parquet(tmp, index=False)
    tmp.replace(path)  # readers never see a half-written file
    scores = scored[SCORE_COLUMN]
    missing = int(scored[features.names].isna().any(axis=1).sum())
    unknown = int(scored[features.names].isna().all(axis=1).sum())
    result = ScoringResult(
        model_name=champion.name,
        model_version=champion.version,
        path=str(path),
        rows=len(scored),
        rows_with_missing_features=missing,
        rows_without_features=unknown,
        score_quantiles={f"p{int(q * 100):02d}": float(scores.quantile(q)) for q in QUANTILES},
        positive_share=float((scores >= 0.5).mean()),
    )
    get_run_logger().info(
        "Wrote %d predictions of %s v%s to %s (%d rows with a missing feature, %d without any); "
        "score quantiles %s, share >= 0.5: %.3f",
        result.rows, champion.name, champion.version, path, missing, unknown,
        {k: round(v, 4) for k, v in result.score_quantiles.items()}, result.positive_share,
    )  # fmt: skip
    return result
