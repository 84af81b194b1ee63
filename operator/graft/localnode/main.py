"""`graft localnode`: run the local node (jobs.py and servers.py) for some namespaces until
SIGTERM or SIGINT, then stop every process it started; `graft localnode logs POD` prints a
container's log from the documented place (paths.py).

The command line is command.py's (it imports no kubernetes, as every `graft` command parses it).
One local node at a time per cache directory: its pid file is paths.pid_file, which
`hack/localcluster down` (and so `make cluster-down`) reads to stop it with the cluster.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from graft.core import keys
from graft.core.settings import DEFAULT_REFERENCE_IMAGE, REFERENCE_IMAGE_ENV
from graft.localnode import paths
from graft.localnode.jobs import KubeletStandIn
from graft.localnode.servers import PodServers

REQUEST_TIMEOUT = 10.0
SERVER_SELECTOR = f"{keys.COMPONENT}={keys.MODEL_SERVER}"

Obj = dict[str, Any]


class KubeSource:
    """The PodSource and StatusWriter of servers.py over the kubernetes client (every request
    has a timeout)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        if kind != "secret" or namespace is None:
            raise ValueError(f"the local node reads only namespaced secrets, not {kind}")
        try:
            secret = self.core.read_namespaced_secret(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        out: Obj = self.api_client.sanitize_for_serialization(secret)
        return out

    def patch_pod_status(self, namespace: str, name: str, status: Obj) -> None:
        self.core.patch_namespaced_pod_status(
            name,
            namespace,
            {"status": status},
            _request_timeout=REQUEST_TIMEOUT,
            _content_type="application/strategic-merge-patch+json",
        )

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[Obj]:
        if kind != "pods":
            raise ValueError(f"the local node lists only pods, not {kind}")
        pods = self.core.list_namespaced_pod(
            namespace, label_selector=selector or "", _request_timeout=REQUEST_TIMEOUT
        )
        items: list[Obj] = self.api_client.sanitize_for_serialization(pods.items)
        return items


def running_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` when that process is alive."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def runtime_images(extra: list[str] | None, env: dict[str, str] | None = None) -> frozenset[str]:
    """Graft's runtime image (as the operator resolves it) and any --image given."""
    env = dict(os.environ) if env is None else env
    return frozenset([env.get(REFERENCE_IMAGE_ENV) or DEFAULT_REFERENCE_IMAGE, *(extra or [])])


def run(namespaces: list[str], kubeconfig: str | None, images: frozenset[str], base: Path) -> int:
    pid_file = paths.pid_file(base)
    other = running_pid(pid_file)
    if other is not None and other != os.getpid():
        print(
            f"graft localnode: already running (pid {other}, {pid_file}); stop it first "
            f"(kill {other}, or `python3 hack/localcluster down`)",
            file=sys.stderr,
        )
        return 1
    base.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kubelets: list[KubeletStandIn] = []
    servers: list[PodServers] = []
    api_client = config.new_client_from_config(config_file=kubeconfig)
    source = KubeSource(api_client)
    try:
        for ns in namespaces:
            logs = paths.logs_dir(base, ns)
            kubelets.append(
                KubeletStandIn(kubeconfig, ns, paths.pods_dir(base, ns), logs=logs).start()
            )
            servers.append(
                PodServers(
                    source,
                    ns,
                    SERVER_SELECTOR,
                    logs,
                    images=images,
                    nested_logs=True,
                    status=source,
                ).start()
            )
        print(
            f"graft localnode: running Job pods and model-server pods ({', '.join(sorted(images))})"
            f" of {', '.join(namespaces)}; logs under {base / 'logs'}",
            flush=True,
        )
        reported = 0
        while not stop.wait(1.0):
            errors = [e for s in servers for e in s.errors]
            for error in errors[reported:]:
                print(f"graft localnode: {error}", file=sys.stderr, flush=True)
            reported = len(errors)
    finally:
        for s in servers:
            s.stop()
        for k in kubelets:
            k.stop()
        api_client.close()
        if running_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)
    print("graft localnode: stopped; every process it started has ended", flush=True)
    return 0


def logs(pod: str, namespace: str, container: str | None, base: Path) -> int:
    pod_dir = paths.logs_dir(base, namespace) / pod
    found = sorted(pod_dir.glob("*.log")) if pod_dir.is_dir() else []
    if container is not None:
        found = [p for p in found if p.stem == container]
    if not found:
        print(
            f"graft localnode: no logs for pod {pod} in namespace {namespace} under {pod_dir} "
            "(only pods the local node ran have logs; kwok's fakes have none)",
            file=sys.stderr,
        )
        return 1
    for path in found:
        if len(found) > 1:
            print(f"==> {path.stem} ({path}) <==", flush=True)
        sys.stdout.buffer.write(path.read_bytes())
        sys.stdout.flush()
    return 0
