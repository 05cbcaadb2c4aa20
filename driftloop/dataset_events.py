"""`driftloop.dataset.updated`, at most once per dataset revision, whoever sees it first.

The new-data check (a schedule) and the command that pushes a batch (a post-push hook) both
announce revisions. Each first *claims* the revision by creating a Prefect Variable named after
the dataset and its content hash; creating a variable is atomic on the server, so only one of
them wins, across processes and restarts, and only the winner emits the event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from driftloop import names


def revision_payload(rev: str, md5: str, rows: int, path: str) -> dict[str, Any]:
    return {
        names.PAYLOAD_REV: rev,
        names.PAYLOAD_MD5: md5,
        names.PAYLOAD_ROWS: rows,
        names.PAYLOAD_PATH: path,
    }


def is_announced(dataset_name: str, md5: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        variable = names.seen_revision_variable(dataset_name, md5)
        return client.read_variable_by_name(variable) is not None


def claim_revision(dataset_name: str, md5: str, rev: str, by: str) -> bool:
    """Record the revision as seen; False if someone already had."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists

    value = {"rev": rev, "md5": md5, "seen_by": by, "seen_at": datetime.now(UTC).isoformat()}
    with get_client(sync_client=True) as client:
        try:
            client.create_variable(
                VariableCreate(
                    name=names.seen_revision_variable(dataset_name, md5),
                    value=value,
                    tags=["driftloop", "dataset"],
                )
            )
        except ObjectAlreadyExists:
            return False
    return True


def release_revision(dataset_name: str, md5: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_variable_by_name(names.seen_revision_variable(dataset_name, md5))


def announce_revision(
    dataset_name: str, rev: str, md5: str, rows: int, path: str, by: str
) -> str | None:
    """Emit `driftloop.dataset.updated` unless this revision was announced before.

    Returns the event id, or None if the revision had been announced already. If the event
    cannot be emitted the claim is released, so the next check tries again.
    """
    from prefect.events import emit_event

    if not claim_revision(dataset_name, md5, rev, by):
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
        _confirm(event.id, timeout=CONFIRM_TIMEOUT_S)
    except BaseException:
        release_revision(dataset_name, md5)
        raise
    return str(event.id)


CONFIRM_TIMEOUT_S = 30.0


def _confirm(event_id: Any, timeout: float) -> None:
    """Wait until the server has stored the event. `emit_event` only queues it for a
    background sender, and a claimed revision whose event never arrived would be lost."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)
    body = {"filter": EventFilter(id=EventIDFilter(id=[event_id])).model_dump(mode="json")}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.request("POST", "/events/filter", json=body).json()["events"]:
                return
            time.sleep(0.5)
    raise TimeoutError(
        f"{names.EVENT_DATASET_UPDATED} event {event_id} did not reach the Prefect server "
        f"within {timeout:g}s"
    )
