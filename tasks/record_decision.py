"""Step 9e: record the promotion decision as MLflow tags and a Prefect artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.transactions import Transaction, get_transaction

from blocks.mlflow import MlflowTracking
from driftloop.core import names
from driftloop.core.contracts import LoggedRun, PromotionDecision
from tasks._policy import IN_TRANSACTION, UNCACHED

_METRICS = ("roc_auc", "f1", "accuracy", "log_loss")


def decision_markdown(decision: PromotionDecision, run: LoggedRun) -> str:
    """The comparison table and verdict shown in the Prefect UI."""
    challenger = decision.challenger
    champion = decision.champion
    verdict = "**Promoted** to champion" if decision.promote else "**Not promoted**"
    head = f"| metric | challenger v{challenger.version} | "
    head += f"champion v{champion.version} |" if champion else "champion (none) |"
    rows = [head, "|---|---:|---:|"]
    for metric in _METRICS:
        new = decision.challenger_metrics.score(metric)
        old = decision.champion_metrics.score(metric) if decision.champion_metrics else None
        mark = " (gate)" if metric == decision.metric else ""
        rows.append(f"| {metric}{mark} | {new:.4f} | {'-' if old is None else f'{old:.4f}'} |")
    rows.append(f"| holdout rows | {decision.challenger_metrics.n_rows} | |")
    links = [f"- MLflow run: {f'[{run.run_id}]({run.run_url})' if run.run_url else run.run_id}"]
    links.append(
        f"- Model version: {f'[{challenger.name} v{challenger.version}]({challenger.url})'}"
        if challenger.url
        else f"- Model version: {challenger.name} v{challenger.version}"
    )
    return "\n".join(
        [
            f"## {verdict}: {challenger.name} v{challenger.version}",
            "",
            f"{decision.reason}",
            "",
            *rows,
            "",
            *links,
        ]
    )


@task(name="record-decision", cache_policy=UNCACHED, **IN_TRANSACTION)
def record_decision(decision: PromotionDecision, run: LoggedRun, tracking: MlflowTracking) -> None:
    """Tag the model version and run with the decision; publish the comparison artifact.

    A promotion is recorded as "promoting" before the champion alias moves, and becomes
    "promoted" once it is announced (announce-decision)."""
    client = tracking.activate()
    outcome = names.DECISION_PROMOTING if decision.promote else names.DECISION_REJECTED
    tags = {
        names.TAG_DECISION: outcome,
        names.TAG_DECISION_REASON: decision.reason[:4000],
        names.TAG_GATE_METRIC: decision.metric,
    }
    if decision.champion:
        tags[names.TAG_COMPARED_TO] = decision.champion.version
    for key, value in tags.items():
        client.set_model_version_tag(
            decision.challenger.name, decision.challenger.version, key, value
        )
        client.set_tag(run.run_id, key, value)
    txn = get_transaction()
    if txn is not None:
        txn.set("tracking", tracking)
        txn.set("decided", (decision.challenger.name, decision.challenger.version, run.run_id))
    create_markdown_artifact(
        markdown=decision_markdown(decision, run),
        key=names.ARTIFACT_PROMOTION,
        description=f"Promotion decision for {decision.challenger.name}",
    )


@record_decision.on_rollback
def _mark_rolled_back(txn: Transaction) -> None:
    """A later step failed: the recorded decision did not take effect."""
    tracking: MlflowTracking = txn.get("tracking")
    name, version, run_id = txn.get("decided")
    client = tracking.activate()
    client.set_model_version_tag(name, version, names.TAG_DECISION, names.DECISION_ROLLED_BACK)
    client.set_tag(run_id, names.TAG_DECISION, names.DECISION_ROLLED_BACK)
