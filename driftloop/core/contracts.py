"""Values passed between tasks. Small, frozen and hashable into cache keys by content."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FeatureKind = Literal["numeric", "categorical", "boolean"]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetLocation(_Value):
    """Where a labeled entity table lives: a DVC repo, a path in it and a git revision."""

    repo: str
    path: str
    rev: str
    remote: str | None = None


class DatasetVersion(_Value):
    """A dataset location resolved to content: the git commit and DVC's md5 of the file."""

    location: DatasetLocation
    commit: str
    md5: str
    size: int | None = None

    @property
    def short(self) -> str:
        return f"{self.location.path}@{self.commit[:8]} (md5 {self.md5[:8]})"


class TableSchema(_Value):
    """The roles of the columns of a labeled entity table."""

    entity_columns: tuple[str, ...]
    timestamp_column: str
    label_column: str


class FeatureColumn(_Value):
    name: str
    ref: str
    feast_type: str
    kind: FeatureKind


class FeatureDefinitions(_Value):
    """What the Feast registry says about a feature selection: its typed columns, the views'
    TTLs, a fingerprint of the views' definitions and the files of their file sources."""

    project: str
    feature_service: str | None
    columns: tuple[FeatureColumn, ...]
    ttl_seconds: dict[str, float] = Field(default_factory=dict)
    definitions_fingerprint: str
    source_files: tuple[str, ...] = ()


class ResolvedFeatures(_Value):
    """Feature refs resolved against the Feast registry, with a fingerprint of their
    definitions and of their data."""

    project: str
    feature_service: str | None
    columns: tuple[FeatureColumn, ...]
    ttl_seconds: dict[str, float] = Field(default_factory=dict)
    fingerprint: str

    @property
    def refs(self) -> list[str]:
        return [c.ref for c in self.columns]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


class Metrics(_Value):
    roc_auc: float
    f1: float
    accuracy: float
    log_loss: float
    n_rows: int
    positive_rate: float

    def score(self, metric: str) -> float:
        return float(getattr(self, metric))

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items()}


class TrialResult(_Value):
    """One evaluated model-search trial, and where it ran."""

    number: int
    label: str
    spec: dict[str, object]
    score: float
    metrics: Metrics
    node_id: str
    node_ip: str
    attempt: int = 1
    seconds: float


class TrialOutcome(_Value):
    """A trial as the search saw it: its result, or the state it ended in."""

    number: int
    label: str
    spec: dict[str, object]
    state: str
    task_run_id: str
    result: TrialResult | None = None
    error: str | None = None


class LoggedRun(_Value):
    """An MLflow run that holds a trained model."""

    run_id: str
    experiment_id: str
    model_uri: str
    run_url: str | None = None


class ModelVersionRef(_Value):
    name: str
    version: str
    run_id: str | None = None
    url: str | None = None
    decision: str | None = Field(default=None, description="Its `driftloop.decision` tag.")
    compared_to: str | None = Field(
        default=None, description="The champion version its gate compared it with."
    )
    fitted_until: str | None = Field(
        default=None, description="Newest row timestamp of the data it was fit on (ISO, UTC)."
    )

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ChampionEvaluation(_Value):
    """The current champion scored on the challenger's holdout (or why it could not be)."""

    champion: ModelVersionRef | None
    metrics: Metrics | None = None
    not_comparable_reason: str | None = None


class PromotionDecision(_Value):
    promote: bool
    reason: str
    metric: str
    challenger: ModelVersionRef
    challenger_metrics: Metrics
    champion: ModelVersionRef | None
    champion_metrics: Metrics | None
    resumed: bool = Field(
        default=False,
        description="Finishes a promotion an interrupted attempt began (the alias had moved).",
    )


class ColumnDrift(_Value):
    """One column's drift test: its score, the method and threshold, and the verdict."""

    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


class PredictionDrift(_Value):
    """The champion's scores on the current window against its scores on its reference (the
    newest span of the rows it was fit on): the same test the features get, on its output."""

    method: str
    score: float
    threshold: float
    drifted: bool
    reference_mean: float = Field(description="Mean predicted probability on the reference.")
    current_mean: float = Field(description="Mean predicted probability on the window.")


class DriftTrendPoint(_Value):
    """One earlier check in a champion version's drift series (MLflow)."""

    at: str = Field(description="When the check was logged (ISO 8601, UTC).")
    drift_share: float


class DriftResult(_Value):
    """What a drift check found for the champion over one window of production features."""

    model_name: str
    champion_version: str
    window_start: str
    window_end: str
    reference_rows: int
    current_rows: int
    drift_share: float = Field(description="Share of the features that drifted.")
    drift_share_threshold: float
    columns: tuple[ColumnDrift, ...]
    prediction: PredictionDrift | None = Field(
        default=None, description="Drift of the champion's predictions (reported, not judged)."
    )

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def detected(self) -> bool:
        return self.drift_share >= self.drift_share_threshold


class PerformanceCheck(_Value):
    """The champion scored on labeled rows it was not fit on, before it is retrained."""

    model_name: str
    champion_version: str
    metric: str
    score: float
    baseline: float | None = Field(description="Its score on its own holdout when trained.")
    rows: int
    degraded: str | None = Field(default=None, description="Why it counts as degraded, if so.")
    monitoring_run_id: str | None = None


class LabelStatus(_Value):
    """Whether the dataset's newest revision holds labeled data the champion was not fit on."""

    commit: str = Field(description="The newest revision, resolved when checked.")
    md5: str
    champion_version: str
    trained_version: str | None = Field(
        default=None, description="The newest version trained on this revision's content."
    )
    new_labels: bool
    reason: str


class ScoringResult(_Value):
    """A batch of predictions written by the scoring flow."""

    model_name: str
    model_version: str
    path: str
    rows: int
    rows_with_missing_features: int = Field(description="Rows with any feature null.")
    rows_without_features: int = Field(description="Entities the online store had nothing for.")
    score_quantiles: dict[str, float]
    positive_share: float


class TrainingPlan(_Value):
    """What a training run will do, decided before it touches any data."""

    dataset: DatasetVersion = Field(description="The revision to train on.")
    fingerprint: str | None = Field(
        default=None,
        description="Hash of everything that determines the model: data, features, "
        "configuration and training code (once the features are resolved).",
    )
    superseded: str | None = Field(
        default=None, description="Why the requested revision gave way to a newer one."
    )
    skip: str | None = Field(default=None, description="Why the run does not train, if so.")
    existing_version: str | None = Field(
        default=None, description="The version already trained on this fingerprint, if any."
    )
    existing_decision: str | None = Field(
        default=None, description="That version's decision (promoted, rejected)."
    )


TrainingOutcome = Literal["promoted", "rejected", "skipped"]


class TrainingResult(_Value):
    """What a training run produced and decided."""

    outcome: TrainingOutcome
    model_name: str
    version: str | None = Field(description="The version trained (or reused when skipped).")
    promoted: bool
    reason: str
    champion_version: str | None = Field(description="The champion after this run.")
    metrics: dict[str, float] = Field(default_factory=dict)
    model: dict[str, object] = Field(
        default_factory=dict, description="Family and hyperparameters of the model."
    )
    trials_completed: int = 0
    trials_failed: int = 0
    mlflow_run_id: str | None = None
    flow_run_id: str = Field(description="This training run in Prefect.")
    dataset_commit: str
    dataset_md5: str
    superseded: str | None = Field(
        default=None, description="Set when the requested revision gave way to a newer one."
    )


class RevisionCoverage(_Value):
    """Whether a dataset revision needs announcing, and why."""

    covered: bool
    reason: str
    again: bool = Field(
        default=False, description="It was announced before, but no training followed."
    )


class ServingSwap(_Value):
    """What the serving application serves after a swap was asked of it."""

    model_name: str
    champion_version: str = Field(description="The version the registry's champion alias names.")
    served_version: str | None = Field(description="The version the application answers with.")
    shadow_version: str | None = Field(
        default=None, description="The challenger scoring in shadow, if any."
    )
    url: str = Field(description="Where the application answers.")
    skipped: str | None = Field(
        default=None, description="Why nothing was asked (serving switched off in its block)."
    )


class Rollback(_Value):
    """A champion moved back to an earlier one, and the event that announced it."""

    model_name: str
    from_version: str = Field(description="The champion before the rollback.")
    to_version: str = Field(description="The champion after it.")
    reason: str = Field(description="Why, as the person (or flow) that asked gave it.")
    event_id: str = Field(description="The `driftloop.model.promoted` event it emitted.")
