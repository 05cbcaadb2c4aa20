"""Step 4: validate the joined training frame against its contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import DatasetVersion, ResolvedFeatures, TableSchema
from driftloop.core.validation import check_training_frame
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="validate-training-data", cache_policy=UNCACHED, **NO_RETRIES)
def validate_training_data(
    frame: pd.DataFrame,
    dataset: DatasetVersion,
    features: ResolvedFeatures,
    schema: TableSchema,
) -> None:
    """Check schema, dtypes, label values, nulls and duplicated (entity, timestamp) rows.

    Raises a DataValidationError listing every problem with its column and row count.
    """
    check_training_frame(frame, schema, list(features.columns), f"Training data {dataset.short}")
    label = frame[schema.label_column]
    get_run_logger().info(
        "Validated %d rows x %d features; positive rate %.3f",
        len(frame),
        len(features.columns),
        float(label.mean()),
    )
