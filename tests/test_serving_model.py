"""The served model's scoring wrapper, without a server: `one_warning_filter` (why it exists
is in driftloop/app/serving/model.py) changes nothing but speed."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from driftloop.app.serving.model import one_warning_filter


def test_scoring_with_one_warning_filter_predicts_the_same_and_restores_the_filters():
    rng = np.random.default_rng(0)
    features = rng.random((300, 4))
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(
        features, features[:, 0] > 0.5
    )
    before = list(warnings.filters)
    warnings.filterwarnings("ignore", message="a filter of this test")
    expected = forest.predict_proba(features[:5])
    with one_warning_filter():
        assert warnings.filters == [("ignore", None, Warning, None, 0)]
        got = forest.predict_proba(features[:5])
    np.testing.assert_array_equal(got, expected)
    assert warnings.filters[0][1] is not None  # this test's own filter is back, first
    warnings.filters[:] = before
