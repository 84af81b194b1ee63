"""Test helpers for a real cluster: kubectl, the Python client, waiting, the operator process."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("GRAFT_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graft"
)
T = TypeVar("T")

# What a permission the operator lacks looks like in its log (kopf and the kubernetes client).
RBAC_DENIAL = re.compile(
    r"cannot \w+ resource|not enough permissions|APIForbiddenError|"
    r"forbidden: User \"system:serviceaccount",
    re.IGNORECASE,
)


def kubectl_binary() -> str:
    built = Path(os.environ.get("GRAFT_BIN_DIR") or CACHE / "bin") / "kubectl"
    if built.exists():
        return str(built)
    found = shutil.which("kubectl")
    if not found:
        raise RuntimeError("no kubectl: run `make controlplane` or put kubectl on PATH")
    return found


@dataclass
class Cluster:
    kubeconfig: str
    kubectl_path: str = field(default_factory=kubectl_binary)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig, **extra}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_path, *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            env=self.env(),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], *flags: str) -> str:
        docs = manifest if isinstance(manifest, list) else [manifest]
        return self.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump_all(docs)).stdout

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A strategic merge patch of a pod's status, as a kubelet writes it (readiness)."""
        self.kubectl(
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=strategic",
            "-p",
            json.dumps({"status": status}),
        )

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items


def server_key_header(cluster: Cluster, pod: dict[str, Any]) -> dict[str, str]:
    """The Authorization header a model-server pod requires: its Deployment's API key, read from
    the Secret the pod reads it from (the tests act as cluster admin; a tenant's own clients go
    through the gateway)."""
    meta = pod["metadata"]
    deployment = meta["labels"]["graft.dev/deployment"]
    secret = cluster.get("secret", f"{deployment}-server-key", meta["namespace"])
    assert secret is not None, f"no server-key Secret for {deployment}"
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    return {"Authorization": f"Bearer {key}"}


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.5
) -> T:
    """Poll probe() until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    if not obj:
        return None
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _GraftProcess:
    """A `graft` subcommand as a subprocess with its output in a log file."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        graft = Path(sys.executable).with_name("graft")
        self.log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(graft), *args], env=env, stdout=self.log_file, stderr=subprocess.STDOUT
        )

    def _answers(self, url: str, what: str) -> bool:
        """Whether `url` answers 200; AssertionError with the log when the process died."""
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{what} exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:  # refused, or an HTTPError (503 while not ready)
            return False

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log_file", None):
            self.log_file.close()


class OperatorProcess(_GraftProcess):
    """`graft run` as a subprocess, the way it runs in production (minus the container)."""

    def __init__(
        self,
        cluster: Cluster,
        log_path: Path,
        resync_seconds: float | None = None,
        env: dict[str, str] | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.port = free_port()
        self.metrics_port = free_port()
        # GRAFT_TEST_RESYNC_SECONDS: run the suite with another resync, e.g. a long one to find
        # a change that only the resync notices (an event trigger missing).
        self.resync_seconds = resync_seconds or float(
            os.environ.get("GRAFT_TEST_RESYNC_SECONDS", "2")
        )
        self.extra_env = env or {}
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def settle_seconds(self) -> float:
        """How long a test watches for something that must not happen (a write, a flap): a few
        resyncs with the suite's short one, at most 5 s with a long one."""
        return min(self.resync_seconds, 5.0)

    def start(self) -> None:
        self._spawn(
            [
                "run",
                "--liveness",
                f"http://127.0.0.1:{self.port}/healthz",
                # Several operators run at once here; none may take the default port.
                "--metrics",
                f"http://127.0.0.1:{self.metrics_port}/metrics",
                # GRAFT_TEST_OPERATOR_VERBOSE=1: every reconcile in the operator's log.
                *(["--verbose"] if os.environ.get("GRAFT_TEST_OPERATOR_VERBOSE") else []),
            ],
            self.cluster.env(
                GRAFT_RESYNC_SECONDS=str(self.resync_seconds),
                **self.extra_env,
                KUBECONFIG=self.kubeconfig,
            ),
        )
        wait_for("the operator's liveness endpoint", self._alive, timeout=60)

    def _alive(self) -> bool:
        return self._answers(f"http://127.0.0.1:{self.port}/healthz", "operator")


class GatewayProcess(_GraftProcess):
    """`graft gateway` as a subprocess, on loopback ports of its own."""

    def __init__(
        self,
        cluster: Cluster,
        log_path: Path,
        kubeconfig: str | None = None,
        port: int | None = None,
        metrics_port: int | None = None,
        queue_timeout: float = 120.0,
        uploads: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.uploads = uploads  # `--uploads`: where dataset uploads go (file:// or s3://)
        self.log_path = log_path
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.queue_timeout = queue_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        self._spawn(
            [
                "gateway",
                "--listen",
                self.url,
                "--metrics",
                self.metrics_url,
                "--queue-timeout",
                str(self.queue_timeout),
                *(["--uploads", self.uploads] if self.uploads else []),
            ],
            self.cluster.env(KUBECONFIG=self.kubeconfig),
        )
        wait_for("the gateway's watch cache", self._ready, timeout=90)

    def _ready(self) -> bool:
        return self._answers(f"{self.url}/ready", "gateway")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())
