"""Every name driftloop shares with the outside world, defined once.

Event names and resource ids are driftloop's public interface (other systems emit and consume
them); block document names, registry aliases, MLflow tags and artifact paths are contracts
between flows. Import them from here; never spell them out elsewhere.
"""

from __future__ import annotations

# --- Events ------------------------------------------------------------------------------
EVENT_DATASET_UPDATED = "driftloop.dataset.updated"
EVENT_DRIFT_DETECTED = "driftloop.drift.detected"
EVENT_DRIFT_CHECKED = "driftloop.drift.checked"
EVENT_MODEL_PROMOTED = "driftloop.model.promoted"
# A challenger that did not beat the champion at the gate (the reason is in the payload).
EVENT_MODEL_REJECTED = "driftloop.model.rejected"
# The champion scored on labeled rows it has not seen: below its bar, or not.
EVENT_PERFORMANCE_DEGRADED = "driftloop.performance.degraded"
EVENT_PERFORMANCE_CHECKED = "driftloop.performance.checked"
# A drift or degradation signal that cannot be acted on: the champion has seen all labeled
# data there is. A signal for a person (new labels are needed), not for the optimizer.
EVENT_RETRAINING_SKIPPED = "driftloop.retraining.skipped"

DATASET_RESOURCE_PREFIX = "driftloop.dataset."
MODEL_RESOURCE_PREFIX = "driftloop.model."


def dataset_resource_id(dataset_name: str) -> str:
    """`prefect.resource.id` of a dataset: ``driftloop.dataset.<dataset name>``."""
    return f"{DATASET_RESOURCE_PREFIX}{dataset_name}"


def model_resource_id(model_name: str) -> str:
    """`prefect.resource.id` of a registered model: ``driftloop.model.<model name>``."""
    return f"{MODEL_RESOURCE_PREFIX}{model_name}"


# Payload keys of the events (the table in README.md, "Events").
PAYLOAD_REV = "rev"
PAYLOAD_MD5 = "md5"
PAYLOAD_ROWS = "rows"
PAYLOAD_PATH = "path"
PAYLOAD_DRIFT_SHARE = "drift_share"
PAYLOAD_DRIFTED_COLUMNS = "drifted_columns"
PAYLOAD_CHAMPION_VERSION = "champion_version"
PAYLOAD_WINDOW_START = "window_start"
PAYLOAD_WINDOW_END = "window_end"
PAYLOAD_NEW_LABELS = "new_labels"
PAYLOAD_REASON = "reason"
# Where a person looks next: the MLflow page of the model version (or run) the event is about.
PAYLOAD_MLFLOW_URL = "mlflow_url"
PAYLOAD_PREDICTION_DRIFT = "prediction_drift"
# On a `driftloop.model.promoted` a rollback emits: the version the champion moved away from.
PAYLOAD_ROLLED_BACK_FROM = "rolled_back_from"
# A resource label on drift events: "true" when the dataset holds labeled data the champion
# has not been fit on, so retraining can change something. Retraining triggers match on it.
LABEL_NEW_LABELS = "driftloop.new-labels"

# Why a training run started (`trigger.reason`), as the deployments' schedules and triggers
# set it.
REASON_MANUAL = "manual"
REASON_FIRST_START = "first start"
REASON_SCHEDULE = "schedule"
REASON_DATASET_UPDATED = EVENT_DATASET_UPDATED
REASON_DRIFT_DETECTED = EVENT_DRIFT_DETECTED
REASON_PERFORMANCE_DEGRADED = EVENT_PERFORMANCE_DEGRADED
# Reasons that are signals about the champion (as opposed to new data, a schedule or a person):
# a retraining they ask for that cannot change anything is announced for a person.
SIGNAL_REASONS = frozenset({REASON_DRIFT_DETECTED, REASON_PERFORMANCE_DEGRADED})


def seen_revision_variable(dataset_name: str, md5: str) -> str:
    """Prefect Variable that records that a dataset revision was announced (one per content
    hash): whoever creates it first emits `driftloop.dataset.updated`, nobody else does."""
    safe = "".join(c if c.isalnum() else "_" for c in dataset_name.lower())
    return f"driftloop_seen_{safe}_{md5}"[:255]


# --- Flows whose runs other flows look up --------------------------------------------------
FLOW_TRAIN = "train-model"
# The state name of a training run that decided not to train (its message says why).
STATE_SKIPPED = "Skipped"

# --- Block documents created for the embedded stack -----------------------------------------
# One document per block type; editing it in the UI changes what the next run uses.
DEFAULT_BLOCK = "default"

# --- MLflow registry aliases ---------------------------------------------------------------
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"

# --- MLflow tags ---------------------------------------------------------------------------
TAG_DVC_REPO = "driftloop.dvc.repo"
TAG_DVC_PATH = "driftloop.dvc.path"
TAG_DVC_REV = "driftloop.dvc.rev"
TAG_DVC_COMMIT = "driftloop.dvc.commit"
TAG_DVC_MD5 = "driftloop.dvc.md5"
TAG_FEAST_FEATURES = "driftloop.feast.features"
TAG_FEAST_FEATURE_SERVICE = "driftloop.feast.feature_service"
TAG_FEAST_PROJECT = "driftloop.feast.project"
TAG_FLOW_RUN_ID = "driftloop.prefect.flow_run_id"
TAG_FLOW_RUN_URL = "driftloop.prefect.flow_run_url"
TAG_TRIGGER_REASON = "driftloop.trigger.reason"
TAG_TRIGGER_DRIFTED_COLUMNS = "driftloop.trigger.drifted_columns"
TAG_TRIGGER_PERFORMANCE_DROP = "driftloop.trigger.performance_drop"
TAG_TRAINING_FINGERPRINT = "driftloop.training.fingerprint"
# The newest row timestamp (ISO, UTC) of the data a version was fit on: rows after it are
# new to that version (its gate and its performance checks use them).
TAG_FITTED_UNTIL = "driftloop.data.fitted_until"
TAG_DECISION = "driftloop.decision"
TAG_DECISION_REASON = "driftloop.decision.reason"
TAG_GATE_METRIC = "driftloop.gate.metric"
TAG_COMPARED_TO = "driftloop.gate.compared_to_version"
# Set by a rollback, on the version it moved the champion away from: to which version, and why.
# Its decision stays "promoted", so training its data again does not register it twice.
TAG_ROLLED_BACK_TO = "driftloop.rollback.to_version"
TAG_ROLLBACK_REASON = "driftloop.rollback.reason"
TAG_ROLLBACK_FLOW_RUN = "driftloop.rollback.flow_run_id"

TAG_TRIAL_NUMBER = "driftloop.trial.number"
TAG_TRIAL_STATE = "driftloop.trial.state"
TAG_TRIAL_NODE = "driftloop.trial.ray_node_id"
TAG_TRIAL_ATTEMPT = "driftloop.trial.attempt"
TAG_TRIAL_TASK_RUN = "driftloop.trial.task_run_id"

# A version's decision moves: (none) -> promoting -> promoted, or -> rejected; a failure after
# registration marks it rolled_back. "promoting" is set before the champion alias moves, so a
# run interrupted between the two can tell, when it runs again, that the move was its own.
DECISION_PROMOTING = "promoting"
DECISION_PROMOTED = "promoted"
DECISION_REJECTED = "rejected"
DECISION_ROLLED_BACK = "rolled_back"
# Decisions after which the same training would change nothing.
FINAL_DECISIONS = (DECISION_PROMOTED, DECISION_REJECTED)

# --- MLflow artifact paths -----------------------------------------------------------------
MODEL_ARTIFACT = "model"
REFERENCE_SAMPLE_ARTIFACT = "reference/training_features.parquet"

# --- Prefect artifact keys (lowercase letters, digits and dashes only) ------------------------
ARTIFACT_PROMOTION = "driftloop-promotion"
ARTIFACT_TRIALS = "driftloop-trials"
ARTIFACT_DRIFT = "driftloop-drift"
ARTIFACT_SCORING = "driftloop-scoring"

# --- MLflow experiments of the monitoring flows ---------------------------------------------
DRIFT_RUN_PREFIX = "drift-check"
DRIFT_REPORT_ARTIFACT = "drift/report.html"
TAG_DRIFT_DETECTED = "driftloop.drift.detected"
TAG_DRIFT_CHAMPION_VERSION = "driftloop.drift.champion_version"
TAG_MODEL_NAME = "driftloop.model.name"
# The MLflow run per model that holds the champion's score on each new labeled batch.
TAG_MONITOR = "driftloop.monitor"
MONITOR_PERFORMANCE = "performance"
# ... and the run per champion version that holds its drift share at each check.
MONITOR_DRIFT = "drift"

# --- Notifications ---------------------------------------------------------------------------
# The notification block the automations send through (a webhook to the local receiver by
# default; edit it in the UI to post to Slack, or point the automations at another block).
NOTIFY_BLOCK = "driftloop-notifications"
# Name prefix of the automations that notify a person (one per kind of news).
NOTIFY_AUTOMATION_PREFIX = "driftloop-notify-"

# --- Deployment infrastructure ---------------------------------------------------------------
WORK_POOL = "driftloop-process"
# Tag on every driftloop deployment (and so on its flow runs and their heartbeat events).
TAG_DRIFTLOOP = "driftloop"

# --- Runs that lost their process ------------------------------------------------------------
# A Crashed run whose state message starts with one of these was interrupted, not broken: its
# code never failed, its process went away. driftloop resumes such runs (driftloop.app.recovery).
CRASH_SERVICE_STOPPED = "service stopped"
CRASH_NO_PROCESS = "no process"
CRASH_NO_HEARTBEAT = "no heartbeat"
INTERRUPTED_MARKS = (CRASH_SERVICE_STOPPED, CRASH_NO_PROCESS, CRASH_NO_HEARTBEAT)
RESUMED_MARK = "resumed by driftloop"
# The automation that crashes runs whose heartbeats stopped (Prefect's zombie-detection recipe).
ZOMBIE_AUTOMATION = "driftloop-crash-zombie-runs"

# The champion's positive-class probability: the column in written predictions, and the one
# prediction drift compares.
SCORE_COLUMN = "score"
