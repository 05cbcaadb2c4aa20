"""The prediction log's two stores (parquet files, a database table) and its batching writer.

The database here is SQLite, through the same SQLAlchemy code as PostgreSQL; the same round
trip on a real PostgreSQL is in tests/test_server_profile.py, and the server-profile stack
test (tests/scenarios.py) checks what the running application wrote to it.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blocks.prediction_log import ParquetPredictionLog, SqlPredictionLog
from blocks.serving import ServingConfig
from driftloop.app.serving.prediction_log import PredictionLogWriter
from driftloop.core import names
from driftloop.core import prediction_log as plog
from driftloop.core.errors import BlockConfigurationError

NOW = datetime.now(UTC)


def rows(count: int, version: str = "1", role: str = plog.ROLE_CHAMPION, at: datetime = NOW):
    return [
        {plog.COL_SERVED_AT: at, plog.COL_REQUEST_ID: f"r{i}", plog.COL_MODEL: "m",
         plog.COL_VERSION: version, plog.COL_ROLE: role, plog.COL_MODE: "entity",
         "customer_id": i, "tenure": np.float64(i) if i else float("nan"), "plan": "basic",
         names.SCORE_COLUMN: 0.5, plog.COL_IMPUTED: "tenure" if i == 0 else ""}
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture(params=["parquet", "sqlite"])
def store(request, tmp_path: Path):
    if request.param == "parquet":
        return ParquetPredictionLog(tmp_path / "served")
    return SqlPredictionLog(f"sqlite:///{tmp_path / 'served.db'}")


def test_a_window_reads_back_what_was_written_in_it(store):
    store.write("m", rows(3))
    store.write("m", rows(2, version="2", role=plog.ROLE_SHADOW))
    store.write("other", rows(4))
    frame = store.read("m", NOW - timedelta(minutes=1), NOW + timedelta(minutes=1))
    assert len(frame) == 5
    assert sorted(frame[plog.COL_VERSION]) == ["1", "1", "1", "2", "2"]
    assert {"customer_id", "tenure", "plan", names.SCORE_COLUMN, plog.COL_IMPUTED} <= set(frame)
    # A missing feature stays missing (NaN or null), never a made-up value.
    first = frame[(frame["customer_id"] == 0) & (frame[plog.COL_ROLE] == plog.ROLE_CHAMPION)]
    assert first["tenure"].isna().all()
    assert frame[frame["customer_id"] == 2]["tenure"].iloc[0] == 2.0
    assert str(frame[plog.COL_SERVED_AT].dt.tz) == "UTC"
    # Outside the window, or another model: nothing.
    assert store.read("m", NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)) is None
    assert store.read("nobody", NOW - timedelta(days=1), NOW) is None


def test_where_names_the_log_without_a_password():
    log = SqlPredictionLog("postgresql://served:s3cret@db.internal:5432/served")
    assert "s3cret" not in log.where("m")
    assert "driftloop_predictions" in log.where("m")


def test_the_serving_block_picks_the_store_and_checks_the_url(tmp_path: Path):
    assert isinstance(ServingConfig().prediction_log(tmp_path), ParquetPredictionLog)
    config = ServingConfig(prediction_log_url=f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(config.prediction_log(tmp_path), SqlPredictionLog)
    bad = ServingConfig(prediction_log_url="not a url with s3cret")
    with pytest.raises(BlockConfigurationError, match="prediction_log_url is not a database URL"):
        bad.check("driftloop-serving/default")
    try:
        bad.check("driftloop-serving/default")
    except BlockConfigurationError as exc:
        assert "s3cret" not in str(exc)


class FlakyStore:
    """A store that refuses `failures` writes, then takes them: a database restarting."""

    def __init__(self, failures: int):
        self.failures = failures
        self.written: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def write(self, model: str, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionError("the database is restarting")
            self.written.extend(batch)

    def where(self, model: str) -> str:
        return "flaky"


def wait_until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_full_batch_is_written_off_the_request_path_and_close_writes_the_rest():
    store = FlakyStore(0)
    log = PredictionLogWriter(store, batch_rows=10, flush_s=60)
    log.append("m", rows(12))
    wait_until(lambda: len(store.written) == 12)
    log.append("m", rows(3))  # neither full nor old: pending until close
    time.sleep(0.3)
    assert len(store.written) == 12
    log.close()
    assert len(store.written) == 15
    assert (log.written_rows, log.dropped_rows) == (15, 0)


def test_rows_a_store_refuses_are_kept_and_written_when_it_answers_again():
    store = FlakyStore(2)
    errors: list[str] = []
    log = PredictionLogWriter(store, batch_rows=5, flush_s=0.1, on_error=errors.append)
    for _ in range(4):
        log.append("m", rows(5))
    wait_until(lambda: len(store.written) == 20)
    log.close()
    assert [r[plog.COL_REQUEST_ID] for r in store.written].count("r0") == 4  # none twice
    assert errors == ["prediction_log", "prediction_log"]
    assert log.dropped_rows == 0


def test_past_the_pending_bound_the_oldest_rows_are_dropped_loudly():
    store = FlakyStore(math.inf)  # type: ignore[arg-type]
    errors: list[str] = []
    log = PredictionLogWriter(store, batch_rows=5, flush_s=60, max_pending_rows=8,
                              on_error=errors.append)  # fmt: skip
    log.append("m", rows(5))
    wait_until(lambda: "prediction_log" in errors)
    log.append("m", rows(5))
    wait_until(lambda: log.dropped_rows == 2)
    assert "prediction_log_dropped" in errors
    assert log.last_error == "ConnectionError: the database is restarting"
    store.failures = 0
    log.close()
    assert len(store.written) == 8


def test_what_the_store_still_refuses_at_close_is_counted_as_dropped():
    store = FlakyStore(math.inf)  # type: ignore[arg-type]
    errors: list[str] = []
    log = PredictionLogWriter(store, batch_rows=100, flush_s=60, on_error=errors.append)
    log.append("m", rows(3))
    log.close()
    assert (log.written_rows, log.dropped_rows) == (0, 3)
    assert errors == ["prediction_log", "prediction_log_dropped"]


def test_an_infinite_feature_is_stored_as_missing_not_refused(tmp_path: Path):
    store = SqlPredictionLog(f"sqlite:///{tmp_path / 'served.db'}")
    batch = rows(2)
    batch[1]["tenure"] = float("inf")
    store.write("m", batch)
    frame = store.read("m", NOW - timedelta(minutes=1), NOW + timedelta(minutes=1))
    assert frame["tenure"].isna().tolist() == [True, True]
