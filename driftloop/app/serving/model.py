"""The model a replica serves: the version an alias points to, loaded with everything needed
to answer a request for it (its feature columns from the Feast registry, the entity keys of
its feature views, its signature checked against them).

Example:
    >>> served = load_alias(tracking, feast, store, "champion")  # doctest: +SKIP
    >>> served.version, served.keys  # doctest: +SKIP
    ('3', (EntityKey(name='customer_id', type='int'),))
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from blocks.feast import FeastFeatureStore
from blocks.mlflow import MlflowTracking
from driftloop.app.serving.compiled import (
    SCORER_ONNX,
    SCORER_PYFUNC,
    CompiledModel,
    NotCompiled,
    compile_model,
)
from driftloop.core.contracts import FeatureColumn, ModelVersionRef, ResolvedFeatures
from driftloop.core.errors import FeatureRetrievalError
from driftloop.core.modeling import feature_matrix, positive_proba
from driftloop.core.serving import EntityKey, InputColumn, input_columns
from tasks.load_champion_model import check_signature
from tasks.load_champion_reference import champion_features, load_champion_reference
from tasks.registry import alias_version
from tasks.resolve_features import read_feature_definitions

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from feast import FeatureStore

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ServedModel:
    """One registry version, ready to score: immutable, so a request that picked it up keeps
    it for its whole life even if a swap replaces it meanwhile. What every request reads of
    it (refs, feature names, inputs) is derived once."""

    name: str
    version: str
    alias: str
    pyfunc: Any
    columns: tuple[FeatureColumn, ...]
    keys: tuple[EntityKey, ...]
    # The ONNX form where it gives the pyfunc's answers (driftloop/app/serving/compiled.py);
    # else None, and `scorer_note` says why.
    compiled: CompiledModel | None = None
    scorer_note: str | None = None
    loaded_at: float = field(default_factory=time.time)

    @cached_property
    def refs(self) -> list[str]:
        return [c.ref for c in self.columns]

    @cached_property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def inputs(self) -> tuple[InputColumn, ...]:
        return input_columns(self.columns)

    @property
    def scorer(self) -> str:
        return SCORER_ONNX if self.compiled is not None else SCORER_PYFUNC

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities, through the same `feature_matrix` as training: by
        the compiled form if there is one, else by the MLflow pyfunc."""
        matrix = feature_matrix(frame, self.columns)
        if self.compiled is not None:
            return self.compiled.score(matrix)
        with one_warning_filter():
            return positive_proba(self.pyfunc.predict(matrix))

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "alias": self.alias,
            "features": self.refs,
            "entity_keys": [k.name for k in self.keys],
            "scorer": self.scorer,
            "scorer_note": self.scorer_note,
            "parity": self.compiled.describe() if self.compiled else None,
            "loaded_at": self.loaded_at,
        }


# Why scoring runs with one warning filter: scikit-learn (1.9) runs each tree of a forest's
# predict through a wrapper (`sklearn.utils.parallel._FuncWrapper`) that re-installs the
# process's whole list of warning filters, tree by tree, on every call. A replica has about 20
# filters (Ray, Prefect, MLflow and Feast add them on import). The demo champion (a 200-tree
# forest) took 10.4 ms for a one-row predict with them and 5.6 ms with one filter (`make
# bench-serving`, the row "... with one warning filter").
# The one filter ignores: any change of filters resets Python's "shown once" records, so a
# "default" filter would print a model's warning on every request. What a model warns about
# is shown when it is loaded: its warm-up scores with the process's own filters.
# `catch_warnings` changes process-wide state: scorings take turns, and another thread of the
# replica that warns meanwhile (the alias poll, the log writer) sees the one filter too.
_SCORING = threading.Lock()


@contextmanager
def one_warning_filter() -> Iterator[None]:
    """Score with one warning filter, which ignores, then put the process's filters back."""
    with _SCORING, warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("ignore")
        yield


def entity_keys(store: FeatureStore, refs: list[str]) -> tuple[EntityKey, ...]:
    """The join keys of the feature views the refs name, with their id types (Feast's)."""
    keys: dict[str, EntityKey] = {}
    for view_name in dict.fromkeys(ref.split(":")[0] for ref in refs):
        view = store.get_feature_view(view_name)
        for column in view.entity_columns:
            type_name = getattr(column.dtype, "name", str(column.dtype)).upper()
            if type_name.startswith("INT"):
                keys[column.name] = EntityKey(column.name, "int")
            elif type_name == "STRING":
                keys[column.name] = EntityKey(column.name, "str")
            else:
                raise FeatureRetrievalError(
                    f"Entity key {column.name!r} of feature view {view_name!r} has Feast type "
                    f"{column.dtype}; driftloop serves integer and string ids"
                )
    return tuple(keys.values())


def load_alias(
    tracking: MlflowTracking, feast: FeastFeatureStore, store: FeatureStore, alias: str,
    current: ServedModel | None = None, compiled: bool = True,
) -> ServedModel | None:  # fmt: skip
    """The version `alias` points to, loaded; `current` itself if it is that version already;
    None if the alias does not exist (no champion yet, no challenger). With `compiled`, its
    ONNX form scores if it gives the same answers (`compile_model`); the pyfunc otherwise.

    Raises what goes wrong (an unreachable registry, features missing from Feast, a signature
    that does not match the features): the caller keeps serving what it has.
    """
    import mlflow

    client = tracking.activate()
    name = tracking.registered_model_name
    version = alias_version(client, name, alias)
    if version is None:
        return None
    if current is not None and current.name == name and current.version == version:
        return current
    ref = ModelVersionRef(name=name, version=version, run_id=client.get_model_version(
        name, version).run_id)  # fmt: skip
    # The tasks' own functions (`.fn`: no task run), so the rules stay written once.
    selection = champion_features.fn(ref, tracking)
    definitions = read_feature_definitions.fn(feast, selection)
    resolved = ResolvedFeatures(
        project=definitions.project,
        feature_service=definitions.feature_service,
        columns=definitions.columns,
        fingerprint=definitions.definitions_fingerprint,
    )
    pyfunc = mlflow.pyfunc.load_model(ref.uri)
    check_signature(pyfunc, ref, resolved)
    compiled_model, note = None, "compiled scoring is off in the serving block"
    if compiled:
        try:
            compiled_model, note = _compile(pyfunc, ref, tracking, definitions.columns), None
        except NotCompiled as exc:
            note = str(exc)
            logger.warning("%s v%s is scored by its MLflow pyfunc: %s", name, version, note)
        except Exception as exc:  # compiling is an optimisation: it never keeps a version out
            note = f"compiling failed: {type(exc).__name__}: {exc}"
            logger.exception("%s v%s is scored by its MLflow pyfunc", name, version)
    served = ServedModel(
        name=name,
        version=version,
        alias=alias,
        pyfunc=pyfunc,
        columns=definitions.columns,
        keys=entity_keys(store, resolved.refs),
        compiled=compiled_model,
        scorer_note=note,
    )
    _warm_up(served)
    return served


def _compile(
    pyfunc: Any, ref: ModelVersionRef, tracking: MlflowTracking,
    columns: tuple[FeatureColumn, ...],
) -> CompiledModel:  # fmt: skip
    """The version's ONNX form, checked against it on its own training sample."""
    try:
        pipeline = pyfunc.get_raw_model()
    except NotImplementedError as exc:
        raise NotCompiled(f"{ref.uri} is not a scikit-learn model") from exc
    from prefect.logging import disable_run_logger

    try:
        with disable_run_logger():  # the task's own function, outside any run
            sample = load_champion_reference.fn(ref, tracking)
    except Exception as exc:  # no sample, no parity check: never compiled unchecked
        raise NotCompiled(
            f"its training sample could not be read to check parity ({type(exc).__name__}: {exc})"
        ) from exc
    return compile_model(pipeline, columns, sample)


def _warm_up(served: ServedModel) -> None:
    """Score one row with every feature missing, so that the first request does not pay for
    lazy initialisation, and a model that cannot impute is refused before it is swapped in.
    With the process's own warning filters: what the model warns about is shown here, once."""
    import pandas as pd

    frame = pd.DataFrame({name: [None] for name in served.feature_names})
    positive_proba(served.pyfunc.predict(feature_matrix(frame, served.columns)))


def online_values(
    store: FeatureStore, refs: list[str], ids: dict[str, list[Any]]
) -> dict[str, list[Any]]:
    """The online store's values of `refs` for the entities, column by column, in order."""
    rows = [dict(zip(ids, values, strict=True)) for values in zip(*ids.values(), strict=True)]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()
