"""Resolve a feature selection against the Feast registry, and fingerprint its data."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task

from blocks.feast import FeastFeatureStore
from driftloop.core.contracts import FeatureColumn, FeatureKind, ResolvedFeatures
from driftloop.core.errors import FeatureRetrievalError
from driftloop.core.params import FeatureSelection
from tasks._policy import IO_RETRIES, UNCACHED

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


@task(name="resolve-features", cache_policy=UNCACHED, **IO_RETRIES)
def resolve_features(feast: FeastFeatureStore, selection: FeatureSelection) -> ResolvedFeatures:
    """Expand a feature service (or check explicit refs) into typed feature columns.

    The fingerprint covers the feature views' definitions and, for file sources, the content of
    the offline data, so cached feature retrievals are invalidated by any change to either.
    """
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
            if path.exists():
                fingerprint.update(_file_md5(path).encode())

    names = [c.name for c in columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise FeatureRetrievalError(
            f"Features {clashes} appear in more than one feature view; select only one of each"
        )
    return ResolvedFeatures(
        project=store.project,
        feature_service=selection.feature_service,
        columns=tuple(columns),
        ttl_seconds=ttl,
        fingerprint=fingerprint.hexdigest(),
    )
