"""The kubelet stand-in for Job pods: the local node's (graft.localnode.jobs), re-exported so
the tests keep their imports. See that module for what it does."""

from graft.localnode.jobs import (
    ContainerRun,
    KubeletStandIn,
    PodRun,
    PodSetupError,
    fallback_message,
    rewrite,
    wait_idle,
)

__all__ = [
    "ContainerRun",
    "KubeletStandIn",
    "PodRun",
    "PodSetupError",
    "fallback_message",
    "rewrite",
    "wait_idle",
]
