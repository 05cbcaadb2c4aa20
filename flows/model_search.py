"""The model search: Optuna asks for a batch of trials, Ray evaluates them in parallel, Optuna
is told the scores, and so on until the budget is spent.

Every trial is accounted for. A trial whose Ray worker or node dies is re-run by Ray elsewhere
(and says which attempt it was); one that still cannot finish is marked Crashed in Prefect, so
it is never left looking like it is running.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.states import Crashed, State

from blocks.ray import RayCluster
from driftloop.core.contracts import ResolvedFeatures, TableSchema, TrialOutcome, TrialResult
from driftloop.core.params import SearchPolicy
from driftloop.core.search import create_study, describe, suggest_spec
from flows.task_runners import current_runner, submit_unless_cached
from tasks.evaluate_trial import evaluate_trial

if TYPE_CHECKING:
    import pandas as pd
    from prefect.futures import PrefectFuture


def _report_crash(future: PrefectFuture, name: str, message: str) -> None:
    """Ray gave up on the task; make Prefect's record of it say so.

    The task run may not exist yet: its worker can die before the task engine has reported
    anything. Then the record is created, already Crashed, so the trial still shows up.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    crashed: State[Any] = Crashed(message=message)
    with get_client(sync_client=True) as client:
        try:
            client.set_task_run_state(future.task_run_id, crashed, force=True)
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                raise
            context = FlowRunContext.get()
            client.create_task_run(
                task=evaluate_trial,
                flow_run_id=context.flow_run.id if context and context.flow_run else None,
                dynamic_key=str(future.task_run_id),
                id=future.task_run_id,
                name=name,
                state=crashed,
            )


def _settle(
    number: int, label: str, spec: dict[str, object], future: PrefectFuture
) -> TrialOutcome:
    future.wait()
    state = future.state
    # Prefect names every state, after its type when no name is given.
    state_name = state.name or state.type.value
    outcome = partial(
        TrialOutcome, number=number, label=label, spec=spec,
        task_run_id=str(future.task_run_id), state=state_name,
    )  # fmt: skip
    if state.is_completed():
        result: TrialResult = future.result()
        return outcome(result=result.model_copy(update={"number": number, "label": label}))
    error = state.message or state_name
    if state.is_crashed():
        _report_crash(
            future, f"trial-{number:02d} {label}", f"Ray could not finish the trial: {error}"
        )
    get_run_logger().warning("Trial %d (%s) ended %s: %s", number, label, state_name, error)
    return outcome(error=error)


def search_models(
    train: pd.DataFrame,
    features: ResolvedFeatures,
    schema: TableSchema,
    policy: SearchPolicy,
    cluster: RayCluster,
    random_state: int,
) -> list[TrialOutcome]:
    """Run `policy.n_trials` trials, `parallelism` at a time, each as a task on Ray."""
    import optuna
    from prefect_ray.context import remote_options

    logger = get_run_logger()
    runner = current_runner()
    parallelism = policy.parallelism
    if not parallelism:
        cpus = runner.cluster_cpus() if runner else 1.0
        parallelism = max(1, int(cpus // cluster.cpus_per_trial))
    logger.info("Model search: %d trials, %d at a time", policy.n_trials, parallelism)

    shared: dict[str, object] = {}

    def on_ray() -> dict[str, object]:
        # Every trial reads the same training rows: ship them to Ray once, when first needed.
        if "train" not in shared:
            shared["train"] = runner.share(train) if runner else train
        return shared

    study = create_study(policy)
    outcomes: list[TrialOutcome] = []
    while len(outcomes) < policy.n_trials:
        batch = []
        size = min(parallelism, policy.n_trials - len(outcomes))
        with remote_options(
            num_cpus=cluster.cpus_per_trial, max_retries=cluster.max_retries_on_worker_death
        ):
            for _ in range(size):
                trial = study.ask()
                spec = suggest_spec(trial, policy)
                label = describe(spec)
                future = submit_unless_cached(
                    evaluate_trial.with_options(task_run_name=f"trial-{trial.number:02d} {label}"),
                    {
                        "number": trial.number,
                        "label": label,
                        "train": train,
                        "features": features,
                        "schema": schema,
                        "spec": spec,
                        "validation_fraction": policy.validation_fraction,
                        "metric": policy.metric,
                        "random_state": random_state,
                    },
                    ray_parameters=on_ray,
                )
                batch.append((trial, spec, label, future))
        for trial, spec, label, future in batch:
            outcome = _settle(trial.number, label, spec.model_dump(), future)
            if outcome.result is not None:
                study.tell(trial, outcome.result.score)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            outcomes.append(outcome)
    return outcomes
