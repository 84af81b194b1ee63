"""The model-server pods' runtime: the local node's (graft.localnode.servers), re-exported so
the tests keep their imports. tests/harness/kube.Cluster is its PodSource (kubectl)."""

from graft.localnode.servers import PodServers

__all__ = ["PodServers"]
