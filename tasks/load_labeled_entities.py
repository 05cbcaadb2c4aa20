"""Step 2: load the labeled entity table at a resolved revision."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from prefect import task

from driftloop.core.contracts import DatasetVersion, TableSchema
from driftloop.core.errors import DatasetNotFoundError, DatasetUnreadableError
from driftloop.core.validation import check_entity_table
from tasks._policy import IO_RETRIES, by_content

if TYPE_CHECKING:
    import pandas as pd


@task(
    name="load-labeled-entities",
    cache_policy=by_content("dataset.md5", "schema"),
    persist_result=True,
    **IO_RETRIES,
)
def load_labeled_entities(dataset: DatasetVersion, schema: TableSchema) -> pd.DataFrame:
    """Read the parquet table at the dataset's commit (from the DVC cache or its remote).

    Cached on the file's md5, so the same content is read once whatever rev names it. Fails on
    an unreadable file, an empty table, or keys that would make the point-in-time join unsound.
    """
    import dvc.api
    import pandas as pd
    from dvc.exceptions import FileMissingError, PathMissingError

    loc = dataset.location
    where = f"{loc.path!r} at commit {dataset.commit[:8]} of {loc.repo!r}"
    try:
        with dvc.api.open(
            loc.path, repo=loc.repo, rev=dataset.commit, remote=loc.remote, mode="rb"
        ) as handle:
            raw = handle.read()
    except (FileNotFoundError, PathMissingError) as exc:
        # DVC also says a tracked path is missing when its data is in neither the cache nor
        # the remote: name both causes.
        raise DatasetNotFoundError(
            f"{where} could not be found (not at that commit, or its data was never pushed to "
            f"the DVC remote): {exc}"
        ) from exc
    except FileMissingError as exc:
        raise DatasetNotFoundError(
            f"The data of {where} is in neither the DVC cache nor the remote (was it "
            f"pushed?): {exc}"
        ) from exc
    try:
        frame = pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DatasetUnreadableError(
            f"{where} is not a readable parquet file ({len(raw)} bytes): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    check_entity_table(frame, schema, where)
    return frame
