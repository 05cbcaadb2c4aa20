"""Scale-out for real: a 2-node Ray cluster on this machine, reached through RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from driftloop.core import names
from driftloop.core.settings import PROJECT_ROOT
from tests.conftest import make_demo
from tests.helpers import RayNodes, make_mlflow, run_training_subprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_demo(prefect_server, tmp_path_factory):
    """A larger demo (24k labeled rows) so that trials take seconds, not milliseconds."""
    demo = make_demo(tmp_path_factory.mktemp("big-demo"), rows_per_batch=8000, batches=3)
    return demo.dataset_block, demo.feast_block


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The cluster's head node (1 CPU), shared by this module's tests."""
    # Ray's socket paths must stay short: keep the cluster's temp dir near the root.
    temp_dir = Path(tempfile.mkdtemp(prefix="dlray-", dir="/tmp"))
    nodes = RayNodes(temp_dir=temp_dir, log_dir=tmp_path_factory.mktemp("ray-logs"))
    nodes.start_head(num_cpus=1)
    sessions = [nodes.nodes["head"].pid]
    yield nodes, sessions
    nodes.stop()
    from driftloop.app.supervisor import session_alive

    assert not any(session_alive(s) for s in sessions), "Ray processes were left behind"
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def cluster(head):
    """Head plus a fresh worker node (1 CPU) for each test; a test may kill its worker."""
    nodes, sessions = head
    sessions.append(nodes.add_worker("worker", num_cpus=1))
    yield nodes
    if "worker" in nodes.nodes:
        nodes.stop_node("worker")


def _kwargs(big_demo, mlflow, **search):
    dataset, feast = big_demo
    return {
        "features": {"feature_service": "churn_model_v1"},
        "search": {"n_trials": 6, "parallelism": 2, **search},
        "dataset_block": dataset,
        "feast_block": feast,
        "mlflow_block": mlflow.block_name,
    }


def _env(cluster: RayNodes) -> dict[str, str]:
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    env.pop("RAY_AUTH_MODE", None)  # the cluster was started with auth disabled
    return env


def _children(mlflow, run_id: str):
    client = mlflow.client()
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")


def test_trials_run_on_both_nodes_of_a_cluster(big_demo, cluster, tmp_path):
    mlflow = make_mlflow(tmp_path / "mlflow")
    result = run_training_subprocess(_kwargs(big_demo, mlflow), _env(cluster))
    assert result["trials_completed"] == 6
    assert result["promoted"]
    nodes = {
        child.data.tags[names.TAG_TRIAL_NODE]
        for child in _children(mlflow, result["mlflow_run_id"])
    }
    assert len(nodes) == 2, f"trials ran on {nodes}, expected both nodes"


def _worker_is_running_a_trial(cluster: RayNodes) -> bool:
    """A Ray worker of the worker node is executing a trial: Ray titles the process after the
    task it runs (`ray::evaluate-trial`)."""
    import psutil

    for pid in cluster.processes("worker"):
        try:
            title = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::evaluate-trial"):
            return True
    return False


def _parent_run(mlflow, flow_run_id: str):
    """The training's MLflow run: the one its lineage tags with the flow run, not a trial."""
    client = mlflow.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, filter_string=f"tags.`{names.TAG_FLOW_RUN_ID}` = '{flow_run_id}'"
    )
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent


class _DeploymentRun:
    """The training as a user's run reaches it: a deployment run on driftloop's worker, which
    starts it in a warm engine (the worker attaches it to the cluster through RAY_ADDRESS)."""

    def __init__(self, start_worker, cluster: RayNodes, kwargs: dict):
        from prefect.client.orchestration import get_client

        from tests.warm_worker import deploy

        pool, self.log, _ = start_worker(env={"RAY_ADDRESS": cluster.address})
        deployment_id = deploy(pool, "flows.training.train", warm_log=self.log)
        with get_client(sync_client=True) as client:
            self.id = client.create_flow_run_from_deployment(deployment_id, parameters=kwargs).id

    def running(self) -> bool:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.id).state
        return state is None or not state.is_final()

    def result(self, mlflow) -> dict:
        from tests.warm_worker import wait_final

        run = wait_final(self.id, timeout=600)
        assert run.state.is_completed(), run.state
        text = self.log.read_text()
        assert f"Flow run {self.id} starts in warm engine" in text, text
        parent = _parent_run(mlflow, str(self.id))
        states = [c.data.tags[names.TAG_TRIAL_STATE] for c in _children(mlflow, parent.info.run_id)]
        completed = sum(state in ("Completed", "Cached") for state in states)
        return {
            "flow_run_id": str(self.id),
            "mlflow_run_id": parent.info.run_id,
            "trials_completed": completed,
            "trials_failed": len(states) - completed,
        }


class _ProcessRun:
    """The training in a fresh process of its own (as Prefect's stock worker runs it)."""

    def __init__(self, cluster: RayNodes, kwargs: dict):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.run_training", json.dumps(kwargs)],
            env=_env(cluster), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, mlflow) -> dict:
        stdout, stderr = self.process.communicate(timeout=600)
        assert self.process.returncode == 0, stderr[-4000:]
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize(
    ("ray_retries", "path"),
    [(2, "warm-engine"), (0, "fresh-process")],
    ids=["ray-retries-warm-engine", "no-ray-retries-fresh-process"],
)
def test_a_node_dying_mid_search_loses_no_trial(
    big_demo, cluster, tmp_path, start_worker, ray_retries, path
):
    """Kill the node running a trial, mid-trial. With Ray's retries the trial runs again on the
    other node; without them it fails visibly and the search goes on. The first variant runs
    the training as a deployment run in driftloop's warm engine, the second in a process of
    its own: node death is handled the same on both paths."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from blocks import RayCluster
    from tests.helpers import unique

    mlflow = make_mlflow(tmp_path / "mlflow")
    ray_block = unique("ray")
    RayCluster(max_retries_on_worker_death=ray_retries).save(ray_block)
    # A seed of its own: trials must really run, not come from the other variant's cache.
    kwargs = _kwargs(
        big_demo, mlflow, n_trials=8, seed=100 + ray_retries,
        families=["random_forest", "gradient_boosting"],
    )  # fmt: skip
    kwargs["ray_block"] = ray_block
    flow = (
        _DeploymentRun(start_worker, cluster, kwargs)
        if path == "warm-engine"
        else _ProcessRun(cluster, kwargs)
    )
    deadline = time.monotonic() + 300
    checked = 0.0
    while not _worker_is_running_a_trial(cluster):
        if time.monotonic() - checked > 1:  # the deployment run's state is an API call
            assert flow.running(), "the search ended before a trial ran on the worker"
            checked = time.monotonic()
        assert time.monotonic() < deadline, "no trial ever started on the worker node"
        time.sleep(0.02)
    cluster.kill("worker")  # the whole node, mid-trial

    result = flow.result(mlflow)

    # Every trial is accounted for: completed (re-run elsewhere) or visibly failed.
    assert result["trials_completed"] + result["trials_failed"] == 8
    children = _children(mlflow, result["mlflow_run_id"])
    assert sorted(int(c.data.tags[names.TAG_TRIAL_NUMBER]) for c in children) == list(range(8))
    retried = [c for c in children if c.data.tags.get(names.TAG_TRIAL_ATTEMPT, "1") != "1"]
    failed = [
        c for c in children if c.data.tags[names.TAG_TRIAL_STATE] not in ("Completed", "Cached")
    ]
    if ray_retries:
        # Ray re-ran the killed trial on the surviving node, and the trial says so.
        assert len(retried) == 1, (retried, failed)
        assert not failed, (retried, failed)
        assert retried[0].data.tags[names.TAG_TRIAL_ATTEMPT] == "2"
    else:
        # Without retries the trial fails, visibly, and the search goes on without it.
        assert len(failed) == 1, (retried, failed)
        assert not retried, (retried, failed)
        assert failed[0].data.tags[names.TAG_TRIAL_STATE] == "Crashed"
        assert result["trials_failed"] == 1

    # No trial is left looking like it is still running.
    flow_run_id = result["flow_run_id"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    trials = [r for r in runs if r.name.startswith("trial-")]
    assert len(trials) == 8
    assert all(r.state.is_final() for r in trials), [(r.name, r.state.name) for r in trials]
    if not ray_retries:
        (crashed,) = [r for r in trials if r.state.is_crashed()]
        assert "Ray could not finish the trial" in crashed.state.message
