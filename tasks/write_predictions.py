"""Scoring step 5: write the predictions as parquet, under a path naming the model version."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef, ResolvedFeatures, ScoringResult
from tasks._policy import IO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


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
    scores = scored[names.SCORE_COLUMN]
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
