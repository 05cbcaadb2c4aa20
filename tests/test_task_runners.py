"""Where tasks run: a local Ray by default, never in Prefect's ephemeral mode."""

from __future__ import annotations

import os
import subprocess

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.task_runners import DriftloopRayTaskRunner, EphemeralPrefectError, ray_temp_dir


def test_refuses_ephemeral_prefect():
    runner = DriftloopRayTaskRunner()
    with (
        temporary_settings(updates={PREFECT_API_URL: None}),
        pytest.raises(EphemeralPrefectError, match="only against a Prefect server"),
    ):
        runner.__enter__()


@pytest.mark.slow
def test_default_is_a_local_ray_and_a_cached_rerun_never_starts_it(demo, tmp_path):
    """Two training runs in fresh processes (as a worker runs them), no Ray configured."""
    from tests.helpers import make_mlflow, run_training_subprocess, task_states

    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update({"HOME": str(home), "DRIFTLOOP_HOME": str(state)})
    mlflow = make_mlflow(tmp_path / "mlflow")
    kwargs = {
        "features": {"feature_service": "churn_model_v1"},
        "search": {"n_trials": 3, "parallelism": 2, "seed": 42},
        "dataset_block": demo.dataset_block,
        "feast_block": demo.feast_block,
        "mlflow_block": mlflow.block_name,
    }
    first = run_training_subprocess(kwargs, env)
    assert first["trials_completed"] == 3
    # The state folder's path is too long for Ray's sockets here, so Ray reached it through
    # a short symlink; the session itself lives in the state folder.
    sessions = list((state / "ray").glob("session_2*"))
    assert len(sessions) == 1, "a local Ray did not start in the state folder"
    assert list(home.iterdir()) == [], "something was written to HOME (e.g. ~/.ray)"
    for path in (state / "ray", ray_temp_dir(state / "ray")):
        leftovers = subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True,
                                   check=False)  # fmt: skip
        assert leftovers.stdout.strip() == "", f"Ray processes left behind ({path})"

    # Another gate: the same model is judged again (the same inputs would be skipped).
    second = run_training_subprocess({**kwargs, "gate": {"min_improvement": 0.01}}, env)
    assert len(list((state / "ray").glob("session_2*"))) == 1, "a cached rerun started Ray"
    states = task_states(second["flow_run_id"])
    trials = [s for name, runs in states.items() if name.startswith("trial") for s in runs]
    assert trials == ["Cached"] * 3
    assert states["fit-model"] == ["Cached"] * 2  # the judged fit and the refit
