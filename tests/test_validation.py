"""Data contract checks name the column, the problem and the row count."""

import numpy as np
import pandas as pd
import pytest

from driftloop.core.contracts import FeatureColumn, TableSchema
from driftloop.core.errors import DataValidationError
from driftloop.core.validation import check_entity_table, check_training_frame

SCHEMA = TableSchema(entity_columns=("customer_id",), timestamp_column="ts", label_column="y")
FEATURES = [
    FeatureColumn(name="charges", ref="v:charges", feast_type="Float64", kind="numeric"),
    FeatureColumn(name="plan", ref="v:plan", feast_type="String", kind="categorical"),
]


def frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "ts": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
            "y": [0, 1] * (n // 2),
            "charges": np.linspace(10, 60, n),
            "plan": ["basic", "premium"] * (n // 2),
        }
    )


def problems(data: pd.DataFrame) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        check_training_frame(data, SCHEMA, FEATURES, "test data")
    return [str(p) for p in info.value.problems]


def test_a_valid_frame_passes():
    check_training_frame(frame(), SCHEMA, FEATURES, "test data")


def test_missing_columns():
    assert problems(frame().drop(columns=["y"])) == ["column 'y': missing (label column) (6 rows)"]
    assert "column 'plan': missing (feature v:plan) (6 rows)" in problems(
        frame().drop(columns="plan")
    )


def test_wrong_dtypes():
    data = frame()
    data["ts"] = data["ts"].astype(str)
    data["charges"] = data["charges"].astype(str)
    found = problems(data)
    assert "column 'ts': dtype object, expected a datetime (6 rows)" in found
    assert any(p.startswith("column 'charges': dtype object, expected numeric") for p in found)


def test_label_problems():
    data = frame()
    data.loc[1, "y"] = np.nan
    assert "column 'y': null label (NaN) (1 rows)" in problems(data)
    data = frame()
    data["y"] = 1
    assert any("single class: every label is 1" in p for p in problems(data))
    data = frame()
    data["y"] = ["no", "yes"] * 3
    assert any("column 'y': dtype object, expected integer 0/1" in p for p in problems(data))
    data = frame()
    data.loc[0, "y"] = 2
    assert "column 'y': values other than 0/1: ['2'] (1 rows)" in problems(data)


def test_duplicated_entity_timestamp_rows():
    data = pd.concat([frame(), frame().head(2)], ignore_index=True)
    assert any("duplicated rows" in p and "(2 rows)" in p for p in problems(data))


def test_empty_table_and_every_problem_at_once():
    with pytest.raises(DataValidationError, match="table is empty"):
        check_entity_table(frame().head(0), SCHEMA, "labels")
    data = frame().drop(columns=["plan"])
    data.loc[0, "y"] = np.nan
    assert len(problems(data)) == 2
