"""Warm engines: flow-run processes started before their runs, kept ready by driftloop's worker.

A cold flow run starts an interpreter that imports Prefect and the flow's modules (about 2 s
of CPU here) before its flow can begin. driftloop's worker keeps `size` engine processes
(`driftloop.app.engine_process`) that have done those imports already, and hands each new run
to one of them. Each run still has a process of its own, in a session of its own: a crash
kills one run, cancellation from the UI reaches it through Prefect's control channel and
signals, and a killed process is recorded Crashed, as on the cold path.

An engine serves a run only if it was started exactly as that run's cold engine would be:

- the same **spec**: command (`python -m prefect.engine` on the worker's interpreter), the
  environment other than Prefect's per-run hand-off variables (`PREFECT__*`), the working
  directory and whether output is streamed;
- the same **code**: a fingerprint of the flow packages' source files (names, sizes and
  modification times) taken when the engine started. An edited flow or task module means the
  idle engines are recycled, and a run never executes code older than what is on disk.

Otherwise the run gets a cold engine, and the worker logs why. Idle engines are also
recycled after `idle_s`, and when the work pool's deployments (and so the modules worth
importing) change. The next run's spec is learned from the last run (before the first one,
from the work pool's job template), so a deployment with job variables of its own gets warm
engines of its own once it has run.

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
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from prefect.logging import get_logger
from prefect.utilities.processutils import command_from_string

from driftloop.app.engine_process import HANDOFF_PREFIX, handoff_line

if TYPE_CHECKING:
    from anyio.abc import Process, TaskStatus
    from prefect.client.schemas.objects import FlowRun

    from driftloop.app._prefect_runner import ProcessHandle

LOGGER = get_logger("driftloop.worker")
# The project's layers (docs/architecture.md): a flow imports its tasks, blocks and the core,
# so an edit to any of them must recycle the idle engines, not only an edit to the flow's own
# package.
PROJECT_PACKAGES = ("driftloop", "blocks", "tasks", "flows", "deployments")
# After a run takes an engine, its replacement waits this long before starting, so that its
# imports do not compete with the run's own start for this machine's two cores.
REFILL_DELAY_S = 3.0
# How long a retired engine may take to exit after SIGTERM before it gets SIGKILL.
EXIT_GRACE_S = 5.0


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


@dataclass
class WarmEngine:
    """One pre-started engine process and what it was started with."""

    process: Process
    spec: EngineSpec
    modules: tuple[str, ...]
    code: str
    folder: tempfile.TemporaryDirectory[str] | None
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    async def retire(self) -> None:
        """Close its stdin (an idle engine waiting for a run then exits 0); one still busy
        with its imports gets SIGTERM, then SIGKILL. Then clean up."""
        with contextlib.suppress(Exception):
            await self.process.stdin.aclose()  # type: ignore[union-attr]
        for signal_number, wait_s in ((None, 0.5), (signal.SIGTERM, EXIT_GRACE_S),
                                      (signal.SIGKILL, EXIT_GRACE_S)):  # fmt: skip
            if signal_number is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal_number)  # its session: it and its children
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


class WarmEngines:
    """The worker's idle engines: started, handed out, recycled.

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
        self._idle: list[WarmEngine] = []
        self._last_take = 0.0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def modules(self) -> tuple[str, ...]:
        """What each engine imports: the pool's flow modules, then the extra imports."""
        return (*self.flow_modules, *self.extra_imports)

    @staticmethod
    def code_of(modules: Sequence[str]) -> str:
        """The current fingerprint of the source an engine with these modules imported: their
        packages' and the project's own layers, which the flows import (libraries change only
        by an upgrade, which the idle recycling catches)."""
        return source_fingerprint((*modules, *PROJECT_PACKAGES))

    def take(self, spec: EngineSpec) -> tuple[WarmEngine | None, str]:
        """An idle engine for a run with this spec, or None and the reason the run starts
        cold. The spec becomes the one the next engines are started with."""
        if not self.enabled:
            return None, "warm engines are off (DRIFTLOOP_WARM_ENGINES=0)"
        self.wanted = spec
        if not spec.is_engine_command():
            return None, f"the pool's command is not {sys.executable} -m prefect.engine"
        reasons = []
        for engine in list(self._idle):
            if not engine.alive():
                reasons.append(f"engine {engine.pid} exited ({engine.process.returncode})")
                self._idle.remove(engine)
                engine.cleanup()
            elif engine.code != self.code_of(engine.modules):
                reasons.append("the flows' code changed since the idle engines started")
            elif differences := engine.spec.differences(spec):
                reasons.append(f"the run differs from the idle engines in {'; '.join(differences)}")
            else:
                self._idle.remove(engine)
                self._last_take = time.monotonic()
                return engine, ""
        return None, "; ".join(dict.fromkeys(reasons)) or "no warm engine is ready yet"

    async def maintain(self) -> None:
        """One pass: retire the engines that exited, idled too long, or no longer match the
        spec, the code or the pool's modules; start new ones up to `size`."""
        if not self.enabled or self.wanted is None:
            return
        now = time.monotonic()
        for engine in list(self._idle):
            if engine not in self._idle:
                continue  # taken by a run while an earlier one was being retired
            reason = None
            if not engine.alive():
                reason = f"exited with code {engine.process.returncode}"
            elif now - engine.started > self.idle_s:
                reason = f"idle for {self.idle_s:.0f}s"
            elif engine.code != self.code_of(engine.modules):
                reason = "the flows' code changed"
            elif engine.modules != self.modules:
                reason = "the work pool's flow modules changed"
            elif engine.spec != self.wanted:
                reason = "the runs' environment or command changed"
            if reason:
                self._idle.remove(engine)
                LOGGER.info("Recycling warm engine %s: %s", engine.pid, reason)
                await engine.retire()
        if now - self._last_take < REFILL_DELAY_S or not self.wanted.is_engine_command():
            return
        while len(self._idle) < self.size:
            self._idle.append(await self._start(self.wanted))

    async def _start(self, spec: EngineSpec) -> WarmEngine:
        folder = None
        cwd = spec.cwd
        if cwd is None:
            folder = tempfile.TemporaryDirectory(suffix="prefect")
            cwd = folder.name
        output = None if spec.stream_output else subprocess.DEVNULL
        modules = self.modules
        code = self.code_of(modules)  # before the imports: an edit during them is caught
        process = await anyio.open_process(
            [spec.command[0], "-m", "driftloop.app.engine_process", *modules],
            stdin=subprocess.PIPE, stdout=output, stderr=output, cwd=cwd, env=dict(spec.env),
            # A session of its own, as each cold engine gets: a run outlives its worker.
            start_new_session=True,
        )  # fmt: skip
        LOGGER.info("Warm engine %s started (pre-imports %s)", process.pid, ", ".join(modules))
        return WarmEngine(process=process, spec=spec, modules=modules, code=code, folder=folder)

    async def close(self) -> None:
        """Retire every idle engine (the worker is stopping)."""
        idle, self._idle = self._idle, []
        async with anyio.create_task_group() as group:
            for engine in idle:
                group.start_soon(engine.retire)


class WarmEngineStarter:
    """Starts a flow run in a warm engine: Prefect's `ProcessStarter` protocol
    (`prefect.runner._flow_run_executor`), which its `FlowRunExecutor` drives.

    It registers the run with the executor's control channel, as Prefect's
    `EngineCommandStarter` does, and writes the run's hand-off environment to the engine.
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
        try:
            assert engine.process.stdin is not None
            await engine.process.stdin.send(handoff_line(env))
            await engine.process.stdin.aclose()
        except BaseException:
            if registered:
                self._control_channel.unregister(flow_run.id)
            raise
        handle = ProcessHandle(
            engine.process, termination_scope=isolated_termination_scope(engine.pid)
        )
        task_status.started(handle)
        try:
            await engine.process.wait()
        except anyio.get_cancelled_exc_class():
            # The worker is stopping. Prefect's own starter kills its engine then (anyio
            # SIGKILLs a process whose wait is cancelled), so the run cannot record a crash of
            # its own: the service records it "service stopped" and resumes it. A SIGTERM
            # instead would let Ray's handler in the engine exit through SystemExit, and the
            # run would end Crashed with a reason nobody resumes.
            with contextlib.suppress(ProcessLookupError):
                engine.process.kill()
            with anyio.CancelScope(shield=True):
                await engine.process.wait()
            raise
        finally:
            engine.cleanup()
