"""The supervisor with real processes: restart with backoff, a restart budget, and no orphans.

The component is a real HTTP server (`python -m http.server`), health-checked over HTTP and
killed with SIGKILL, as a crashed Prefect or MLflow server would be; and a server without an
HTTP endpoint, checked by its port and a file it writes when ready, as the Ray head is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from driftloop.app.supervisor import (
    Component,
    HttpGet,
    PathExists,
    RestartBudgetExhausted,
    RestartPolicy,
    StartupError,
    Status,
    Supervisor,
    TcpConnect,
    service_processes,
    session_alive,
    stop_service_processes,
)
from tests.conftest import free_port


def test_backoff_grows_and_the_budget_is_a_sliding_window():
    policy = RestartPolicy(max_restarts=3, window_s=60, backoff_s=(1, 5, 20))
    assert [policy.delay(n) for n in range(5)] == [1, 5, 20, 20, 20]
    assert not policy.exhausted([0, 10], now=20)
    assert policy.exhausted([0, 10, 15], now=20)
    # Restarts older than the window no longer count: the component earned its budget back.
    assert not policy.exhausted([0, 10, 15], now=70.5)
    assert policy.recent([0, 10, 15], now=70.5) == [15]


def http_component(tmp_path: Path, policy: RestartPolicy | None) -> Component:
    port = free_port()
    return Component(
        name="web",
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        env=dict(os.environ),
        log_file=tmp_path / "web.log",
        health_url=f"http://127.0.0.1:{port}/",
        port=port,
        restart=policy,
        startup_timeout_s=30,
    )


def watch_until(supervisor: Supervisor, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the supervisor did not get there in time"
        supervisor.watch()
        time.sleep(0.2)


def test_a_killed_component_is_restarted_and_its_restart_logged(tmp_path):
    lines: list[str] = []
    supervisor = Supervisor(tmp_path / "run", service_id="svc-restart", log=lines.append)
    web = supervisor.start(http_component(tmp_path, RestartPolicy(backoff_s=(0.5,))))
    supervisor.wait_healthy(web, 30)
    first_pid = web.pid
    try:
        os.kill(first_pid, signal.SIGKILL)
        watch_until(supervisor, lambda: web.status is Status.RUNNING and web.pid != first_pid)
        assert supervisor.healthy_now(web)
        assert len(web.restarts) == 1
        text = "\n".join(lines)
        assert "web exited unexpectedly (code -9)" in text
        assert "Last lines of" in text  # the component's own log is quoted
        assert "Restarting web (restart 1;" in text
        assert "web is healthy again" in text
        assert (tmp_path / "run" / "web.pid").read_text().split()[0] == str(web.pid)
    finally:
        supervisor.stop_all()
    assert not session_alive(web.pid)


def test_a_spent_budget_stops_with_a_reason(tmp_path):
    supervisor = Supervisor(tmp_path / "run", service_id="svc-budget", log=lambda _: None)
    web = supervisor.start(
        http_component(tmp_path, RestartPolicy(max_restarts=1, window_s=600, backoff_s=(0.2,)))
    )
    supervisor.wait_healthy(web, 30)
    try:
        os.kill(web.pid, signal.SIGKILL)
        watch_until(supervisor, lambda: web.status is Status.RUNNING and len(web.restarts) == 1)
        os.kill(web.pid, signal.SIGKILL)
        with pytest.raises(RestartBudgetExhausted, match=r"web exited unexpectedly .* budget"):
            watch_until(supervisor, lambda: False)
    finally:
        supervisor.stop_all()


def port_and_file_component(tmp_path: Path, ready_file: Path) -> Component:
    """A server without an HTTP endpoint, checked as the Ray head is: its port opens first
    (the GCS), and it writes a file once it is ready (`ray start --block`'s exit log)."""
    script = tmp_path / "server.py"
    script.write_text(
        "import os, socket, sys, time\n"
        "port, ready = int(sys.argv[1]), sys.argv[2]\n"
        "if os.path.exists(ready):\n"
        "    os.unlink(ready)\n"
        "server = socket.create_server(('127.0.0.1', port))\n"
        "time.sleep(0.5)\n"
        "open(ready, 'w').close()\n"
        "time.sleep(600)\n"
    )
    port = free_port()
    return Component(
        name="server",
        argv=[sys.executable, str(script), str(port), str(ready_file)],
        env=dict(os.environ),
        log_file=tmp_path / "server.log",
        port=port,
        health=(TcpConnect("127.0.0.1", port), PathExists(ready_file)),
        restart=RestartPolicy(backoff_s=(1.0,)),
        startup_timeout_s=30,
    )


def test_a_component_checked_by_its_port_and_a_file_is_restarted_after_sigkill(tmp_path):
    lines: list[str] = []
    ready_file = tmp_path / "ready"
    supervisor = Supervisor(tmp_path / "run", service_id="svc-tcp", log=lines.append)
    component = port_and_file_component(tmp_path, ready_file)
    # What depended on the dead process is cleaned up once per death, before the restart.
    component.on_exit = lambda log: log(f"cleaned up after {component.status.value} server")
    server = supervisor.start(component)
    try:
        took = supervisor.wait_healthy(server, 30)
        assert took >= 0.4  # not before the file was written
        first_pid = server.pid
        os.kill(first_pid, signal.SIGKILL)
        watch_until(supervisor, lambda: server.status is Status.BACKOFF)
        # Dead: its file is left behind, and the port is what tells.
        assert ready_file.exists()
        assert not supervisor.healthy_now(server)
        assert not TcpConnect("127.0.0.1", server.port).passes()
        watch_until(supervisor, lambda: server.status is Status.RUNNING and server.pid != first_pid)
        assert supervisor.healthy_now(server)
        text = "\n".join(lines)
        assert "server exited unexpectedly (code -9)" in text
        assert lines.count("cleaned up after running server") == 1
        assert text.index("cleaned up after") < text.index("Restarting server (restart 1;")
        assert "server is healthy again" in text
    finally:
        supervisor.stop_all()
    assert not session_alive(server.pid)
    assert not session_alive(first_pid)


def test_a_component_that_exits_during_start_up_is_started_again(tmp_path):
    """As `ray start --head` on a busy machine: the first attempt exits non-zero ("The current
    node timed out during startup"), the second comes up. Within the budget that is a
    restart, not a failed `up`; once the budget is spent, it is a StartupError."""
    lines: list[str] = []
    supervisor = Supervisor(tmp_path / "run", service_id="svc-flaky", log=lines.append)
    component = port_and_file_component(tmp_path, tmp_path / "ready")
    flag = tmp_path / "failed-once"
    component.argv = [sys.executable, "-c",
                      f"import os, sys, runpy; flag = {str(flag)!r}\n"
                      "if not os.path.exists(flag):\n"
                      "    open(flag, 'w').close()\n"
                      "    print('timed out during startup'); sys.exit(1)\n"
                      "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                      *component.argv[1:]]  # fmt: skip
    component.restart = RestartPolicy(max_restarts=1, backoff_s=(0.2,))
    server = supervisor.start(component)
    try:
        supervisor.wait_healthy(server, 30)
        assert supervisor.healthy_now(server)
        assert len(server.restarts) == 1
        text = "\n".join(lines)
        assert "server exited with code 1 during start-up" in text
        assert "timed out during startup" in text  # its log is quoted
        assert "Restarting server (restart 1;" in text
    finally:
        supervisor.stop_all()

    # The budget (one restart) is spent: the next exit during start-up ends the start.
    flag.unlink()
    supervisor = Supervisor(tmp_path / "run2", service_id="svc-flaky-2", log=lines.append)
    component.restart = RestartPolicy(max_restarts=0, backoff_s=(0.2,))
    server = supervisor.start(component)
    try:
        with pytest.raises(StartupError, match="server exited with code 1 during start-up"):
            supervisor.wait_healthy(server, 30)
    finally:
        supervisor.stop_all()


def test_a_failed_start_names_the_checks_that_did_not_pass(tmp_path):
    port = free_port()
    never = tmp_path / "never"
    supervisor = Supervisor(tmp_path / "run", service_id="svc-unhealthy", log=lambda _: None)
    # A process that runs but never listens nor writes its file.
    silent = supervisor.start(
        Component("silent", [sys.executable, "-c", "import time; time.sleep(600)"],
                  dict(os.environ), tmp_path / "silent.log", restart=None,
                  health=(TcpConnect("127.0.0.1", port), PathExists(never)))
    )  # fmt: skip
    try:
        with pytest.raises(StartupError) as failed:
            supervisor.wait_healthy(silent, 1.5)
        assert (
            f"silent did not become healthy (tcp 127.0.0.1:{port} and file {never}) within 2s"
            in str(failed.value)
        )
    finally:
        supervisor.stop_all()


def spawner_script(tmp_path: Path) -> tuple[Path, Path]:
    """A component that starts a process in a session of its own, which starts a child whose
    environment is empty: what a worker does with a flow run, and a flow run with Ray."""
    script = tmp_path / "spawn.py"
    pid_file = tmp_path / "leader.pid"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "leader = subprocess.Popen([sys.executable, '-c', "
        "'import subprocess, sys, time; "
        'subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env={}); '
        "time.sleep(600)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(leader.pid))\n"
        "time.sleep(600)\n"
    )
    return script, pid_file


def wait_for_processes(service_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(service_processes(service_id)) < count:
        assert time.monotonic() < deadline, service_processes(service_id)
        time.sleep(0.2)


def test_stopping_finds_processes_in_other_sessions_by_the_service_id(tmp_path):
    script, pid_file = spawner_script(tmp_path)
    supervisor = Supervisor(tmp_path / "run", service_id="svc-orphans", log=lambda _: None)
    parent = supervisor.start(
        Component("spawner", [sys.executable, str(script)], dict(os.environ),
                  tmp_path / "spawner.log", restart=None)
    )  # fmt: skip
    wait_for_processes("svc-orphans", 3)
    leader = int(pid_file.read_text())
    assert os.getsid(leader) == leader != os.getsid(parent.pid)
    supervisor.stop_all()
    assert service_processes("svc-orphans") == []
    assert not session_alive(leader)


def test_down_stops_what_a_killed_supervisor_left(tmp_path):
    """`driftloop down` after `kill -9` of `up`: the components die with their parent, but a
    process they started in a session of its own lives on; the service id finds it."""
    from driftloop.app.supervisor import stop_from_pid_files

    script, pid_file = spawner_script(tmp_path)
    home = tmp_path / "state"
    run_dir = tmp_path / "run"
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from driftloop.app.supervisor import Component, Supervisor\n"
        f"s = Supervisor(Path({str(run_dir)!r}), service_id='svc-down', log=lambda _: None)\n"
        f"s.start(Component('spawner', [sys.executable, {str(script)!r}], dict(os.environ),"
        f" Path({str(tmp_path / 'spawner.log')!r}), restart=None))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    up = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "DRIFTLOOP_HOME": str(home)},
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert up.stdout.readline().strip() == "ready"
    wait_for_processes("svc-down", 3)
    up.kill()
    up.wait()
    leader = int(pid_file.read_text())
    assert session_alive(leader)  # the orphan outlived its supervisor
    assert stop_from_pid_files(run_dir, home, log=lambda _: None) >= 1
    assert service_processes("svc-down") == []
    assert not session_alive(leader)
    assert list(run_dir.glob("*.pid")) == []


def test_components_die_with_a_supervisor_killed_outright(tmp_path):
    """The parent-death signal (`die_with_parent`): a component runs in a session of its own,
    so when its supervisor gets SIGKILL, only the kernel can stop it; it must not live on."""
    run_dir = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from driftloop.app.supervisor import Component, Supervisor\n"
        f"s = Supervisor(Path({str(run_dir)!r}), service_id='svc-pdeath', log=lambda _: None)\n"
        "s.start(Component('sleeper', [sys.executable, '-c', 'import time; time.sleep(600)'],"
        f" {{}}, Path({str(tmp_path / 'sleeper.log')!r}), restart=None))\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    up = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert up.stdout.readline().strip() == "ready"
    sleeper = int((run_dir / "sleeper.pid").read_text().split()[0])
    assert session_alive(sleeper)
    assert os.getsid(sleeper) == sleeper != os.getsid(up.pid)  # out of the supervisor's reach
    up.kill()
    up.wait()
    deadline = time.monotonic() + 10
    try:
        while session_alive(sleeper):
            assert time.monotonic() < deadline, "the component outlived its killed supervisor"
            time.sleep(0.1)
    finally:
        stop_service_processes("svc-pdeath", log=lambda _: None)  # no orphan if it failed


def test_a_process_known_only_by_its_files_in_the_state_folder_is_stopped(tmp_path):
    """Ray's helpers rewrite their environment and may sit in a session nobody knows; the
    last sweep finds them by the files they hold open under the state folder's Ray dir."""
    from driftloop.app.supervisor import processes_using, stop_processes_using

    ray_dir = tmp_path / "ray"
    ray_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import time; f = open({str(ray_dir / 'agent.log')!r}, 'w'); print('ready', flush=True);"
         " time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env={},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert processes_using((str(ray_dir),)) == [holder.pid]
        assert processes_using((str(tmp_path / "elsewhere"),)) == []
        # Whole path components: ".../ra" is not a folder above ".../ray/agent.log".
        assert processes_using((str(tmp_path / "ra"),)) == []
        stop_processes_using((str(ray_dir),), log=lambda _: None)
        holder.wait(timeout=5)
        assert processes_using((str(ray_dir),)) == []
    finally:
        holder.kill()


def test_a_port_answered_by_something_other_than_http_is_not_healthy():
    # A port taken by another program (CI saw a Ray agent's gRPC server answer on the port
    # meant for Prefect) fails the check instead of crashing `up` with BadStatusLine.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1024)
                connection.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        assert not HttpGet(f"http://127.0.0.1:{port}/", timeout_s=5).passes()
        thread.join(timeout=5)


def test_a_one_shot_relays_its_output_and_is_interrupted_on_stop(tmp_path):
    """`up`'s set-up runs as a one-shot: its lines reach the log, its exit code is returned,
    and a stop (Ctrl-C of `up`) interrupts it instead of waiting for it."""
    lines: list[str] = []
    supervisor = Supervisor(tmp_path / "run", service_id="one-shot-test", log=lines.append)
    stop = threading.Event()
    script = "print('prepared'); raise SystemExit(3)"
    done = supervisor.start_one_shot("prepare", [sys.executable, "-c", script], dict(os.environ))
    assert done.wait(stop) == 3
    assert lines == ["prepared"]

    script = "import os, time; print(os.environ['DRIFTLOOP_SERVICE_ID']); time.sleep(60)"
    slow = supervisor.start_one_shot("slow", [sys.executable, "-u", "-c", script], dict(os.environ))
    deadline = time.monotonic() + 30
    while "one-shot-test" not in lines:  # it carries the service id, as components do
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    stop.set()
    started = time.monotonic()
    assert slow.wait(stop) is None
    # SIGINT, or SIGKILL 10 s later where SIGINT is ignored (as under pytest-xdist).
    assert time.monotonic() - started < 20, "the stop waited for the one-shot to finish"
    assert slow.process.poll() is not None
