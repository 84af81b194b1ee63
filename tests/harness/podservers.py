"""A stand-in for the container runtime of model-server pods, for tests on the local cluster.

kwok moves pods to Running/Ready and gives them an IP from its node's loopback podCIDR, but
runs nothing. `PodServers` runs what the pod asks for: for every Running pod that matches its
label selector, it starts the pod's own container command and args (`graft serve ...`, exactly
as the operator wrote them, `--lora-modules` included) as a local process, with `--host`
replaced by the pod's IP, so the pod's IP and port answer HTTP as a real pod would. When the
pod is deleted, its process is stopped (before any new one starts: pod IPs are reused); a
process that exits is started again, as the kubelet restarts a container. The operator's code paths are the production ones: it
finds pods through the API and talks to `http://<podIP>:8000`.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.kube import Cluster


class PodServers:
    def __init__(self, cluster: Cluster, namespace: str, selector: str, log_dir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.log_dir = log_dir
        self.processes: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}  # uid -> (pod, proc)
        self.started: list[str] = []  # pod names, in the order they were started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> PodServers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for _, proc in self.processes.values():
            _terminate(proc)

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
            meta, status = pod["metadata"], pod.get("status") or {}
            if (
                meta.get("deletionTimestamp")
                or status.get("phase") != "Running"
                or not status.get("podIP")
            ):
                continue
            alive[meta["uid"]] = pod
        # Stop the servers of pods that went first: kwok gives a freed pod IP to the next pod,
        # and a replacement started while its predecessor still holds ip:8000 cannot bind.
        for uid in list(self.processes):
            if uid not in alive:
                _, proc = self.processes.pop(uid)
                _terminate(proc)
        for uid, pod in alive.items():
            running = self.processes.get(uid)
            if running is not None and running[1].poll() is not None:
                # Its container exited: restart it, as the kubelet does (restartPolicy Always).
                self.errors.append(f"{running[0]} exited with {running[1].returncode}")
                del self.processes[uid]
            if uid not in self.processes:
                self._start(pod)

    def _start(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        command, args = list(container.get("command") or []), list(container.get("args") or [])
        if command != ["graft"]:
            raise AssertionError(f"pod {pod['metadata']['name']} does not run graft: {command}")
        ip = pod["status"]["podIP"]
        args[args.index("--host") + 1] = ip
        argv = [sys.executable, "-m", "graft.cli", *args, "--uvicorn-log-level", "warning"]
        env = {**os.environ, **self._container_env(container)}
        log = (self.log_dir / f"{pod['metadata']['name']}.log").open("wb")
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
                raise AssertionError(f"env {var['name']}: only values and secretKeyRef here")
            secret = self.cluster.get("secret", ref["name"], self.namespace)
            if secret is None:
                raise AssertionError(f"secret {ref['name']} of env {var['name']} is missing")
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
