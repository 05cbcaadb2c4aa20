"""Step 5: time-aware holdout split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import TableSchema
from driftloop.core.errors import DataProblem, DataValidationError
from driftloop.core.params import SplitPolicy
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="split-holdout", cache_policy=UNCACHED, **NO_RETRIES)
def split_holdout(
    frame: pd.DataFrame, schema: TableSchema, policy: SplitPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the newest rows: everything at or after the cut-off timestamp.

    No timestamp is on both sides, so the model is judged on the future it did not see. Both
    sides must contain both classes.
    """
    ts = schema.timestamp_column
    ordered = frame.sort_values([ts, *schema.entity_columns], kind="stable")
    cutoff = ordered[ts].iloc[int(len(ordered) * (1 - policy.holdout_fraction))]
    train = ordered[ordered[ts] < cutoff].reset_index(drop=True)
    holdout = ordered[ordered[ts] >= cutoff].reset_index(drop=True)
    where = f"Holdout split at {cutoff} ({policy.holdout_fraction:.0%} newest rows)"
    problems = []
    for name, part in (("training", train), ("holdout", holdout)):
        classes = part[schema.label_column].nunique()
        if len(part) == 0 or classes < 2:
            problems.append(
                DataProblem(
                    schema.label_column,
                    f"the {name} side has {classes} class(es); both 0 and 1 are needed",
                    len(part),
                )
            )
    if problems:
        raise DataValidationError(where, problems)
    get_run_logger().info(
        "Split at %s: %d training rows, %d holdout rows", cutoff, len(train), len(holdout)
    )
    return train, holdout


def with_holdout(train: pd.DataFrame, holdout: pd.DataFrame) -> pd.DataFrame:
    """Training and holdout rows together, oldest first: what a refit is fit on."""
    import pandas as pd

    return pd.concat([train, holdout], ignore_index=True)
