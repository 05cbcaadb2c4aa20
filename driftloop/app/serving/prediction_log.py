"""The prediction log writer: rows of what was served, appended in batches off the request path.

A replica appends rows as it answers; a thread of the writer writes a batch (per model) when
`batch_rows` rows are pending, when the oldest pending row is `flush_s` old, and when the
replica stops. Requests never wait for a write.

Where the batches go is the serving block's choice (blocks/prediction_log.py): parquet files,
or a database table. A write that fails (the database restarting) keeps its rows and is
retried at the next flush; only when more than `max_pending_rows` rows wait is the oldest
dropped, and that is logged as an error and counted (`driftloop_serving_errors_total`, kind
`prediction_log_dropped`), never silent. What a crash of the replica loses is what was
pending: at most `batch_rows` rows or `flush_s` seconds of traffic while the store answers.

Example:
    >>> log = PredictionLogWriter(ParquetPredictionLog(Path("served")), 500, 5.0)  # doctest: +SKIP
    >>> log.append("churn-model", [{"served_at": ..., "score": 0.2}])  # doctest: +SKIP
    >>> log.close()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from blocks.prediction_log import PredictionLog

logger = logging.getLogger("ray.serve")


class PredictionLogWriter:
    """Batches rows per model; a background thread writes each batch to the store."""

    def __init__(
        self,
        store: PredictionLog,
        batch_rows: int,
        flush_s: float,
        max_pending_rows: int | None = None,
        on_error: Callable[[str], None] = lambda kind: None,
    ):
        self.store = store
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.max_pending_rows = max_pending_rows or 100 * batch_rows
        self.on_error = on_error
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.written_rows = 0
        self.written_batches = 0
        self.dropped_rows = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, model: str, rows: list[dict[str, Any]]) -> None:
        """Add rows; the writer thread writes them soon (at once if a batch is full). Past
        `max_pending_rows` (a write that hangs or keeps failing) the oldest are dropped."""
        with self._lock:
            self._rows.setdefault(model, []).extend(rows)
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = self._pending() >= self.batch_rows
            self._drop_excess()
        if full:
            self._wake.set()

    def _pending(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def _due(self) -> bool:
        with self._lock:
            pending = self._pending()
            return pending >= self.batch_rows or (
                pending > 0
                and self._oldest is not None
                and time.monotonic() - self._oldest >= self.flush_s
            )

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(timeout=min(self.flush_s, 1.0))
            self._wake.clear()
            try:
                if self._due():
                    self.flush()
            except Exception:  # the writer must outlive any one failure
                logger.exception("The prediction log writer failed; it carries on")

    def flush(self) -> None:
        """Write every pending row now (one batch per model). A batch the store refused goes
        back to the front of the queue, for the next flush."""
        with self._write_lock:
            with self._lock:
                batches, self._rows, self._oldest = self._rows, {}, None
            failed: dict[str, list[dict[str, Any]]] = {}
            for model, rows in batches.items():
                if not rows:
                    continue
                try:
                    self.store.write(model, rows)
                except Exception as exc:
                    failed[model] = rows
                    self.last_error = _describe(exc)
                    self.on_error("prediction_log")
                    logger.warning(
                        "The prediction log at %s refused %d rows; kept for the next "
                        "flush: %s", self.store.where(model), len(rows), self.last_error,
                    )  # fmt: skip
                    continue
                self.written_rows += len(rows)
                self.written_batches += 1
            if failed:
                self._requeue(failed)

    def _requeue(self, failed: dict[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            for model, rows in failed.items():
                self._rows[model] = rows + self._rows.get(model, [])
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._drop_excess()

    def _drop_excess(self, limit: int | None = None) -> None:
        """Drop the oldest pending rows beyond `limit` (held: self._lock), loudly."""
        excess = self._pending() - (self.max_pending_rows if limit is None else limit)
        if excess > 0:
            for model, rows in self._rows.items():
                if excess <= 0:
                    break
                dropped = min(excess, len(rows))
                del rows[:dropped]
                excess -= dropped
                self.dropped_rows += dropped
                self.on_error("prediction_log_dropped")
                logger.error(
                    "Dropped the %d oldest unwritten prediction-log rows of %r: the log at "
                    "%s has not taken them (%s)",
                    dropped, model, self.store.where(model), self.last_error or "no error yet",
                )  # fmt: skip

    def close(self) -> None:
        """Stop the thread and write what is pending. What the store still refuses then is
        counted and logged as dropped: there is no later flush."""
        self._closed.set()
        self._wake.set()
        # Ray Serve gives a stopping replica 10 s (graceful_shutdown_timeout_s) in all.
        self._thread.join(timeout=3)
        self.flush()
        with self._lock:
            self._drop_excess(limit=0)


def _describe(exc: Exception) -> str:
    """A write error for logs and `/model`: its type and first line, never the statement's
    parameters (SQLAlchemy appends them, and they are served data)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
