"""Training: DVC data + Feast features -> model search on Ray -> MLflow champion.

    resolve dataset (requested and newest) -> plan: which revision (latest wins)
      -> record the earlier revisions it supersedes -> resolve features
      -> skip if this exact model exists already
      -> load labeled entities -> get historical features -> validate
      -> score the champion on the labeled rows it has not seen (performance, MLflow series)
      -> split holdout -> search models (trials on Ray) -> train best (on Ray) -> evaluate
      -> refit on training + holdout rows (on Ray) -> log to MLflow (run + a child run per trial)
      -> [transaction] register -> select the rows the champion has not seen
         -> evaluate challenger and champion on them -> gate -> record -> promote -> announce

Compute (trials, the final fit) runs on Ray; I/O and registry steps run in the flow process.
Everything after registration runs in one Prefect transaction: if any step fails, rollback
hooks restore the previous champion and challenger aliases. The champion alias moves in one
atomic write, after the decision is recorded as "promoting"; a run interrupted after the move
finishes the promotion (its announcement) when it runs again.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, State
from prefect.transactions import transaction

from blocks.dvc import DvcDataset
from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from blocks.ray import RayCluster
from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef, TrainingPlan, TrainingResult
from driftloop.core.lineage import lineage_tags
from driftloop.core.params import (
    DataQualityPolicy,
    FeatureSelection,
    GradientBoostingSpec,
    ModelSpec,
    PromotionPolicy,
    SearchPolicy,
    SplitPolicy,
    TriggerContext,
)
from driftloop.core.search import best_outcome, spec_from_dict
from driftloop.core.timewindows import fitted_until
from flows.model_search import search_models
from flows.task_runners import DriftloopRayTaskRunner, current_runner, submit_unless_cached
from tasks.announce_decision import announce_decision
from tasks.announce_retraining_skipped import announce_retraining_skipped
from tasks.check_champion_performance import check_champion_performance
from tasks.cover_older_revisions import cover_older_revisions
from tasks.decide_promotion import decide_promotion
from tasks.evaluate_champion import evaluate_champion
from tasks.evaluate_model import evaluate_model
from tasks.fit_model import fit_model
from tasks.get_champion import get_champion
from tasks.get_historical_features import get_historical_features
from tasks.load_labeled_entities import load_labeled_entities
from tasks.log_to_mlflow import log_to_mlflow
from tasks.log_trials_to_mlflow import log_trials_to_mlflow
from tasks.plan_training import check_already_trained, plan_training
from tasks.promote_model import promote_model
from tasks.rank_trials import rank_trials
from tasks.record_decision import record_decision
from tasks.register_model import register_model_version
from tasks.resolve_dataset import resolve_dataset
from tasks.resolve_features import resolve_features
from tasks.select_gate_rows import select_gate_rows
from tasks.split_holdout import split_holdout, with_holdout
from tasks.validate_training_data import validate_training_data


def _skipped(
    plan: TrainingPlan,
    trigger: TriggerContext,
    mlflow_cfg: MlflowTracking,
    champion: ModelVersionRef | None,
) -> State[TrainingResult]:
    """The run's final state when it decides not to train: Completed, named Skipped. A
    retraining a signal asked for, on data already trained, is announced for a person."""
    if plan.existing_version and trigger.reason in names.SIGNAL_REASONS:
        reason = announce_retraining_skipped(
            plan, trigger, mlflow_cfg.registered_model_name, champion,
            mlflow_cfg.model_version_url(plan.existing_version),
        )  # fmt: skip
        plan = plan.model_copy(update={"skip": f"{reason}; {plan.skip}"})
    result = TrainingResult(
        outcome="skipped",
        model_name=mlflow_cfg.registered_model_name,
        version=plan.existing_version,
        promoted=False,
        reason=plan.skip or "",
        champion_version=champion.version if champion else None,
        flow_run_id=str(runtime_flow_run.get_id()),
        dataset_commit=plan.dataset.commit,
        dataset_md5=plan.dataset.md5,
        superseded=plan.superseded,
    )
    message = plan.skip
    if plan.superseded and not (plan.skip or "").startswith(plan.superseded):
        message = f"{plan.superseded}; {plan.skip}"
    return Completed(name=names.STATE_SKIPPED, message=message, data=result)


# The flow returns its final state (Completed, or Completed named Skipped) to set the run's
# name and message; Prefect unwraps it, so a caller of the flow gets the TrainingResult.
@flow(name=names.FLOW_TRAIN, log_prints=True, task_runner=DriftloopRayTaskRunner())
def train(
    features: FeatureSelection,
    rev: str | None = None,
    search: SearchPolicy = SearchPolicy(),
    model: ModelSpec = GradientBoostingSpec(),
    split: SplitPolicy = SplitPolicy(),
    quality: DataQualityPolicy = DataQualityPolicy(),
    gate: PromotionPolicy = PromotionPolicy(),
    trigger: TriggerContext = TriggerContext(),
    random_state: int = 0,
    dataset_block: str = names.DEFAULT_BLOCK,
    feast_block: str = names.DEFAULT_BLOCK,
    mlflow_block: str = names.DEFAULT_BLOCK,
    ray_block: str = names.DEFAULT_BLOCK,
) -> State[TrainingResult]:
    """Train a model on a DVC dataset revision with Feast features and promote it in MLflow
    only if it beats the current champion on the same holdout.

    A run started by automation trains the dataset's newest revision (latest wins). A run
    whose data, features, configuration and code match a version already decided does not
    train: it ends Completed, named Skipped, and says which version that is.

    Args:
        features: The Feast feature service or feature refs to train on.
        rev: Git revision of the dataset (tag, branch or commit); the block's default if empty.
            A run started by automation trains a newer revision if there is one.
        search: Model search (trials, parallelism, metric); with 0 trials `model` is trained.
        model: Model family and hyperparameters, used when the search is off.
        split: Time-aware holdout.
        quality: Limits on nulls after the feature join.
        gate: Metric, margin and floor for promotion.
        trigger: Why this run started (recorded as MLflow tags).
        random_state: Seed for the model.
        dataset_block: Name of the `driftloop-dvc-dataset` block with the labeled entity table.
        feast_block: Name of the `driftloop-feast` block.
        mlflow_block: Name of the `driftloop-mlflow` block.
        ray_block: Name of the `driftloop-ray` block (where tasks run).
    """
    logger = get_run_logger()
    dataset_cfg = DvcDataset.load_named(dataset_block)
    feast_cfg = FeastFeatureStore.load_named(feast_block)
    mlflow_cfg = MlflowTracking.load_named(mlflow_block)
    ray_cfg = RayCluster.load_named(ray_block)
    if runner := current_runner():
        runner.configure(ray_cfg)
    schema = dataset_cfg.table_schema()

    requested = resolve_dataset(dataset_cfg.location(rev))
    newest = requested if rev is None else resolve_dataset(dataset_cfg.location())
    plan = plan_training(dataset_cfg.name, dataset_block, rev, requested, newest, trigger)
    if plan.skip:
        return _skipped(plan, trigger, mlflow_cfg, get_champion(mlflow_cfg))
    cover_older_revisions(dataset_cfg.name, dataset_block, plan.dataset)
    resolved = resolve_features(feast_cfg, features)
    config = {
        "search": search.model_dump(mode="json"),
        "model": model.model_dump(mode="json") if not search.n_trials else None,
        "split": split.model_dump(mode="json"),
        "quality": quality.model_dump(mode="json"),
        "gate": gate.model_dump(mode="json"),
        "random_state": random_state,
    }
    plan = check_already_trained(plan, resolved, config, mlflow_cfg)
    if plan.skip:
        return _skipped(plan, trigger, mlflow_cfg, get_champion(mlflow_cfg))
    if plan.fingerprint is None:
        # The version registered below carries it: without it, reruns would train again.
        raise RuntimeError("check-already-trained returned a plan without a fingerprint")
    dataset = plan.dataset
    entities = load_labeled_entities(dataset, schema)
    frame = get_historical_features(entities, dataset, resolved, schema, feast_cfg, quality)
    validate_training_data(frame, dataset, resolved, schema)
    # Before retraining: how does the champion do on the labels it has not seen?
    performance = check_champion_performance(
        get_champion(mlflow_cfg), frame, dataset, resolved, schema, gate, mlflow_cfg
    )
    if performance and performance.degraded:
        trigger = trigger.model_copy(update={"performance_drop": performance.degraded})
    train_rows, holdout = split_holdout(frame, schema, split)
    trials = []
    if search.n_trials:
        trials = search_models(train_rows, resolved, schema, search, ray_cfg, random_state)
        rank_trials(trials, search.metric)
        model = spec_from_dict(best_outcome(trials, search).spec)

    def fit(rows):
        """The chosen spec fit on these rows, on Ray (or from the cache)."""
        return submit_unless_cached(
            fit_model,
            {"train": rows, "features": resolved, "schema": schema, "spec": model,
             "random_state": random_state},
        ).result()  # fmt: skip

    fitted = fit(train_rows)
    metrics = evaluate_model(fitted, holdout, resolved, schema)
    # The holdout has judged the fit; the version registered has seen the newest rows too.
    final, fit_rows, refit_metrics = fitted, train_rows, None
    if split.refit_on_holdout:
        fit_rows = with_holdout(train_rows, holdout)
        final = fit(fit_rows)
        refit_metrics = evaluate_model(final, fit_rows, resolved, schema)
    run = log_to_mlflow(
        final, fit_rows, mlflow_cfg, dataset, resolved, schema, model, random_state, split,
        metrics, trigger, refit_metrics,
    )  # fmt: skip
    if trials:
        log_trials_to_mlflow(run, trials, mlflow_cfg)

    tags = {
        **lineage_tags(dataset, resolved, trigger),
        names.TAG_TRAINING_FINGERPRINT: plan.fingerprint,
        names.TAG_FITTED_UNTIL: fitted_until(fit_rows, schema.timestamp_column),
    }
    with transaction():
        version = register_model_version(run, mlflow_cfg, tags)
        champion = get_champion(mlflow_cfg)
        # Challenger and champion are judged on the same rows, none of which either was fit on.
        judged, note = select_gate_rows(holdout, schema, champion)
        gate_metrics = metrics if note is None else evaluate_model(fitted, judged, resolved, schema)
        champion_eval = evaluate_champion(champion, judged, resolved, schema, mlflow_cfg)
        decision = decide_promotion(version, gate_metrics, champion_eval, gate)
        if note:
            decision = decision.model_copy(update={"reason": f"{decision.reason}; {note}"})
        record_decision(decision, run, mlflow_cfg)
        promote_model(decision, mlflow_cfg)
        announce_decision(decision, mlflow_cfg)

    champion_now = version.version if decision.promote else (champion.version if champion else None)
    outcome = "Promoted" if decision.promote else "Kept champion"
    logger.info("%s v%s: %s", outcome, version.version, decision.reason)
    result = TrainingResult(
        outcome="promoted" if decision.promote else "rejected",
        model_name=version.name,
        version=version.version,
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=champion_now,
        metrics=metrics.as_dict(),
        model=model.model_dump(),
        trials_completed=sum(1 for t in trials if t.result),
        trials_failed=sum(1 for t in trials if not t.result),
        mlflow_run_id=run.run_id,
        flow_run_id=str(runtime_flow_run.get_id()),
        dataset_commit=dataset.commit,
        dataset_md5=dataset.md5,
        superseded=plan.superseded,
    )
    # The run's state message in the UI says what happened, and on which data.
    message = f"{outcome}: v{version.version} trained on {dataset.short}: {decision.reason}"
    if plan.superseded:
        message += f" ({plan.superseded})"
    return Completed(message=message, data=result)
