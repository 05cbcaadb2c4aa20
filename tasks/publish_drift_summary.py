"""Drift step 5: a markdown artifact with the drifted columns, for the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from driftloop import names
from driftloop.contracts import DriftResult
from tasks._policy import NO_RETRIES, UNCACHED


def drift_markdown(result: DriftResult, report_url: str, run_id: str) -> str:
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
    report = f"[Evidently report]({report_url})" if report_url else f"MLflow run {run_id}"
    lines += ["", f"Full report: {report} (MLflow run `{run_id}`, `{names.DRIFT_REPORT_ARTIFACT}`)"]
    return "\n".join(lines)


@task(name="publish-drift-summary", cache_policy=UNCACHED, **NO_RETRIES)
def publish_drift_summary(result: DriftResult, logged: dict[str, str]) -> None:
    """The drift table and a link to the Evidently report, on the flow run's Artifacts tab."""
    create_markdown_artifact(
        key=names.ARTIFACT_DRIFT,
        markdown=drift_markdown(result, logged.get("report_url", ""), logged["run_id"]),
        description=f"Drift check of {result.model_name} v{result.champion_version}",
    )
