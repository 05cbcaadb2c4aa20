"""Step 5: time-aware holdout split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import TableSchema
from driftloop.core.errors import DataProblem, DataValidationError
from driftloop.core.params import SplitPolicy
from driftloop.core.timewindows import split_by_time
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="split-holdout", cache_policy=UNCACHED, **NO_RETRIES)
def split_holdout(
    frame: pd.DataFrame, schema: TableSchema, policy: SplitPolicy
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the newest rows: everything at or after the cut-off timestamp (the time split
    of `driftloop.core.timewindows.split_by_time`, which the trials use too). Both sides must
    contain both classes.
    """
    train, holdout = split_by_time(
        frame, schema.timestamp_column, policy.holdout_fraction, schema.entity_columns
    )
    cutoff = holdout[schema.timestamp_column].min() if len(holdout) else None
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
