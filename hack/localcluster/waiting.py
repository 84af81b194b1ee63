"""Waiting for components, with early failure when one dies; the fake nodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from localcluster.common import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE, NODE_RESOURCES
from localcluster.processes import component_failure, component_pid
from localcluster.state import Layout


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


def wait_until(
    what: str,
    check: Callable[[], bool],
    deadline: Deadline,
    *,
    layout: Layout,
    watch: tuple[str, ...],
    blame: str,
    interval: float = 0.1,
) -> None:
    """Poll check() until it is true; fail early if a watched component dies."""
    while True:
        if check():
            return
        for component in watch:
            if component_pid(layout, component) is None:
                raise component_failure(
                    layout, component, f"{component} exited while waiting for {what}"
                )
        if deadline.remaining() <= 0:
            raise component_failure(
                layout,
                blame,
                f"timed out after {deadline.seconds:.0f}s waiting for {what} ({blame} is the "
                "component responsible)",
            )
        time.sleep(interval)


def node_manifest(name: str, cidr: str, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "capacity": dict(NODE_RESOURCES),
            "allocatable": dict(NODE_RESOURCES),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "kwok",
                "kernelVersion": "kwok",
                "kubeletVersion": versions.get("KUBE_VERSION", ""),
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "kwok://" + versions.get("KWOK_VERSION", ""),
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def node_ready(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_ready(pod: Any) -> bool:
    if not isinstance(pod, dict):
        return False
    status = pod.get("status", {})
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )
