"""The prediction log writer: rows of what was served, appended to parquet in batches.

A replica appends rows as it answers; a batch is written when it holds `batch_rows` rows, when
its oldest row is `flush_s` old (checked on each append and by the replica's poll), and when
the replica stops. Each file is written under a temporary name and renamed, so a reader never
sees half a file. What a crash of the replica loses is the unwritten batch: at most
`batch_rows` rows or `flush_s` seconds of traffic.

Example:
    >>> log = PredictionLogWriter(Path("served"), batch_rows=500, flush_s=5.0)  # doctest: +SKIP
    >>> log.append("churn-model", [{"served_at": ..., "score": 0.2}])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.core.prediction_log import day_folder, part_name


class PredictionLogWriter:
    """Batches rows per model and writes each batch as one parquet file."""

    def __init__(self, root: Path, batch_rows: int, flush_s: float):
        self.root = root
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self.written_rows = 0
        self.written_files = 0

    def append(self, model: str, rows: list[dict[str, Any]]) -> None:
        """Add rows; write the batch if it is full or old enough."""
        with self._lock:
            self._rows.setdefault(model, []).extend(rows)
            if self._oldest is None:
                self._oldest = time.monotonic()
            due = self._due()
        if due:
            self.flush()

    def flush_if_due(self) -> None:
        with self._lock:
            due = self._due()
        if due:
            self.flush()

    def _due(self) -> bool:
        pending = sum(len(rows) for rows in self._rows.values())
        return pending >= self.batch_rows or (
            pending > 0
            and self._oldest is not None
            and time.monotonic() - self._oldest >= self.flush_s
        )

    def flush(self) -> None:
        """Write every pending row now (one file per model)."""
        with self._lock:
            batches, self._rows, self._oldest = self._rows, {}, None
            self._seq += 1
            seq = self._seq
        for model, rows in batches.items():
            if rows:
                self._write(model, rows, seq)

    def _write(self, model: str, rows: list[dict[str, Any]], seq: int) -> None:
        import pandas as pd

        now = datetime.now(UTC)
        folder = day_folder(self.root, model, now)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / part_name(now, os.getpid(), seq)
        partial = target.with_name(f".{target.name}.partial")
        pd.DataFrame(rows).to_parquet(partial, index=False)
        partial.rename(target)
        self.written_rows += len(rows)
        self.written_files += 1
