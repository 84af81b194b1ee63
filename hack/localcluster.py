#!/usr/bin/env python3
"""A local Kubernetes control plane for Graft's tests and development, without containers.

    python3 hack/localcluster.py up           # start (or reuse) it; prints the kubeconfig path
    python3 hack/localcluster.py down         # stop everything it started, remove its state
    python3 hack/localcluster.py kubeconfig   # print the kubeconfig path (exit 1 if not up)
    python3 hack/localcluster.py status       # one line per component

It runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays
the kubelet for two fake nodes, using the stages in hack/kwok/) as detached processes that
outlive this script, all listening on 127.0.0.1 only. The binaries come from
hack/build-control-plane.sh. Everything the cluster needs (certificates, etcd data, logs,
pid files, kubeconfigs) lives in the state directory,
${GRAFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/graft}/cluster.

Pods on the fake nodes get IPs from their node's spec.podCIDR, which is on loopback
(127.64.0.0/16 and 127.65.0.0/16), so a test can serve "pod" traffic by binding a real server
to a pod's IP on this machine.

Only the standard library is used: this runs before any virtualenv exists. The functions
up(), down(), kubeconfig_path() and status() can be imported by a pytest fixture.

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
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import fcntl
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HACK_DIR = Path(__file__).resolve().parent
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


# --------------------------------------------------------------------------------------------
# Paths and state


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


# --------------------------------------------------------------------------------------------
# Processes


def _proc_cmdline(pid: int) -> list[str] | None:
    # If this process started it (up() called in-process, e.g. from a pytest fixture), reap
    # it once it has exited so that it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):  # zombie or dead
        return None
    return raw.decode(errors="replace").split("\0")


def component_pid(layout: Layout, component: str) -> int | None:
    """The pid of the component if it is running and really is ours (not a reused pid)."""
    try:
        pid = int(layout.pid_file(component).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = _proc_cmdline(pid)
    if cmdline is None:
        return None
    # Every component's command line names a file in the state directory.
    if not any(str(layout.root) in arg for arg in cmdline):
        return None
    return pid


def start_process(layout: Layout, component: str, argv: list[str], env: dict[str, str]) -> None:
    log_path = layout.log_file(component)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=layout.root,
            env=env,
        )
    layout.pid_file(component).write_text(f"{proc.pid}\n")
    # /proc/<pid>/cmdline reads empty for a moment around exec; component_pid() relies on it.
    settle = time.monotonic() + 2.0
    while proc.poll() is None and time.monotonic() < settle:
        if component_pid(layout, component) is not None:
            break
        time.sleep(0.005)
    # Nothing waits for the child: it outlives this script and init reaps it. Keep the object
    # from warning that it is "still running" when it is collected.
    if proc.returncode is None:
        proc.returncode = 0


def stop_processes(layout: Layout, components: tuple[str, ...]) -> None:
    """SIGTERM each component's process group, SIGKILL whatever is left after a timeout."""
    running: dict[str, int] = {}
    for component in components:
        pid = component_pid(layout, component)
        if pid is not None:
            running[component] = pid
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while running and time.monotonic() < deadline:
        for component, pid in list(running.items()):
            if _proc_cmdline(pid) is None:
                del running[component]
        if running:
            time.sleep(0.05)
    for component, pid in running.items():
        log(f"{component} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f}s; sending SIGKILL")
        _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_proc_cmdline(pid) is not None for pid in running.values()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def stop_all(layout: Layout) -> None:
    """Stop everything, etcd last: an apiserver whose etcd is gone is slow to shut down."""
    stop_processes(layout, tuple(c for c in reversed(COMPONENTS) if c != "etcd"))
    stop_processes(layout, ("etcd",))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:  # started with setsid: the process leads its own group
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (log is empty)"


def component_failure(layout: Layout, component: str, headline: str) -> ClusterError:
    path = layout.log_file(component)
    return ClusterError(
        f"{headline}\n  {component} log: {path}\n  last lines:\n{log_tail(path)}\n"
        f"  (everything started is stopped again; state and logs stay in {layout.root} until "
        "`localcluster.py down` or the next `up`)"
    )


def check_port_free(name: str, port: int) -> None:
    env = next(env for n, env, _ in PORTS if n == name)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the Go servers do: connections of a cluster just stopped (TIME_WAIT) do not hold
        # the port; only a process listening on it does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as err:
            raise ClusterError(
                f"port {HOST}:{port} (for {name}) is already in use by another process ({err}); "
                f"stop it, or choose another port with {env}=..."
            ) from None


# --------------------------------------------------------------------------------------------
# Certificates and kubeconfigs (openssl)


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


# --------------------------------------------------------------------------------------------
# A minimal API client (admin client certificate)


class Api:
    def __init__(self, layout: Layout, port: int) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(layout.cert("ca")))
        self.context.load_cert_chain(str(layout.cert("admin")), str(layout.key("admin")))

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(HOST, self.port, context=self.context, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return response.status, payload

    def get(self, path: str) -> tuple[int, Any]:
        """GET path; (0, error text) when the apiserver cannot be reached."""
        try:
            return self.request("GET", path, timeout=5.0)
        except (OSError, http.client.HTTPException) as err:
            return 0, str(err)

    def readyz(self) -> tuple[bool, str]:
        try:
            status, payload = self.request("GET", "/readyz", timeout=3.0)
        except (OSError, http.client.HTTPException) as err:
            return False, str(err)
        return status == 200, str(payload).strip()


def probe_http(url: str, timeout: float = 2.0) -> bool:
    """GET url; https is not verified (the component serves a self-signed certificate)."""
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def health_url(component: str, ports: dict[str, int]) -> str | None:
    return {
        "etcd": f"http://{HOST}:{ports['etcd']}/health",
        "kube-controller-manager": f"https://{HOST}:{ports['kube-controller-manager']}/healthz",
        "kube-scheduler": f"https://{HOST}:{ports['kube-scheduler']}/healthz",
        "kwok": f"http://{HOST}:{ports['kwok']}/healthz",
    }.get(component)


# --------------------------------------------------------------------------------------------
# Component command lines


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


# --------------------------------------------------------------------------------------------
# Waiting


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


# --------------------------------------------------------------------------------------------
# up / down / status


def problem(layout: Layout | None = None) -> str | None:
    """Why the cluster is not up, or None when every component runs and the apiserver's
    /readyz answers ok to the admin certificate."""
    layout = layout or Layout(state_dir())
    if not layout.root.exists():
        return f"{layout.root} does not exist"
    state = read_state(layout)
    if not state or not state.get("complete") or not layout.admin_kubeconfig.is_file():
        return f"{layout.root} holds no completely started cluster"
    stopped = [c for c in COMPONENTS if component_pid(layout, c) is None]
    if stopped:
        return "not running: " + ", ".join(stopped)
    try:
        ok, detail = Api(layout, int(state["ports"]["kube-apiserver"])).readyz()
    except (OSError, ssl.SSLError, KeyError, ValueError) as err:
        ok, detail = False, str(err)
    return None if ok else f"apiserver /readyz: {detail[:300]}"


def is_up(layout: Layout | None = None) -> bool:
    return problem(layout) is None


def kubeconfig_path() -> Path:
    """The admin kubeconfig of the running cluster; ClusterError if it is not up."""
    layout = Layout(state_dir())
    if (why := problem(layout)) is not None:
        raise ClusterError(
            f"the local cluster is not up ({why}); start it with `python3 hack/localcluster.py up`"
        )
    return layout.admin_kubeconfig


def build_binaries() -> Path:
    if override := os.environ.get("GRAFT_BIN_DIR"):
        return Path(override)
    log(f"running {BUILD_SCRIPT.relative_to(HACK_DIR.parent)} (it skips what is built)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise ClusterError(f"{BUILD_SCRIPT} printed no bin directory")
    return Path(lines[-1])


def up(timeout: float | None = None) -> Path:
    """Start the local cluster unless it is already up; returns the admin kubeconfig path."""
    if timeout is None:
        timeout = float(os.environ.get("GRAFT_CLUSTER_TIMEOUT") or DEFAULT_TIMEOUT)
    layout = Layout(state_dir())
    with cluster_lock():
        if is_up(layout):
            log(f"already up (state dir {layout.root})")
            return layout.admin_kubeconfig
        _down_locked(layout, quiet=True)
        bin_dir = build_binaries()
        for component in (*COMPONENTS, "kubectl"):
            if not (bin_dir / component).is_file():
                raise ClusterError(f"{bin_dir / component} is missing (build it first)")
        started = time.monotonic()
        try:
            _start(layout, bin_dir, Deadline(timeout))
        except BaseException:
            # Leave nothing running half-started; keep the state directory and its logs.
            stop_all(layout)
            raise
        log(f"up in {time.monotonic() - started:.1f}s; kubeconfig: {layout.admin_kubeconfig}")
        return layout.admin_kubeconfig


def _start(layout: Layout, bin_dir: Path, deadline: Deadline) -> None:
    ports = configured_ports()
    for name, port in ports.items():
        check_port_free(name, port)
    for directory in (layout.root, layout.logs, layout.run):
        directory.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    state: dict[str, Any] = {"ports": ports, "bin_dir": str(bin_dir), "complete": False}
    layout.state_file.write_text(json.dumps(state, indent=2) + "\n")

    log("creating certificates")
    make_pki(layout)
    write_kubeconfig(layout, layout.admin_kubeconfig, "admin", ports["kube-apiserver"])
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        write_kubeconfig(
            layout, layout.component_kubeconfig(component), component, ports["kube-apiserver"]
        )

    def launch(component: str) -> None:
        argv = component_argv(component, bin_dir, layout, ports)
        start_process(layout, component, argv, component_env(component, layout))

    def healthy(component: str) -> Callable[[], bool]:
        url = health_url(component, ports)
        assert url is not None
        return lambda: probe_http(url)

    log("starting etcd")
    launch("etcd")
    wait_until(
        "etcd /health ok", healthy("etcd"), deadline, layout=layout, watch=("etcd",), blame="etcd"
    )

    log("starting kube-apiserver")
    launch("kube-apiserver")
    api = Api(layout, ports["kube-apiserver"])
    wait_until(
        "kube-apiserver /readyz ok",
        lambda: api.readyz()[0],
        deadline,
        layout=layout,
        watch=("etcd", "kube-apiserver"),
        blame="kube-apiserver",
    )

    log("starting kube-controller-manager, kube-scheduler and kwok")
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        launch(component)
    versions = read_versions()
    for name, cidr in NODES:
        status, payload = api.request("POST", "/api/v1/nodes", node_manifest(name, cidr, versions))
        if status not in (201, 409):
            raise ClusterError(f"creating node {name} failed ({status}): {payload}")

    everything = COMPONENTS
    for component in ("kube-controller-manager", "kube-scheduler", "kwok"):
        wait_until(
            f"{component} /healthz ok",
            healthy(component),
            deadline,
            layout=layout,
            watch=everything,
            blame=component,
        )

    def nodes_ready() -> bool:
        return all(node_ready(api.get(f"/api/v1/nodes/{name}")[1]) for name, _ in NODES)

    wait_until(
        "both nodes Ready", nodes_ready, deadline, layout=layout, watch=everything, blame="kwok"
    )

    def default_service_account() -> bool:
        status, _ = api.get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    wait_until(
        "the default ServiceAccount in namespace default",
        default_service_account,
        deadline,
        layout=layout,
        watch=everything,
        blame="kube-controller-manager",
    )

    smoke_test(api, layout, deadline)
    state["complete"] = True
    state["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    layout.state_file.write_text(json.dumps(state, indent=2) + "\n")


def smoke_test(api: Api, layout: Layout, deadline: Deadline) -> None:
    """A pod is scheduled onto a kwok node, becomes Ready, and goes away when deleted."""
    name = f"graft-smoke-{uuid.uuid4().hex[:8]}"
    path = f"/api/v1/namespaces/default/pods/{name}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        # The default grace period: the pod goes away only if kwok deletes it, as a kubelet does.
        "spec": {"containers": [{"name": "smoke", "image": SMOKE_IMAGE}]},
    }
    status, payload = api.request("POST", "/api/v1/namespaces/default/pods", pod)
    if status != 201:
        raise ClusterError(f"creating the smoke pod failed ({status}): {payload}")

    def scheduled() -> bool:
        pod = api.get(path)[1]
        return isinstance(pod, dict) and bool(pod.get("spec", {}).get("nodeName"))

    wait_until(
        "the smoke pod scheduled",
        scheduled,
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kube-scheduler",
    )
    wait_until(
        "the smoke pod Ready",
        lambda: pod_ready(api.get(path)[1]),
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kwok",
    )
    api.request("DELETE", path)
    wait_until(
        "the smoke pod deleted",
        lambda: api.get(path)[0] == 404,
        deadline,
        layout=layout,
        watch=COMPONENTS,
        blame="kwok",
    )


def down() -> None:
    """Stop every component of the local cluster and remove its state directory."""
    layout = Layout(state_dir())
    with cluster_lock():
        _down_locked(layout, quiet=False)


def _down_locked(layout: Layout, *, quiet: bool) -> None:
    if not layout.root.exists():
        if not quiet:
            log(f"nothing to stop ({layout.root} does not exist)")
        return
    running = [c for c in COMPONENTS if component_pid(layout, c) is not None]
    if running and not quiet:
        log("stopping " + ", ".join(reversed(running)))
    elif running:
        log("cleaning up a stale cluster: stopping " + ", ".join(reversed(running)))
    stop_all(layout)
    leftover = [c for c in COMPONENTS if component_pid(layout, c) is not None]
    if leftover:
        raise ClusterError(f"could not stop {', '.join(leftover)}; state kept in {layout.root}")
    shutil.rmtree(layout.root)
    if not quiet:
        log(f"removed {layout.root}")


def status() -> tuple[list[str], bool]:
    """One line per component, plus the apiserver's readiness; and whether all is well."""
    layout = Layout(state_dir())
    state = read_state(layout) or {}
    ports = state.get("ports") or configured_ports()
    lines: list[str] = []
    all_ok = True
    for component in COMPONENTS:
        pid = component_pid(layout, component)
        if pid is None:
            all_ok = False
            lines.append(f"{component:<24} not running")
            continue
        url = health_url(component, ports)
        health = ""
        if url is not None:
            healthy = probe_http(url)
            all_ok &= healthy
            health = "  healthy" if healthy else "  UNHEALTHY"
        lines.append(f"{component:<24} running (pid {pid}){health}")
    if layout.cert("admin").is_file():
        try:
            ok, detail = Api(layout, int(ports["kube-apiserver"])).readyz()
        except (OSError, ssl.SSLError) as err:
            ok, detail = False, str(err)
    else:
        ok, detail = False, "no admin certificate (cluster not created)"
    all_ok &= ok
    lines.append(f"{'apiserver /readyz':<24} {'ok' if ok else 'not ready: ' + detail[:200]}")
    return lines, all_ok


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localcluster.py",
        description="Local Kubernetes control plane (etcd, apiserver, controllers, kwok).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the cluster unless it is up; print the kubeconfig path")
    sub.add_parser("down", help="stop the cluster and remove its state")
    sub.add_parser("kubeconfig", help="print the kubeconfig path (exit 1 if the cluster is down)")
    sub.add_parser("status", help="show each component's state")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            print(up())
        elif args.command == "down":
            down()
        elif args.command == "kubeconfig":
            print(kubeconfig_path())
        elif args.command == "status":
            lines, ok = status()
            print("\n".join(lines))
            return 0 if ok else 1
    except (ClusterError, OSError) as err:
        log(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
