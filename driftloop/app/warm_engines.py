"""Warm engines: flow-run processes forked from one that did their imports (driftloop's worker).

A cold flow run starts an interpreter that imports Prefect and the flow's modules (seconds of
CPU here) before its flow can begin. driftloop's worker keeps a fork server
(`driftloop.app.engine_process`, "the warm engine") that has done those imports already, and
forks a child of it for each new run. Each run still has a process of its own, in a session of
its own: a crash kills one run, cancellation from the UI reaches it through Prefect's control
channel and signals, and a killed process is recorded Crashed, as on the cold path. A fork
takes milliseconds, so runs that arrive together (a promotion starts three) all start warm.

The warm engine serves a run only if it was started exactly as that run's cold engine would be:

- the same **spec**: command (`python -m prefect.engine` on the worker's interpreter), the
  environment other than Prefect's per-run hand-off variables (`PREFECT__*`), the working
  directory and whether output is streamed;
- the same **code**: a fingerprint of the flow packages' source files (names, sizes and
  modification times) taken when the engine started. An edited flow or task module means the
  engine is recycled, and a run never executes code older than what is on disk.

Otherwise the run gets a cold engine, and the worker logs why. The engine is also recycled
after `idle_s` without a run, and when the work pool's deployments (and so the modules worth
importing) change; a recycled engine takes no more runs, and exits once the runs it forked
have ended (it alone learns their exit codes). The next run's spec is learned from the last
run (before the first one, from the work pool's job template), so a deployment with job
variables of its own gets a warm engine of its own once it has run.

Example:
    >>> spec = EngineSpec.of("/py -m prefect.engine", {"A": "1", "PREFECT__FLOW_RUN_ID": "x"},
    ...                      None, False)
    >>> spec.differences(EngineSpec.of("/py -m prefect.engine", {"A": "2"}, None, False))
    ['the environment (A)']
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import psutil
from prefect.logging import get_logger
from prefect.utilities.processutils import command_from_string

from driftloop.app.engine_process import (
    HANDOFF_PREFIX,
    REPORT_EXITED,
    REPORT_FORKED,
    request_line,
)

if TYPE_CHECKING:
    from anyio.abc import Process, TaskStatus
    from prefect.client.schemas.objects import FlowRun

    from driftloop.app._prefect_runner import ProcessHandle

LOGGER = get_logger("driftloop.worker")
# The project's layers (docs/architecture.md): a flow imports its tasks, blocks and the core,
# so an edit to any of them must recycle the idle engines, not only an edit to the flow's own
# package.
PROJECT_PACKAGES = ("driftloop", "blocks", "tasks", "flows", "deployments")
# How long a retired engine with no runs may take to exit after the end of its input, and
# then after SIGTERM, before it gets SIGKILL.
EXIT_GRACE_S = 5.0
# How long the worker waits for the engine to fork a run (it forks between two imports, so a
# run that arrives during them waits for the module in progress).
FORK_TIMEOUT_S = 60.0
# How often a run's wait looks for its exit report.
EXIT_POLL_S = 0.1


def split_environment(env: Mapping[str, str | None]) -> tuple[dict[str, str], dict[str, str]]:
    """A run's environment as (what its engine can start with, the run's hand-off).

    Example:
        >>> split_environment({"PATH": "/bin", "PREFECT__FLOW_RUN_ID": "x", "UNSET": None})
        ({'PATH': '/bin'}, {'PREFECT__FLOW_RUN_ID': 'x'})
    """
    static = {k: v for k, v in env.items() if v is not None and not k.startswith(HANDOFF_PREFIX)}
    handoff = {k: v for k, v in env.items() if v is not None and k.startswith(HANDOFF_PREFIX)}
    return static, handoff


def entrypoint_module(entrypoint: str | None) -> str | None:
    """The module a deployment's entrypoint imports, if it is a module path.

    Example:
        >>> entrypoint_module("flows.training.train"), entrypoint_module("flows/x.py:run")
        ('flows.training', None)
    """
    if not entrypoint or ":" in entrypoint or "/" in entrypoint or "." not in entrypoint:
        return None  # a file path is loaded from its file, not by name: nothing to pre-import
    return entrypoint.rsplit(".", 1)[0]


def source_fingerprint(modules: Iterable[str]) -> str:
    """A fingerprint of the Python source of the packages (or modules) that ``modules`` belong
    to: each file's path, size and modification time. Found without importing them."""
    roots: set[Path] = set()
    for module in modules:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(module.split(".", 1)[0])
            if spec is None:
                continue
            if spec.submodule_search_locations:
                roots.update(Path(p) for p in spec.submodule_search_locations)
            elif spec.origin:
                roots.add(Path(spec.origin))
    digest = hashlib.sha1()
    for root in sorted(roots):
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            with contextlib.suppress(OSError):
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineSpec:
    """How a run's engine process starts, apart from its hand-off: two runs with equal specs
    can be served by engines started the same way."""

    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str | None  # None: a fresh temporary directory, as Prefect's process worker gives
    stream_output: bool

    @classmethod
    def of(
        cls,
        command: str,
        env: Mapping[str, str | None],
        working_dir: str | os.PathLike[str] | None,
        stream_output: bool,
    ) -> EngineSpec:
        static, _ = split_environment(env)
        return cls(
            command=tuple(command_from_string(command)),
            env=tuple(sorted(static.items())),
            cwd=None if working_dir is None else str(Path(working_dir).resolve()),
            stream_output=stream_output,
        )

    def is_engine_command(self) -> bool:
        """Only `<this interpreter> -m prefect.engine` can be served warm."""
        return self.command == (sys.executable, "-m", "prefect.engine")

    def differences(self, other: EngineSpec) -> list[str]:
        """What differs between two specs, in words; environment values are not named (they
        may hold secrets), only their keys."""
        found = []
        if self.command != other.command:
            found.append(f"the command ({' '.join(other.command)})")
        if self.env != other.env:
            mine, theirs = dict(self.env), dict(other.env)
            keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            found.append(f"the environment ({', '.join(keys)})")
        if self.cwd != other.cwd:
            found.append(f"the working directory ({other.cwd or 'a temporary one'})")
        if self.stream_output != other.stream_output:
            found.append(f"stream_output ({other.stream_output})")
        return found


class Reports:
    """What the engine says on its report pipe, read by a thread of the worker: the runs it
    forked, the exit codes of its children, and whether it is gone (the pipe closed). Its
    `ready` line (imports done) is for people reading the protocol; the worker forks either
    way."""

    def __init__(self, fd: int) -> None:
        self.forked: dict[str, int] = {}
        self.exits: dict[int, int] = {}
        self.gone = threading.Event()
        self._fd = fd
        threading.Thread(target=self._read, name="warm-engine-reports", daemon=True).start()

    def _read(self) -> None:
        with os.fdopen(self._fd, "rb") as pipe:
            for raw in pipe:
                words = raw.decode(errors="replace").split()
                if words[:1] == [REPORT_FORKED] and len(words) == 3:
                    self.forked[words[1]] = int(words[2])
                elif words[:1] == [REPORT_EXITED] and len(words) == 3:
                    self.exits[int(words[1])] = int(words[2])
        self.gone.set()


@dataclass
class WarmEngine:
    """The fork server and what it was started with."""

    process: Process
    spec: EngineSpec
    modules: tuple[str, ...]
    code: str
    reports: Reports
    # Its working directory when the pool names none: an empty folder of its own (the first
    # entry of its sys.path), removed with it. Each run gets a folder of its own besides.
    folder: tempfile.TemporaryDirectory[str] | None = None
    started: float = field(default_factory=time.monotonic)
    last_fork: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None and not self.reports.gone.is_set()

    def in_flight(self) -> list[int]:
        """The PIDs of the runs it forked that have not ended."""
        return [pid for pid in self.reports.forked.values() if pid not in self.reports.exits]

    async def fork(
        self, flow_run_id: str, handoff: Mapping[str, str], cwd: str | None
    ) -> ForkedRun:
        """Start a run in a child of the engine; return once the child exists."""
        assert self.process.stdin is not None
        self.last_fork = time.monotonic()
        await self.process.stdin.send(request_line(flow_run_id, handoff, cwd))
        with anyio.fail_after(FORK_TIMEOUT_S):
            while flow_run_id not in self.reports.forked:
                if not self.alive():
                    raise RuntimeError(
                        f"warm engine {self.pid} exited ({self.process.returncode}) before it "
                        f"forked flow run {flow_run_id}"
                    )
                await anyio.sleep(0.005)
        return ForkedRun(self.reports.forked[flow_run_id], self)

    async def retire(self) -> None:
        """Close its input: it takes no more runs, and exits once the runs it forked have
        ended (they go on). One that does not exit with no runs left gets SIGTERM, then
        SIGKILL: its session only, which its runs have left."""
        with contextlib.suppress(Exception):
            await self.process.stdin.aclose()  # type: ignore[union-attr]
        if self.in_flight():
            return  # it reports their ends and exits after the last one; nothing waits here
        for signal_number, wait_s in ((None, EXIT_GRACE_S), (signal.SIGTERM, EXIT_GRACE_S),
                                      (signal.SIGKILL, EXIT_GRACE_S)):  # fmt: skip
            if signal_number is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal_number)
            with anyio.move_on_after(wait_s):
                await self.process.wait()
            if self.process.returncode is not None:
                break
        self.cleanup()

    def cleanup(self) -> None:
        if self.folder is not None:
            with contextlib.suppress(OSError):
                self.folder.cleanup()
            self.folder = None


class ForkedRun:
    """A run's process, forked by the warm engine: the part of `anyio.abc.Process` that
    Prefect's `ProcessHandle` reads (its PID and exit code), and a wait for its end. Its exit
    code comes from the engine, its parent; if the engine died first, the code is unknown
    and given as -1 once the process is gone."""

    def __init__(self, pid: int, engine: WarmEngine) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._engine = engine

    def _poll(self) -> int | None:
        reports = self._engine.reports
        if self.pid in reports.exits:
            self.returncode = reports.exits[self.pid]
        elif reports.gone.is_set() and not psutil.pid_exists(self.pid):
            self.returncode = -1
        return self.returncode

    async def wait(self) -> int:
        while self._poll() is None:
            await anyio.sleep(EXIT_POLL_S)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # its session: it and what it started


class WarmEngines:
    """The worker's warm engine: started, used for each matching run, recycled.

    Example:
        >>> engines = WarmEngines(size=0, idle_s=600.0, extra_imports=())
        >>> engines.enabled
        False
    """

    def __init__(self, size: int, idle_s: float, extra_imports: Sequence[str]) -> None:
        self.size = size
        self.idle_s = idle_s
        self.extra_imports = tuple(extra_imports)
        self.wanted: EngineSpec | None = None
        self.flow_modules: tuple[str, ...] = ()
        self.engine: WarmEngine | None = None
        self._retired: list[WarmEngine] = []

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def modules(self) -> tuple[str, ...]:
        """What the engine imports: the pool's flow modules, then the extra imports."""
        return (*self.flow_modules, *self.extra_imports)

    @staticmethod
    def code_of(modules: Sequence[str]) -> str:
        """The current fingerprint of the source an engine with these modules imported: their
        packages' and the project's own layers, which the flows import (libraries change only
        by an upgrade, which the idle recycling catches)."""
        return source_fingerprint((*modules, *PROJECT_PACKAGES))

    def take(self, spec: EngineSpec) -> tuple[WarmEngine | None, str]:
        """The warm engine, if it can serve a run with this spec, or None and the reason the
        run starts cold. The spec becomes the one the next engine is started with."""
        if not self.enabled:
            return None, "warm engines are off (DRIFTLOOP_WARM_ENGINES=0)"
        self.wanted = spec
        if not spec.is_engine_command():
            return None, f"the pool's command is not {sys.executable} -m prefect.engine"
        engine, reason = self.engine, ""
        if engine is None:
            reason = "no warm engine is ready yet"
        elif not engine.alive():
            reason = f"engine {engine.pid} exited ({engine.process.returncode})"
        elif engine.code != self.code_of(engine.modules):
            reason = "the flows' code changed since the warm engine started"
        elif differences := engine.spec.differences(spec):
            reason = f"the run differs from the warm engine in {'; '.join(differences)}"
        return (None, reason) if reason else (engine, "")

    async def maintain(self) -> None:
        """One pass: retire the engine if it exited, idled too long, or no longer matches the
        spec, the code or the pool's modules; start one if there is none."""
        for engine in [e for e in self._retired if e.process.returncode is not None]:
            self._retired.remove(engine)
            engine.cleanup()
        if not self.enabled or self.wanted is None:
            return
        engine, now = self.engine, time.monotonic()
        if engine is not None:
            reason = None
            idle_s = now - max(engine.last_fork, engine.started)
            if not engine.alive():
                reason = f"exited with code {engine.process.returncode}"
            elif idle_s > self.idle_s and not engine.in_flight():
                reason = f"idle for {self.idle_s:.0f}s"
            elif engine.code != self.code_of(engine.modules):
                reason = "the flows' code changed"
            elif engine.modules != self.modules:
                reason = "the work pool's flow modules changed"
            elif engine.spec != self.wanted:
                reason = "the runs' environment or command changed"
            if reason:
                self.engine = None
                LOGGER.info("Recycling warm engine %s: %s", engine.pid, reason)
                await engine.retire()
                if engine.process.returncode is None:
                    self._retired.append(engine)  # its runs go on; it exits after them
        if self.engine is None and self.wanted.is_engine_command():
            self.engine = await self._start(self.wanted)

    async def _start(self, spec: EngineSpec) -> WarmEngine:
        output = None if spec.stream_output else subprocess.DEVNULL
        modules = self.modules
        code = self.code_of(modules)  # before the imports: an edit during them is caught
        folder = None if spec.cwd else tempfile.TemporaryDirectory(suffix="prefect")
        report_r, report_w = os.pipe()
        try:
            process = await anyio.open_process(
                [spec.command[0], "-m", "driftloop.app.engine_process",
                 "--report-fd", str(report_w), *modules],
                stdin=subprocess.PIPE, stdout=output, stderr=output,
                cwd=spec.cwd or (folder.name if folder else None), env=dict(spec.env),
                # A session of its own: a Ctrl-C in the worker's terminal must not reach it.
                start_new_session=True, pass_fds=(report_w,),
            )  # fmt: skip
        except BaseException:
            os.close(report_r)
            if folder is not None:
                folder.cleanup()
            raise
        finally:
            os.close(report_w)
        LOGGER.info("Warm engine %s started (pre-imports %s)", process.pid, ", ".join(modules))
        return WarmEngine(process=process, spec=spec, modules=modules, code=code,
                          reports=Reports(report_r), folder=folder)  # fmt: skip

    async def close(self) -> None:
        """Retire the engine (the worker is stopping); its runs' starters stop the runs."""
        engines = [e for e in (self.engine, *self._retired) if e is not None]
        self.engine, self._retired = None, []
        async with anyio.create_task_group() as group:
            for engine in engines:
                group.start_soon(engine.retire)


class WarmEngineStarter:
    """Starts a flow run in a child of the warm engine: Prefect's `ProcessStarter` protocol
    (`prefect.runner._flow_run_executor`), which its `FlowRunExecutor` drives.

    It registers the run with the executor's control channel, as Prefect's
    `EngineCommandStarter` does, and sends the run's hand-off environment to the engine,
    with a temporary working folder when the pool names none (as Prefect's process worker
    gives each run).
    """

    def __init__(
        self, engine: WarmEngine, handoff: Mapping[str, str], control_channel: Any
    ) -> None:
        self._engine = engine
        self._handoff = dict(handoff)
        self._control_channel = control_channel

    async def start(
        self, flow_run: FlowRun, task_status: TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        from driftloop.app._prefect_runner import ProcessHandle, isolated_termination_scope

        engine = self._engine
        env = {
            **self._handoff,
            "PREFECT__FLOW_RUN_ID": str(flow_run.id),
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
        }
        registered = False
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
            except RuntimeError:
                pass  # no loopback listener: cancellation falls back to signals, as Prefect's
            else:
                env["PREFECT__CONTROL_PORT"], env["PREFECT__CONTROL_TOKEN"] = str(port), token
                registered = True
        folder = None if engine.spec.cwd else tempfile.TemporaryDirectory(suffix="prefect")
        try:
            child = await engine.fork(
                str(flow_run.id), env, engine.spec.cwd or (folder.name if folder else None)
            )
        except BaseException:
            if registered:
                self._control_channel.unregister(flow_run.id)
            if folder is not None:
                folder.cleanup()
            raise
        LOGGER.info(
            "Flow run %s starts in warm engine %s as process %s", flow_run.id, engine.pid, child.pid
        )
        handle = ProcessHandle(
            child,  # type: ignore[arg-type]  # a Process for what ProcessHandle reads of it
            termination_scope=isolated_termination_scope(child.pid),
        )
        task_status.started(handle)
        try:
            await child.wait()
        except anyio.get_cancelled_exc_class():
            # The worker is stopping. Prefect's own starter kills its engine then (anyio
            # SIGKILLs a process whose wait is cancelled), so the run cannot record a crash of
            # its own: the service records it "service stopped" and resumes it. A SIGTERM
            # instead would let Ray's handler in the engine exit through SystemExit, and the
            # run would end Crashed with a reason nobody resumes.
            child.kill()
            with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_GRACE_S):
                await child.wait()
            raise
        finally:
            if folder is not None:
                with contextlib.suppress(OSError):
                    folder.cleanup()
