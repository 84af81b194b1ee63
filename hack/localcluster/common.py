"""Constants of the local cluster, its error type and its log line."""

from __future__ import annotations

import sys
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = HACK_DIR / "build-control-plane.sh"
VERSIONS_FILE = HACK_DIR / "versions.env"
KWOK_STAGES = (HACK_DIR / "kwok" / "node-stages.yaml", HACK_DIR / "kwok" / "pod-stages.yaml")

HOST = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"  # virtual only: nothing listens on service IPs (no kube-proxy)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
NODES = (("kwok-node-0", "127.64.0.0/16"), ("kwok-node-1", "127.65.0.0/16"))
NODE_RESOURCES = {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "8"}
SMOKE_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

# name, environment variable, default
PORTS: tuple[tuple[str, str, int], ...] = (
    ("etcd", "GRAFT_ETCD_PORT", 23790),
    ("etcd-peer", "GRAFT_ETCD_PEER_PORT", 23800),
    ("kube-apiserver", "GRAFT_APISERVER_PORT", 26443),
    ("kube-controller-manager", "GRAFT_CONTROLLER_MANAGER_PORT", 26257),
    ("kube-scheduler", "GRAFT_SCHEDULER_PORT", 26259),
    ("kwok", "GRAFT_KWOK_PORT", 26247),
)
# In start order; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The local cluster could not be started, or is not up."""


def log(message: str) -> None:
    print(f"[localcluster] {message}", file=sys.stderr, flush=True)
