"""What the serving application accepts, and how it reads a request: pure rules.

A prediction request is JSON, in one of two shapes:

- **by entity**: the entity keys of the champion's feature views, each a list of ids (or one
  id), e.g. ``{"customer_id": [1001, 1002]}``. The features come from the Feast online store.
- **by features**: ``{"instances": [{"tenure_months": 12, "plan": "basic", ...}, ...]}``, one
  object per row with every input of the model's signature (the shape `mlflow models serve`
  also accepts, so the same body can be sent to both).

Everything here is plain Python: the serving replica calls it, and its tests need no server.
Each rule raises :class:`ServingRequestError` with the HTTP status and a message that names
what is wrong and where (which key, which row, which column).

Example:
    >>> inputs = (InputColumn("tenure_months", "numeric"), InputColumn("plan", "categorical"))
    >>> keys = (EntityKey("customer_id", "int"),)
    >>> parse_request(b'{"customer_id": [7, 8]}', keys, inputs, ServingLimits())
    EntityRequest(ids={'customer_id': [7, 8]})
    >>> parse_request(b'{}', keys, inputs, ServingLimits())
    Traceback (most recent call last):
    ...
    driftloop.core.serving.ServingRequestError: 400: the body names neither entity ids \
(customer_id) nor 'instances'; send e.g. {"customer_id": [1001]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from driftloop.core.contracts import FeatureColumn
from driftloop.core.errors import DriftloopInputError

# The key of a by-features request (the name MLflow's scoring server also accepts).
INSTANCES_KEY = "instances"

InputKind = Literal["numeric", "categorical"]
EntityType = Literal["int", "str"]


class ServingRequestError(DriftloopInputError):
    """A request the serving application refuses, with the HTTP status it answers with."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        # A short, stable label for the metrics (errors by kind).
        self.kind = kind


class ServingUnavailable(Exception):
    """A component the answer needs did not respond (the online store): 503, retry later.
    Not the caller's fault, and not a bug."""

    def __init__(self, message: str, kind: str):
        super().__init__(f"503: {message}")
        self.status = 503
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class ServingLimits:
    """Bounds on one request: its body in bytes, and its rows."""

    max_body_bytes: int = 1_000_000
    max_rows: int = 1_000


@dataclass(frozen=True)
class InputColumn:
    """One input of the model's signature: numeric (floats, ints, bools) or categorical."""

    name: str
    kind: InputKind


@dataclass(frozen=True)
class EntityKey:
    """One join key of the champion's feature views, with the type of its ids."""

    name: str
    type: EntityType


@dataclass(frozen=True)
class EntityRequest:
    """Entity ids, one list per join key, all of the same length."""

    ids: dict[str, list[Any]]

    @property
    def rows(self) -> int:
        return len(next(iter(self.ids.values())))


@dataclass(frozen=True)
class FeatureRequest:
    """Rows of feature values, one dict per row, with every input of the signature."""

    rows: list[dict[str, Any]]
    # Per row, the inputs the client sent as null: scored on imputed values, and flagged.
    nulls: list[list[str]] = field(default_factory=list)


def input_columns(columns: Sequence[FeatureColumn]) -> tuple[InputColumn, ...]:
    """What a by-features request must send for these feature columns: a string for a
    categorical feature, a number (or boolean) for the others, as `feature_matrix` types them.
    """
    return tuple(
        InputColumn(c.name, "categorical" if c.kind == "categorical" else "numeric")
        for c in columns
    )


def parse_request(
    body: bytes,
    keys: Sequence[EntityKey],
    inputs: Sequence[InputColumn],
    limits: ServingLimits,
    content_length: int | None = None,
) -> EntityRequest | FeatureRequest:
    """Read a prediction request's body, or raise :class:`ServingRequestError` naming the
    problem: an empty or oversized body, JSON that does not parse, a shape that is neither
    by entity nor by features, ids of the wrong type, a missing or mistyped feature."""
    declared = content_length if content_length is not None else len(body)
    if max(declared, len(body)) > limits.max_body_bytes:
        raise ServingRequestError(
            413,
            f"the body is {max(declared, len(body))} bytes; the limit is "
            f"{limits.max_body_bytes} (max_body_bytes of the serving block)",
            "too_large",
        )
    if not body.strip():
        raise ServingRequestError(
            400, f"the body is empty; send JSON such as {_example(keys)}", "empty_body"
        )
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServingRequestError(400, f"the body is not JSON: {exc}", "bad_json") from exc
    if not isinstance(payload, dict):
        raise ServingRequestError(
            400,
            f"the body is a JSON {type(payload).__name__}, not an object; send e.g. "
            f"{_example(keys)}",
            "bad_shape",
        )
    if not payload:
        raise ServingRequestError(
            400, f"the body is an empty object; send e.g. {_example(keys)}", "empty_body"
        )
    key_names = [k.name for k in keys]
    given_keys = [k for k in key_names if k in payload]
    if INSTANCES_KEY in payload:
        other = sorted(set(payload) - {INSTANCES_KEY})
        if other:
            raise ServingRequestError(
                400,
                f"a by-features request has only {INSTANCES_KEY!r}; it also names {other}",
                "bad_shape",
            )
        return _feature_request(payload[INSTANCES_KEY], inputs, limits)
    if not given_keys:
        raise ServingRequestError(
            400,
            f"the body names neither entity ids ({', '.join(key_names)}) nor "
            f"{INSTANCES_KEY!r}; send e.g. {_example(keys)}",
            "bad_shape",
        )
    unknown = sorted(set(payload) - set(key_names))
    if unknown:
        raise ServingRequestError(
            400,
            f"unknown key(s) {unknown}; a by-entity request has exactly the entity keys "
            f"{key_names}",
            "bad_shape",
        )
    return _entity_request(payload, keys, limits)


def _example(keys: Sequence[EntityKey]) -> str:
    if not keys:
        return '{"instances": [{...}]}'
    return "{" + ", ".join(f'"{k.name}": [1001]' for k in keys) + "}"


def _entity_request(
    payload: Mapping[str, Any], keys: Sequence[EntityKey], limits: ServingLimits
) -> EntityRequest:
    missing = [k.name for k in keys if k.name not in payload]
    if missing:
        raise ServingRequestError(
            400, f"entity key(s) {missing} are missing; the features are joined on all of "
            f"{[k.name for k in keys]}", "missing_key",
        )  # fmt: skip
    ids: dict[str, list[Any]] = {}
    for key in keys:
        value = payload[key.name]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ServingRequestError(400, f"{key.name!r} is an empty list", "empty_body")
        for index, item in enumerate(values):
            if not _is_id(item, key.type):
                raise ServingRequestError(
                    422,
                    f"{key.name}[{index}] is {item!r} ({_json_type(item)}); "
                    f"{key.name} ids are {'integers' if key.type == 'int' else 'strings'}",
                    "wrong_type",
                )
        ids[key.name] = values
    lengths = {name: len(values) for name, values in ids.items()}
    if len(set(lengths.values())) > 1:
        raise ServingRequestError(
            400, f"the entity keys have different lengths: {lengths}", "bad_shape"
        )
    rows = next(iter(lengths.values()))
    if rows > limits.max_rows:
        raise ServingRequestError(
            413, f"{rows} entities; the limit is {limits.max_rows} per request (max_rows of "
            "the serving block)", "too_large",
        )  # fmt: skip
    return EntityRequest(ids)


def _is_id(value: Any, kind: EntityType) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _feature_request(
    instances: Any, inputs: Sequence[InputColumn], limits: ServingLimits
) -> FeatureRequest:
    if not isinstance(instances, list):
        raise ServingRequestError(
            400, f"{INSTANCES_KEY!r} is a JSON {_json_type(instances)}, not a list of rows",
            "bad_shape",
        )  # fmt: skip
    if not instances:
        raise ServingRequestError(400, f"{INSTANCES_KEY!r} is an empty list", "empty_body")
    if len(instances) > limits.max_rows:
        raise ServingRequestError(
            413, f"{len(instances)} rows; the limit is {limits.max_rows} per request (max_rows "
            "of the serving block)", "too_large",
        )  # fmt: skip
    names = [c.name for c in inputs]
    nulls: list[list[str]] = []
    for index, row in enumerate(instances):
        where = f"{INSTANCES_KEY}[{index}]"
        if not isinstance(row, dict):
            raise ServingRequestError(
                400, f"{where} is a JSON {_json_type(row)}, not an object of features",
                "bad_shape",
            )  # fmt: skip
        missing = [n for n in names if n not in row]
        if missing:
            raise ServingRequestError(
                422, f"{where} lacks feature(s) {missing}; the model takes {names}",
                "missing_feature",
            )  # fmt: skip
        extra = sorted(set(row) - set(names))
        if extra:
            raise ServingRequestError(
                422, f"{where} has unknown feature(s) {extra}; the model takes {names}",
                "unknown_feature",
            )  # fmt: skip
        row_nulls = []
        for column in inputs:
            value = row[column.name]
            if value is None:
                row_nulls.append(column.name)
            elif not _fits(value, column.kind):
                raise ServingRequestError(
                    422,
                    f"{where}.{column.name} is {value!r} ({_json_type(value)}); it is a "
                    f"{column.kind} feature, so it takes "
                    f"{'a number' if column.kind == 'numeric' else 'a string'}",
                    "wrong_type",
                )
        nulls.append(row_nulls)
    return FeatureRequest(rows=instances, nulls=nulls)


def _fits(value: Any, kind: InputKind) -> bool:
    if kind == "numeric":
        # Booleans are numeric features too (feature_matrix feeds them as 0.0/1.0).
        return isinstance(value, int | float) and not (
            isinstance(value, float) and math.isinf(value)
        )
    return isinstance(value, str)


def unknown_entities(
    ids: Mapping[str, Sequence[Any]], values: Mapping[str, Sequence[Any]], features: Sequence[str]
) -> list[dict[str, Any]]:
    """Entities the online store knows nothing about: every feature is null. Returned as
    their ids, in request order.

    Example:
        >>> unknown_entities({"id": [1, 2]}, {"x": [0.5, None], "y": ["a", None]}, ["x", "y"])
        [{'id': 2}]
    """
    rows = len(next(iter(ids.values())))
    return [
        {key: column[i] for key, column in ids.items()}
        for i in range(rows)
        if all(values[name][i] is None for name in features)
    ]


def missing_per_row(
    values: Mapping[str, Sequence[Any]], features: Sequence[str]
) -> list[list[str]]:
    """For each row, the features that are null (the model imputes them; the response and
    the prediction log flag them).

    Example:
        >>> missing_per_row({"x": [0.5, None], "y": ["a", "b"]}, ["x", "y"])
        [[], ['x']]
    """
    rows = len(values[features[0]]) if features else 0
    return [[name for name in features if _is_null(values[name][i])] for i in range(rows)]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
