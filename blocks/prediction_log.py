"""Where the serving application's prediction log lives: parquet files, or a database table.

The serving block (`driftloop-serving`) picks one: `prediction_log_url` set means a database
(PostgreSQL in the server profile, any SQLAlchemy URL), else parquet files under
`prediction_log_dir` (the state folder's `served/` by default). The application writes batches
through it; the drift monitor reads a time window back through it (source `served`). Both
give the same frame: one row per scored entity, with the columns of
`driftloop.core.prediction_log`, the entity ids and every input feature.

In the database, the columns every row has are columns of one table,
`driftloop_predictions`; the entity ids and features, which differ between models and
versions, are one JSON object per row (`inputs`), expanded into columns when read.

Example:
    >>> log = ParquetPredictionLog(Path("served"))
    >>> log.where("churn-model")
    'served/churn-model'
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from driftloop.core import names
from driftloop.core import prediction_log as plog

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine, Table

TABLE = "driftloop_predictions"
INPUTS = "inputs"
# The columns of the table besides `inputs`, in order.
FIXED = (
    plog.COL_SERVED_AT, plog.COL_REQUEST_ID, plog.COL_MODEL, plog.COL_VERSION, plog.COL_ROLE,
    plog.COL_MODE, names.SCORE_COLUMN, plog.COL_IMPUTED,
)  # fmt: skip


class PredictionLog(Protocol):
    """A prediction log: batches appended, windows read back."""

    def write(self, model: str, rows: list[dict[str, Any]]) -> None:
        """Append rows (flat dicts: the fixed columns, entity ids and features) at once."""
        ...

    def read(self, model: str, start: datetime, end: datetime) -> pd.DataFrame | None:
        """A model's rows served in [start, end] (every role), or None if there are none."""
        ...

    def where(self, model: str) -> str:
        """Where a model's rows are, for messages (never with a password)."""
        ...


class ParquetPredictionLog:
    """One parquet file per batch, one folder per model and UTC day (the layout in
    `driftloop.core.prediction_log`). Each file is written under a temporary name and renamed,
    so a reader never sees half a file."""

    def __init__(self, root: Path):
        self.root = root
        self._seq = 0

    def write(self, model: str, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        now = datetime.now(UTC)
        folder = plog.day_folder(self.root, model, now)
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        target = folder / plog.part_name(now, os.getpid(), self._seq)
        partial = target.with_name(f".{target.name}.partial")
        pd.DataFrame(rows).to_parquet(partial, index=False)
        partial.rename(target)

    def read(self, model: str, start: datetime, end: datetime) -> pd.DataFrame | None:
        import pandas as pd

        files = [f for folder in plog.day_folders(self.root, model, start, end)
                 for f in sorted(folder.glob("part-*.parquet"))]  # fmt: skip
        if not files:
            return None
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        frame[plog.COL_SERVED_AT] = pd.to_datetime(frame[plog.COL_SERVED_AT], utc=True)
        frame = frame[frame[plog.COL_SERVED_AT].between(start, end)]
        return frame.reset_index(drop=True) if len(frame) else None

    def where(self, model: str) -> str:
        return str(self.root / model)


class SqlPredictionLog:
    """The table `driftloop_predictions` of a database, created if missing. One transaction
    per batch; reads select one model's window on the indexed (model, served_at)."""

    def __init__(self, url: str):
        self.url = url

    @cached_property
    def engine(self) -> Engine:
        from sqlalchemy import create_engine

        # pool_pre_ping: a database restarted since the last batch is reconnected, not an error.
        # connect_timeout: a database that does not answer fails a write instead of hanging it.
        connect_args = {"connect_timeout": 10} if self.url.startswith("postgresql") else {}
        engine = create_engine(
            self.url, pool_pre_ping=True, json_serializer=_json, connect_args=connect_args
        )
        self.table.metadata.create_all(engine, checkfirst=True)
        return engine

    @cached_property
    def table(self) -> Table:
        from sqlalchemy import JSON, Column, DateTime, Float, Index, MetaData, String, Table, Text

        return Table(
            TABLE, MetaData(),
            Column(plog.COL_SERVED_AT, DateTime(timezone=True), nullable=False),
            Column(plog.COL_REQUEST_ID, String(64), nullable=False),
            Column(plog.COL_MODEL, String(255), nullable=False),
            Column(plog.COL_VERSION, String(32), nullable=False),
            Column(plog.COL_ROLE, String(16), nullable=False),
            Column(plog.COL_MODE, String(16), nullable=False),
            Column(names.SCORE_COLUMN, Float, nullable=False),
            Column(plog.COL_IMPUTED, Text, nullable=False),
            Column(INPUTS, JSON, nullable=False),
            Index(f"{TABLE}_model_served_at", plog.COL_MODEL, plog.COL_SERVED_AT),
        )  # fmt: skip

    def write(self, model: str, rows: list[dict[str, Any]]) -> None:
        records = [
            {**{c: row[c] for c in FIXED}, plog.COL_MODEL: model,
             INPUTS: {k: _plain(v) for k, v in row.items() if k not in FIXED}}
            for row in rows
        ]  # fmt: skip
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), records)

    def read(self, model: str, start: datetime, end: datetime) -> pd.DataFrame | None:
        import pandas as pd
        from sqlalchemy import select

        t = self.table
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # SQLite keeps no offset
        query = select(t).where(
            t.c[plog.COL_MODEL] == model,
            t.c[plog.COL_SERVED_AT] >= start,
            t.c[plog.COL_SERVED_AT] <= end,
        )
        with self.engine.connect() as connection:
            fetched = connection.execute(query).mappings().all()
        if not fetched:
            return None
        fixed = pd.DataFrame([{c: row[c] for c in FIXED} for row in fetched])
        fixed[plog.COL_SERVED_AT] = pd.to_datetime(fixed[plog.COL_SERVED_AT], utc=True)
        inputs = pd.DataFrame([row[INPUTS] for row in fetched])
        return pd.concat([fixed, inputs], axis=1)

    def where(self, model: str) -> str:
        from sqlalchemy.engine import make_url

        url = make_url(self.url).render_as_string(hide_password=True)
        return f"{url} (table {TABLE}, model {model!r})"


def _plain(value: Any) -> Any:
    """A value JSON can hold: NaN (a missing feature) and infinities are null; numpy scalars
    are Python's."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json(value: Any) -> str:
    # Strict JSON (PostgreSQL refuses NaN); anything else JSON has no type for, as text.
    return json.dumps(value, default=str, allow_nan=False)
