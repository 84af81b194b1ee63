"""up / down / status: the lifecycle of the local cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localcluster.apiclient import Api, health_url, probe_http
from localcluster.common import (
    BUILD_SCRIPT,
    COMPONENTS,
    DEFAULT_TIMEOUT,
    HACK_DIR,
    NODES,
    SMOKE_IMAGE,
    ClusterError,
    log,
)
from localcluster.components import component_argv, component_env
from localcluster.pki import make_pki, write_kubeconfig
from localcluster.processes import (
    check_port_free,
    component_pid,
    start_process,
    stop_all,
    stop_processes,
)
from localcluster.state import (
    Layout,
    cache_dir,
    cluster_lock,
    configured_ports,
    read_state,
    read_versions,
    state_dir,
)
from localcluster.waiting import Deadline, node_manifest, node_ready, pod_ready, wait_until


def problem(layout: Layout | None = None) -> str | None:
    """Why the cluster is not up, or None when every component runs and the apiserver's
    /readyz answers ok to the admin certificate."""
    layout = layout or Layout(state_dir())
    if not layout.root.exists():
        return f"{layout.root} does not exist"
    state = read_state(layout)
    if not state or not state.get("complete") or not layout.admin_kubeconfig.is_file():
        return f"{layout.root} holds no completely started cluster"
    stopped = [c for c in COMPONENTS if component_pid(layout, c) is None]
    if stopped:
        return "not running: " + ", ".join(stopped)
    try:
        ok, detail = Api(layout, int(state["ports"]["kube-apiserver"])).readyz()
    except (OSError, ssl.SSLError, KeyError, ValueError) as err:
        ok, detail = False, str(err)
    return None if ok else f"apiserver /readyz: {detail[:300]}"


def is_up(layout: Layout | None = None) -> bool:
    return problem(layout) is None


def kubeconfig_path() -> Path:
    """The admin kubeconfig of the running cluster; ClusterError if it is not up."""
    layout = Layout(state_dir())
    if (why := problem(layout)) is not None:
        raise ClusterError(
            f"the local cluster is not up ({why}); start it with `python3 hack/localcluster up`"
        )
    return layout.admin_kubeconfig


def build_binaries() -> Path:
    if override := os.environ.get("GRAFT_BIN_DIR"):
        return Path(override)
    log(f"running {BUILD_SCRIPT.relative_to(HACK_DIR.parent)} (it skips what is built)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise ClusterError(f"{BUILD_SCRIPT} printed no bin directory")
    return Path(lines[-1])


def up(timeout: float | None = None) -> Path:
    """Start the local cluster unless it is already up; returns the admin kubeconfig path."""
    if timeout is None:
        timeout = float(os.environ.get("GRAFT_CLUSTER_TIMEOUT") or DEFAULT_TIMEOUT)
    layout = Layout(state_dir())
    with cluster_lock():
        if is_up(layout):
            log(f"already up (state dir {layout.root})")
            return layout.admin_kubeconfig
        _down_locked(layout, quiet=True)
        bin_dir = build_binaries()
        for component in (*COMPONENTS, "kubectl"):
            if not (bin_dir / component).is_file():
                raise ClusterError(f"{bin_dir / component} is missing (build it first)")
        started = time.monotonic()
        try:
            _start(layout, bin_dir, Deadline(timeout))
        except BaseException:
            # Leave nothing running half-started; keep the state directory and its logs.
            stop_all(layout)
            raise
        log(f"up in {time.monotonic() - started:.1f}s; kubeconfig: {layout.admin_kubeconfig}")
        return layout.admin_kubeconfig


def _start(layout: Layout, bin_dir: Path, deadline: Deadline) -> None:
    ports = configured_ports()
    for name, port in ports.items():
        check_port_free(name, port)
    for directory in (layout.root, layout.logs, layout.run):
        directory.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    state: dict[str, Any] = {"ports": ports, "bin_dir": str(bin_dir), "complete": False}
    layout.state_file.write_text(json.dumps(state, indent=2) + "\n")

    log("creating certificates")
    make_pki(layout)
    write_kubeconfig(layout, layout.admin_kubeconfig, "admin", ports["kube-apiserver"])
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        write_kubeconfig(
            layout, layout.component_kubeconfig(component), component, ports["kube-apiserver"]
        )

    def launch(component: str) -> None:
        argv = component_argv(component, bin_dir, layout, ports)
        start_process(layout, component, argv, component_env(component, layout))

    def healthy(component: str) -> Callable[[], bool]:
        url = health_url(component, ports)
        assert url is not None
        return lambda: probe_http(url)

    log("starting etcd")
    launch("etcd")
    wait_until(
        "etcd /health ok", healthy("etcd"), deadline, layout=layout, watch=("etcd",), blame="etcd"
    )

    log("starting kube-apiserver")
    launch("kube-apiserver")
    api = Api(layout, ports["kube-apiserver"])
    wait_until(
        "kube-apiserver /readyz ok",
        lambda: api.readyz()[0],
        deadline,
        layout=layout,
        watch=("etcd", "kube-apiserver"),
        blame="kube-apiserver",
    )

    log("starting kube-controller-manager, kube-scheduler and kwok")
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        launch(component)
    versions = read_versions()
    for name, cidr in NODES:
        status, payload = api.request("POST", "/api/v1/nodes", node_manifest(name, cidr, versions))
        if status not in (201, 409):
            raise ClusterError(f"creating node {name} failed ({status}): {payload}")

    everything = COMPONENTS
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        wait_until(
            f"{component} /healthz ok",
            healthy(component),
            deadline,
            layout=layout,
            watch=everything,
            blame=component,
        )

    def nodes_ready() -> bool:
        return all(node_ready(api.get(f"/api/v1/nodes/{name}")[1]) for name, _ in NODES)

    wait_until(
        "both nodes Ready", nodes_ready, deadline, layout=layout, watch=everything, blame="kwok"
    )

    def default_service_account() -> bool:
        status, _ = api.get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    wait_until(
        "the default ServiceAccount in namespace default",
        default_service_account,
        deadline,
        layout=layout,
        watch=everything,
        blame="kube-controller-manager",
    )

    smoke_test(api, layout, deadline)
    state["complete"] = True
    state["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    layout.state_file.write_text(json.dumps(state, indent=2) + "\n")


def smoke_test(api: Api, layout: Layout, deadline: Deadline) -> None:
    """A pod is scheduled onto a kwok node, becomes Ready, and goes away when deleted."""
    name = f"graft-smoke-{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/namespaces/default/pods/{name}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        # The default grace period: the pod goes away only if kwok deletes it, as a kubelet does.
        "spec": {"containers": [{"name": "smoke", "image": SMOKE_IMAGE}]},
    }
    status, payload = api.request("POST", "/api/v1/namespaces/default/pods", pod)
    if status != 201:
        raise ClusterError(f"creating the smoke pod failed ({status}): {payload}")

    def scheduled() -> bool:
        pod = api.get(path)[1]
        return isinstance(pod, dict) and bool(pod.get("spec", {}).get("nodeName"))

    wait_until(
        "the smoke pod scheduled",
        scheduled,
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kube-scheduler",
    )
    wait_until(
        "the smoke pod Ready",
        lambda: pod_ready(api.get(path)[1]),
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kwok",
    )
    api.request("DELETE", path)
    wait_until(
        "the smoke pod deleted",
        lambda: api.get(path)[0] == 404,
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kwok",
    )


def restart(component: str, timeout: float = 120.0) -> None:
    """Stop one component of the running cluster and start it again with the same command line
    and state (what a node reboot or an upgrade of that component does); chaos tests use it."""
    if component not in COMPONENTS:
        raise ClusterError(f"{component!r} is not one of {', '.join(COMPONENTS)}")
    layout = Layout(state_dir())
    with cluster_lock():
        if not is_up(layout):
            raise ClusterError("the cluster is not up")
        state = json.loads(layout.state_file.read_text())
        ports = {k: int(v) for k, v in state["ports"].items()}
        bin_dir = Path(state["bin_dir"])
        stop_processes(layout, (component,))
        argv = component_argv(component, bin_dir, layout, ports)
        start_process(layout, component, argv, component_env(component, layout))
        url = health_url(component, ports)
        if url is None:  # the API server: /readyz needs the admin certificate
            api = Api(layout, ports["kube-apiserver"])

            def healthy() -> bool:
                return bool(api.readyz()[0])
        else:

            def healthy() -> bool:
                return probe_http(url)

        wait_until(
            f"{component} healthy again",
            healthy,
            Deadline(timeout),
            layout=layout,
            watch=(component,),
            blame=component,
        )
        log(f"restarted {component}")


def down() -> None:
    """Stop the local node (`graft localnode`) and every component of the local cluster, and
    remove the cluster's state directory."""
    stop_local_node()
    layout = Layout(state_dir())
    with cluster_lock():
        _down_locked(layout, quiet=False)


LOCAL_NODE_PID_FILE = ("localnode", "localnode.pid")  # graft.localnode.paths, under cache_dir()
LOCAL_NODE_STOP_SECONDS = 30.0


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_local_node() -> None:
    """SIGTERM the running `graft localnode` (it stops the processes it started), SIGKILL it
    after LOCAL_NODE_STOP_SECONDS; its pid file says which process that is."""
    pid_file = cache_dir().joinpath(*LOCAL_NODE_PID_FILE)
    try:
        pid = int(pid_file.read_text().strip())
        # A stale pid file may name a pid the system gave to another program since.
        if b"localnode" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            raise ProcessLookupError(pid)
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    log(f"stopping the local node (pid {pid})")
    deadline = time.monotonic() + LOCAL_NODE_STOP_SECONDS
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.2)
    else:
        log(
            f"the local node (pid {pid}) did not stop in {LOCAL_NODE_STOP_SECONDS:.0f}s: killing it"
        )
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _down_locked(layout: Layout, *, quiet: bool) -> None:
    if not layout.root.exists():
        if not quiet:
            log(f"nothing to stop ({layout.root} does not exist)")
        return
    running = [c for c in COMPONENTS if component_pid(layout, c) is not None]
    if running and not quiet:
        log("stopping " + ", ".join(reversed(running)))
    elif running:
        log("cleaning up a stale cluster: stopping " + ", ".join(reversed(running)))
    stop_all(layout)
    leftover = [c for c in COMPONENTS if component_pid(layout, c) is not None]
    if leftover:
        raise ClusterError(f"could not stop {', '.join(leftover)}; state kept in {layout.root}")
    shutil.rmtree(layout.root)
    if not quiet:
        log(f"removed {layout.root}")


def status() -> tuple[list[str], bool]:
    """One line per component, plus the apiserver's readiness; and whether all is well."""
    layout = Layout(state_dir())
    state = read_state(layout) or {}
    ports = state.get("ports") or configured_ports()
    lines: list[str] = []
    all_ok = True
    for component in COMPONENTS:
        pid = component_pid(layout, component)
        if pid is None:
            all_ok = False
            lines.append(f"{component:<24} not running")
            continue
        url = health_url(component, ports)
        health = ""
        if url is not None:
            healthy = probe_http(url)
            all_ok &= healthy
            health = "  healthy" if healthy else "  UNHEALTHY"
        lines.append(f"{component:<24} running (pid {pid}){health}")
    if layout.cert("admin").is_file():
        try:
            ok, detail = Api(layout, int(ports["kube-apiserver"])).readyz()
        except (OSError, ssl.SSLError) as err:
            ok, detail = False, str(err)
    else:
        ok, detail = False, "no admin certificate (cluster not created)"
    all_ok &= ok
    lines.append(f"{'apiserver /readyz':<24} {'ok' if ok else 'not ready: ' + detail[:200]}")
    return lines, all_ok
