"""Step 1: resolve a DVC repo + path + rev to the commit and content hash it denotes."""

from __future__ import annotations

from prefect import task

from driftloop.core.contracts import DatasetLocation, DatasetVersion
from driftloop.core.errors import DatasetNotFoundError
from tasks._policy import IO_RETRIES, UNCACHED


@task(name="resolve-dataset", cache_policy=UNCACHED, **IO_RETRIES)
def resolve_dataset(location: DatasetLocation) -> DatasetVersion:
    """Turn a dataset location into its git commit and DVC md5.

    Never cached: a branch name such as ``main`` points at different data over time.
    """
    return resolve(location)


def resolve(location: DatasetLocation) -> DatasetVersion:
    """`resolve_dataset` outside a task: a location's commit and md5."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import NotDvcRepoError
    from dvc.scm import RevError, SCMError

    where = f"DVC repo {location.repo!r}"
    try:
        fs = DVCFileSystem(location.repo, rev=location.rev)
        try:
            info = fs.info(location.path)
            commit = fs.repo.get_rev()
        finally:
            fs.close()
    except RevError as exc:
        raise DatasetNotFoundError(
            f"Revision {location.rev!r} does not exist in {where}: {exc}"
        ) from exc
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(
            f"{location.path!r} does not exist at revision {location.rev!r} of {where}"
        ) from exc
    except (NotDvcRepoError, SCMError) as exc:
        raise DatasetNotFoundError(f"{where} cannot be opened as a DVC repo: {exc}") from exc

    md5 = info.get("md5") or (info.get("dvc_info") or {}).get("md5")
    if info.get("type") != "file" or not md5:
        raise DatasetNotFoundError(
            f"{location.path!r} at revision {location.rev!r} of {where} is not a DVC-tracked "
            "file; track it with `dvc add` so its content is versioned"
        )
    return DatasetVersion(location=location, commit=commit, md5=md5, size=info.get("size"))


def earlier_commits(location: DatasetLocation, commit: str, limit: int) -> list[str]:
    """Up to `limit` commits before `commit` on its first-parent line, newest first (the
    data registry's history, whatever the file did in each)."""
    from itertools import islice

    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(location.repo, rev=commit)
    try:
        return list(islice(fs.repo.scm.branch_revs(commit), 1, limit + 1))
    finally:
        fs.close()
