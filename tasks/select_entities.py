"""Scoring step 2: which entities to score."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import TableSchema
from driftloop.core.errors import NotEnoughDataError
from driftloop.core.params import ScoringBatch
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="select-entities", cache_policy=UNCACHED, **NO_RETRIES)
def select_entities(
    batch: ScoringBatch, schema: TableSchema, entities: pd.DataFrame | None
) -> pd.DataFrame:
    """The entities to score: the ones given, or the most recently observed entities of the
    labeled table (newest first, up to `max_entities`)."""
    import pandas as pd

    if len(schema.entity_columns) != 1 and batch.entity_ids:
        raise ValueError(
            f"entity_ids names single keys, but the dataset has keys {schema.entity_columns}"
        )
    if batch.entity_ids:
        ids = list(dict.fromkeys(batch.entity_ids))[: batch.max_entities]
        return pd.DataFrame({schema.entity_columns[0]: ids})
    if entities is None or entities.empty:
        raise NotEnoughDataError("No entity ids given and the dataset holds no rows to score")
    newest = entities.sort_values(schema.timestamp_column, ascending=False, kind="stable")
    keys = list(schema.entity_columns)
    selected = newest.drop_duplicates(keys)[keys].head(batch.max_entities)
    get_run_logger().info("Scoring the %d most recently observed entities", len(selected))
    return selected.reset_index(drop=True)
