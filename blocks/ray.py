"""Where driftloop's tasks run: a local Ray per flow run, or an existing Ray cluster."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, HttpUrl, SecretStr

from blocks._base import DriftloopBlock
from driftloop.core.errors import BlockConfigurationError


class RayCluster(DriftloopBlock):
    """Ray configuration for flows. With no `address` (and no `RAY_ADDRESS` in the flow's
    environment), each flow run starts a local Ray on the machine's cores; with one, flows
    submit to that cluster. Nothing else changes."""

    _block_type_name: ClassVar[str] = "driftloop Ray"
    _block_type_slug: ClassVar[str] = "driftloop-ray"
    _description: ClassVar[str] = "Ray cluster that driftloop's flows submit tasks to."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/ray-project.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl(
        "https://docs.ray.io/en/latest/cluster/getting-started.html"
    )

    address: str | None = Field(
        default=None,
        description=(
            "Address of an existing cluster (`host:6379` or `ray://host:10001`). Empty: use "
            "RAY_ADDRESS if set, else start a local Ray for each flow run."
        ),
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a local Ray; empty uses all cores."
    )
    init_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for `ray.init`."
    )
    cpus_per_trial: float = Field(
        default=1.0, gt=0, description="CPUs reserved by each model-search trial."
    )
    max_retries_on_worker_death: int = Field(
        default=2, ge=0, le=10, description="Ray re-runs a task whose worker or node died."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="Token of a cluster with Ray token authentication."
    )

    def check(self, ref: str) -> None:
        reserved = {"address", "num_cpus"} & set(self.init_kwargs)
        if reserved:
            raise BlockConfigurationError(
                f"Block {ref!r}: set {sorted(reserved)} as fields, not in init_kwargs"
            )
