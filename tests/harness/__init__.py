"""What the tests use to run Graft against a real control plane on a machine without a
container runtime:

- kube: kubectl, waiting, and the operator as a `graft run` process;
- kubelet: a stand-in for the kubelet that runs Job pods' containers as local processes, and
- podservers: each model-server pod's own command line, bound to its (loopback) pod IP: both
  re-export the local node's code (graft.localnode, `graft localnode`);
- tinyadapters: LoRA adapters made in code, without training;
- gatewaymetrics: a gateway's /metrics body, made by prometheus_client;
- dump: real objects written as Argo CD health-check fixtures (GRAFT_DUMP_FIXTURES=<dir>).
"""
