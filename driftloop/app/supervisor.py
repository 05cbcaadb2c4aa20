"""Start, watch, restart and stop the embedded stack's processes, leaving no orphans behind.

Each component runs in a session of its own; stopping it signals every process of that
session (MLflow's uvicorn child, the Prefect server's own children). A component that exits
unexpectedly is restarted with backoff, up to a restart budget; only a spent budget stops the
stack. Every process the supervisor starts carries a service id in its environment, inherited
by everything it starts in turn (flow-run processes, their Ray workers), so stopping the stack
can find and stop them all, and so can `driftloop down` after the supervisor was killed.

A component is healthy when every one of its health checks passes: an HTTP URL answering 200
(`health_url`, the servers), or the checks in `health` (`HttpGet`, `TcpConnect`, `PathExists`)
for a process without an HTTP endpoint, such as the Ray head.

Example:
    >>> supervisor = Supervisor(run_dir, service_id="5f0c...", log=print)
    >>> server = supervisor.start(Component("prefect-server", argv, env, log_file,
    ...                                     health_url="http://127.0.0.1:4200/api/health"))
    >>> supervisor.wait_healthy(server, timeout_s=90)
    >>> while running:
    ...     supervisor.watch()        # restarts what died; raises RestartBudgetExhausted
    >>> supervisor.stop_all()
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import psutil

# Every process of a running service has this in its environment (see module docstring).
SERVICE_ID_ENV = "DRIFTLOOP_SERVICE_ID"
SERVICE_ID_FILE = "service.id"

Log = Callable[[str], None]


class StartupError(RuntimeError):
    """A component did not come up; the message names it and says why."""


class RestartBudgetExhausted(RuntimeError):
    """A component kept dying: it used up its restart budget, so the stack must stop."""


@dataclass(frozen=True)
class RestartPolicy:
    """How often a component may be restarted, and how long to wait before each restart.

    The budget is a sliding window: at most `max_restarts` restarts within `window_s` seconds.
    A component that stays up regains its budget as old restarts leave the window.
    """

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

    def delay(self, recent_restarts: int) -> float:
        """Backoff before the next restart, given how many restarts the window holds."""
        return self.backoff_s[min(recent_restarts, len(self.backoff_s) - 1)]

    def recent(self, restarts: Iterable[float], now: float) -> list[float]:
        """The restart times still inside the window."""
        return [t for t in restarts if now - t < self.window_s]

    def exhausted(self, restarts: Iterable[float], now: float) -> bool:
        """True if one more restart would exceed the budget."""
        return len(self.recent(restarts, now)) >= self.max_restarts


class HealthCheck(ABC):
    """One cheap probe of whether a component serves. A probe must not change anything and
    must return within a few seconds: the supervisor runs it in its loop until the component
    is healthy (at start-up and after each restart)."""

    @abstractmethod
    def passes(self) -> bool:
        """True if the component answers this check now."""

    @abstractmethod
    def describe(self) -> str:
        """What is probed, for messages ("did not become healthy (...)")."""


@dataclass(frozen=True)
class HttpGet(HealthCheck):
    """The URL answers 200."""

    url: str
    timeout_s: float = 2.0

    def passes(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                return response.status == 200
        # HTTPException: something that is not an HTTP server answers on the port (another
        # program took it); not healthy, and the component's own bind error says the rest.
        except (urllib.error.URLError, http.client.HTTPException, OSError):
            return False

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class TcpConnect(HealthCheck):
    """Something accepts TCP connections on the port: for a server without an HTTP endpoint
    (e.g. Ray's GCS, which speaks only gRPC)."""

    host: str
    port: int
    timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"TcpConnect: port {self.port} is not a TCP port")

    def passes(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            try:
                return sock.connect_ex((self.host, self.port)) == 0
            except OSError:  # e.g. the host does not resolve
                return False

    def describe(self) -> str:
        return f"tcp {self.host}:{self.port}"


@dataclass(frozen=True)
class PathExists(HealthCheck):
    """A file the component writes once it is ready exists: for a process that says so only
    on disk. The file must be new with each start (or be checked together with something
    that is), or a stale one from the previous run would pass."""

    path: Path

    def passes(self) -> bool:
        return self.path.exists()

    def describe(self) -> str:
        return f"file {self.path}"


class Status(Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"


@dataclass
class Component:
    """A long-running process of the stack, and what the supervisor knows about it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    # Shorthand for `HttpGet(health_url)` in `health`, which the servers use.
    health_url: str | None = None
    port: int | None = None
    # Some processes (a Prefect worker) only begin shutting down on the first SIGTERM and
    # need a second one to stop.
    term_signals: int = 1
    # The signal that asks it to stop (PostgreSQL's postmaster: SIGINT, its fast shutdown).
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    # None: the component is not restarted; its exit stops the stack.
    restart: RestartPolicy | None = field(default_factory=RestartPolicy)
    # When the component died, what is left of its session gets SIGTERM and this long to
    # exit before SIGKILL.
    leftover_grace_s: float = 10.0
    # Called when the component died (after what was left of its session was stopped, before
    # its restart): to stop what depended on the dead process and cannot recover by itself.
    on_exit: Callable[[Log], None] | None = field(default=None, repr=False)
    startup_timeout_s: float = 90.0
    # More health checks, all of which must pass (after `health_url`, if set). Without any,
    # a running process counts as healthy.
    health: tuple[HealthCheck, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    status: Status = Status.STOPPED
    restarts: list[float] = field(default_factory=list, repr=False)
    next_start_at: float = 0.0
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def health_checks(self) -> tuple[HealthCheck, ...]:
        """Every check this component must pass to count as healthy."""
        return ((HttpGet(self.health_url),) if self.health_url else ()) + self.health

    def describe_health(self) -> str:
        return " and ".join(c.describe() for c in self.health_checks) or "a running process"


# From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc_prctl() -> Callable[..., int] | None:
    """libc's prctl(2), looked up once in the parent (None where there is none: not Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` after which the child gets ``sig`` when the process starting it dies.

    Why it exists: components run in sessions of their own (so that stopping one reaches all
    its processes), so when the supervisor is killed with SIGKILL, nothing of it runs to stop
    them and neither a terminal hang-up nor a process-group signal reaches them: they would
    live on as orphans. Only the kernel can act at that moment, through Linux's parent-death
    signal, set by the child itself between fork and exec with prctl(PR_SET_PDEATHSIG).

    Why it calls prctl(2) through ctypes: no library the project depends on wraps it. The
    standard library's subprocess offers sessions and process groups, not a parent-death
    signal; psutil reads and signals existing processes but cannot set an attribute of a
    process about to exec. The packages that wrap it are not dependencies (python-prctl) or
    carry it as an internal detail of their own (billiard.util, ray._private.utils), each the
    same ctypes call. So this is the one place that calls it, and tests/test_supervisor.py
    checks the guarantee by killing a supervisor with SIGKILL.

    What it relies on: the signal follows the *thread* that started the child, so components
    are started from the thread that lives as long as the supervisor (the main thread).
    Everything the child runs after fork is resolved here, before fork: looking up libc
    (dlopen) in the child could deadlock on a lock another thread of the parent held.
    """
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)
        # The parent died between fork and prctl: the signal will never come, so exit now.
        if os.getppid() != parent:
            os._exit(128 + sig)

    return preexec


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) PIDs of session ``sid``."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and _alive(process):
                members.append(process.pid)
        except (OSError, psutil.Error):
            continue
    return members


def session_alive(sid: int) -> bool:
    """True while any process of the session runs (an unreaped zombie does not count)."""
    return bool(session_members(sid))


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    """Handles on the live processes among ``pids``.

    A handle remembers its process's start time: psutil refuses to signal it once the PID
    belongs to another process (ours exited and the number was reused)."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
        except psutil.Error:
            continue
        if _alive(process):
            found.append(process)
    return found


def _send(processes: Iterable[psutil.Process], sig: int) -> None:
    for process in processes:
        # Gone (or its PID reused) since it was found, or not ours to signal.
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def processes_with_env(key: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment sets ``key=value`` (other than this process)."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(key) == value and _alive(process):
                found.append(process)
        except psutil.Error:
            continue
    return found


def stop_processes(
    find: Callable[[], Iterable[int]],
    *,
    term_signals: int,
    timeout_s: float,
    name: str,
    log: Log,
    reap: Callable[[], object] = lambda: None,
    stop_signal: int = signal.SIGTERM,
) -> None:
    """SIGTERM (or ``stop_signal``) what ``find`` returns (as many times as its leader
    needs), then SIGKILL
    leftovers. ``reap`` lets a parent collect, through its `subprocess.Popen`, a child that had
    already exited (it would otherwise linger as a zombie). A child that exits while this
    waits is collected by `psutil.wait_procs` instead; its Popen then reports code 0, which
    nothing reads once the process was stopped."""

    def alive() -> list[psutil.Process]:
        reap()
        return _processes(find())

    def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
        """Wait until the processes are gone, or the timeout passed; return what is left.

        `psutil.wait_procs` returns as soon as the ones it was given exit; ``find`` runs again
        every half second anyway, because a stopping process may start others (Ray's workers
        while its flow run shuts down), and a zombie whose parent does not reap it (which
        wait_procs cannot tell from a live process) is not alive here."""
        deadline = time.monotonic() + timeout
        while processes and (left := deadline - time.monotonic()) > 0:
            psutil.wait_procs(processes, timeout=min(0.5, left))
            processes = alive()
        return processes

    processes = alive()
    if not processes:
        return
    for attempt in range(term_signals):
        _send(processes, stop_signal)
        processes = wait_gone(processes, timeout_s if attempt == term_signals - 1 else 2.0)
        if not processes:
            log(f"  stopped {name}")
            return
    log(f"  {name} did not stop within {timeout_s:.0f}s; killing it")
    _send(processes, signal.SIGKILL)
    wait_gone(processes, 5.0)


def stop_session(
    sid: int,
    term_signals: int,
    timeout_s: float,
    name: str,
    log: Log,
    reap: Callable[[], object] = lambda: None,
    stop_signal: int = signal.SIGTERM,
) -> None:
    """Stop every process of session ``sid``."""
    stop_processes(
        lambda: session_members(sid),
        term_signals=term_signals,
        timeout_s=timeout_s,
        name=name,
        log=log,
        reap=reap,
        stop_signal=stop_signal,
    )


class OneShot:
    """A process of the service that runs once to its end (`up`'s set-up). Like a component
    it carries the service id, has a session of its own and dies with the supervisor; its
    output lines are relayed to the log as they come."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Log, cwd: Path | None):
        self.name, self.log = name, log
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509
        )
        output = self.process.stdout
        assert output is not None

        def relay() -> None:
            for line in output:
                log(line.rstrip("\n"))

        self._reader = threading.Thread(target=relay, name="relay-output", daemon=True)
        self._reader.start()

    def wait(self, stop: threading.Event) -> int | None:
        """Its exit code once it ended; None if `stop` was set first (it is then
        interrupted)."""
        while self.process.poll() is None:
            if stop.wait(0.2):
                self.interrupt()
                return None
        self._reader.join(timeout=5)
        return self.process.returncode

    def interrupt(self) -> None:
        """Stop it and whatever it started (its session) as Ctrl-C would, and SIGKILL what is
        left 10 s later: a process started with SIGINT ignored, as a background job's
        children are, inherits that. Nothing happens if all of it has ended."""
        stop_session(
            self.process.pid, 1, 10.0, self.name, self.log,
            reap=self.process.poll, stop_signal=signal.SIGINT,
        )  # fmt: skip
        self._reader.join(timeout=5)


class Supervisor:
    """Owns the stack's components: starts them, restarts the ones that die, stops them in
    reverse order."""

    def __init__(self, run_dir: Path, service_id: str, log: Log = print):
        self.run_dir = run_dir
        self.service_id = service_id
        self.components: list[Component] = []
        self.log = log

    # --- start ----------------------------------------------------------------------------
    def start(self, component: Component) -> Component:
        """Start a component (for the first time) in a session of its own."""
        if component.port is not None and port_in_use("127.0.0.1", component.port):
            raise StartupError(
                f"{component.name}: port {component.port} is already in use. Is another "
                "driftloop running? Stop it with `make down`, or choose another port in the "
                "settings."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / SERVICE_ID_FILE).write_text(self.service_id + "\n")
        self._spawn(component)
        self.components.append(component)
        return component

    def _spawn(self, component: Component) -> None:
        component.log_file.parent.mkdir(parents=True, exist_ok=True)
        with component.log_file.open("ab") as log_handle:
            component.process = subprocess.Popen(
                component.argv,
                env={**component.env, SERVICE_ID_ENV: self.service_id},
                cwd=component.cwd,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The child runs only what die_with_parent resolved before fork, so the
                # threads of this process (its background sweeps) cannot deadlock it.
                preexec_fn=die_with_parent(),  # noqa: PLW1509
            )
        component.status = Status.STARTING
        component.started_at = time.monotonic()
        (self.run_dir / f"{component.name}.pid").write_text(
            f"{component.process.pid} {component.term_signals} {component.stop_signal}\n"
        )

    def start_one_shot(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> OneShot:
        """Start a one-shot process of the service (`up`'s set-up), not supervised: it is
        not restarted, and its output goes to the log."""
        return OneShot(name, argv, {**env, SERVICE_ID_ENV: self.service_id}, self.log, cwd)

    def healthy_now(self, component: Component) -> bool:
        """One health probe: the process runs and every health check passes (in order; the
        first that fails ends the probe)."""
        if component.process is None or component.process.poll() is not None:
            return False
        return all(check.passes() for check in component.health_checks)

    def wait_healthy(self, component: Component, timeout_s: float) -> float:
        """Block until the component passes its health checks; return seconds taken.

        A component with a restart policy that exits during start-up is restarted as after
        start-up (backoff, the same budget), and each attempt gets `timeout_s`: on a busy
        machine `ray start` can time out waiting for its own raylet ("The current node timed
        out during startup"), and a second attempt succeeds. Without a policy, or with the
        budget spent, the exit is a StartupError quoting the component's log.
        """
        assert component.process is not None
        started = attempt_started = time.monotonic()
        while time.monotonic() - attempt_started < timeout_s:
            now = time.monotonic()
            if component.status is Status.BACKOFF:
                if now >= component.next_start_at and self._respawn(component, now):
                    attempt_started = now
            elif (code := component.process.poll()) is not None:
                policy = component.restart
                if policy is None or policy.exhausted(component.restarts, now):
                    raise StartupError(
                        f"{component.name} exited with code {code} during start-up. "
                        f"Last lines of {component.log_file}:\n{tail(component.log_file)}"
                    )
                self._exited(component, f"exited with code {code} during start-up", now)
            elif self.healthy_now(component):
                component.status = Status.RUNNING
                return time.monotonic() - started
            time.sleep(0.25)
        raise StartupError(
            f"{component.name} did not become healthy ({component.describe_health()}) within "
            f"{timeout_s:.0f}s. Last lines of {component.log_file}:\n{tail(component.log_file)}"
        )

    def is_running(self, name: str) -> bool:
        return any(c.name == name and c.status is Status.RUNNING for c in self.components)

    # --- watch ----------------------------------------------------------------------------
    def watch(self) -> None:
        """One supervision step: notice exits, restart after backoff, confirm health.

        Raises RestartBudgetExhausted when a component died more often than its policy
        allows (or has no restart policy), naming it and quoting its log.
        """
        now = time.monotonic()
        for component in self.components:
            if component.status in (Status.STARTING, Status.RUNNING):
                code = component.process.poll() if component.process else None
                if code is not None:
                    self._exited(component, f"exited unexpectedly (code {code})", now)
                elif component.status is Status.STARTING:
                    self._check_started(component, now)
            elif component.status is Status.BACKOFF and now >= component.next_start_at:
                self._respawn(component, now)

    def _respawn(self, component: Component, now: float) -> bool:
        """Start a component again after its backoff, counting it against its budget; False
        (and another second of backoff) while its old process still holds its port."""
        if component.port is not None and port_in_use("127.0.0.1", component.port):
            # The old process still holds the port; it was just killed, so wait.
            component.next_start_at = now + 1.0
            return False
        policy = component.restart
        assert policy is not None  # only a component with a policy is in backoff
        self._spawn(component)
        component.restarts.append(now)
        self.log(
            f"Restarting {component.name} (restart {len(component.restarts)}; "
            f"budget {policy.max_restarts} per {policy.window_s / 60:g} min)"
        )
        return True

    def _check_started(self, component: Component, now: float) -> None:
        if self.healthy_now(component):
            component.status = Status.RUNNING
            if component.restarts:
                self.log(f"{component.name} is healthy again")
            else:  # started without waiting for it (`start` then `watch`)
                self.log(f"  {component.name} healthy after {now - component.started_at:.1f}s")
        elif now - component.started_at > component.startup_timeout_s:
            self._exited(
                component,
                f"did not become healthy within {component.startup_timeout_s:.0f}s",
                now,
            )

    def _exited(self, component: Component, why: str, now: float) -> None:
        """A component died (or never became healthy): stop what is left of its session,
        then schedule a restart or give up."""
        assert component.process is not None
        self.log(
            f"{component.name} {why}. Last lines of {component.log_file}:\n"
            f"{tail(component.log_file, 15)}"
        )
        # Children of the old process may hold its port (MLflow's uvicorn does).
        stop_session(
            component.process.pid, 1, component.leftover_grace_s,
            f"what was left of {component.name}", self.log, reap=component.process.poll,
        )  # fmt: skip
        if component.on_exit is not None:
            try:
                component.on_exit(self.log)
            except Exception as exc:  # the restart must not depend on it
                self.log(f"  cleaning up after {component.name} failed: {exc!r}")
        policy = component.restart
        recent = policy.recent(component.restarts, now) if policy else []
        if policy is None or policy.exhausted(component.restarts, now):
            component.status = Status.STOPPED
            budget = (
                f"it was restarted {len(recent)} times in the last "
                f"{policy.window_s / 60:g} minutes, its whole budget"
                if policy
                else "it is not restarted"
            )
            raise RestartBudgetExhausted(f"{component.name} {why} and {budget}")
        delay = policy.delay(len(recent))
        component.status = Status.BACKOFF
        component.next_start_at = now + delay
        self.log(f"  restarting {component.name} in {delay:g}s")

    # --- stop -----------------------------------------------------------------------------
    def stop(self, component: Component, timeout_s: float = 20.0) -> None:
        if component.process is not None:
            stop_session(
                component.process.pid, component.term_signals, timeout_s, component.name,
                self.log, reap=component.process.poll, stop_signal=component.stop_signal,
            )  # fmt: skip
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=5)
        component.status = Status.STOPPED
        (self.run_dir / f"{component.name}.pid").unlink(missing_ok=True)

    def stop_all(self, timeout_s: float = 20.0, state_dirs: tuple[str, ...] = ()) -> None:
        """Stop the components in reverse start order, then anything else the service
        started (flow-run processes, their Ray workers), then any process still holding a file
        under `state_dirs` (see `processes_using`)."""
        for component in reversed(self.components):
            if component.status is not Status.STOPPED:
                self.stop(component, timeout_s)
        self.components.clear()
        stop_service_processes(self.service_id, self.log)
        stop_processes_using(state_dirs, self.log)
        (self.run_dir / SERVICE_ID_FILE).unlink(missing_ok=True)


def service_processes(service_id: str) -> list[int]:
    """PIDs of every process the service started: those whose environment carries its id,
    and the other members of their sessions. Ray's worker processes rewrite their command
    line over their environment (so it no longer shows the id), but they stay in the
    session of the flow-run process that started them."""
    marked = {p.pid for p in processes_with_env(SERVICE_ID_ENV, service_id)}
    sessions = set()
    for pid in marked:
        with contextlib.suppress(OSError):
            sid = os.getsid(pid)
            # Only sessions that one of ours leads (never, say, the user's terminal).
            if sid in marked:
                sessions.add(sid)
    found = set(marked)
    for sid in sessions:
        found.update(session_members(sid))
    found.discard(os.getpid())
    return sorted(found)


def stop_service_processes(service_id: str, log: Log) -> int:
    """Stop every process the service started that no component's session held: flow-run
    processes run in sessions of their own, with their Ray. Returns how many there were."""
    count = len(service_processes(service_id))
    if count:
        stop_processes(
            lambda: service_processes(service_id),
            term_signals=1,
            timeout_s=15.0,
            name=f"{count} process(es)",
            log=log,
        )
    return count


def belongs_to(sid: int, home: Path) -> bool:
    """True if a process of the session was started by driftloop for this state folder.

    Guards `down` against a stale PID file whose number now belongs to someone else.
    """
    for pid in session_members(sid):
        try:
            if psutil.Process(pid).environ().get("DRIFTLOOP_HOME") == str(home):
                return True
        except psutil.Error:
            continue
    return False


# Stop the worker before what its flow runs use (their Ray, the servers); anything unknown
# first of all.
STOP_ORDER = (
    "prefect-worker", "ray-head", "mlflow-server", "prefect-server",
    # The server profile's databases (driftloop.app.server_profile), after their clients.
    "redis", "postgres",
)  # fmt: skip


def processes_using(dirs: tuple[str, ...]) -> list[int]:
    """PIDs of processes that hold a file open under one of `dirs`.

    The last resort for Ray's helpers (e.g. its dashboard agent): they rewrite their command
    line over their environment, and one whose flow run was stopped while Ray was starting
    can end up outside every session the service knows; it still holds its log files in the
    Ray temp dir under the state folder.

    Open files only: a working directory under the state folder (`psutil.Process.cwd`) would
    also match the user's own shell sitting there, which `driftloop down` must not stop."""
    if not dirs:
        return []
    roots = tuple(Path(d) for d in dirs)
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and any(
                _under(Path(f.path), roots) for f in process.open_files()
            ):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    # By whole path components: a file of ".../ray2" is not under ".../ray".
    return any(path.is_relative_to(root) for root in roots)


def stop_processes_using(dirs: tuple[str, ...], log: Log) -> None:
    # stop_processes looks first and returns if nothing is there: one scan when all is clean.
    stop_processes(
        lambda: processes_using(dirs), term_signals=1, timeout_s=10.0,
        name="processes left in the state folder", log=log,
    )  # fmt: skip


def stop_from_pid_files(
    run_dir: Path, home: Path, log: Log = print, state_dirs: tuple[str, ...] = ()
) -> int:
    """Stop whatever a previous supervisor left running (``driftloop down``)."""
    stopped = 0
    order = {name: i for i, name in enumerate(STOP_ORDER)}
    files = sorted(run_dir.glob("*.pid"), key=lambda p: order.get(p.stem, -1))
    for pid_file in files:
        fields = [int(f) for f in pid_file.read_text().split()]
        sid, term_signals, stop_signal = (*fields, 1, signal.SIGTERM)[:3]
        if session_alive(sid) and belongs_to(sid, home):
            stop_session(sid, term_signals, 20.0, pid_file.stem, log, stop_signal=stop_signal)
            stopped += 1
        pid_file.unlink(missing_ok=True)
    id_file = run_dir / SERVICE_ID_FILE
    if id_file.exists():
        stopped += stop_service_processes(id_file.read_text().strip(), log)
        id_file.unlink(missing_ok=True)
    stop_processes_using(state_dirs, log)
    return stopped
