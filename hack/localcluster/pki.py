"""Certificates (openssl) and kubeconfigs."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

from localcluster.common import HOST, SERVICE_CIDR, ClusterError
from localcluster.state import Layout

OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


def openssl() -> str:
    for candidate in ("/usr/bin/openssl", shutil.which("openssl")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ClusterError("openssl not found (needed to create the cluster's certificates)")


def _run_openssl(args: list[str]) -> None:
    result = subprocess.run([openssl(), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed:\n{result.stderr.strip()}")


def make_certificate(
    layout: Layout,
    name: str,
    subject: str,
    extensions: list[str],
    *,
    ca: str | None = "ca",
    days: int = 3650,
) -> None:
    """An EC P-256 key and certificate, signed by `ca` (self-signed when ca is None)."""
    cnf = layout.pki / "openssl.cnf"
    args = [
        "req", "-x509", "-new", "-config", str(cnf),
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(layout.key(name)), "-out", str(layout.cert(name)),
        "-subj", subject, "-days", str(days), "-sha256",
    ]  # fmt: skip
    if ca is not None:
        args += ["-CA", str(layout.cert(ca)), "-CAkey", str(layout.key(ca))]
    for extension in extensions:
        args += ["-addext", extension]
    _run_openssl(args)
    layout.key(name).chmod(0o600)


def make_pki(layout: Layout) -> None:
    layout.pki.mkdir(parents=True, exist_ok=True)
    (layout.pki / "openssl.cnf").write_text(OPENSSL_CONFIG)
    make_certificate(
        layout,
        "ca",
        "/CN=graft-local-ca",
        ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"],
        ca=None,
    )
    leaf_usage = "keyUsage=critical,digitalSignature,keyEncipherment"
    first_service_ip = SERVICE_CIDR.split("/", maxsplit=1)[0].rsplit(".", 1)[0] + ".1"
    serving_names = [
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        f"IP:{HOST}",
        f"IP:{first_service_ip}",
    ]
    make_certificate(
        layout,
        "kube-apiserver",
        "/CN=kube-apiserver",
        [
            "basicConstraints=critical,CA:FALSE",
            leaf_usage,
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(serving_names),
        ],
    )
    clients = {
        # name: subject (CN is the user name, O the groups)
        "admin": "/O=system:masters/CN=graft-admin",
        "kube-controller-manager": "/CN=system:kube-controller-manager",
        "kube-scheduler": "/CN=system:kube-scheduler",
        # kwok plays the kubelet of every fake node: it patches node and pod status, renews
        # node leases, deletes pods and writes events, so it gets full rights.
        "kwok": "/O=system:masters/CN=kwok-controller",
    }
    for name, subject in clients.items():
        make_certificate(
            layout,
            name,
            subject,
            ["basicConstraints=critical,CA:FALSE", leaf_usage, "extendedKeyUsage=clientAuth"],
        )
    # The aggregation layer's request-header CA and the apiserver's client certificate for
    # proxying to aggregated API servers; components that delegate authentication expect them.
    make_certificate(
        layout,
        "front-proxy-ca",
        "/CN=graft-local-front-proxy-ca",
        ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"],
        ca=None,
    )
    make_certificate(
        layout,
        "front-proxy-client",
        "/CN=front-proxy-client",
        ["basicConstraints=critical,CA:FALSE", leaf_usage, "extendedKeyUsage=clientAuth"],
        ca="front-proxy-ca",
    )
    # Service account token signing key pair.
    sa_key = layout.pki / "service-account.key"
    _run_openssl(
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(sa_key)]
    )
    sa_key.chmod(0o600)
    _run_openssl(
        ["pkey", "-in", str(sa_key), "-pubout", "-out", str(layout.pki / "service-account.pub")]
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(layout: Layout, path: Path, user: str, apiserver_port: int) -> None:
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: graft-local
  cluster:
    server: https://{HOST}:{apiserver_port}
    certificate-authority-data: {_b64(layout.cert("ca"))}
users:
- name: {user}
  user:
    client-certificate-data: {_b64(layout.cert(user))}
    client-key-data: {_b64(layout.key(user))}
contexts:
- name: graft-local
  context:
    cluster: graft-local
    user: {user}
current-context: graft-local
"""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
