"""Bad input gives a clear error, registers nothing, and never moves the champion.

Each case commits a broken table to a real DVC registry (git + local remote) and runs the real
training flow against the real Feast repo and an MLflow store that already has a champion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from blocks import DvcDataset
from driftloop.app import demo as demo_names
from driftloop.app.demo.registry import DataRegistry
from driftloop.core.errors import (
    DatasetNotFoundError,
    DatasetUnreadableError,
    DataValidationError,
    FeatureRetrievalError,
)
from flows.training import train
from tests.helpers import make_mlflow, quietly, unique


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    """An MLflow store whose champion was trained on good data."""
    mlflow = make_mlflow(tmp_path_factory.mktemp("mlflow"))
    state = train(**demo.train_kwargs(mlflow, rev=demo.tags[0]), return_state=True)
    assert state.is_completed()
    assert mlflow.champion() == "1"
    return mlflow


@pytest.fixture(scope="module")
def good_table(demo) -> pd.DataFrame:
    first = demo.registry.read_table()
    return first.iloc[:1500].reset_index(drop=True)


@dataclass
class Case:
    name: str
    error: type[Exception]
    message: str
    table: Callable[[pd.DataFrame], pd.DataFrame | bytes] | None = None
    rev: str = "main"


def _nan_labels(t):
    t = t.copy().astype({"churned": "float64"})
    t.loc[[3, 7, 11], "churned"] = np.nan
    return t


def _outside_ttl(t):
    late = t.head(4).copy()
    late["event_timestamp"] = late["event_timestamp"] + pd.Timedelta(days=90)
    return pd.concat([t, late], ignore_index=True)


CASES = [
    Case("missing column", DataValidationError, "column 'churned': missing (label column)",
         lambda t: t.drop(columns=["churned"])),
    Case("wrong dtype", DataValidationError, "column 'churned': dtype object, expected integer",
         lambda t: t.assign(churned=t["churned"].map({0: "no", 1: "yes"}))),
    Case("NaN label", DataValidationError, "column 'churned': null label (NaN) (3 rows)",
         _nan_labels),
    Case("single-class label", DataValidationError, "single class: every label is 0",
         lambda t: t.assign(churned=0)),
    Case("empty table", DataValidationError, "table is empty", lambda t: t.head(0)),
    Case("duplicated rows", DataValidationError, "duplicated rows", lambda t: pd.concat(
        [t, t.head(5)], ignore_index=True)),
    Case("entity without features inside the TTL", FeatureRetrievalError,
         "4 row(s) were dropped because their entity has feature data, but none inside",
         _outside_ttl),
    Case("non-existent DVC revision", DatasetNotFoundError,
         "Revision 'no-such-rev' does not exist", lambda t: t, rev="no-such-rev"),
    Case("corrupted parquet", DatasetUnreadableError, "is not a readable parquet file",
         lambda t: b"PAR1\x00garbage that is no parquet footer"),
]  # fmt: skip


def commit(tmp_path, content: pd.DataFrame | bytes) -> DataRegistry:
    registry = DataRegistry(tmp_path / "repo", tmp_path / "remote", demo_names.DEMO_TABLE_PATH)
    with quietly():
        registry.init()
        if isinstance(content, bytes):
            (registry.repo / "data").mkdir()
            (registry.repo / registry.table_path).write_bytes(content)
            registry.commit_file("broken table")
        else:
            registry.commit_table(content, "broken table")
    return registry


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_clearly_and_changes_nothing(case, demo, trained, good_table, tmp_path):
    registry = commit(tmp_path, case.table(good_table))
    block = unique("bad")
    DvcDataset(
        name="bad",
        repo=str(registry.repo),
        path=registry.table_path,
        entity_columns=[demo_names.DEMO_ENTITY],
        label_column="churned",
    ).save(block)
    versions_before = len(trained.versions())

    state = train(
        **demo.train_kwargs(trained, dataset_block=block, rev=case.rev), return_state=True
    )

    assert state.is_failed()
    with pytest.raises(case.error) as info:
        state.result()
    assert case.message in str(info.value)
    assert len(trained.versions()) == versions_before, "a bad run registered a model"
    assert trained.champion() == "1", "a bad run moved the champion"
