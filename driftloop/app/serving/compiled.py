"""The served model compiled to ONNX: same answers, a fraction of the time per request.

A replica scores one-row requests; for those, scikit-learn's per-call overhead dominates:
input validation in every step of the pipeline, and a random forest that calls each of its
trees through joblib. `compile_model` converts the champion's pipeline (the one
`driftloop.core.modeling.build_pipeline` builds) with skl2onnx and scores it with ONNX
Runtime. It is used only where it gives the MLflow model's answers: `compile_model` scores the
version's own training sample both ways when the version loads, and refuses the compiled form
if any probability differs by more than `PARITY_TOLERANCE`. A refused model is served by its
MLflow pyfunc, and `/model` says why (`scorer_note`).

Two things are done outside the ONNX graph, each for a measured reason:
- **Imputation.** ONNX Runtime's `Imputer` takes float32 only, and skl2onnx does not convert a
  string imputer whose missing marker is NaN. `SimpleImputer.transform` replaces a missing
  value with its fitted `statistics_`; `CompiledModel.score` does exactly that in NumPy, in
  float64, before the graph.
- **The estimator's input type.** scikit-learn's trees compare float32 values (forests cast
  their input); its other estimators compute in float64. The scaler and one-hot encoder run in
  float64, and their output is cast to the estimator's own type in between two ONNX sessions.
  One float32 graph for the whole pipeline shifted scaled values by one ulp and changed 273 of
  4,000 demo rows by up to 0.009.

Example:
    >>> compiled = compile_model(pipeline, columns, training_sample)  # doctest: +SKIP
    >>> compiled.score(feature_matrix(frame, columns))  # doctest: +SKIP
    array([0.12, 0.87])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from driftloop.core.contracts import FeatureColumn

if TYPE_CHECKING:
    import pandas as pd

# ONNX Runtime gives probabilities as float32 (about 1e-7 apart from scikit-learn's float64);
# a changed split or a wrong column moves a probability by far more than this.
PARITY_TOLERANCE = 1e-5
# Rows of the training sample the parity check scores (plus its own edge rows).
PARITY_ROWS = 2_000
SCORER_ONNX = "onnx"
SCORER_PYFUNC = "mlflow-pyfunc"


class NotCompiled(Exception):
    """Why a model is not scored in its compiled form (it is served by its pyfunc instead)."""


@dataclass(frozen=True)
class Parity:
    """The check that let a compiled model serve: rows scored both ways, the worst gap."""

    rows: int
    max_difference: float


@dataclass(frozen=True)
class CompiledModel:
    """A pipeline as two ONNX Runtime sessions: preprocessing (float64), then the estimator
    (in the type it computes in), with imputation in NumPy before them. `parity` is None only
    inside `compile_model`, between the conversion and its check."""

    columns: tuple[FeatureColumn, ...]
    fills: dict[str, Any]
    preprocess: Any  # onnxruntime.InferenceSession
    estimator: Any  # onnxruntime.InferenceSession
    estimator_dtype: type[np.floating[Any]]
    parity: Parity | None = None

    def score(self, matrix: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities of `feature_matrix`'s output, as float64."""
        feed = {}
        for column in self.columns:
            values = matrix[column.name].to_numpy()
            if column.kind == "categorical":
                values = values.astype(object)  # a copy: the caller's frame is left as it was
                values[_missing(values)] = self.fills[column.name]
            else:  # np.where makes the new array; float64 already from feature_matrix
                values = np.asarray(values, dtype=np.float64)
                values = np.where(np.isnan(values), self.fills[column.name], values)
            feed[column.name] = values.reshape(-1, 1)
        (transformed,) = self.preprocess.run(None, feed)
        outputs = self.estimator.run(None, {"X": transformed.astype(self.estimator_dtype)})
        return np.asarray(outputs[1], dtype=np.float64)[:, 1]

    def describe(self) -> dict[str, Any]:
        assert self.parity is not None, "describe() of a model compile_model did not check"
        return {
            "parity_rows": self.parity.rows,
            "max_difference": self.parity.max_difference,
            "estimator_dtype": np.dtype(self.estimator_dtype).name,
        }


def compile_model(
    pipeline: Any,
    columns: Sequence[FeatureColumn],
    sample: pd.DataFrame,
    tolerance: float = PARITY_TOLERANCE,
) -> CompiledModel:
    """Convert `pipeline` to ONNX and check it against the pipeline itself on `sample` (rows
    with the feature columns, such as the version's training sample): on up to `PARITY_ROWS`
    of its rows, on a row with every value missing and on rows with unseen categories.

    Raises:
        NotCompiled: the pipeline is not one `build_pipeline` builds, skl2onnx or ONNX
            Runtime cannot take it, or a probability differs by more than `tolerance`.
    """
    from driftloop.core.modeling import feature_matrix, positive_proba

    columns = tuple(columns)
    preprocess, estimator, fills = _split(pipeline, columns)
    dtype = _estimator_dtype(estimator)
    try:
        compiled = CompiledModel(
            columns=columns,
            fills=fills,
            preprocess=_session(_convert_preprocess(preprocess, columns)),
            estimator=_session(_convert_estimator(estimator, preprocess, dtype)),
            estimator_dtype=dtype,
        )
    except Exception as exc:  # skl2onnx and ONNX Runtime raise many kinds
        raise NotCompiled(
            f"skl2onnx/ONNX Runtime could not convert {type(estimator).__name__}: {_cause(exc)}"
        ) from exc
    try:
        matrix = feature_matrix(_parity_rows(sample, columns), columns)
    except KeyError as exc:
        raise NotCompiled(f"the training sample has no column {exc}: parity not checked") from exc
    expected = positive_proba(pipeline.predict_proba(matrix))
    got = compiled.score(matrix)
    difference = np.abs(got - expected)
    worst = float(np.max(difference))  # NaN if ONNX gave a NaN: refused below too
    if not worst <= tolerance:
        raise NotCompiled(
            f"ONNX scores differ from the MLflow model's by up to {worst:.3g} on "
            f"{len(matrix)} rows (tolerance {tolerance:g}, "
            f"{int((difference > tolerance).sum())} rows over)"
        )
    return dataclasses.replace(compiled, parity=Parity(rows=len(matrix), max_difference=worst))


def _split(pipeline: Any, columns: tuple[FeatureColumn, ...]) -> tuple[Any, Any, dict[str, Any]]:
    """`build_pipeline`'s pipeline as (preprocessing without its imputers, estimator, the
    imputers' fill value per column). Raises NotCompiled for any other structure."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    steps = getattr(pipeline, "steps", None)
    if not isinstance(pipeline, Pipeline) or len(steps) != 2:
        raise NotCompiled(f"{type(pipeline).__name__} is not driftloop's two-step pipeline")
    (_, preprocess), (_, estimator) = steps
    if not isinstance(preprocess, ColumnTransformer):
        raise NotCompiled(f"its first step is {type(preprocess).__name__}, not a ColumnTransformer")
    preprocess = copy.deepcopy(preprocess)
    fills: dict[str, Any] = {}
    for index, (name, transformer, selected) in enumerate(preprocess.transformers_):
        if transformer == "drop":
            continue
        inner = getattr(transformer, "steps", None)
        imputer = inner[0][1] if inner else None
        if not (
            isinstance(imputer, SimpleImputer)
            and len(inner) == 2
            and not imputer.add_indicator
            and _is_nan(imputer.missing_values)
        ):
            raise NotCompiled(f"transformer {name!r} is not an imputer followed by one step")
        for column, fill in zip(selected, imputer.statistics_, strict=True):
            fills[column] = fill
        preprocess.transformers_[index] = (name, inner[1][1], selected)
    missing = [c.name for c in columns if c.name not in fills]
    if missing:
        raise NotCompiled(f"the pipeline does not use feature(s) {missing}")
    return preprocess, estimator, fills


def _estimator_dtype(estimator: Any) -> type[np.floating[Any]]:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

    trees = (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier,
             ExtraTreeClassifier)  # fmt: skip
    return np.float32 if isinstance(estimator, trees) else np.float64


def _convert_preprocess(preprocess: Any, columns: tuple[FeatureColumn, ...]) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    inputs = [
        (c.name, StringTensorType([None, 1]) if c.kind == "categorical"
         else DoubleTensorType([None, 1]))
        for c in columns
    ]  # fmt: skip
    return to_onnx(preprocess, initial_types=inputs, target_opset=_OPSET)


def _convert_estimator(estimator: Any, preprocess: Any, dtype: type[np.floating[Any]]) -> Any:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    width = len(preprocess.get_feature_names_out())
    tensor = FloatTensorType if dtype is np.float32 else DoubleTensorType
    return to_onnx(
        estimator, initial_types=[("X", tensor([None, width]))],
        options={"zipmap": False}, target_opset=_OPSET,
    )  # fmt: skip


# ONNX opset 18 and ONNX-ML 3: what skl2onnx 1.20 and ONNX Runtime 1.30+ both support.
_OPSET = {"": 18, "ai.onnx.ml": 3}


def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread: a replica answers small requests and shares the machine with Ray's tasks;
    # ONNX Runtime's default thread pool per session would spin on every core.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _parity_rows(sample: pd.DataFrame, columns: tuple[FeatureColumn, ...]) -> pd.DataFrame:
    """Up to `PARITY_ROWS` sample rows, a row with every feature missing, and rows with an
    unseen value in each categorical feature (the one-hot encoder ignores those)."""
    import pandas as pd

    names_ = [c.name for c in columns]
    rows = sample[names_].head(PARITY_ROWS).reset_index(drop=True)
    unseen = []
    for column in columns:
        if column.kind == "categorical" and len(rows):
            row = rows.head(1).copy()
            row[column.name] = "a value never seen in training"
            unseen.append(row)
    frame = pd.concat([rows, *unseen], ignore_index=True)
    frame.loc[len(frame)] = [None] * len(names_)  # every feature missing
    return frame


def _missing(values: np.ndarray) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.isna(values), dtype=bool)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _cause(exc: BaseException) -> str:
    """The innermost error, in one line: skl2onnx wraps the real one in a long node dump."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
