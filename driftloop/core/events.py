"""Prefect events that must not be lost: emit, then wait until the server has stored them."""

from __future__ import annotations

import time
from typing import Any

CONFIRM_TIMEOUT_S = 30.0


def confirm_event(event_id: Any, timeout: float = CONFIRM_TIMEOUT_S) -> None:
    """Wait until the server has stored the event. `emit_event` only queues it for a
    background sender; an event that decides something (a revision is announced, a promotion
    is done) is confirmed before the decision is recorded as done."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if client.read_events(EventFilter(id=EventIDFilter(id=[event_id])), limit=1).events:
                return
            time.sleep(0.5)
    raise TimeoutError(f"Event {event_id} did not reach the Prefect server within {timeout:g}s")
