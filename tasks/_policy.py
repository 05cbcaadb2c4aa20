"""How driftloop's tasks retry and cache, defined once.

- I/O tasks (DVC, Feast, MLflow) retry with backoff, but never on bad input. Inside the
  promotion transaction, the retrying is MLflow's own (see IN_TRANSACTION).
- Pure computations do not retry: the same input would fail the same way.
- Heavy results are cached by content (data hashes, parameters, task source) and persisted to
  the shared results folder, so the flow process and every Ray worker can reuse them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import HashError
from prefect.utilities.hashing import hash_objects

from driftloop.core.errors import retry_unless_bad_input

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 10, 30],
    "retry_condition_fn": retry_unless_bad_input,
}
NO_RETRIES: dict[str, Any] = {"retries": 0}
# Steps inside the promotion `transaction()` must not use Prefect retries: in Prefect 3.8 a
# failed attempt exits the task's own transaction with an error, which rolls back the enclosing
# transaction at once, before any retry runs. A later successful attempt would then act on a
# registry that was already rolled back. These steps only talk to MLflow, whose client retries
# HTTP requests with backoff itself (MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._BACKOFF_FACTOR).
IN_TRANSACTION: dict[str, Any] = {"retries": 0}


def content_hash(value: Any) -> str:
    """A hash of a value's content that survives a round trip through result storage.

    Prefect hashes unknown objects by their pickle, and a DataFrame's pickle changes when it is
    unpickled (shared string objects are memoised differently), so a cached frame would never
    hit the cache again. Frames are hashed row by row with pandas instead.
    """
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        digest = hashlib.md5()
        digest.update(repr([(str(c), str(t)) for c, t in value.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
        return digest.hexdigest()
    if isinstance(value, (tuple, list)):
        return _hash(*(content_hash(v) for v in value))
    return _hash(value)


def _hash(*values: Any) -> str:
    digest = hash_objects(*values, raise_on_failure=True)
    # With raise_on_failure Prefect raises HashError instead of returning None; its return
    # type covers the default mode too.
    if digest is None:
        raise HashError(f"Prefect returned no hash for {len(values)} value(s)")
    return digest


def _lookup(parameters: dict[str, Any], name: str) -> Any:
    head, *attributes = name.split(".")
    value = parameters[head]
    for attribute in attributes:
        value = getattr(value, attribute)
    return value


def by_content(*names: str) -> CachePolicy:
    """Cache on the content of parameters ``names`` (plus the task's source code).

    A name may reach into a parameter (``"dataset.md5"``). Frames hash by their rows and
    pydantic values by their fields, so keys follow content, never where a file lives.
    """

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
        values = (content_hash(_lookup(parameters, n)) for n in names)
        return _hash(*values)

    return CacheKeyFnPolicy(cache_key_fn=key) + TASK_SOURCE


UNCACHED: CachePolicy = NO_CACHE
