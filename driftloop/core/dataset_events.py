"""`driftloop.dataset.updated`, and a ledger of which revisions have a training.

A revision is announced once, whoever sees it first: the new-data check (a schedule) and the
command that pushes a batch (a post-push hook) both announce revisions. Each first *claims* the
revision by creating a Prefect Variable named after the dataset and its content hash; creating
a variable is atomic on the server, so only one of them wins, and only the winner emits.

An announcement is not the end of it: the event starts a training through an automation, and an
automation action can fail (an HTTP 503 from a busy server). So the same variable is the
revision's ledger: the training flow records its run in it, and a revision counts as done only
once a training for it exists. The new-data check announces a revision again if its
announcement is older than a grace period and still no training run covers it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from driftloop.core import names
from driftloop.core.events import CONFIRM_TIMEOUT_S, confirm_event
from driftloop.core.interruptions import covers_its_data

# How long an announcement may take to produce a training run before it is made again.
ANNOUNCE_GRACE_S = 120.0


def revision_payload(rev: str, md5: str, rows: int, path: str) -> dict[str, Any]:
    return {
        names.PAYLOAD_REV: rev,
        names.PAYLOAD_MD5: md5,
        names.PAYLOAD_ROWS: rows,
        names.PAYLOAD_PATH: path,
    }


def read_ledger(dataset_name: str, md5: str) -> dict[str, Any] | None:
    """The revision's ledger entry: who announced it and when, and its training run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(names.seen_revision_variable(dataset_name, md5))
    if variable is None:
        return None
    return dict(variable.value) if isinstance(variable.value, dict) else {}


def is_announced(dataset_name: str, md5: str) -> bool:
    return read_ledger(dataset_name, md5) is not None


def _write(dataset_name: str, md5: str, value: dict[str, Any], create: bool) -> bool:
    """Create (atomically; False if it exists) or overwrite the revision's ledger entry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = names.seen_revision_variable(dataset_name, md5)
    with get_client(sync_client=True) as client:
        if not create:
            client.update_variable(VariableUpdate(name=name, value=value))
            return True
        try:
            client.create_variable(
                VariableCreate(name=name, value=value, tags=["driftloop", "dataset"])
            )
        except ObjectAlreadyExists:
            return False
    return True


def claim_revision(dataset_name: str, md5: str, rev: str, by: str) -> bool:
    """Record the revision as announced; False if someone already had."""
    value = {"rev": rev, "md5": md5, "seen_by": by, "seen_at": datetime.now(UTC).isoformat()}
    return _write(dataset_name, md5, value, create=True)


def release_revision(dataset_name: str, md5: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_variable_by_name(names.seen_revision_variable(dataset_name, md5))


def record_training(
    dataset_name: str,
    md5: str,
    rev: str,
    flow_run_id: str,
    *,
    superseded_by: str | None = None,
    message: str | None = None,
) -> None:
    """The training run `flow_run_id` covers this revision: it trained it, or found it trained
    already, or (`superseded_by`) it trains a newer revision whose data supersedes this one,
    which then gets no training of its own; `message` says so in the entry."""
    entry = read_ledger(dataset_name, md5)
    value = {
        **(entry or {"rev": rev, "md5": md5, "seen_by": "training", "seen_at": ""}),
        "training_run": flow_run_id,
        "trained_at": datetime.now(UTC).isoformat(),
    }
    if superseded_by:
        value |= {"superseded_by": superseded_by, "message": message or ""}
    if entry is None and _write(dataset_name, md5, value, create=True):
        return
    _write(dataset_name, md5, value, create=False)


def announcement_age_s(entry: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds since the entry's announcement, or None if it records none."""
    seen_at = entry.get("seen_at")
    if not seen_at:
        return None
    return ((now or datetime.now(UTC)) - datetime.fromisoformat(seen_at)).total_seconds()


def read_run(flow_run_id: str) -> Any | None:
    """A flow run, or None if it does not exist (any more)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(str(flow_run_id))
    except ValueError:
        return None
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(run_id)
        except ObjectNotFound:
            return None


def run_covers_its_data(run: Any) -> bool:
    state = run.state
    return state is None or covers_its_data(state.type.value, state.message)


def queued_trainings(commit: str, dataset_block: str) -> list[Any]:
    """Training flow runs started for exactly this commit of the dataset the block names that
    still account for it: a run created by the announcement's automation counts before it
    starts; one that failed does not."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[names.FLOW_TRAIN])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return [
        r
        for r in runs
        if r.parameters.get("rev") == commit
        and r.parameters.get("dataset_block", names.DEFAULT_BLOCK) == dataset_block
        and run_covers_its_data(r)
    ]


def announce_revision(
    dataset_name: str, rev: str, md5: str, rows: int, path: str, by: str, *, again: bool = False
) -> str | None:
    """Emit `driftloop.dataset.updated` unless this revision was announced before.

    With `again`, the caller has established that an earlier announcement produced no
    training: the ledger's announcement time is renewed and the event emitted once more.
    Returns the event id, or None if the revision had been announced already. If the event
    cannot be emitted a new claim is released, so the next check tries again.
    """
    from prefect.events import emit_event

    if again:
        value = {"rev": rev, "md5": md5, "seen_by": by, "seen_at": datetime.now(UTC).isoformat()}
        _write(dataset_name, md5, value, create=False)
    elif not claim_revision(dataset_name, md5, rev, by):
        return None
    try:
        event = emit_event(
            event=names.EVENT_DATASET_UPDATED,
            resource={
                "prefect.resource.id": names.dataset_resource_id(dataset_name),
                "prefect.resource.name": dataset_name,
            },
            payload=revision_payload(rev, md5, rows, path),
        )
        if event is None:
            raise RuntimeError("Prefect events are not enabled in this process")
        confirm_event(event.id, timeout=CONFIRM_TIMEOUT_S)
    except BaseException:
        if not again:
            release_revision(dataset_name, md5)
        raise
    return str(event.id)
