"""Swap the served model: the serving application answers with the current champion.

find champion -> reload the serving application -> check the version it answers with

A promotion starts it (the `swap-on-promotion` trigger in prefect.yaml); so can a person,
from the UI, after moving the alias by hand (the application also notices such a move on its
own, within the serving block's `alias_poll_s`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.mlflow import MlflowTracking
from blocks.serving import ServingConfig
from driftloop.core import names
from driftloop.core.contracts import ServingSwap
from tasks.get_champion import get_required_champion
from tasks.reload_serving_model import reload_serving_model


@flow(name="swap-serving-model", log_prints=True)
def swap_serving_model(serving_block: str = names.DEFAULT_BLOCK) -> ServingSwap:
    """Make the serving application serve `models:/<model>@champion` now, and check that it
    does: a swap without downtime (the application loads the new version before it swaps).

    Args:
        serving_block: Name of the `driftloop-serving` block (where the application answers,
            and which MLflow block names the model).
    """
    config = ServingConfig.load_named(serving_block)
    tracking = MlflowTracking.load_named(config.mlflow_block)
    champion = get_required_champion(tracking)
    if not config.enabled:
        reason = f"serving is switched off in the driftloop-serving block {serving_block!r}"
        get_run_logger().info("Nothing to swap: %s", reason)
        return ServingSwap(
            model_name=champion.name, champion_version=champion.version, served_version=None,
            url=config.base_url, skipped=reason,
        )  # fmt: skip
    return reload_serving_model(config, champion)
