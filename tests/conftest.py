"""Test set-up: real components only, all state in one temporary folder.

- A real Prefect server (`prefect server start`, SQLite) on a free loopback port, once per session.
- MLflow on SQLite in temporary directories (a server where a test needs one).
- The real demo Feast repo, copied next to a temporary state folder, and real DVC registries
  with local remotes.

The environment is set here, before any test module imports Prefect, because Prefect reads
its settings when it is imported. HOME points into the temporary folder too, so a test run
never writes to the user's home.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from driftloop.app import ports
from driftloop.core.settings import PROJECT_ROOT, TELEMETRY_OFF


def free_port() -> int:
    """A free port no other process is about to take (see driftloop.app.ports), from this
    xdist worker's own slice of the range."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return ports.free_port(int(worker.removeprefix("gw")), max(workers, 1))


ROOT = Path(tempfile.mkdtemp(prefix="driftloop-tests-"))
STATE = ROOT / ".driftloop"
PREFECT_PORT = free_port()
os.environ.update(
    {
        **TELEMETRY_OFF,
        "HOME": str(ROOT / "home"),
        "DRIFTLOOP_HOME": str(STATE),
        "DRIFTLOOP_FEATURE_REPO": str(ROOT / "feature_repo"),
        "PREFECT_HOME": str(STATE / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{PREFECT_PORT}",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(STATE / "results"),
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "DVC_SITE_CACHE_DIR": str(STATE / "cache" / "dvc"),
        "MPLCONFIGDIR": str(STATE / "cache" / "matplotlib"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "RAY_AUTH_MODE": "disabled",
    }
)
for folder in (ROOT / "home", STATE / "prefect", STATE / "logs"):
    folder.mkdir(parents=True)

import pytest  # noqa: E402

from tests.helpers import PrefectServer  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server() -> PrefectServer:
    """A real Prefect server for the whole session (the flows' API)."""
    server = PrefectServer(port=PREFECT_PORT, home=STATE / "prefect", log_dir=STATE / "logs")
    server.start()
    from driftloop.app.bootstrap import register_block_types

    register_block_types()
    from blocks import RayCluster

    RayCluster().save("default")  # the flows' default: local Ray (here: the session's)
    yield server
    # Flush logs and events still queued for the API before it goes away.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    server.stop()


# The modules that each run a whole `driftloop up` (minutes each, mostly waiting on it).
# `make test` runs the suite on two pytest-xdist workers (`--dist loadscope`, with the
# scheduler below): each module is a unit of work, run by one worker in file order, except
# that these two form one unit, so one worker runs the two stacks one after the other (two at
# once would share two cores between two trainings) while the other worker runs the rest of
# the suite. They go first (`--no-loadscope-reorder` keeps the collection order).
LONGEST_FIRST = ("tests/test_stack.py", "tests/test_stack_server.py")
WHOLE_STACK = "whole-stack"


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module, or the stacks' shared unit.

    Example:
        >>> work_unit("tests/test_stack_server.py::test_x"), work_unit("tests/test_rules.py::t")
        ('whole-stack', 'tests/test_rules.py')
    """
    module = nodeid.split("::", 1)[0]
    return WHOLE_STACK if module in LONGEST_FIRST else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduling, with `work_unit` as the scope (only for --dist loadscope)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndStacks(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModulesAndStacks(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the session's Prefect server (directly or through another
    fixture) `integration`; the rest are the unit tier `make test-fast` runs. Put the stacks
    first (a stable sort: every worker collects the same order)."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: work_unit(item.nodeid) != WHOLE_STACK)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(ROOT, ignore_errors=True)


# --- the demo data, prepared once per session -------------------------------------------------
from dataclasses import dataclass  # noqa: E402

from tests.helpers import MlflowSetup, make_mlflow, unique  # noqa: E402

DEMO_ROWS_PER_BATCH = 1500


@dataclass
class Demo:
    """The demo registry and feature repo, with blocks saved for them."""

    settings: object  # DriftloopSettings
    registry: object  # DataRegistry
    tags: list[str]
    dataset_block: str
    feast_block: str

    def train_kwargs(self, mlflow: MlflowSetup, **overrides: object) -> dict[str, object]:
        from driftloop.app.demo import DEMO_FEATURE_SERVICE
        from driftloop.core.params import FeatureSelection, SearchPolicy

        kwargs: dict[str, object] = {
            "features": FeatureSelection(feature_service=DEMO_FEATURE_SERVICE),
            # Tests train the explicit `model` unless they are about the search.
            "search": SearchPolicy(n_trials=0),
            "dataset_block": self.dataset_block,
            "feast_block": self.feast_block,
            "mlflow_block": mlflow.block_name,
        }
        kwargs.update(overrides)
        return kwargs


@pytest.fixture(scope="session")
def ray_session(prefect_server: PrefectServer):
    """One local Ray for the session, started in this process: flows run here reuse it (as
    prefect-ray does with an initialized Ray) instead of starting their own."""
    import ray

    from driftloop.core.settings import TELEMETRY_OFF as quiet

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(STATE / "ray"),
        namespace="prefect",
        log_to_driver=False,
        runtime_env={"env_vars": dict(quiet)},
    )
    yield
    ray.shutdown()


def _prepare_and_save(settings, config, dataset_name: str, prefix: str) -> Demo:
    """Prepare the demo under ``settings`` and save dataset and Feast blocks for it."""
    from blocks import DvcDataset, FeastFeatureStore
    from driftloop.app import demo as demo_names
    from driftloop.app.demo.setup import demo_registry, prepare_demo
    from tests.helpers import quietly

    with quietly():
        revisions = prepare_demo(settings, config)
    dataset_block, feast_block = unique(prefix), unique(prefix)
    DvcDataset(
        name=dataset_name,
        repo=str(settings.data_registry_dir),
        path=demo_names.DEMO_TABLE_PATH,
        entity_columns=[demo_names.DEMO_ENTITY],
        label_column=demo_names.DEMO_LABEL,
    ).save(dataset_block)
    FeastFeatureStore(repo_path=str(settings.feature_repo_dir)).save(feast_block)
    return Demo(
        settings=settings,
        registry=demo_registry(settings),
        tags=[r.tag for r in revisions],
        dataset_block=dataset_block,
        feast_block=feast_block,
    )


def make_demo(root: Path, rows_per_batch: int = DEMO_ROWS_PER_BATCH, batches: int = 3) -> Demo:
    """A private demo (registry, feature repo copy, blocks) under ``root``, for tests that add
    batches and must not change the session's shared demo."""
    from driftloop.app.demo.setup import DemoConfig
    from driftloop.core.settings import DriftloopSettings

    shutil.copytree(PROJECT_ROOT / "feature_repo", root / "feature_repo")
    settings = DriftloopSettings(home=root / ".driftloop", feature_repo=root / "feature_repo")
    config = DemoConfig(rows_per_batch=rows_per_batch, initial_batches=batches)
    return _prepare_and_save(settings, config, unique("dataset"), "own")


@pytest.fixture(scope="session")
def demo(prefect_server: PrefectServer, ray_session: None) -> Demo:
    from driftloop.app import demo as demo_names
    from driftloop.app.demo.setup import DemoConfig
    from driftloop.core.settings import get_settings

    # The session's copy of the demo feature repo (DRIFTLOOP_FEATURE_REPO points at it).
    shutil.copytree(PROJECT_ROOT / "feature_repo", ROOT / "feature_repo")
    config = DemoConfig(rows_per_batch=DEMO_ROWS_PER_BATCH)
    return _prepare_and_save(get_settings(), config, demo_names.DEMO_DATASET, "demo")


@pytest.fixture
def mlflow_setup(tmp_path: Path, prefect_server: PrefectServer) -> MlflowSetup:
    """A fresh MLflow store (SQLite in tmp_path) and its block."""
    return make_mlflow(tmp_path / "mlflow")


# --- `driftloop up`, shared by the stack tests of one module, in file order ------------------
def _live_stack(tmp_path_factory, profile: str):
    """`make up` (or `make up-server`) as a user runs it, after its first training; stopped,
    and checked to leave nothing behind, when the module's tests are done."""
    from tests.stack import Stack, stop_leftovers

    root = tmp_path_factory.mktemp(f"stack-{profile}") / "checkout"
    live = Stack(root, profile)
    live.up.wait_for("driftloop is up", timeout=240)
    live.up.wait_for("completed", timeout=300)
    yield live
    leftovers = stop_leftovers(root)
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The embedded profile (tests/test_stack.py). Each test leaves the service running."""
    yield from _live_stack(tmp_path_factory, "embedded")


@pytest.fixture(scope="module")
def server_stack(tmp_path_factory):
    """The server profile: PostgreSQL and Redis (tests/test_stack_server.py)."""
    yield from _live_stack(tmp_path_factory, "server")


@pytest.fixture
def start_worker(prefect_server, tmp_path: Path):
    """Start `driftloop worker` on a new work pool made as `driftloop up` makes it; returns
    (pool, log, process), once it listens for events and, with warm engines, one is started."""
    from driftloop.app.bootstrap import ensure_work_pool
    from tests.warm_worker import WARM_STARTED, stop_worker, wait_for_log

    workers: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None):
        pool = unique("pool")
        ensure_work_pool(pool)
        log = tmp_path / f"{pool}.log"
        env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "60",
               "PREFECT_LOGGING_LEVEL": "INFO", **(env or {})}  # fmt: skip
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "driftloop.app.worker", "--pool", pool, *args],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        workers.append(worker)
        wait_for_log(log, r"Woken by \('prefect.flow-run.Scheduled'", worker)
        if "--warm-engines=0" not in args:
            wait_for_log(log, WARM_STARTED.pattern, worker)
        return pool, log, worker

    yield start
    for worker in workers:
        stop_worker(worker)
