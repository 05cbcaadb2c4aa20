"""Which version a rollback returns the champion to: a pure rule.

A rollback moves the `champion` alias back to a version that was champion before. Without an
explicit version it steps back one promotion: to the version the current champion's gate
compared it with (its `driftloop.gate.compared_to_version` tag), the champion it replaced. A
second rollback steps back one more; naming a version rolls forward again.

Only a version that passed its gate (decision `promoted`) can become champion this way: a
rejected or rolled-back challenger never does, whoever asks.

Example:
    >>> from driftloop.core.contracts import ModelVersionRef
    >>> champion = ModelVersionRef(name="churn-model", version="3", compared_to="2")
    >>> rollback_target(champion, None, {"1": "promoted", "2": "promoted", "3": "promoted"})
    '2'
"""

from __future__ import annotations

from collections.abc import Mapping

from driftloop.core import names
from driftloop.core.contracts import ModelVersionRef
from driftloop.core.errors import RollbackError


def rollback_target(
    champion: ModelVersionRef, requested: str | None, decisions: Mapping[str, str | None]
) -> str:
    """The version to make champion again.

    Args:
        champion: The current champion, with its decision tags.
        requested: The version a person asked for, or None for "the champion before this one".
        decisions: Every version of the model -> its `driftloop.decision` tag (None if unset).

    Raises:
        RollbackError: naming the model, the version and why it cannot be the champion.
    """
    model = champion.name
    if requested is None:
        if champion.compared_to is None:
            raise RollbackError(
                f"{model!r} v{champion.version} is its first champion: there is no earlier "
                "champion to roll back to"
            )
        target = champion.compared_to
    else:
        target = str(requested).strip()
    if target == champion.version:
        raise RollbackError(f"{model!r} v{target} is the champion already")
    if target not in decisions:
        known = ", ".join(f"v{v}" for v in sorted(decisions, key=_version_order)) or "none"
        raise RollbackError(f"{model!r} has no version {target!r} (its versions: {known})")
    decision = decisions[target]
    if decision != names.DECISION_PROMOTED:
        raise RollbackError(
            f"{model!r} v{target} was never promoted (its decision: {decision or 'none'}): a "
            "rollback returns only to a version that passed its gate"
        )
    return target


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
