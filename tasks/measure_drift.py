"""Drift step 3: Evidently's data drift preset, reference against the current window."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task

from blocks.drift import DriftPolicy
from driftloop.core.contracts import ColumnDrift, DriftResult, ModelVersionRef, ResolvedFeatures
from driftloop.core.errors import DataProblem, DataValidationError
from driftloop.core.names import DRIFT_REPORT_ARTIFACT
from tasks._policy import NO_RETRIES, UNCACHED

if TYPE_CHECKING:
    import pandas as pd


def column_results(snapshot) -> tuple[float, list[ColumnDrift]]:
    """Per-column scores and verdicts from an Evidently 0.7 snapshot (metrics + tests)."""
    data = snapshot.dict()
    share = 0.0
    scores: dict[str, tuple[str, str, float]] = {}
    for metric in data["metrics"]:
        config = metric["config"]
        kind = config.get("type", "")
        if kind.endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            scores[metric["id"]] = (config["column"], config["method"], float(metric["value"]))
    columns = []
    for test in data["tests"]:
        metric_id = test.get("metric_config", {}).get("metric_id")
        if metric_id not in scores:
            continue
        column, method, score = scores[metric_id]
        threshold = float(test["metric_config"]["params"].get("threshold") or 0.0)
        drifted = test["status"] == "FAIL"
        columns.append(
            ColumnDrift(
                column=column, method=method, score=score, threshold=threshold, drifted=drifted
            )
        )
    return share, sorted(columns, key=lambda c: (not c.drifted, c.column))


def run_drift_preset(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    preset_kwargs: dict,
):
    """Evidently's data drift preset with its tests over these columns: (drift share, the
    verdict per column, the snapshot)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numeric, *categorical]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset(columns=columns, **preset_kwargs)], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    share, results = column_results(snapshot)
    return share, results, snapshot


@task(name="measure-drift", cache_policy=UNCACHED, **NO_RETRIES)
def measure_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: ResolvedFeatures,
    policy: DriftPolicy,
    champion: ModelVersionRef,
    window: tuple[str, str],
    report_dir: Path,
) -> tuple[DriftResult, Path]:
    """Run the data drift preset over the champion's features; return the verdict per
    column and overall, and the path of the HTML report."""
    names = features.names
    problems = [
        DataProblem(column=c, problem=f"missing from the {side}", count=len(frame))
        for side, frame in (("training reference", reference), ("current window", current))
        for c in names
        if c not in frame.columns
    ]
    if problems:
        raise DataValidationError("Drift check inputs", problems)
    numeric = [c.name for c in features.columns if c.kind == "numeric"]
    categorical = [c.name for c in features.columns if c.kind != "numeric"]
    share, columns, snapshot = run_drift_preset(
        reference, current, numeric, categorical, policy.preset_kwargs()
    )
    if len(columns) != len(names):
        missing = sorted(set(names) - {c.column for c in columns})
        raise RuntimeError(f"Evidently returned no drift test for columns {missing}")
    report_dir.mkdir(parents=True, exist_ok=True)
    html = report_dir / Path(DRIFT_REPORT_ARTIFACT).name
    snapshot.save_html(str(html))
    result = DriftResult(
        model_name=champion.name,
        champion_version=champion.version,
        window_start=window[0],
        window_end=window[1],
        reference_rows=len(reference),
        current_rows=len(current),
        drift_share=share,
        drift_share_threshold=policy.drift_share,
        columns=tuple(columns),
    )
    get_run_logger().info(
        "Drift share %.2f (threshold %.2f): %s",
        share, policy.drift_share, ", ".join(result.drifted_columns) or "no drifted columns",
    )  # fmt: skip
    return result, html
