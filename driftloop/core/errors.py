"""Errors that mean "the input is wrong", as opposed to "something flaked".

Bad input is never retried (retrying cannot fix it) and always says what is wrong and where:
which dataset, revision, column, problem and how many rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DriftloopInputError(Exception):
    """Base class: the input or configuration is wrong; retrying will not help."""


class DatasetNotFoundError(DriftloopInputError):
    """The dataset repo, path or revision does not exist."""


class DatasetUnreadableError(DriftloopInputError):
    """The dataset exists but cannot be read as a table."""


class BlockConfigurationError(DriftloopInputError):
    """A Prefect block is missing or misconfigured."""


class FeatureRetrievalError(DriftloopInputError):
    """Feast returned fewer rows than requested, or too many nulls."""


class ModelSignatureError(DriftloopInputError):
    """A model's input signature does not match the features it is given."""


class NoChampionError(DriftloopInputError):
    """A flow needs the champion model, and the registry has none yet."""


class RollbackError(DriftloopInputError):
    """A rollback asked for a version the champion cannot go back to."""


class NotEnoughDataError(DriftloopInputError):
    """A window or batch holds too few rows to act on."""


@dataclass(frozen=True)
class DataProblem:
    """One finding of data validation: which column, what is wrong, how many rows."""

    column: str
    problem: str
    count: int

    def __str__(self) -> str:
        return f"column {self.column!r}: {self.problem} ({self.count} rows)"


class DataValidationError(DriftloopInputError):
    """The data breaks its contract. Lists every problem found, not just the first."""

    def __init__(self, where: str, problems: list[DataProblem]):
        self.where = where
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{where} failed validation with {len(problems)} problem(s):\n{lines}")


def is_bad_input(exc: BaseException | None) -> bool:
    return isinstance(exc, DriftloopInputError)


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures, never bad input."""
    try:
        state.result(raise_on_failure=True)
    except DriftloopInputError:
        return False
    except Exception:
        return True
    return True
