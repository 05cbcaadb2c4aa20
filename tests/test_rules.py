"""The pure rules behind recovery and training plans: one small test per rule."""

from __future__ import annotations

import pytest

from driftloop.core import metric_direction, names
from driftloop.core.contracts import DatasetLocation, DatasetVersion, ModelVersionRef
from driftloop.core.errors import RollbackError
from driftloop.core.interruptions import (
    covers_its_data,
    is_interrupted,
    service_stopped_message,
    should_resume,
    zombie_reason,
)
from driftloop.core.planning import choose_revision, skip_reason, training_fingerprint
from driftloop.core.rollback import rollback_target
from driftloop.core.timewindows import split_by_time


def at(commit: str, md5: str = "m" * 32) -> DatasetVersion:
    location = DatasetLocation(repo="/r", path="data/t.parquet", rev="main")
    return DatasetVersion(location=location, commit=commit * 5, md5=md5)


# --- zombies --------------------------------------------------------------------------------
def test_a_run_with_a_live_process_is_no_zombie():
    assert zombie_reason("RUNNING", 42, True, 999, pending_grace_s=60) is None


def test_a_run_whose_process_is_gone_is_a_zombie():
    reason = zombie_reason("RUNNING", 42, False, 1, pending_grace_s=60)
    assert reason.startswith(names.CRASH_NO_PROCESS)
    assert "pid 42" in reason


def test_a_run_without_a_process_gets_a_grace_period():
    assert zombie_reason("PENDING", None, False, 30, pending_grace_s=60) is None
    reason = zombie_reason("PENDING", None, False, 90, pending_grace_s=60)
    assert "no process was ever started" in reason


def test_only_pending_and_running_runs_can_be_zombies():
    assert zombie_reason("SCHEDULED", None, False, 999, pending_grace_s=0) is None


# --- resuming -------------------------------------------------------------------------------
def test_interrupted_means_crashed_by_a_lost_process_not_by_its_code():
    assert is_interrupted("CRASHED", service_stopped_message("RUNNING"))
    assert is_interrupted("CRASHED", f"{names.CRASH_NO_HEARTBEAT}: ...")
    assert not is_interrupted("CRASHED", "Flow run process exited with non-zero status code 1")
    assert not is_interrupted("FAILED", service_stopped_message("RUNNING"))


def test_a_run_is_resumed_a_limited_number_of_times():
    message = service_stopped_message("PENDING")
    assert should_resume("CRASHED", message, resumes=1, max_resumes=2)
    assert not should_resume("CRASHED", message, resumes=2, max_resumes=2)


def test_a_training_covers_its_data_unless_it_ended_without_training():
    assert covers_its_data("SCHEDULED", None)
    assert covers_its_data("COMPLETED", "Skipped: already trained")
    assert covers_its_data("CRASHED", service_stopped_message("RUNNING"))  # it is resumed
    assert not covers_its_data("FAILED", "The current node timed out during startup")
    assert not covers_its_data("CRASHED", "Flow run process exited with status code 1")
    assert not covers_its_data("CANCELLED", "Cancelled from the UI")


# --- training plans -------------------------------------------------------------------------
def test_automated_runs_train_the_newest_revision():
    chosen, why = choose_revision(names.REASON_DATASET_UPDATED, "a" * 5, at("a"), at("b"))
    assert chosen == at("b")
    assert why == "revision aaaaa was superseded by the newer revision bbbbb (latest wins)"


def test_a_person_asking_for_a_revision_gets_it():
    chosen, why = choose_revision(names.REASON_MANUAL, "a" * 5, at("a"), at("b"))
    assert chosen == at("a")
    assert why is None


def test_the_newest_revision_supersedes_nothing():
    chosen, why = choose_revision(names.REASON_DRIFT_DETECTED, None, at("b"), at("b"))
    assert chosen == at("b")
    assert why is None


def test_the_fingerprint_follows_every_input():
    base = training_fingerprint("md5", "feat", {"gate": {"floor": 0.6}}, "code")
    assert base == training_fingerprint("md5", "feat", {"gate": {"floor": 0.6}}, "code")
    assert base != training_fingerprint("md6", "feat", {"gate": {"floor": 0.6}}, "code")
    assert base != training_fingerprint("md5", "feat2", {"gate": {"floor": 0.6}}, "code")
    assert base != training_fingerprint("md5", "feat", {"gate": {"floor": 0.7}}, "code")
    assert base != training_fingerprint("md5", "feat", {"gate": {"floor": 0.6}}, "code2")


def test_a_decided_version_makes_the_run_skip():
    reason = skip_reason("m", "3", names.DECISION_REJECTED, at("b"))
    assert reason.startswith("already trained: m v3 was trained on exactly this data")
    assert "rejected" in reason


def test_an_unfinished_version_does_not():
    assert skip_reason("m", None, None, at("b")) is None
    assert skip_reason("m", "3", None, at("b")) is None
    assert skip_reason("m", "3", names.DECISION_PROMOTING, at("b")) is None
    assert skip_reason("m", "3", names.DECISION_ROLLED_BACK, at("b")) is None


# --- what a model has seen, by time ---------------------------------------------------------
def frame(days: list[int], labels: list[int] | None = None):
    import pandas as pd

    stamps = pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(days, unit="D")
    return pd.DataFrame({"ts": stamps, "y": labels or [i % 2 for i in range(len(days))]})


def test_rows_after_a_fit_date_are_new_to_the_model():
    from driftloop.core.timewindows import fitted_until, rows_after

    rows = frame([0, 1, 2, 3])
    until = fitted_until(rows.iloc[:2], "ts")
    assert list(rows_after(rows, "ts", until).index) == [2, 3]
    assert len(rows_after(rows, "ts", None)) == 4  # unknown: everything counts


def test_the_gate_judges_on_rows_the_champion_has_not_seen():
    from driftloop.core.timewindows import fitted_until, gate_rows

    holdout = frame([0] * 50 + [5] * 150)
    until = fitted_until(holdout.iloc[:50], "ts")
    rows, note = gate_rows(holdout, "ts", "y", until)
    assert len(rows) == 150
    assert "150 holdout rows newer than the champion's data" in note
    rows, note = gate_rows(holdout, "ts", "y", None)
    assert (len(rows), note) == (200, None)  # no fit date: the whole holdout


def test_too_few_unseen_rows_fall_back_to_the_whole_holdout_and_say_so():
    from driftloop.core.timewindows import fitted_until, gate_rows

    holdout = frame([0] * 190 + [5] * 10)
    rows, note = gate_rows(holdout, "ts", "y", fitted_until(holdout.iloc[:190], "ts"))
    assert len(rows) == 200
    assert note.startswith("only 10 holdout rows are newer")


def test_the_drift_reference_is_the_newest_span_of_the_fit_data():
    from driftloop.core.timewindows import newest_span

    rows = frame(list(range(30)))
    assert len(newest_span(rows, "ts", days=7, min_rows=5)) == 8  # days 22..29
    assert len(newest_span(rows, "ts", days=7, min_rows=20)) == 30  # too few: all of it


# --- labels and performance -----------------------------------------------------------------
def test_no_new_labels_when_a_version_was_trained_on_the_newest_content():
    from driftloop.core.planning import new_labels_reason

    newest = at("eb4d88c3")
    assert new_labels_reason("2", newest, None)[0] is True
    new, reason = new_labels_reason("2", newest, ("2", "promoted"))
    assert (new, reason) == (False, "no labeled data newer than champion v2 (commit eb4d88c3)")
    new, reason = new_labels_reason("2", newest, ("3", "rejected"))
    assert new is False
    assert reason.startswith("no labeled data newer than v3 (rejected)")


def test_degraded_means_below_the_floor_or_far_below_its_own_holdout():
    from driftloop.core.performance import degradation_reason

    assert degradation_reason("roc_auc", 0.83, 0.84, floor=0.6, max_degradation=0.03) is None
    assert "0.1300 worse" in degradation_reason("roc_auc", 0.71, 0.84, 0.6, 0.03)
    assert "misses the floor" in degradation_reason("roc_auc", 0.55, None, 0.6, 0.03)
    # log loss: lower is better, so a rise is the loss
    assert degradation_reason("log_loss", 0.40, 0.45, floor=0.7, max_degradation=0.03) is None
    assert "worse" in degradation_reason("log_loss", 0.55, 0.45, 0.7, 0.03)


# --- which way a metric improves ----------------------------------------------------------
def test_a_loss_improves_downwards_and_a_score_upwards():
    assert metric_direction.lower_is_better("log_loss")
    assert not metric_direction.lower_is_better("roc_auc")
    assert metric_direction.optuna_direction("log_loss") == "minimize"
    assert metric_direction.optuna_direction("roc_auc") == "maximize"


def test_improvement_is_positive_when_better_whatever_the_direction():
    assert metric_direction.improvement("roc_auc", 0.80, over=0.75) > 0
    assert metric_direction.improvement("log_loss", 0.30, over=0.35) > 0
    assert metric_direction.improvement("log_loss", 0.40, over=0.35) < 0


def test_a_bar_is_a_floor_for_scores_and_a_ceiling_for_losses():
    assert metric_direction.clears("roc_auc", 0.6, bar=0.6)
    assert not metric_direction.clears("roc_auc", 0.59, bar=0.6)
    assert metric_direction.clears("log_loss", 0.5, bar=0.6)
    assert not metric_direction.clears("log_loss", 0.61, bar=0.6)
    assert metric_direction.bar_name("log_loss") == "ceiling"


def test_best_first_sorts_the_best_score_first():
    assert sorted([0.7, 0.9, 0.8], key=lambda s: metric_direction.best_first("roc_auc", s)) == [
        0.9,
        0.8,
        0.7,
    ]
    assert min([0.7, 0.3], key=lambda s: metric_direction.best_first("log_loss", s)) == 0.3


# --- one time split ------------------------------------------------------------------------
def test_the_time_split_puts_no_timestamp_on_both_sides():
    import pandas as pd

    # Four rows share the cut-off day: a split by position would cut through them.
    days = pd.to_datetime(["2026-01-01"] * 3 + ["2026-01-02"] * 4 + ["2026-01-03"] * 3)
    frame = pd.DataFrame({"ts": days, "id": range(10)})
    older, newer = split_by_time(frame, "ts", 0.5, ["id"])
    assert set(older["ts"]).isdisjoint(set(newer["ts"]))
    assert len(older) == 3
    assert len(newer) == 7
    assert list(newer["id"]) == [3, 4, 5, 6, 7, 8, 9]


def test_the_time_split_is_the_same_whatever_order_the_rows_came_in():
    import pandas as pd

    frame = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=10, freq="D"), "id": range(10)})
    shuffled = frame.sample(frac=1, random_state=1)
    for left, right in zip(
        split_by_time(frame, "ts", 0.3, ["id"]),
        split_by_time(shuffled, "ts", 0.3, ["id"]),
        strict=True,
    ):
        pd.testing.assert_frame_equal(left, right)
    older, newer = split_by_time(frame, "ts", 0.3, ["id"])
    assert len(newer) == 3
    assert newer["ts"].min() > older["ts"].max()


# --- the model's input contract ------------------------------------------------------------
def test_a_categorical_feature_stays_text_even_when_every_value_is_missing():
    import pandas as pd

    from driftloop.core.contracts import FeatureColumn
    from driftloop.core.modeling import feature_matrix

    columns = [
        FeatureColumn(name="plan", ref="v:plan", feast_type="String", kind="categorical"),
        FeatureColumn(name="n", ref="v:n", feast_type="Int64", kind="numeric"),
    ]
    matrix = feature_matrix(pd.DataFrame({"plan": [None, None], "n": [1, None]}), columns)
    assert matrix["plan"].dtype == object
    assert matrix["n"].dtype == "float64"
    assert matrix["plan"].isna().all()


def test_the_model_input_types_each_kind_of_feature_and_keeps_the_index():
    import numpy as np
    import pandas as pd

    from driftloop.core.contracts import FeatureColumn
    from driftloop.core.modeling import feature_matrix

    def column(name: str, kind: str) -> FeatureColumn:
        return FeatureColumn(name=name, ref=f"v:{name}", feast_type="-", kind=kind)

    frame = pd.DataFrame(
        {"f": [1.5, None, 3.0], "i": pd.array([1, None, 3], dtype="Int64"),
         "t": ["1", "2.5", None], "c": ["x", None, 2.0], "b": [True, False, None]},
        index=[7, 3, 9],
    )  # fmt: skip
    kinds = {"f": "numeric", "i": "numeric", "t": "numeric", "c": "categorical", "b": "boolean"}
    matrix = feature_matrix(frame, [column(n, k) for n, k in kinds.items()])
    assert list(matrix.index) == [7, 3, 9]
    assert {n: str(t) for n, t in matrix.dtypes.items()} == {
        "f": "float64",
        "i": "float64",
        "t": "float64",
        "c": "object",
        "b": "float64",
    }
    np.testing.assert_array_equal(matrix["i"], [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(matrix["t"], [1.0, 2.5, np.nan])
    np.testing.assert_array_equal(matrix["b"], [1.0, 0.0, np.nan])
    # Text stays text, a missing value is NaN (the imputer's marker), a float stays a float.
    assert matrix["c"].iloc[0] == "x" and np.isnan(matrix["c"].iloc[1])
    assert matrix["c"].iloc[2] == 2.0 and isinstance(matrix["c"].iloc[2], float)
    with pytest.raises(ValueError):
        feature_matrix(pd.DataFrame({"t": ["one"]}), [column("t", "numeric")])


HISTORY = {"1": names.DECISION_PROMOTED, "2": names.DECISION_PROMOTED,
           "3": names.DECISION_REJECTED, "4": None}  # fmt: skip


def test_a_rollback_steps_back_to_the_champion_it_replaced():
    champion = ModelVersionRef(name="m", version="2", compared_to="1")
    assert rollback_target(champion, None, HISTORY) == "1"
    assert rollback_target(ModelVersionRef(name="m", version="1"), "2", HISTORY) == "2"


def test_a_rollback_goes_only_to_a_version_that_was_promoted():
    first = ModelVersionRef(name="m", version="1")
    second = ModelVersionRef(name="m", version="2", compared_to="1")
    for champion, requested, message in (
        (first, None, "'m' v1 is its first champion: there is no earlier champion"),
        (second, "3", "'m' v3 was never promoted \\(its decision: rejected\\)"),
        (second, "4", "'m' v4 was never promoted \\(its decision: none\\)"),
        (second, "9", "'m' has no version '9' \\(its versions: v1, v2, v3, v4\\)"),
        (second, "2", "'m' v2 is the champion already"),
    ):
        with pytest.raises(RollbackError, match=message):
            rollback_target(champion, requested, HISTORY)
