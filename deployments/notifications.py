"""The news a person hears about, as Prefect automations that send through a notification block.

One automation per kind of news, named ``driftloop-notify-<slug>``:

- `drift-detected`: `driftloop.drift.detected` with new labels (a retraining starts);
- `retraining-skipped`: `driftloop.retraining.skipped` (drift, no new labels: ask a person);
- `performance-degraded`: `driftloop.performance.degraded`;
  (these three at most once per model per re-notify interval)
- `model-promoted`: `driftloop.model.promoted`, every time;
- `model-rejected`: `driftloop.model.rejected`, every time;
- `run-failed`: a driftloop flow run `Failed` or `Crashed`, every time.

Drift without new labels is told once, as `retraining-skipped`: that is what a person can act on.
The messages are Jinja templates that Prefect's server renders from the event; each links the
Prefect run (`flow_run|ui_url`) and, where there is one, the MLflow page (`mlflow_url`).

Example:
    >>> from datetime import timedelta
    >>> [a.name for a in notification_automations(uuid.uuid4(), timedelta(hours=6))][:2]
    ['driftloop-notify-drift-detected', 'driftloop-notify-retraining-skipped']
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from driftloop.core import names

if TYPE_CHECKING:
    from prefect.automations import Automation

MODEL = "{{ event.resource['prefect.resource.name'] }}"
LINKS = (
    "\nPrefect run: {{ flow_run|ui_url }}"
    "{% if event.payload.mlflow_url %}\nMLflow: {{ event.payload.mlflow_url }}{% endif %}"
)


@dataclass(frozen=True)
class Notice:
    """One kind of news: which events, what the message says, and whether repeats of it
    within the re-notify interval are held back (per model)."""

    slug: str
    description: str
    events: tuple[str, ...]
    subject: str
    body: str
    debounced: bool
    match: dict[str, str] = field(
        default_factory=lambda: {"prefect.resource.id": f"{names.MODEL_RESOURCE_PREFIX}*"}
    )
    match_related: dict[str, str] = field(default_factory=dict)

    @property
    def automation_name(self) -> str:
        return f"{names.NOTIFY_AUTOMATION_PREFIX}{self.slug}"


NOTICES: tuple[Notice, ...] = (
    Notice(
        slug="drift-detected",
        description="Drift on a model's features, with new labels: a retraining starts.",
        events=(names.EVENT_DRIFT_DETECTED,),
        match={
            "prefect.resource.id": f"{names.MODEL_RESOURCE_PREFIX}*",
            names.LABEL_NEW_LABELS: "true",
        },
        subject=f"driftloop: drift on {MODEL} (champion v{{{{ event.payload.champion_version }}}})",
        body=(
            "{{ (event.payload.drift_share * 100)|round|int }}% of the features drifted "
            "({{ event.payload.drifted_columns|join(', ') }}) between "
            "{{ event.payload.window_start }} and {{ event.payload.window_end }}. "
            "A retraining on the newest labeled data (commit {{ event.payload.rev[:8] }}) starts."
            + LINKS
        ),
        debounced=True,
    ),
    Notice(
        slug="retraining-skipped",
        description="Drift or degraded performance, but no labeled data the champion has "
        "not seen: new labels are needed.",
        events=(names.EVENT_RETRAINING_SKIPPED,),
        subject=f"driftloop: retraining of {MODEL} skipped, new labels needed",
        body=(
            "{{ event.payload.reason }}. "
            "{% if event.payload.drift_share is defined %}"
            "{{ (event.payload.drift_share * 100)|round|int }}% of the features drifted "
            "({{ event.payload.drifted_columns|join(', ') }}). {% endif %}"
            "Retraining on the same data cannot change the model: add a labeled batch (a new "
            "revision of the dataset) and driftloop retrains on it." + LINKS
        ),
        debounced=True,
    ),
    Notice(
        slug="performance-degraded",
        description="The champion scores below its bar on labeled rows it has not seen.",
        events=(names.EVENT_PERFORMANCE_DEGRADED,),
        subject=f"driftloop: {MODEL} v{{{{ event.payload.champion_version }}}} degraded",
        body=(
            "{{ event.payload.degraded }} (on {{ event.payload.rows }} new labeled rows of "
            "commit {{ event.payload.rev[:8] }}). The training under way on them decides "
            "whether a new version replaces it." + LINKS
        ),
        debounced=True,
    ),
    Notice(
        slug="model-promoted",
        description="A new champion.",
        events=(names.EVENT_MODEL_PROMOTED,),
        subject=f"driftloop: {MODEL} v{{{{ event.payload.version }}}} is the champion",
        body=(
            "v{{ event.payload.version }} replaces "
            "{% if event.payload.previous_version %}v{{ event.payload.previous_version }}"
            "{% else %}no champion{% endif %}: {{ event.payload.reason }}" + LINKS
        ),
        debounced=False,
    ),
    Notice(
        slug="model-rejected",
        description="A challenger that did not pass the gate; the champion stays.",
        events=(names.EVENT_MODEL_REJECTED,),
        subject=(
            f"driftloop: {MODEL} v{{{{ event.payload.version }}}} rejected, "
            "{% if event.payload.previous_version %}champion "
            "v{{ event.payload.previous_version }} kept{% else %}no champion yet{% endif %}"
        ),
        body="{{ event.payload.reason }}" + LINKS,
        debounced=False,
    ),
    Notice(
        slug="run-failed",
        description="A driftloop flow run failed or crashed.",
        events=("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.id": f"prefect.tag.{names.TAG_DRIFTLOOP}"},
        subject=(
            "driftloop: {{ flow.name }} run {{ flow_run.name }} "
            "{{ event.resource['prefect.state-name'] }}"
        ),
        body="{{ flow_run.state.message|truncate(800) }}\nPrefect run: {{ flow_run|ui_url }}",
        debounced=False,
    ),
)


def notification_automations(
    block_document_id: uuid.UUID, renotify: timedelta, notices: tuple[Notice, ...] = NOTICES
) -> list[Automation]:
    """The automations that send `notices` through the notification block."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    automations = []
    for notice in notices:
        # Reactive, threshold 1: the first event sends at once; with `within`, the rest of
        # that interval's events for the same model are held back (Prefect's own debounce).
        trigger = EventTrigger(
            expect=set(notice.events),
            match=notice.match,
            match_related=notice.match_related,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=renotify if notice.debounced else timedelta(0),
        )
        action = SendNotification(
            block_document_id=block_document_id, subject=notice.subject, body=notice.body
        )
        automations.append(
            Automation(
                name=notice.automation_name,
                description=notice.description,
                trigger=trigger,
                actions=[action],
            )
        )
    return automations
