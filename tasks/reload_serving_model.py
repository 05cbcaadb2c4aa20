"""Swap step 2: ask the serving application to load what the aliases name now, and check
that it answers with the champion."""

from __future__ import annotations

from prefect import get_run_logger, task

from blocks.serving import ServingConfig
from driftloop.core.contracts import ModelVersionRef, ServingSwap
from tasks._policy import IO_RETRIES, UNCACHED

RELOAD_TIMEOUT_S = 180.0


class ServingSwapError(RuntimeError):
    """The application did not end up serving the champion (retried: a load can flake)."""


@task(name="reload-serving-model", cache_policy=UNCACHED, **IO_RETRIES)
def reload_serving_model(config: ServingConfig, champion: ModelVersionRef) -> ServingSwap:
    """`POST /admin/reload`: the replica looks up the aliases and loads the new version
    before it swaps; requests keep being answered meanwhile. Fails, naming both versions and
    the application's own error, if it does not serve `champion` afterwards."""
    import httpx

    url = config.base_url
    response = httpx.post(f"{url}/admin/reload", timeout=RELOAD_TIMEOUT_S)
    response.raise_for_status()
    state = response.json()
    served = (state.get("champion") or {}).get("version")
    shadow = (state.get("shadow") or {}).get("version")
    if served != champion.version:
        raise ServingSwapError(
            f"The serving application at {url} serves {champion.name} v{served} after the "
            f"reload, not the champion v{champion.version}"
            + (f": {state['last_error']}" if state.get("last_error") else "")
        )
    get_run_logger().info(
        "%s serves %s v%s%s", url, champion.name, served,
        f" (challenger v{shadow} in shadow)" if shadow else "",
    )  # fmt: skip
    return ServingSwap(
        model_name=champion.name, champion_version=champion.version, served_version=served,
        shadow_version=shadow, url=url,
    )  # fmt: skip
