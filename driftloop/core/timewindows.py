"""Which rows a model has seen, by time: pure rules shared by the gate, drift and performance.

A version records the newest row timestamp of the data it was fit on (`fitted_until`). Rows
after it are new to that version; the newest span of what it was fit on is its drift
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Fewer rows than this, or a single class, cannot judge a model.
MIN_JUDGING_ROWS = 100


def split_by_time(
    frame: pd.DataFrame,
    timestamp_column: str,
    newest_fraction: float,
    tie_break: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Older rows and the newest `newest_fraction` of rows, cut at a timestamp.

    The cut-off is the timestamp at that fraction of the rows, oldest first; every row at or
    after it is on the newer side, so no timestamp is on both sides and a model is always
    judged on a future it did not see. Rows that share the cut-off timestamp all go to the
    newer side, so that side can be a little larger than the fraction. Both the model-search
    trials (training rows vs validation rows) and the holdout use this rule.

    `tie_break` columns (the entity keys) order rows within a timestamp, so both sides come
    out in the same order whatever order the rows arrived in.

    Example: 10 rows, one per day, fraction 0.3: the 7 oldest and the 3 newest days.
    """
    ordered = frame.sort_values([timestamp_column, *tie_break], kind="stable")
    if ordered.empty:
        return ordered, ordered
    position = min(int(len(ordered) * (1 - newest_fraction)), len(ordered) - 1)
    cutoff = ordered[timestamp_column].iloc[position]
    older = ordered[ordered[timestamp_column] < cutoff].reset_index(drop=True)
    newer = ordered[ordered[timestamp_column] >= cutoff].reset_index(drop=True)
    return older, newer


def fitted_until(frame: pd.DataFrame, timestamp_column: str) -> str:
    """The newest timestamp of the rows a model is fit on, as recorded on its version."""
    import pandas as pd

    return pd.Timestamp(frame[timestamp_column].max()).isoformat()


def rows_after(frame: pd.DataFrame, timestamp_column: str, until: str | None) -> pd.DataFrame:
    """The rows strictly newer than `until` (all rows if it is unknown)."""
    import pandas as pd

    if not until:
        return frame
    stamps = pd.to_datetime(frame[timestamp_column], utc=True)
    return frame[stamps > pd.Timestamp(until)]


def can_judge(frame: pd.DataFrame, label_column: str, min_rows: int = MIN_JUDGING_ROWS) -> bool:
    """Enough labeled rows, of both classes, to score a model on."""
    return len(frame) >= min_rows and frame[label_column].nunique() >= 2


def gate_rows(
    holdout: pd.DataFrame, timestamp_column: str, label_column: str, champion_until: str | None
) -> tuple[pd.DataFrame, str | None]:
    """The holdout rows on which challenger and champion are compared, and a note if they are
    not the whole holdout.

    A champion refit on its holdout has seen the older part of a new holdout; judging it there
    would favour it. Both are judged on the rows the champion has not seen, if those can judge
    a model; otherwise on the whole holdout, and the note says the champion saw some of it.

    Example: a holdout of 1,700 rows of which 1,500 are newer than the champion's data is
    judged on those 1,500.
    """
    unseen = rows_after(holdout, timestamp_column, champion_until)
    if len(unseen) == len(holdout):
        return holdout, None
    if can_judge(unseen, label_column):
        return unseen.reset_index(drop=True), (
            f"judged on the {len(unseen)} holdout rows newer than the champion's data"
        )
    return holdout, (
        f"only {len(unseen)} holdout rows are newer than the champion's data, too few to judge "
        "on; judged on the whole holdout, part of which the champion was fit on"
    )


def newest_span(
    frame: pd.DataFrame, timestamp_column: str, days: float, min_rows: int
) -> pd.DataFrame:
    """The rows in the last `days` before the frame's newest timestamp, if there are at least
    `min_rows` of them; otherwise the whole frame.

    A drift check compares the newest window of production features with the newest span of
    the data the champion was fit on: right after a training, the two are the same data.
    """
    import pandas as pd

    if frame.empty:
        return frame
    stamps = pd.to_datetime(frame[timestamp_column], utc=True)
    start: datetime = stamps.max() - timedelta(days=days)
    recent = frame[stamps >= start]
    return recent.reset_index(drop=True) if len(recent) >= min_rows else frame
