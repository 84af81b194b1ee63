"""The command line and environment of each component."""

from __future__ import annotations

import os
from pathlib import Path

from localcluster.common import (
    HOST,
    KWOK_NODE_ANNOTATION,
    KWOK_NODE_ANNOTATION_VALUE,
    KWOK_STAGES,
    SERVICE_ACCOUNT_ISSUER,
    SERVICE_CIDR,
)
from localcluster.state import Layout

AUDIT_ENV = "GRAFT_APISERVER_AUDIT"
# Who called what, one JSON line per request, once its response is complete (watches also when
# they start). Metadata only: no bodies. bench/operatorscale.py attributes requests to the operator by
# its user (it runs as its ServiceAccount); leases are left out, everyone renews them.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
"""


def audit_flags(layout: Layout) -> list[str]:
    """The API server's audit-log flags when $GRAFT_APISERVER_AUDIT is set (opt-in: it costs a
    write per request), or when the cluster was started with it: a `restart` keeps the log."""
    policy = layout.root / "audit-policy.yaml"
    if not os.environ.get(AUDIT_ENV) and not policy.exists():
        return []
    policy.write_text(AUDIT_POLICY)
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-format=json",
        # One file for the whole life of the cluster: a reader follows it by offset.
        "--audit-log-maxsize=0",
    ]


def component_argv(
    component: str, bin_dir: Path, layout: Layout, ports: dict[str, int]
) -> list[str]:
    pki = layout.pki
    kubeconfig = layout.component_kubeconfig(component)
    if component == "etcd":
        client = f"http://{HOST}:{ports['etcd']}"
        peer = f"http://{HOST}:{ports['etcd-peer']}"
        return [
            str(bin_dir / "etcd"),
            "--name=graft",
            f"--data-dir={layout.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=graft={peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
    if component == "kube-apiserver":
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://{HOST}:{ports['etcd']}",
            f"--bind-address={HOST}",
            f"--secure-port={ports['kube-apiserver']}",
            # The default would be this machine's external address. Endpoints may not hold
            # loopback addresses, so the `kubernetes` Service gets no endpoints at all.
            f"--advertise-address={HOST}",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki / 'kube-apiserver-generated'}",
            f"--tls-cert-file={layout.cert('kube-apiserver')}",
            f"--tls-private-key-file={layout.key('kube-apiserver')}",
            f"--client-ca-file={layout.cert('ca')}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--requestheader-client-ca-file={layout.cert('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={layout.cert('front-proxy-client')}",
            f"--proxy-client-key-file={layout.key('front-proxy-client')}",
            "--allow-privileged=true",
            "--profiling=false",
            *audit_flags(layout),
        ]
    common = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={HOST}",
        f"--secure-port={ports[component]}",
        "--leader-elect=false",
        "--profiling=false",
    ]
    if component == "kube-controller-manager":
        return [
            str(bin_dir / "kube-controller-manager"),
            *common,
            f"--cert-dir={pki / 'kube-controller-manager-generated'}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'service-account.key'}",
            f"--root-ca-file={layout.cert('ca')}",
            f"--cluster-signing-cert-file={layout.cert('ca')}",
            f"--cluster-signing-key-file={layout.key('ca')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            # The quota controller finds new CRDs (count/<plural>.graft.dev) within 30 s, but
            # only recounts existing quotas at its full resync, 5 min by default: a quota made
            # right after the CRDs were installed would wait that long to report usage.
            "--resource-quota-sync-period=10s",
        ]
    if component == "kube-scheduler":
        return [
            str(bin_dir / "kube-scheduler"),
            *common,
            f"--cert-dir={pki / 'kube-scheduler-generated'}",
        ]
    if component == "kwok":
        return [
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            "--config=" + ",".join(str(path) for path in KWOK_STAGES),
            f"--manage-nodes-with-annotation-selector="
            f"{KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
            f"--node-ip={HOST}",
            # Only for nodes without spec.podCIDR; ours all have one.
            "--cidr=127.63.0.0/16",
            "--node-lease-duration-seconds=40",
            f"--server-address={HOST}:{ports['kwok']}",
        ]
    raise ValueError(component)


def component_env(component: str, layout: Layout) -> dict[str, str]:
    env = dict(os.environ)
    if component == "kwok":
        # kwok would otherwise also load ~/.kwok/kwok.yaml, if one exists.
        env["KWOK_WORKDIR"] = str(layout.root / "kwok-workdir")
    return env
