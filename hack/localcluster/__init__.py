"""A local Kubernetes control plane for Graft's tests and development, without containers.

    python3 hack/localcluster up           # start (or reuse) it; prints the kubeconfig path
    python3 hack/localcluster down         # stop everything it started, remove its state
    python3 hack/localcluster kubeconfig   # print the kubeconfig path (exit 1 if not up)
    python3 hack/localcluster status       # one line per component

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays
the kubelet for two fake nodes, using the stages in hack/kwok/) as detached processes that
outlive this script, all listening on 127.0.0.1 only. The binaries come from
hack/build-control-plane.sh. Everything the cluster needs (certificates, etcd data, logs,
pid files, kubeconfigs) lives in the state directory,
${GRAFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}/cluster.

Pods on the fake nodes get IPs from their node's spec.podCIDR, which is on loopback
(127.64.0.0/16 and 127.65.0.0/16), so a test can serve "pod" traffic by binding a real server
to a pod's IP on this machine.

Only the standard library is used: this runs before any virtualenv exists. The package follows
the sections of the job: common (constants), state (files, ports, the lock), processes, pki
(certificates and kubeconfigs), apiclient (a minimal client and health probes), components
(command lines), waiting (and the fake nodes), cluster (up, down, status) and cli. The functions
localcluster.cluster.up(), down(), kubeconfig_path() and status() can be imported by a pytest
fixture (with hack/ on sys.path).

Environment:
    GRAFT_CACHE_DIR                cache root (binaries in bin/, cluster state in cluster/)
    GRAFT_BIN_DIR                  use the binaries in this directory; skip the build script
    GRAFT_ETCD_PORT                etcd client port              (default 23790)
    GRAFT_ETCD_PEER_PORT           etcd peer port                (default 23800)
    GRAFT_APISERVER_PORT           kube-apiserver secure port    (default 26443)
    GRAFT_CONTROLLER_MANAGER_PORT  kube-controller-manager port  (default 26257)
    GRAFT_SCHEDULER_PORT           kube-scheduler port           (default 26259)
    GRAFT_KWOK_PORT                kwok healthz/metrics port     (default 26247)
    GRAFT_CLUSTER_TIMEOUT          seconds `up` may take in all  (default 180)
    GRAFT_APISERVER_AUDIT          if set, the API server writes an audit log (Metadata level,
                                   JSON) to <state directory>/audit.log (bench/operatorscale.py)
"""
