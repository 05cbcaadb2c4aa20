"""Pure rules about flow runs that lost their process: which are zombies, which were
interrupted (rather than broken), and which may run again. Applied by `driftloop.app.recovery`
(the service's sweeps) and by the new-data check (an interrupted training still covers its
revision: it will be resumed)."""

from __future__ import annotations

from driftloop.core import names


def zombie_reason(
    state_type: str, pid: int | None, alive: bool, age_s: float, *, pending_grace_s: float
) -> str | None:
    """Why a run in flight on this machine is a zombie, or None if it is not (yet).

    `alive` says whether the run's own process (`pid`) runs. A run has no recorded process for
    a moment while the worker starts it; only after `pending_grace_s` does that count.
    """
    if state_type not in ("RUNNING", "PENDING"):
        return None
    if pid is not None and alive:
        return None
    state = state_type.capitalize()
    if pid is not None:
        return (
            f"{names.CRASH_NO_PROCESS}: the run was {state} but its process (pid {pid}) is "
            "gone (killed, out of memory, or its service was stopped without notice)"
        )
    if age_s < pending_grace_s:
        return None
    return (
        f"{names.CRASH_NO_PROCESS}: the run was {state} for {age_s:.0f}s but no process "
        "was ever started for it"
    )


def is_interrupted(state_type: str, message: str | None) -> bool:
    """A Crashed run whose process went away, as opposed to one whose code broke."""
    return state_type == "CRASHED" and (message or "").startswith(names.INTERRUPTED_MARKS)


def should_resume(state_type: str, message: str | None, resumes: int, max_resumes: int) -> bool:
    """Resume an interrupted run, unless it was resumed `max_resumes` times already."""
    return is_interrupted(state_type, message) and resumes < max_resumes


def service_stopped_message(state_type: str) -> str:
    return (
        f"{names.CRASH_SERVICE_STOPPED}: driftloop was stopped while this run was "
        f"{state_type.capitalize()}; it is resumed when driftloop starts again"
    )


def covers_its_data(state_type: str, message: str | None) -> bool:
    """Does a training run in this state account for the data it was started for? Yes unless
    it ended without training: failed, cancelled, or crashed for a reason other than a lost
    process (an interrupted run is resumed, so it still counts)."""
    if state_type in ("FAILED", "CANCELLED"):
        return False
    if state_type == "CRASHED":
        return is_interrupted(state_type, message)
    return True
