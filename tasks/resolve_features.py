"""Resolve a feature selection against the Feast registry, and fingerprint its data.

Two steps, so that a rerun with nothing changed does not load Feast at all (importing it and
opening the store take 5-7 s here):

- `read-feature-definitions` asks Feast's registry for the selection's columns, TTLs and file
  sources. It is cached on the bytes of the Feast configuration file and of the registry file, which
  `feast apply` and materialization rewrite: an unchanged registry is read from the cache. A
  registry that is not a local file (SQL, object store) is read every time.
- `resolve-features` adds the content of the file sources to the fingerprint, every time,
  without Feast: their data can change without the registry changing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from blocks.feast import FeastFeatureStore
from driftloop.core.contracts import (
    FeatureColumn,
    FeatureDefinitions,
    FeatureKind,
    ResolvedFeatures,
)
from driftloop.core.errors import FeatureRetrievalError
from driftloop.core.params import FeatureSelection
from tasks._policy import IO_RETRIES, NO_RETRIES, UNCACHED, content_hash

_KINDS: dict[str, FeatureKind] = {
    "INT32": "numeric",
    "INT64": "numeric",
    "FLOAT32": "numeric",
    "FLOAT64": "numeric",
    "DECIMAL": "numeric",
    "STRING": "categorical",
    "BOOL": "boolean",
}


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FeastRegistryUnchanged(CachePolicy):
    """Prefect cache policy: the same selection, repo, Feast configuration file, registry file
    and task source. No key (no caching) when the registry is not a local file."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        feast: FeastFeatureStore = inputs["feast"]
        registry = feast.local_registry()
        if registry is None:
            return None
        try:
            files = (feast.config_path.read_bytes(),
                     registry.read_bytes())  # fmt: skip
        except OSError:
            return None  # Feast reports it when the task runs
        source = TASK_SOURCE.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        selection: FeatureSelection = inputs["selection"]
        return content_hash(
            (str(Path(feast.repo_path).resolve()), selection.model_dump_json(), *files,
             source or "")
        )  # fmt: skip


@task(
    name="read-feature-definitions",
    cache_policy=FeastRegistryUnchanged(),
    persist_result=True,
    **IO_RETRIES,
)
def read_feature_definitions(
    feast: FeastFeatureStore, selection: FeatureSelection
) -> FeatureDefinitions:
    """Expand a feature service (or check explicit refs) into typed feature columns, with a
    fingerprint of the views' definitions and the files of their file sources."""
    from feast.errors import FeastObjectNotFoundException

    store = feast.store()
    where = f"Feast project {store.project!r} ({feast.repo_path})"
    try:
        if selection.feature_service:
            service = store.get_feature_service(selection.feature_service)
            wanted = [
                (projection.name, projection.name_to_use(), [f.name for f in projection.features])
                for projection in service.feature_view_projections
            ]
        else:
            by_view: dict[str, list[str]] = {}
            for ref in selection.features:
                view_name, feature = ref.split(":")
                by_view.setdefault(view_name, []).append(feature)
            wanted = [(v, v, features) for v, features in by_view.items()]
        views = {name: store.get_feature_view(name) for name, _, _ in wanted}
    except FeastObjectNotFoundException as exc:
        raise FeatureRetrievalError(f"{exc} ({where})") from exc

    columns: list[FeatureColumn] = []
    fingerprint = hashlib.md5()
    ttl: dict[str, float] = {}
    sources: list[str] = []
    for view_name, ref_name, names in wanted:
        view = views[view_name]
        fields = {f.name: f for f in view.features}
        unknown = [n for n in names if n not in fields]
        if unknown:
            raise FeatureRetrievalError(
                f"Feature view {view_name!r} has no feature(s) {unknown} ({where}); "
                f"it has {sorted(fields)}"
            )
        for name in names:
            dtype = fields[name].dtype
            type_name = getattr(dtype, "name", str(dtype)).upper()
            if type_name not in _KINDS:
                raise FeatureRetrievalError(
                    f"Feature {view_name}:{name} has Feast type {dtype}, which driftloop's "
                    "models cannot use (numeric, string and bool features are supported)"
                )
            columns.append(
                FeatureColumn(
                    name=name,
                    ref=f"{ref_name}:{name}",
                    feast_type=str(dtype),
                    kind=_KINDS[type_name],
                )
            )
        ttl[view_name] = view.ttl.total_seconds() if view.ttl else 0.0
        fingerprint.update(view.to_proto().spec.SerializeToString(deterministic=True))
        source_path = getattr(view.batch_source, "path", None)
        if source_path:
            path = Path(source_path)
            path = path if path.is_absolute() else Path(feast.repo_path).resolve() / path
            sources.append(str(path))

    names = [c.name for c in columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise FeatureRetrievalError(
            f"Features {clashes} appear in more than one feature view; select only one of each"
        )
    return FeatureDefinitions(
        project=store.project,
        feature_service=selection.feature_service,
        columns=tuple(columns),
        ttl_seconds=ttl,
        definitions_fingerprint=fingerprint.hexdigest(),
        source_files=tuple(sources),
    )


@task(name="resolve-features", cache_policy=UNCACHED, **NO_RETRIES)
def resolve_features(feast: FeastFeatureStore, selection: FeatureSelection) -> ResolvedFeatures:
    """Expand a feature service (or check explicit refs) into typed feature columns.

    The fingerprint covers the feature views' definitions and, for file sources, the content of
    the offline data, so cached feature retrievals are invalidated by any change to either.
    The definitions come from `read-feature-definitions` (cached while the registry is
    unchanged); the data is hashed here on every run.
    """
    definitions = read_feature_definitions(feast, selection)
    fingerprint = hashlib.md5(definitions.definitions_fingerprint.encode())
    for source in definitions.source_files:
        path = Path(source)
        if path.exists():
            fingerprint.update(_file_md5(path).encode())
    return ResolvedFeatures(
        project=definitions.project,
        feature_service=definitions.feature_service,
        columns=definitions.columns,
        ttl_seconds=definitions.ttl_seconds,
        fingerprint=fingerprint.hexdigest(),
    )
