"""Start, health-check and stop the embedded stack's processes, leaving no orphans behind.

Each service runs in its own session, and stopping it signals every process of that session:
MLflow's ``huey_consumer`` children, the flow runs of a Prefect worker, and the Ray processes a
flow run starts (Ray puts its workers in process groups of their own, but not in new sessions).
PID files under ``run/`` let ``driftloop down`` stop a stack whose supervisor was killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A component did not come up; the message names it and says why."""


@dataclass
class Service:
    """A long-running process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_file: Path
    health_url: str | None = None
    port: int | None = None
    # Some processes (a Prefect worker) only begin shutting down on the first SIGTERM and
    # need a second one to stop.
    term_signals: int = 1
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the supervisor dies without stopping us (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) PIDs of session ``sid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may contain spaces; the fields after its closing paren are fixed.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def session_alive(sid: int) -> bool:
    """True while any process of the session runs (an unreaped zombie does not count)."""
    return bool(session_members(sid))


def signal_session(sid: int, sig: int) -> None:
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Supervisor:
    """Owns a set of services: starts them in order, stops them in reverse order."""

    def __init__(self, run_dir: Path, log: Callable[[str], None] = print):
        self.run_dir = run_dir
        self.services: list[Service] = []
        self.log = log

    # --- start ----------------------------------------------------------------------------
    def start(self, service: Service) -> Service:
        if service.port is not None and port_in_use("127.0.0.1", service.port):
            raise StartupError(
                f"{service.name}: port {service.port} is already in use. Is another driftloop "
                "running? Stop it with `make down`, or choose another port in the settings."
            )
        service.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_handle = service.log_file.open("ab")
        service.process = subprocess.Popen(
            service.argv,
            env=service.env,
            cwd=service.cwd,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded at this point
        )
        log_handle.close()
        self.services.append(service)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"{service.name}.pid").write_text(
            f"{service.process.pid} {service.term_signals}\n"
        )
        return service

    def wait_healthy(self, service: Service, timeout_s: float) -> float:
        """Block until the service answers its health URL; return seconds taken."""
        assert service.process is not None
        started = time.monotonic()
        last_error = "no answer yet"
        while time.monotonic() - started < timeout_s:
            code = service.process.poll()
            if code is not None:
                raise StartupError(
                    f"{service.name} exited with code {code} during start-up. "
                    f"Last lines of {service.log_file}:\n{tail(service.log_file)}"
                )
            if service.health_url is None:
                return time.monotonic() - started
            try:
                with urllib.request.urlopen(service.health_url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            time.sleep(0.25)
        raise StartupError(
            f"{service.name} did not become healthy at {service.health_url} within "
            f"{timeout_s:.0f}s ({last_error}). Last lines of {service.log_file}:\n"
            f"{tail(service.log_file)}"
        )

    def dead(self) -> list[Service]:
        """Services whose process has exited."""
        return [s for s in self.services if s.process and s.process.poll() is not None]

    # --- stop -----------------------------------------------------------------------------
    def stop_all(self, timeout_s: float = 20.0) -> None:
        for service in reversed(self.services):
            if service.process is not None:
                stop_session(
                    service.process.pid, service.term_signals, timeout_s, service.name, self.log
                )
                service.process.wait(timeout=5)
            (self.run_dir / f"{service.name}.pid").unlink(missing_ok=True)
        self.services.clear()


def stop_session(
    sid: int,
    term_signals: int,
    timeout_s: float,
    name: str,
    log: Callable[[str], None],
    reap: Callable[[], object] = lambda: None,
) -> None:
    """SIGTERM a session (as many times as its leader needs), then SIGKILL leftovers.

    ``reap`` lets the parent collect its exited child, which would otherwise linger as a zombie.
    """

    def alive() -> bool:
        reap()
        return session_alive(sid)

    if not alive():
        return
    for attempt in range(term_signals):
        signal_session(sid, signal.SIGTERM)
        deadline = time.monotonic() + (timeout_s if attempt == term_signals - 1 else 2.0)
        while time.monotonic() < deadline and alive():
            time.sleep(0.1)
        if not alive():
            log(f"  stopped {name}")
            return
    log(f"  {name} did not stop within {timeout_s:.0f}s; killing it")
    signal_session(sid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)


def belongs_to(sid: int, home: Path) -> bool:
    """True if a process of the session was started by driftloop for this state folder.

    Guards `down` against a stale PID file whose number now belongs to someone else.
    """
    marker = f"DRIFTLOOP_HOME={home}".encode()
    for pid in session_members(sid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            return True
    return False


def stop_from_pid_files(run_dir: Path, home: Path, log: Callable[[str], None] = print) -> int:
    """Stop whatever a previous supervisor left running (``driftloop down``)."""
    stopped = 0
    # Stop the worker before the servers it talks to.
    order = {"prefect-worker": 0, "mlflow-server": 1, "prefect-server": 2}
    files = sorted(run_dir.glob("*.pid"), key=lambda p: order.get(p.stem, -1))
    for pid_file in files:
        fields = pid_file.read_text().split()
        sid, term_signals = int(fields[0]), int(fields[1]) if len(fields) > 1 else 1
        if session_alive(sid) and belongs_to(sid, home):
            stop_session(sid, term_signals, 20.0, pid_file.stem, log)
            stopped += 1
        pid_file.unlink(missing_ok=True)
    return stopped
