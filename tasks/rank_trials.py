"""Publish the model search's ranking as a table in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from driftloop.core import names
from driftloop.core.contracts import TrialOutcome
from driftloop.core.metric_direction import best_first
from driftloop.core.params import Metric
from tasks._policy import IO_RETRIES, UNCACHED


def ranking_rows(outcomes: list[TrialOutcome], metric: Metric) -> list[dict[str, object]]:
    """Completed trials best first, then the ones that did not complete."""
    done = sorted(
        ((o, o.result) for o in outcomes if o.result is not None),
        key=lambda pair: best_first(metric, pair[1].score),
    )
    rows: list[dict[str, object]] = []
    for rank, (outcome, result) in enumerate(done, start=1):
        rows.append(
            {
                "rank": rank,
                "trial": outcome.number,
                "model": outcome.label,
                metric: round(result.score, 4),
                "roc_auc": round(result.metrics.roc_auc, 4),
                "log_loss": round(result.metrics.log_loss, 4),
                "node": result.node_id[:12],
                "attempt": result.attempt,
                "seconds": round(result.seconds, 2),
                "state": outcome.state,
            }
        )
    for outcome in outcomes:
        if outcome.result is None:
            rows.append(
                {"rank": "-", "trial": outcome.number, "model": outcome.label, metric: None,
                 "roc_auc": None, "log_loss": None, "node": "-", "attempt": "-",
                 "seconds": None, "state": f"{outcome.state}: {outcome.error}"}
            )  # fmt: skip
    return rows


@task(name="rank-trials", cache_policy=UNCACHED, **IO_RETRIES)
def rank_trials(outcomes: list[TrialOutcome], metric: Metric) -> None:
    """A table artifact ranking every trial by its validation score."""
    create_table_artifact(
        table=ranking_rows(outcomes, metric),
        key=names.ARTIFACT_TRIALS,
        description=f"Model search: {len(outcomes)} trials ranked by validation {metric}",
    )
