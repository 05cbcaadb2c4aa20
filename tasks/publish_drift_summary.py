"""Drift step 5: a markdown artifact with the drifted columns, for the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from driftloop.core import names
from driftloop.core.contracts import DriftResult, DriftTrendPoint
from tasks._policy import NO_RETRIES, UNCACHED

BARS = " ▁▂▃▄▅▆▇█"


def trend_line(points: list[DriftTrendPoint], threshold: float) -> str:
    """The drift shares of the last checks as a one-line bar chart (a full bar is a share of
    1.0); `!` under a bar marks a check at or above the threshold."""
    bars = "".join(BARS[min(8, round(p.drift_share * 8))] for p in points)
    marks = "".join("!" if p.drift_share >= threshold else "." for p in points)
    return f"`{bars}`\n`{marks}`"


def drift_markdown(
    result: DriftResult,
    report_url: str,
    run_id: str,
    history: list[DriftTrendPoint] | None = None,
) -> str:
    verdict = "**Drift detected**" if result.detected else "No drift"
    lines = [
        f"## {verdict}: {result.model_name} champion v{result.champion_version}",
        "",
        f"{len(result.drifted_columns)} of {len(result.columns)} features drifted "
        f"(share {result.drift_share:.2f}; drift counts from {result.drift_share_threshold:.2f}).",
        f"Window {result.window_start} to {result.window_end}: {result.current_rows} rows, "
        f"against {result.reference_rows} training reference rows.",
        "",
        "| column | drifted | score | method | threshold |",
        "|---|---|---:|---|---:|",
    ]
    for c in result.columns:
        lines.append(
            f"| {c.column} | {'yes' if c.drifted else 'no'} | {c.score:.4g} | {c.method} | "
            f"{c.threshold:g} |"
        )
    if result.prediction is not None:
        p = result.prediction
        lines += [
            "",
            f"Prediction drift: {'**yes**' if p.drifted else 'no'} ({p.method} {p.score:.4g}, "
            f"threshold {p.threshold:g}); mean predicted probability {p.reference_mean:.3f} "
            f"on the reference, {p.current_mean:.3f} on the window.",
        ]
    if history:
        lines += [
            "",
            f"### Trend: drift share at the last {len(history)} check(s) of "
            f"v{result.champion_version}",
            "",
            trend_line(history, result.drift_share_threshold),
            "",
            "| checked (UTC) | drift share |",
            "|---|---:|",
            *(f"| {p.at} | {p.drift_share:.2f} |" for p in reversed(history[-10:])),
        ]
    report = f"[Evidently report]({report_url})" if report_url else f"MLflow run {run_id}"
    lines += ["", f"Full report: {report} (MLflow run `{run_id}`, `{names.DRIFT_REPORT_ARTIFACT}`)"]
    return "\n".join(lines)


@task(name="publish-drift-summary", cache_policy=UNCACHED, **NO_RETRIES)
def publish_drift_summary(
    result: DriftResult, logged: dict[str, str], history: list[DriftTrendPoint] | None = None
) -> None:
    """The drift table, prediction drift, the trend over the last checks and a link to the
    Evidently report, on the flow run's Artifacts tab."""
    create_markdown_artifact(
        key=names.ARTIFACT_DRIFT,
        markdown=drift_markdown(result, logged.get("report_url", ""), logged["run_id"], history),
        description=f"Drift check of {result.model_name} v{result.champion_version}",
    )
