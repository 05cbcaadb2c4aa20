"""Scoring step 6: row counts, score distribution and the predictions' path, in the UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from driftloop.core import names
from driftloop.core.contracts import ScoringResult
from tasks._policy import NO_RETRIES, UNCACHED


def scoring_markdown(result: ScoringResult) -> str:
    lines = [
        f"## Scored {result.rows} entities with {result.model_name} v{result.model_version}",
        "",
        f"Predictions: `{result.path}`",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| rows scored | {result.rows} |",
        f"| rows with a missing feature (imputed) | {result.rows_with_missing_features} |",
        f"| entities without online features | {result.rows_without_features} |",
        f"| share with score >= 0.5 | {result.positive_share:.3f} |",
    ]
    lines += [f"| score {q} | {v:.4f} |" for q, v in result.score_quantiles.items()]
    return "\n".join(lines)


@task(name="publish-scoring-summary", cache_policy=UNCACHED, **NO_RETRIES)
def publish_scoring_summary(result: ScoringResult) -> None:
    """A markdown artifact on the scoring run."""
    create_markdown_artifact(
        key=names.ARTIFACT_SCORING,
        markdown=scoring_markdown(result),
        description=f"Batch scoring with {result.model_name} v{result.model_version}",
    )
