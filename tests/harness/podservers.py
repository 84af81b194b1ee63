"""The model-server pods' runtime: the local node's (graft.localnode.servers), with
tests/harness/kube.Cluster as its PodSource (kubectl).

Readiness is owned as a kubelet owns it: a pod is not Ready while its server starts, Ready once
the container's readinessProbe answers, not Ready again when it stops answering. kwok alone
says Ready the moment a pod is bound, before anything listens; the operator reacts to the
readiness change (a pod event), so a test that let kwok's early Ready stand would only pass
thanks to the operator's periodic resync.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graft.localnode.servers import PodServers as LocalNodeServers
from harness.kube import Cluster

__all__ = ["PodServers"]


class PodServers(LocalNodeServers):
    def __init__(
        self, cluster: Cluster, namespace: str, selector: str, log_dir: Path, **kwargs: Any
    ) -> None:
        kwargs.setdefault("status", cluster)
        super().__init__(cluster, namespace, selector, log_dir, **kwargs)
