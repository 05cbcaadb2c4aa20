"""Step 9b: the holdout rows the gate compares challenger and champion on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from driftloop.core.contracts import ModelVersionRef, TableSchema
from driftloop.core.timewindows import gate_rows
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="select-gate-rows", cache_policy=UNCACHED, **NO_RETRIES)
def select_gate_rows(
    holdout: pd.DataFrame, schema: TableSchema, champion: ModelVersionRef | None
) -> tuple[pd.DataFrame, str | None]:
    """The holdout rows the champion has not been fit on (a champion is refit on its own
    holdout), or the whole holdout; and a note when that is not the plain holdout."""
    until = champion.fitted_until if champion else None
    rows, note = gate_rows(holdout, schema.timestamp_column, schema.label_column, until)
    if note:
        get_run_logger().info("Gate: %s", note)
    return rows, note
