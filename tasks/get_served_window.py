"""Drift step 2, for the `served` source: the features the serving application was given in a
time window, read from its prediction log (parquet files or a database table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.prediction_log import PredictionLog
from driftloop.core import prediction_log as plog
from driftloop.core.contracts import ResolvedFeatures
from driftloop.core.errors import NotEnoughDataError
from driftloop.core.params import DriftWindow
from tasks._policy import IO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


@task(name="get-served-window", cache_policy=UNCACHED, **IO_RETRIES)
def get_served_window(
    log: PredictionLog, model_name: str, features: ResolvedFeatures, window: DriftWindow,
    min_rows: int,
) -> tuple[pd.DataFrame, datetime, datetime]:  # fmt: skip
    """The rows the champion scored online in the window (not the challenger's shadow rows,
    which repeat the same features), newest first up to `window.max_rows`: production
    feature drift on what was really served.

    The window ends at `window.end`, or now. Fails, naming where the log is, if it holds fewer
    than `min_rows` rows or lacks a feature the champion takes.
    """
    end = window.end or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    start = end - timedelta(days=window.days)
    frame = log.read(model_name, start, end)
    if frame is not None:
        frame = frame[frame[plog.COL_ROLE] == plog.ROLE_CHAMPION]
    rows = 0 if frame is None else len(frame)
    if frame is None or rows < min_rows:
        raise NotEnoughDataError(
            f"The prediction log {log.where(model_name)} holds {rows} rows served by the "
            f"champion from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC; the drift "
            f"policy needs at least {min_rows}. Widen `window.days`, or check the feature "
            "store instead (source `feature-store`)."
        )
    missing = [name for name in features.names if name not in frame.columns]
    if missing:
        raise NotEnoughDataError(
            f"The prediction log {log.where(model_name)} has no column(s) {missing}: what "
            "was served in this window was scored on other features than the champion's"
        )
    frame = frame.sort_values(plog.COL_SERVED_AT, ascending=False).head(window.max_rows)
    get_run_logger().info(
        "Served window %s to %s: %d rows from %s", start, end, len(frame), log.where(model_name)
    )
    return frame.reset_index(drop=True), start, end
