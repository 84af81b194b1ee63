"""The local node's kubelet for the pods of batch/v1 Jobs in one namespace.

The local control plane has no container runtime: kwok plays the nodes, moves pods to Running
and ends a Job's pod after `kwok.graft.dev/run-duration` with no termination message. So that
Graft's Jobs (dataset validation, model inspection, training) really run on a laptop, and so
that the integration tests see what those Jobs really print, this does the kubelet's part for
Job pods, on this machine: the operator, the API server and the Job controller all run exactly
their production code paths. `graft localnode` runs it; tests/harness/kubelet.py re-exports it.
What it does, precisely:

1. Which pods. Every 0.3 s it lists the pods of its namespace and takes each pod that is owned by
   a batch/v1 Job, is Running (kwok bound it to a node and started it), carries the annotation
   `kwok.graft.dev/run-duration` (so kwok will not end it first: the operator under test runs
   with GRAFT_JOB_POD_ANNOTATIONS='{"kwok.graft.dev/run-duration": "1h"}', the production
   setting for extra annotations on Job pods), and was not taken before.
2. Volumes. emptyDir: a fresh directory per pod. persistentVolumeClaim: one directory per claim,
   shared by every pod of the namespace, like a volume. configMap: the live ConfigMap's keys (or
   its `items`) written as files. Any other volume type fails the pod with a message.
3. Containers. The init containers, in order, then the containers, each run as a local process
   with the pod's command, args and environment (`env` values, fieldRef to the pod's name and
   namespace, secretKeyRef/configMapKeyRef and envFrom, read from the API; optional ones skipped
   when missing), with three changes and nothing else: (a) a volume mount path at the start of
   an argument or env value, after `=` or after `file://`, followed by `/` or the end, is
   replaced by the directory standing in for that volume (subPath included); (b) the executable
   `graft` is this virtualenv's `graft` and `python`/`python3` its interpreter; (c)
   GRAFT_TERMINATION_MESSAGE_PATH names a file standing in for the container's
   terminationMessagePath, which Graft's entrypoints honour. The base environment is PATH, HOME
   (a scratch directory), HF_HUB_OFFLINE=1 and TOKENIZERS_PARALLELISM=false.
4. Results. A container's termination message is that file, cut to 4096 bytes; when it is empty,
   the exit code non-zero and the policy FallbackToLogsOnError, the last 80 lines (at most 2048
   bytes) of its output, as the kubelet does. An init container that fails ends the pod
   (restartPolicy Never): later containers do not run.
5. Status. It patches the pod's status subresource as the kubelet would: phase Succeeded or
   Failed; Ready and ContainersReady False (PodCompleted / PodFailed); initContainerStatuses and
   containerStatuses with state.terminated {exitCode, reason Completed or Error, message,
   startedAt, finishedAt} (containers that never ran: waiting, PodInitializing).

6. Deletion. A pod deleted while its containers run (or whose deletion has begun) has its
   running process killed, and its later containers are not started; the status patch then
   finds no pod and is skipped.

Logs: `<workdir>/<pod>/<container>.log`, or `<logs>/<pod>/<container>.log` when `logs` is given
(the local node's documented place, see graft.localnode.paths).

Not simulated: images (every container runs this checkout's code), resource requests and GPUs,
security contexts, probes, container restarts.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

TERMINATION_ENV = "GRAFT_TERMINATION_MESSAGE_PATH"
RUN_DURATION_ANNOTATION = "kwok.graft.dev/run-duration"
MESSAGE_LIMIT = 4096
LOG_FALLBACK_LINES = 80
LOG_FALLBACK_BYTES = 2048
POLL_SECONDS = 0.3

Obj = dict[str, Any]


class PodSetupError(Exception):
    """The pod uses something the harness cannot provide; the pod fails with this message."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """One container as the harness ran it."""

    name: str
    argv: list[str]
    exit_code: int
    message: str
    log: Path
    init: bool
    started: str
    finished: str


@dataclass
class PodRun:
    name: str
    job: str
    containers: list[ContainerRun] = field(default_factory=list)
    phase: str = ""
    error: str = ""


def rewrite(value: str, mapping: dict[str, str]) -> str:
    """Replace mount paths by their local directories where they start a path (see step 3)."""
    for mount in sorted(mapping, key=len, reverse=True):
        pattern = re.compile(r"(^|=|file://)" + re.escape(mount.rstrip("/")) + r"(?=/|$)")
        local = mapping[mount].replace("\\", "\\\\")
        value = pattern.sub(r"\g<1>" + local, value)
    return value


def takes_job_pod(pod: Obj) -> bool:
    """Whether the local node runs this pod as a Job pod (step 1, without the "taken before")."""
    meta, status = pod["metadata"], pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    if not any(
        r.get("kind") == "Job" and r.get("apiVersion") == "batch/v1"
        for r in meta.get("ownerReferences") or []
    ):
        return False
    if RUN_DURATION_ANNOTATION not in (meta.get("annotations") or {}):
        return False
    return bool(status.get("phase") == "Running")


def fallback_message(log: Path) -> str:
    """The end of a log as the kubelet takes it for FallbackToLogsOnError."""
    lines = log.read_bytes().splitlines(keepends=True)[-LOG_FALLBACK_LINES:]
    tail = b"".join(lines)[-LOG_FALLBACK_BYTES:]
    return tail.decode("utf-8", "replace")


class KubeletStandIn:
    """Runs the Job pods of `namespace` for real on this machine (see the module docstring)."""

    def __init__(
        self,
        kubeconfig: str | None,
        namespace: str,
        workdir: Path,
        *,
        container_timeout: float = 600.0,
        logs: Path | None = None,
    ) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.logs = logs
        self.container_timeout = container_timeout
        self.api_client = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.runs: dict[str, PodRun] = {}
        self._taken: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._pod_procs: dict[str, subprocess.Popen[bytes]] = {}  # uid -> the running container
        self._deleted: set[str] = set()  # uids of taken pods that are gone or going
        self._lock = threading.Lock()
        self._poller = threading.Thread(target=self._poll, name=f"kubelet-{namespace}", daemon=True)
        self.bin_dir = Path(sys.executable).parent

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KubeletStandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._poller.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._poller.join(timeout=10)
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for thread in self._threads:
            thread.join(timeout=30)
        self.api_client.close()

    def describe(self) -> str:
        """What ran, for failure reports."""
        out = []
        for run in self.runs.values():
            out.append(f"pod {run.name} (job {run.job}): {run.phase or 'running'} {run.error}")
            for c in run.containers:
                out.append(f"  {c.name}: exit {c.exit_code}: {' '.join(c.argv)}")
                out.append(f"    message: {c.message[:500]!r}")
                out.append(f"    log tail: {fallback_message(c.log)[-800:]!r}")
        return "\n".join(out) or "no Job pods ran"

    # --- picking pods -------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except Exception:  # the API server may be restarting: poll again
                self._stop.wait(POLL_SECONDS)
                continue
            self._reap_deleted(pods)
            for pod in pods:
                obj: Obj = self.api_client.sanitize_for_serialization(pod)
                if self._wanted(obj):
                    uid = obj["metadata"]["uid"]
                    self._taken.add(uid)
                    thread = threading.Thread(target=self._run_pod, args=(obj,), daemon=True)
                    self._threads.append(thread)
                    thread.start()
            self._stop.wait(POLL_SECONDS)

    def _wanted(self, pod: Obj) -> bool:
        return pod["metadata"]["uid"] not in self._taken and takes_job_pod(pod)

    def _reap_deleted(self, pods: list[Any]) -> None:
        """Kill the running container of every taken pod that is gone or being deleted."""
        present = {
            p.metadata.uid
            for p in pods
            if p.metadata is not None and not p.metadata.deletion_timestamp
        }
        with self._lock:
            gone = [uid for uid in self._pod_procs if uid not in present]
            self._deleted.update(uid for uid in self._taken if uid not in present)
            procs = [self._pod_procs[uid] for uid in gone]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    # --- running a pod ------------------------------------------------------------------------

    def _run_pod(self, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        job = next(r["name"] for r in meta["ownerReferences"] if r.get("kind") == "Job")
        run = PodRun(name=meta["name"], job=job)
        self.runs[meta["name"]] = run
        root = self.workdir / meta["name"]
        root.mkdir(parents=True, exist_ok=True)
        statuses: dict[bool, list[Obj]] = {True: [], False: []}
        failed = False
        try:
            volumes = self._volumes(pod, root)
            for init, containers in (
                (True, spec.get("initContainers") or []),
                (False, spec["containers"]),
            ):
                for container in containers:
                    if failed or self._stop.is_set() or meta["uid"] in self._deleted:
                        statuses[init].append(self._waiting_status(container))
                        continue
                    result = self._run_container(pod, container, volumes, root, init)
                    run.containers.append(result)
                    statuses[init].append(self._terminated_status(container, result))
                    failed = result.exit_code != 0
        except Exception as exc:  # PodSetupError, or an API error: the pod fails, visibly
            run.error = str(exc) if isinstance(exc, PodSetupError) else f"local node: {exc!r}"
            failed = True
            statuses = {
                True: [self._waiting_status(c) for c in spec.get("initContainers") or []],
                False: [self._waiting_status(c) for c in spec["containers"]],
            }
        run.phase = "Failed" if failed else "Succeeded"
        self._patch_status(pod, run, statuses, str(run.error))

    def _volumes(self, pod: Obj, root: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume:
                path = root / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                path = self.claim_dir(volume["persistentVolumeClaim"]["claimName"])
            elif "configMap" in volume:
                path = root / "volumes" / name
                self._write_config_map(volume["configMap"], path)
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise PodSetupError(f"volume {name}: the local node cannot provide {kind} volumes")
            out[name] = path
        return out

    def claim_dir(self, claim: str) -> Path:
        """The local directory standing in for PersistentVolumeClaim `claim`."""
        path = self.workdir / "claims" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_config_map(self, source: Obj, path: Path) -> None:
        try:
            cm = self.core.read_namespaced_config_map(source["name"], self.namespace)
        except ApiException as exc:
            if exc.status == 404 and source.get("optional"):
                path.mkdir(parents=True, exist_ok=True)
                return
            raise PodSetupError(f"configMap {source['name']}: {exc.reason}") from None
        data: dict[str, bytes] = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        path.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                raise PodSetupError(f"configMap {source['name']} has no key {item['key']}")
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])

    def _mapping(self, container: Obj, volumes: dict[str, Path]) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            local = volumes[mount["name"]]
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = str(local)
        return mapping

    def _env(self, pod: Obj, container: Obj, home: Path) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
        if os.environ.get("PYTHONPATH"):
            # The pods run the code under test (a worktree's, ahead of the venv's install).
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        for source in container.get("envFrom") or []:
            env.update(self._env_source(source))
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "valueFrom" in var:
                value = self._value_from(pod, var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
        return env

    def _env_source(self, source: Obj) -> dict[str, str]:
        prefix = source.get("prefix", "")
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        try:
            if "secretRef" in source:
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            else:
                cm = self.core.read_namespaced_config_map(ref["name"], self.namespace)
                data = dict(cm.data or {})
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            raise PodSetupError(f"envFrom {ref.get('name')}: {exc.reason}") from None
        return {prefix + k: v for k, v in data.items()}

    def _value_from(self, pod: Obj, source: Obj) -> str | None:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fields: dict[str, str] = {
                "metadata.name": pod["metadata"]["name"],
                "metadata.namespace": pod["metadata"]["namespace"],
                "metadata.uid": pod["metadata"]["uid"],
            }
            if path not in fields:
                raise PodSetupError(f"fieldRef {path} is not provided by the local node")
            return fields[path]
        for key, read in (
            ("secretKeyRef", self.core.read_namespaced_secret),
            ("configMapKeyRef", self.core.read_namespaced_config_map),
        ):
            if key in source:
                ref = source[key]
                try:
                    obj = read(ref["name"], self.namespace)
                except ApiException as exc:
                    if exc.status == 404 and ref.get("optional"):
                        return None
                    raise PodSetupError(f"{key} {ref['name']}: {exc.reason}") from None
                data = obj.data or {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise PodSetupError(f"{key} {ref['name']} has no key {ref['key']}")
                value = data[ref["key"]]
                return base64.b64decode(value).decode() if key == "secretKeyRef" else str(value)
        raise PodSetupError(f"env valueFrom {sorted(source)} is not provided by the local node")

    def _executable(self, name: str) -> str:
        if name == "graft":
            return str(self.bin_dir / "graft")
        if name in ("python", "python3"):
            return sys.executable
        found = shutil.which(name)
        if not found:
            raise PodSetupError(f"executable {name!r} is not on this machine")
        return found

    def _run_container(
        self, pod: Obj, container: Obj, volumes: dict[str, Path], root: Path, init: bool
    ) -> ContainerRun:
        name = container["name"]
        command = list(container.get("command") or [])
        if not command:
            raise PodSetupError(
                f"container {name} has no command: the local node cannot run an image's entrypoint"
            )
        mapping = self._mapping(container, volumes)
        home = root / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        env = {k: rewrite(v, mapping) for k, v in self._env(pod, container, home).items()}
        termination = root / f"{name}.termination-log"
        termination.write_bytes(b"")
        env[TERMINATION_ENV] = str(termination)
        argv = [self._executable(command[0])] + [
            rewrite(a, mapping) for a in command[1:] + list(container.get("args") or [])
        ]
        workdir = (
            Path(rewrite(container["workingDir"], mapping)) if container.get("workingDir") else home
        )
        log = (self.logs / pod["metadata"]["name"] if self.logs else root) / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = now()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT
            )
            uid = pod["metadata"]["uid"]
            with self._lock:
                self._procs.add(proc)
                self._pod_procs[uid] = proc
            try:
                code = proc.wait(timeout=self.container_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
                out.write(f"\nkilled by the local node after {self.container_timeout}s\n".encode())
            finally:
                with self._lock:
                    self._procs.discard(proc)
                    self._pod_procs.pop(uid, None)
        if code < 0:  # killed by a signal: the container runtime reports 128 + signal
            code = 128 - code
        message = termination.read_bytes()[:MESSAGE_LIMIT].decode("utf-8", "replace")
        policy = container.get("terminationMessagePolicy") or "File"
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            message = fallback_message(log)
        return ContainerRun(name, argv, code, message, log, init, started, now())

    # --- reporting ----------------------------------------------------------------------------

    @staticmethod
    def _terminated_status(container: Obj, run: ContainerRun) -> Obj:
        terminated: Obj = {
            "exitCode": run.exit_code,
            "reason": "Completed" if run.exit_code == 0 else "Error",
            "startedAt": run.started,
            "finishedAt": run.finished,
            "containerID": f"graft-localnode://{run.name}",
        }
        if run.message:
            terminated["message"] = run.message
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"graft-localnode://{run.name}",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"terminated": terminated},
        }

    @staticmethod
    def _waiting_status(container: Obj) -> Obj:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": "PodInitializing"}},
        }

    def _patch_status(
        self, pod: Obj, run: PodRun, statuses: dict[bool, list[Obj]], error: str
    ) -> None:
        ts = now()
        reason = "PodCompleted" if run.phase == "Succeeded" else "PodFailed"
        status: Obj = {
            "phase": run.phase,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": reason, "lastTransitionTime": ts},
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": reason,
                    "lastTransitionTime": ts,
                },
            ],
            "containerStatuses": statuses[False],
        }
        if statuses[True]:
            status["initContainerStatuses"] = statuses[True]
        if error:
            status["reason"] = "LocalNodeError"
            status["message"] = error
        # A real kubelet retries its status updates until the API server takes them (it may
        # be restarting); so does this one, for a minute.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.core.patch_namespaced_pod_status(
                    pod["metadata"]["name"],
                    self.namespace,
                    {"status": status},
                    _content_type="application/strategic-merge-patch+json",
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                retry = exc.status is not None and exc.status >= 429
                problem = str(exc.reason)
            except Exception as exc:  # the connection: refused, reset, timed out
                retry, problem = True, repr(exc)
            if not retry or time.monotonic() > deadline:
                run.error = f"{run.error} (status patch failed: {problem})".strip()
                return
            time.sleep(1)


def wait_idle(harness: KubeletStandIn, timeout: float = 30.0) -> None:
    """Wait until every pod the harness took has been reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(run.phase for run in harness.runs.values()):
            return
        time.sleep(0.2)
