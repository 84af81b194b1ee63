"""Where a cluster's files live (certificates, etcd data, logs, pid files, kubeconfigs), its
ports and versions, and the lock that serialises `up` and `down`."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localcluster.common import PORTS, VERSIONS_FILE, ClusterError


def cache_dir() -> Path:
    if root := os.environ.get("GRAFT_CACHE_DIR"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "graft"


def state_dir() -> Path:
    return cache_dir() / "cluster"


def kubeconfig_file() -> Path:
    """Where the admin kubeconfig is written (whether or not the cluster is up)."""
    return state_dir() / "kubeconfig"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Files of one cluster, all under its state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log, when it keeps one ($GRAFT_APISERVER_AUDIT)."""
        return self.root / "audit.log"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def component_kubeconfig(self, component: str) -> Path:
        return self.root / f"{component}.kubeconfig"

    def cert(self, name: str) -> Path:
        return self.pki / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki / f"{name}.key"


def read_state(layout: Layout) -> dict[str, Any] | None:
    try:
        state = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def configured_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, env, default in PORTS:
        raw = os.environ.get(env, "").strip()
        try:
            port = int(raw) if raw else default
        except ValueError:
            raise ClusterError(f"{env}={raw!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ClusterError(f"{env}={port} is out of range")
        ports[name] = port
    if len(set(ports.values())) != len(ports):
        raise ClusterError(f"the cluster's ports must all differ: {ports}")
    return ports


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("\"'")
    return versions


@contextlib.contextmanager
def cluster_lock() -> Iterator[None]:
    """Serialise up/down between processes (e.g. parallel pytest workers)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / "cluster.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
