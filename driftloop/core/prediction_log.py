"""The prediction log's layout: what the serving application writes, and the drift monitor
reads. One contract, defined once.

Files are parquet, one folder per model and UTC day, each file one batch:
``<root>/<model>/date=YYYY-MM-DD/part-<epoch ms>-<pid>-<seq>.parquet``. A row is one scored
entity (or one row of features): when, which request, which model version in which role
(`champion`, or `shadow` for the challenger), the entity ids (by-entity requests), every
input feature as the model got it, the score, and the features that were missing and imputed.

Example:
    >>> from datetime import datetime, UTC
    >>> day_folder(Path("served"), "churn-model", datetime(2026, 11, 22, 9, tzinfo=UTC))
    PosixPath('served/churn-model/date=2026-11-22')
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

COL_SERVED_AT = "served_at"
COL_REQUEST_ID = "request_id"
COL_MODEL = "model"
COL_VERSION = "version"
COL_ROLE = "role"
COL_MODE = "mode"
COL_IMPUTED = "imputed"
# The score column is the batch predictions' one: names.SCORE_COLUMN.

Role = Literal["champion", "shadow"]
ROLE_CHAMPION: Role = "champion"
ROLE_SHADOW: Role = "shadow"
Mode = Literal["entity", "features"]


def day_folder(root: Path, model: str, when: datetime) -> Path:
    """The folder of a model's rows served on `when`'s UTC day."""
    return root / model / f"date={when.date().isoformat()}"


def day_folders(root: Path, model: str, start: datetime, end: datetime) -> Iterator[Path]:
    """The existing day folders of a model that may hold rows served in [start, end]."""
    day = start.date()
    while day <= end.date():
        folder = root / model / f"date={day.isoformat()}"
        if folder.is_dir():
            yield folder
        day += timedelta(days=1)


def part_name(when: datetime, pid: int, seq: int) -> str:
    """A batch's file name: unique per process and batch, sorted by time."""
    return f"part-{int(when.timestamp() * 1000):013d}-{pid}-{seq:06d}.parquet"
