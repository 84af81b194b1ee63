"""The local node's container runtime for model-server pods (`graft localnode`, and the tests).

kwok moves pods to Running/Ready and gives them an IP from its node's loopback podCIDR, but
runs nothing. `PodServers` runs what the pod asks for: for every Running pod that matches its
label selector, it starts the pod's own container command and args (`graft serve ...`, exactly
as the operator wrote them, `--lora-modules` included) as a local process, with `--host`
replaced by the pod's IP, so the pod's IP and port answer HTTP as a real pod would. When the
pod is deleted, its process is stopped (before any new one starts: pod IPs are reused); a
process that exits is started again, as the kubelet restarts a container. The operator's code paths are the production ones: it
finds pods through the API and talks to `http://<podIP>:8000`.

Which pods: Running ones with a pod IP that match the label selector and, when `images` is
given (the local node gives Graft's runtime image), whose first container runs one of them;
other pods stay kwok's fakes. Logs: `<log_dir>/<pod>.log`, or `<log_dir>/<pod>/<container>.log`
with `nested_logs` (the local node's documented place, see graft.localnode.paths).

Readiness, given a `StatusWriter` (the local node gives one; the tests' harness does not): kwok
reports a pod Ready the moment it starts, before anything answers. The local node then owns the
pod's readiness as a kubelet would: it marks the pod not Ready when it starts the server, probes
the container's own `readinessProbe` (httpGet; at most every second, 1 s deadline, no
redirects) and marks it Ready when that answers 2xx/3xx, not Ready again when it stops
answering or the process exits. kwok touches a Running pod's status no more, so nothing undoes
it; between kwok's start and the first patch the pod looks Ready for a moment.
"""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

Obj = dict[str, Any]


class PodSource(Protocol):
    """Reads of the API server: tests/harness/kube.Cluster (kubectl) and the local node's
    KubeSource (the kubernetes client) both provide them."""

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None: ...

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[Obj]: ...


class StatusWriter(Protocol):
    """Writes a pod's status (a strategic merge patch of its status subresource)."""

    def patch_pod_status(self, namespace: str, name: str, status: Obj) -> None: ...


PROBE_PERIOD = 1.0  # seconds between two probes of one pod
PROBE_TIMEOUT = 1.0  # a probe's deadline, connection included


def readiness_target(pod: Obj) -> tuple[str, int, str] | None:
    """(host, port, path) of the first container's httpGet readinessProbe at the pod's IP; a
    named port is looked up in the container's ports. None without such a probe."""
    container = pod["spec"]["containers"][0]
    probe = (container.get("readinessProbe") or {}).get("httpGet")
    ip = (pod.get("status") or {}).get("podIP")
    if not probe or not ip:
        return None
    port = probe.get("port")
    if isinstance(port, str) and not port.isdigit():
        named = [p for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            raise ServerPodError(
                f"pod {pod['metadata']['name']}: readinessProbe port {port!r} is not one of "
                "the container's ports"
            )
        port = named[0]["containerPort"]
    return ip, int(port), str(probe.get("path") or "/")


def probe(target: tuple[str, int, str]) -> bool:
    """One HTTP GET, as the kubelet's httpGet probe: 200-399 is success; redirects are not
    followed, anything else (refused, timeout, 5xx) is failure."""
    host, port, path = target
    conn = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT)
    try:
        conn.request("GET", path, headers={"User-Agent": "graft-localnode/probe"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def readiness_patch(pod: Obj, ready: bool, now: datetime) -> Obj:
    """The status patch that says the pod's server is (not) ready: the Ready and ContainersReady
    conditions (merged by type) and each container status' `ready` (the list is replaced, so it
    is sent whole, as it is)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = "True" if ready else "False"
    # The conditions merge by type, field by field: a ready one drops the reason (null deletes
    # a field in a strategic merge patch), as the kubelet's has none.
    reason = None if ready else "ContainersNotReady"
    conditions = [
        {"type": kind, "status": value, "lastTransitionTime": stamp, "reason": reason}
        for kind in ("ContainersReady", "Ready")
    ]
    patch: Obj = {"conditions": conditions}
    statuses = (pod.get("status") or {}).get("containerStatuses")
    if statuses:
        patch["containerStatuses"] = [{**c, "ready": ready} for c in statuses]
    return patch


class ServerPodError(Exception):
    """The pod asks for something the local node cannot run; it is reported, not started."""


def takes_server_pod(pod: Obj, images: frozenset[str] | None) -> bool:
    """Whether the local node runs this (selector-matched) pod's server."""
    meta, status = pod["metadata"], pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if not status.get("podIP"):
        return False
    if images is None:
        return True
    containers = pod["spec"].get("containers") or [{}]
    return containers[0].get("image") in images


def server_argv(pod: Obj) -> list[str]:
    """The pod's `graft serve ...` command line, bound to its pod IP, as run here."""
    container = pod["spec"]["containers"][0]
    command, args = list(container.get("command") or []), list(container.get("args") or [])
    if command != ["graft"]:
        raise ServerPodError(f"pod {pod['metadata']['name']} does not run graft: {command}")
    if "--host" not in args:
        raise ServerPodError(f"pod {pod['metadata']['name']} has no --host argument: {args}")
    args[args.index("--host") + 1] = pod["status"]["podIP"]
    return [sys.executable, "-m", "graft.cli", *args, "--uvicorn-log-level", "warning"]


class PodServers:
    def __init__(
        self,
        cluster: PodSource,
        namespace: str,
        selector: str,
        log_dir: Path,
        *,
        images: frozenset[str] | None = None,
        nested_logs: bool = False,
        status: StatusWriter | None = None,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.log_dir = log_dir
        self.images = images
        self.nested_logs = nested_logs
        self.status = status
        self.ready: dict[str, bool] = {}  # uid -> the readiness last written (with `status`)
        self._probed: dict[str, float] = {}  # uid -> monotonic time of its last probe
        self.processes: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}  # uid -> (pod, proc)
        self.started: list[str] = []  # pod names, in the order they were started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> PodServers:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for _pod, proc in self.processes.values():
            terminate(proc)

    def start(self) -> PodServers:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    def runs(self, pod: dict[str, Any]) -> bool:
        """Whether this very pod's server process is running (its IP may have been another
        pod's a moment ago, and that pod's server may still have been answering there)."""
        running = self.processes.get(pod["metadata"]["uid"])
        return running is not None and running[1].poll() is None

    def args_of(self, pod_name: str) -> list[str]:
        """The command line a pod's server was started with."""
        for name, proc in self.processes.values():
            if name == pod_name:
                return [str(a) for a in proc.args]  # type: ignore[union-attr]
        raise KeyError(pod_name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # keep the runtime alive; tests see the error list
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def _sync(self) -> None:
        pods = self.cluster.list("pods", self.namespace, self.selector)
        alive = {}
        for pod in pods:
            if takes_server_pod(pod, self.images):
                alive[pod["metadata"]["uid"]] = pod
        # Stop the servers of pods that went first: kwok gives a freed pod IP to the next pod,
        # and a replacement started while its predecessor still holds ip:8000 cannot bind.
        for uid in list(self.processes):
            if uid not in alive:
                _, proc = self.processes.pop(uid)
                terminate(proc)
                self.ready.pop(uid, None)
                self._probed.pop(uid, None)
        for uid, pod in alive.items():
            running = self.processes.get(uid)
            if running is not None and running[1].poll() is not None:
                # Its container exited: restart it, as the kubelet does (restartPolicy Always).
                self.errors.append(f"{running[0]} exited with {running[1].returncode}")
                del self.processes[uid]
            if uid not in self.processes:
                self._start(pod)
                self._set_ready(pod, False)
            else:
                self._check_ready(pod)

    def _check_ready(self, pod: Obj) -> None:
        if self.status is None:
            return
        uid = pod["metadata"]["uid"]
        now = time.monotonic()
        if now - self._probed.get(uid, 0.0) < PROBE_PERIOD:
            return
        self._probed[uid] = now
        try:
            target = readiness_target(pod)
        except ServerPodError as exc:
            if str(exc) not in self.errors:
                self.errors.append(str(exc))
            self._set_ready(pod, False)
            return
        self._set_ready(pod, target is None or probe(target))

    def _set_ready(self, pod: Obj, ready: bool) -> None:
        """Write the pod's readiness when it changed (and once, not Ready, at each start)."""
        if self.status is None:
            return
        uid = pod["metadata"]["uid"]
        if self.ready.get(uid) == ready:
            return
        patch = readiness_patch(pod, ready, datetime.now(UTC))
        self.status.patch_pod_status(self.namespace, pod["metadata"]["name"], patch)
        self.ready[uid] = ready

    def _start(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        argv = server_argv(pod)
        env = {**os.environ, **self._container_env(container)}
        name = pod["metadata"]["name"]
        path = (
            self.log_dir / name / f"{container['name']}.log"
            if self.nested_logs
            else self.log_dir / f"{name}.log"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes[pod["metadata"]["uid"]] = (pod["metadata"]["name"], proc)
        self.started.append(pod["metadata"]["name"])

    def _container_env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's env, values and Secret keys resolved as the kubelet would (the
        model server's API key comes from a Secret); a missing Secret fails like the kubelet's
        CreateContainerConfigError, by not starting."""
        env = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                raise ServerPodError(f"env {var['name']}: only values and secretKeyRef here")
            secret = self.cluster.get("secret", ref["name"], self.namespace)
            if secret is None:
                raise ServerPodError(f"secret {ref['name']} of env {var['name']} is missing")
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
