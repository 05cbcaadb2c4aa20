"""Data contract checks. Each finding names the column, the problem and the row count.

Checks collect every problem before raising, so one run shows everything that is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftloop.core.contracts import FeatureColumn, TableSchema
from driftloop.core.errors import DataProblem, DataValidationError

if TYPE_CHECKING:
    import pandas as pd


def _entity_problems(frame: pd.DataFrame, schema: TableSchema) -> list[DataProblem]:
    """Problems that make a point-in-time join unsound: missing keys, bad key types, nulls in
    keys, duplicated (entity, timestamp) rows."""
    from pandas.api import types

    n = len(frame)
    problems: list[DataProblem] = []
    keys = [*schema.entity_columns, schema.timestamp_column]
    missing = [c for c in keys if c not in frame.columns]
    for column in missing:
        role = "timestamp" if column == schema.timestamp_column else "entity key"
        problems.append(DataProblem(column, f"missing ({role} column)", n))
    for column in schema.entity_columns:
        if column in missing:
            continue
        series = frame[column]
        if not (types.is_integer_dtype(series) or types.is_string_dtype(series)):
            problems.append(
                DataProblem(column, f"dtype {series.dtype}, expected integer or string ids", n)
            )
        if nulls := int(series.isna().sum()):
            problems.append(DataProblem(column, "null entity key", nulls))
    ts = schema.timestamp_column
    if ts not in missing:
        if not types.is_datetime64_any_dtype(frame[ts]):
            problems.append(DataProblem(ts, f"dtype {frame[ts].dtype}, expected a datetime", n))
        elif nulls := int(frame[ts].isna().sum()):
            problems.append(DataProblem(ts, "null timestamp", nulls))
    if not missing:
        duplicated = int(frame.duplicated(subset=keys, keep="first").sum())
        if duplicated:
            problems.append(
                DataProblem(
                    "(" + ", ".join(keys) + ")",
                    "duplicated rows: the same entity at the same timestamp appears again",
                    duplicated,
                )
            )
    return problems


def _label_problems(frame: pd.DataFrame, label: str) -> list[DataProblem]:
    from pandas.api import types

    n = len(frame)
    if label not in frame.columns:
        return [DataProblem(label, "missing (label column)", n)]
    series = frame[label]
    problems = []
    if nulls := int(series.isna().sum()):
        problems.append(DataProblem(label, "null label (NaN)", nulls))
    values = series.dropna()
    # A float dtype is fine when it only comes from the NaNs reported above.
    if not (types.is_bool_dtype(series) or types.is_numeric_dtype(series)):
        problems.append(
            DataProblem(label, f"dtype {series.dtype}, expected integer 0/1 or boolean", n)
        )
        return problems
    invalid = ~values.isin([0, 1, True, False])
    if count := int(invalid.sum()):
        sample = sorted({str(v) for v in values[invalid].head(5)})
        problems.append(DataProblem(label, f"values other than 0/1: {sample}", count))
    elif len(values) and values.nunique() < 2:
        only = values.iloc[0]
        only = only.item() if hasattr(only, "item") else only  # numpy scalar -> plain value
        problems.append(
            DataProblem(label, f"single class: every label is {only!r}, need both 0 and 1", n)
        )
    return problems


def _feature_problems(frame: pd.DataFrame, columns: list[FeatureColumn]) -> list[DataProblem]:
    import pandas as pd
    from pandas.api import types

    n = len(frame)
    problems = []
    for col in columns:
        if col.name not in frame.columns:
            problems.append(DataProblem(col.name, f"missing (feature {col.ref})", n))
            continue
        series = frame[col.name]
        if series.isna().all():
            continue  # all-null is reported by the null-share check, not as a dtype problem
        if col.kind == "numeric":
            ok = types.is_numeric_dtype(series) and not types.is_bool_dtype(series)
        elif col.kind == "boolean":
            ok = types.is_bool_dtype(series) or set(series.dropna().unique()) <= {True, False}
        else:
            ok = types.is_string_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype)
        if not ok:
            problems.append(
                DataProblem(
                    col.name,
                    f"dtype {series.dtype}, expected {col.kind} (Feast type {col.feast_type})",
                    n,
                )
            )
    return problems


def check_entity_table(frame: pd.DataFrame, schema: TableSchema, where: str) -> None:
    """What a point-in-time join needs: rows, entity keys, timestamps, unique keys."""
    if frame.empty:
        raise DataValidationError(where, [DataProblem("*", "table is empty", 0)])
    if problems := _entity_problems(frame, schema):
        raise DataValidationError(where, problems)


def check_training_frame(
    frame: pd.DataFrame, schema: TableSchema, features: list[FeatureColumn], where: str
) -> None:
    """The full contract of a training frame: keys, label, feature presence and dtypes."""
    if frame.empty:
        raise DataValidationError(where, [DataProblem("*", "table is empty", 0)])
    problems = [
        *_entity_problems(frame, schema),
        *_label_problems(frame, schema.label_column),
        *_feature_problems(frame, features),
    ]
    if problems:
        raise DataValidationError(where, problems)
