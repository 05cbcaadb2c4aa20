"""The serving application's pure rules: how a request is read, and what counts as an unknown
entity or a missing feature (driftloop/core/serving.py), and the prediction log's layout."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from driftloop.core.contracts import FeatureColumn
from driftloop.core.prediction_log import day_folder, day_folders, part_name
from driftloop.core.serving import (
    EntityKey,
    EntityRequest,
    FeatureRequest,
    InputColumn,
    ServingLimits,
    ServingRequestError,
    input_columns,
    missing_per_row,
    parse_request,
    unknown_entities,
)

KEYS = (EntityKey("customer_id", "int"),)
INPUTS = (InputColumn("tenure", "numeric"), InputColumn("plan", "categorical"))
LIMITS = ServingLimits(max_body_bytes=1000, max_rows=3)


def parse(body: object, keys=KEYS, length: int | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(data, keys, INPUTS, LIMITS, length)


def refused(body: object, **kwargs) -> ServingRequestError:
    with pytest.raises(ServingRequestError) as caught:
        parse(body, **kwargs)
    return caught.value


def test_by_entity_takes_a_list_or_one_id():
    assert parse({"customer_id": [1, 2]}) == EntityRequest({"customer_id": [1, 2]})
    assert parse({"customer_id": 7}) == EntityRequest({"customer_id": [7]})


def test_by_entity_with_string_ids_and_two_keys():
    keys = (EntityKey("shop", "str"), EntityKey("item", "int"))
    parsed = parse({"shop": ["a", "b"], "item": [1, 2]}, keys=keys)
    assert isinstance(parsed, EntityRequest) and parsed.rows == 2
    error = refused({"shop": ["a"], "item": [1, 2]}, keys=keys)
    assert (error.status, error.kind) == (400, "bad_shape")
    assert "different lengths" in error.message
    assert refused({"shop": ["a"]}, keys=keys).message.startswith("entity key(s) ['item']")


def test_by_features_flags_nulls_per_row():
    parsed = parse({"instances": [{"tenure": 3, "plan": "basic"}, {"tenure": None, "plan": "x"}]})
    assert isinstance(parsed, FeatureRequest)
    assert parsed.nulls == [[], ["tenure"]]


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (b"", 400, "empty_body", "the body is empty"),
        (b"  \n", 400, "empty_body", "the body is empty"),
        ({}, 400, "empty_body", "the body is an empty object"),
        (b"{nope", 400, "bad_json", "the body is not JSON"),
        ([1, 2], 400, "bad_shape", "the body is a JSON list, not an object"),
        ({"other": 1}, 400, "bad_shape", "names neither entity ids (customer_id) nor"),
        ({"customer_id": [1], "x": 1}, 400, "bad_shape", "unknown key(s) ['x']"),
        ({"customer_id": []}, 400, "empty_body", "'customer_id' is an empty list"),
        ({"customer_id": [1, 2.5]}, 422, "wrong_type", "customer_id[1] is 2.5 (number)"),
        ({"customer_id": [True]}, 422, "wrong_type", "customer_id[0] is True (boolean)"),
        ({"customer_id": [None]}, 422, "wrong_type", "customer_id[0] is None (null)"),
        ({"customer_id": [1, 2, 3, 4]}, 413, "too_large", "4 entities; the limit is 3"),
        ({"instances": {}}, 400, "bad_shape", "'instances' is a JSON object, not a list"),
        ({"instances": []}, 400, "empty_body", "'instances' is an empty list"),
        ({"instances": [1]}, 400, "bad_shape", "instances[0] is a JSON number"),
        ({"instances": [{"tenure": 1}]}, 422, "missing_feature", "lacks feature(s) ['plan']"),
        (
            {"instances": [{"tenure": 1, "plan": "a", "zip": 1}]},
            422, "unknown_feature", "instances[0] has unknown feature(s) ['zip']",
        ),
        (
            {"instances": [{"tenure": "3", "plan": "a"}]},
            422, "wrong_type", "instances[0].tenure is '3' (string); it is a numeric feature",
        ),
        (
            {"instances": [{"tenure": 3, "plan": 1}]},
            422, "wrong_type", "instances[0].plan is 1 (number); it is a categorical feature",
        ),
        (
            {"instances": [{"tenure": 3, "plan": "a"}], "customer_id": [1]},
            400, "bad_shape", "has only 'instances'; it also names ['customer_id']",
        ),
        ({"instances": [{"tenure": 1, "plan": "a"}] * 4}, 413, "too_large", "4 rows"),
    ],
)  # fmt: skip
def test_every_bad_request_is_refused_with_what_and_where(body, status, kind, message):
    error = refused(body)
    assert (error.status, error.kind) == (status, kind)
    assert message in error.message


def test_the_body_size_is_checked_before_it_is_parsed():
    error = refused(b"x" * 1001)
    assert (error.status, error.kind) == (413, "too_large")
    assert "1001 bytes; the limit is 1000" in error.message
    # A declared length over the limit is refused even if fewer bytes arrived.
    assert refused({"customer_id": [1]}, length=5000).status == 413


def test_unknown_entities_are_those_with_no_feature_at_all():
    ids = {"customer_id": [1, 2, 3]}
    values = {"a": [1.0, None, None], "b": ["x", "y", None]}
    assert unknown_entities(ids, values, ["a", "b"]) == [{"customer_id": 3}]
    assert missing_per_row(values, ["a", "b"]) == [[], ["a"], ["a", "b"]]
    assert missing_per_row({"a": [float("nan")]}, ["a"]) == [["a"]]


def test_input_columns_follow_the_feature_kinds():
    columns = [
        FeatureColumn(name="n", ref="v:n", feast_type="Int64", kind="numeric"),
        FeatureColumn(name="b", ref="v:b", feast_type="Bool", kind="boolean"),
        FeatureColumn(name="c", ref="v:c", feast_type="String", kind="categorical"),
    ]
    assert [c.kind for c in input_columns(columns)] == ["numeric", "numeric", "categorical"]


def test_prediction_log_layout():
    when = datetime(2026, 11, 22, 23, 59, tzinfo=UTC)
    assert day_folder(Path("r"), "m", when) == Path("r/m/date=2026-11-22")
    name = part_name(when, 42, 7)
    assert name.startswith("part-") and name.endswith("-42-000007.parquet")
    assert part_name(when, 42, 7) < part_name(datetime(2026, 11, 23, tzinfo=UTC), 1, 1)


def test_day_folders_are_those_that_exist_in_the_window(tmp_path):
    for day in ("2026-11-20", "2026-11-22", "2026-11-25"):
        (tmp_path / "m" / f"date={day}").mkdir(parents=True)
    found = day_folders(
        tmp_path, "m", datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)
    )
    assert [f.name for f in found] == ["date=2026-11-22"]
