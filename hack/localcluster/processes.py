"""Starting the components as detached processes, finding them again by pid file, stopping
them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from localcluster.common import (
    COMPONENTS,
    HOST,
    LOG_TAIL_LINES,
    PORTS,
    STOP_TIMEOUT,
    ClusterError,
    log,
)
from localcluster.state import Layout


def _proc_cmdline(pid: int) -> list[str] | None:
    # If this process started it (up() called in-process, e.g. from a pytest fixture), reap
    # it once it has exited so that it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):  # zombie or dead
        return None
    return raw.decode(errors="replace").split("\0")


def component_pid(layout: Layout, component: str) -> int | None:
    """The pid of the component if it is running and really is ours (not a reused pid)."""
    try:
        pid = int(layout.pid_file(component).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = _proc_cmdline(pid)
    if cmdline is None:
        return None
    # Every component's command line names a file in the state directory.
    if not any(str(layout.root) in arg for arg in cmdline):
        return None
    return pid


def start_process(layout: Layout, component: str, argv: list[str], env: dict[str, str]) -> None:
    log_path = layout.log_file(component)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=layout.root,
            env=env,
        )
    layout.pid_file(component).write_text(f"{proc.pid}\n")
    # /proc/<pid>/cmdline reads empty for a moment around exec; component_pid() relies on it.
    settle = time.monotonic() + 2.0
    while proc.poll() is None and time.monotonic() < settle:
        if component_pid(layout, component) is not None:
            break
        time.sleep(0.005)
    # Nothing waits for the child: it outlives this script and init reaps it. Keep the object
    # from warning that it is "still running" when it is collected.
    if proc.returncode is None:
        proc.returncode = 0


def stop_processes(layout: Layout, components: tuple[str, ...]) -> None:
    """SIGTERM each component's process group, SIGKILL whatever is left after a timeout."""
    running: dict[str, int] = {}
    for component in components:
        pid = component_pid(layout, component)
        if pid is not None:
            running[component] = pid
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while running and time.monotonic() < deadline:
        for component, pid in list(running.items()):
            if _proc_cmdline(pid) is None:
                del running[component]
        if running:
            time.sleep(0.05)
    for component, pid in running.items():
        log(f"{component} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f}s; sending SIGKILL")
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_proc_cmdline(pid) is not None for pid in running.values()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def stop_all(layout: Layout) -> None:
    """Stop everything, etcd last: an apiserver whose etcd is gone is slow to shut down."""
    stop_processes(layout, tuple(c for c in reversed(COMPONENTS) if c != "etcd"))
    stop_processes(layout, ("etcd",))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:  # started with setsid: the process leads its own group
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def component_failure(layout: Layout, component: str, headline: str) -> ClusterError:
    path = layout.log_file(component)
    return ClusterError(
        f"{headline}\n  {component} log: {path}\n  last lines:\n{log_tail(path)}\n"
        f"  (everything started is stopped again; state and logs stay in {layout.root} until "
        "`python3 hack/localcluster down` or the next `up`)"
    )


def check_port_free(name: str, port: int) -> None:
    env = next(env for n, env, _ in PORTS if n == name)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the Go servers do: connections of a cluster just stopped (TIME_WAIT) do not hold
        # the port; only a process listening on it does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as err:
            raise ClusterError(
                f"port {HOST}:{port} (for {name}) is already in use by another process ({err}); "
                f"stop it, or choose another port with {env}=..."
            ) from None
