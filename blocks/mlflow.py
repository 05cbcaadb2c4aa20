"""MLflow tracking server and model registry, as a Prefect block."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, HttpUrl, SecretStr

from blocks._base import DriftloopBlock
from driftloop.core.errors import BlockConfigurationError

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MlflowTracking(DriftloopBlock):
    """Where runs are tracked and models registered.

    Point `tracking_uri` at an MLflow server (``http://host:5000``) or a database
    (``sqlite:///abs/path.db``, ``postgresql://...``). Credentials are secret fields and are
    only ever handed to MLflow through its own environment variables.
    """

    _block_type_name: ClassVar[str] = "driftloop MLflow"
    _block_type_slug: ClassVar[str] = "driftloop-mlflow"
    _description: ClassVar[str] = "MLflow tracking and registry that driftloop logs models to."
    _logo_url: ClassVar[HttpUrl] = HttpUrl("https://github.com/mlflow.png?size=200")
    _documentation_url: ClassVar[HttpUrl] = HttpUrl("https://mlflow.org/docs/latest/ml/tracking/")

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. http://127.0.0.1:5000.")
    registry_uri: str | None = Field(
        default=None, description="Model registry URI; defaults to the tracking URI."
    )
    experiment_name: str = Field(default="driftloop", description="Experiment for training runs.")
    artifact_location: str | None = Field(
        default=None,
        description=(
            "Artifact root for a new experiment. Leave empty with an MLflow server (it stores "
            "artifacts itself); set it when tracking_uri is a database."
        ),
    )
    registered_model_name: str = Field(description="Registered model that holds the aliases.")
    ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI for links; defaults to an http tracking URI.",
    )
    username: str | None = Field(default=None, description="HTTP basic auth user, if any.")
    password: SecretStr | None = Field(default=None, description="HTTP basic auth password.")
    token: SecretStr | None = Field(default=None, description="Bearer token, if any.")

    def check(self, ref: str) -> None:
        if not self.tracking_uri.strip():
            raise BlockConfigurationError(f"Block {ref!r}: tracking_uri is empty")
        if self.tracking_uri.startswith(("file:", "./", "/")) or "://" not in self.tracking_uri:
            raise BlockConfigurationError(
                f"Block {ref!r}: tracking_uri {self.tracking_uri!r} is not supported; MLflow 3 "
                "needs a server (http://...) or a database URI (sqlite:///abs/path.db)."
            )

    @property
    def link_base(self) -> str | None:
        if self.ui_url:
            return self.ui_url.rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return None

    def activate(self) -> MlflowClient:
        """Point this process's MLflow at this server and return a client for it."""
        import mlflow

        if self.username:
            os.environ["MLFLOW_TRACKING_USERNAME"] = self.username
        if self.password:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = self.password.get_secret_value()
        if self.token:
            os.environ["MLFLOW_TRACKING_TOKEN"] = self.token.get_secret_value()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri or self.tracking_uri)
        return mlflow.MlflowClient(self.tracking_uri, self.registry_uri or self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment (with `artifact_location`) if needed."""
        import mlflow

        client = self.activate()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(
                self.experiment_name, artifact_location=self.artifact_location
            )
        except mlflow.exceptions.MlflowException:
            # Created concurrently by another run; if it still does not exist, the creation
            # failed for another reason, which MLflow's error explains.
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def find_monitoring_run(
        self, kind: str, model_name: str, version: str | None = None
    ) -> str | None:
        """The id of the run that holds a model's (or one version's) `kind` of monitoring
        series, or None if there is none yet (the serving application reads it)."""
        client = self.activate()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return None
        tags = _monitor_tags(kind, model_name, version)
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = client.search_runs([experiment.experiment_id], query, max_results=1)
        return found[0].info.run_id if found else None

    def monitoring_run(self, kind: str, model_name: str, version: str | None = None) -> str:
        """The id of the run that holds a model's (or one version's) `kind` of monitoring
        series, created on first use: its metrics have one step per check, so the MLflow UI
        charts them."""
        found = self.find_monitoring_run(kind, model_name, version)
        if found is not None:
            return found
        tags = _monitor_tags(kind, model_name, version)
        run_name = f"{kind}-{model_name}" + (f"-v{version}" if version is not None else "")
        client = self.activate()
        return client.create_run(self.experiment_id(), run_name=run_name, tags=tags).info.run_id

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        base = self.link_base
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else None

    def model_version_url(self, version: str) -> str | None:
        base = self.link_base
        name = self.registered_model_name
        return f"{base}/#/models/{name}/versions/{version}" if base else None


def _monitor_tags(kind: str, model_name: str, version: str | None) -> dict[str, str]:
    """The tags that identify a monitoring run."""
    from driftloop.core import names

    tags = {names.TAG_MONITOR: kind, names.TAG_MODEL_NAME: model_name}
    if version is not None:
        tags[names.TAG_DRIFT_CHAMPION_VERSION] = version
    return tags
