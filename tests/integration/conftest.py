"""Integration tests run against a real kube-apiserver.

Unless KUBECONFIG points at a cluster, the session starts the local control plane
(hack/localcluster: etcd, kube-apiserver, controller-manager, scheduler, kwok) and stops it
at the end if it started it. The operator runs as a `graft run` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.kube import (
    RBAC_DENIAL,
    ROOT,
    Cluster,
    GatewayProcess,
    OperatorProcess,
    free_port,
    wait_for,
)
from harness.kubelet import KubeletStandIn


def _localcluster(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"localcluster {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A discovery cache of its own: a local cluster restarted on the same port must not be
    # seen through a stale one.
    os.environ["KUBECACHEDIR"] = str(tmp_path_factory.mktemp("kubecache"))
    configured = os.environ.get("KUBECONFIG")
    if configured:
        yield Cluster(kubeconfig=configured)
        return
    already_up = (
        subprocess.run(
            [sys.executable, str(ROOT / "hack" / "localcluster"), "kubeconfig"],
            capture_output=True,
            text=True,
            check=False,
        ).returncode
        == 0
    )
    kubeconfig = _localcluster("up")
    try:
        yield Cluster(kubeconfig=kubeconfig)
    finally:
        if not already_up and not os.environ.get("GRAFT_KEEP_CLUSTER"):
            _localcluster("down")


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=graft-tests",
        "-f",
        str(ROOT / "crds"),
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds")
    )
    return cluster


@pytest.fixture(scope="session")
def artifacts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the operator puts trained addons in tests (GRAFT_ARTIFACTS_URI=file://...)."""
    return tmp_path_factory.mktemp("graft-artifacts")


@pytest.fixture(scope="session")
def shipped_rbac(crds: Cluster) -> Cluster:
    """Graft's RBAC exactly as the chart and deploy/graft.yaml ship it (generated from
    graft.gen.rbac)."""
    from graft.gen import rbac

    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": rbac.OPERATOR_NAMESPACE},
    }
    crds.apply(
        [namespace, *rbac.manifests()],
        "--server-side",
        "--force-conflicts",
        "--field-manager=graft-tests",
    )
    return crds


def service_account_kubeconfig(
    admin_cluster: Cluster, name: str, namespace: str, path: Path
) -> str:
    """A kubeconfig that authenticates as a ServiceAccount, with a bearer token."""
    token = admin_cluster.kubectl(
        "create", "token", name, "-n", namespace, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(admin_cluster.kubeconfig).read_text())
    cluster = next(c for c in admin["clusters"] if c["name"] == _current_cluster(admin))
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    whoami = Cluster(kubeconfig=str(path)).kubectl("auth", "whoami", "-o", "json").stdout
    username = json.loads(whoami)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{namespace}:{name}"
    return str(path)


@pytest.fixture(scope="session")
def operator_kubeconfig(shipped_rbac: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kubeconfig that authenticates as the operator's ServiceAccount, with a bearer token."""
    from graft.gen import rbac

    path = tmp_path_factory.mktemp("operator-sa") / "kubeconfig"
    return service_account_kubeconfig(
        shipped_rbac, rbac.OPERATOR_NAME, rbac.OPERATOR_NAMESPACE, path
    )


def _current_cluster(kubeconfig: dict[str, Any]) -> str:
    context = next(c for c in kubeconfig["contexts"] if c["name"] == kubeconfig["current-context"])
    name: str = context["context"]["cluster"]
    return name


@pytest.fixture(scope="session")
def gateway_ports() -> tuple[int, int]:
    """The API and metrics ports of the session's gateway, chosen before the operator starts:
    its autoscaler scrapes the gateway's metrics at a URL it is given (GRAFT_GATEWAY_METRICS)."""
    return free_port(), free_port()


@pytest.fixture(scope="session")
def operator(
    crds: Cluster,
    operator_kubeconfig: str,
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_root: Path,
    gateway_ports: tuple[int, int],
) -> Iterator[OperatorProcess]:
    """The one operator of the test session (two would fight over the same objects).

    It runs as its shipped ServiceAccount, with a token, bound to the generated ClusterRole:
    a permission the reconcilers need and deploy/ lacks fails the tests (see
    `no_rbac_denials`). Job pods get an annotation that keeps kwok from completing them by
    itself, so the kubelet stand-in (tests/harness/kubelet.py) runs their containers for real.
    """
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        "GRAFT_ARTIFACTS_URI": f"file://{artifacts_root}",
        "GRAFT_JOB_POD_ANNOTATIONS": json.dumps({"kwok.graft.dev/run-duration": "1h"}),
        # The autoscaler reads the session's gateway (when one runs), every second, and allows
        # scale-to-zero windows of seconds so that tests need not wait the real 5 minutes.
        "GRAFT_GATEWAY_METRICS": f"http://127.0.0.1:{gateway_ports[1]}/metrics",
        "GRAFT_AUTOSCALER_INTERVAL": "1",
        "GRAFT_MIN_SCALE_TO_ZERO_WINDOW": "5",
        # Trainers (run by the kubelet stand-in on this machine) report live progress to the
        # session's gateway; when a test runs none, their reports fail and training goes on.
        "GRAFT_GATEWAY_URL": f"http://127.0.0.1:{gateway_ports[0]}",
    }
    op = OperatorProcess(crds, log, env=env, kubeconfig=operator_kubeconfig)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        # Keep the log where CI output can point to it.
        print(f"\noperator log: {log}")


@pytest.fixture(scope="session")
def gateway(
    operator: OperatorProcess,
    gateway_ports: tuple[int, int],
    tmp_path_factory: pytest.TempPathFactory,
    artifacts_root: Path,
) -> Iterator[GatewayProcess]:
    """The session's gateway (`graft gateway`), on the ports the operator's autoscaler knows,
    as its shipped ServiceAccount under the generated RBAC (as the operator runs). Dataset
    uploads go to the operator's file:// artifact store, where validation Jobs read them."""
    from graft.gen import rbac

    work = tmp_path_factory.mktemp("gateway")
    kubeconfig = service_account_kubeconfig(
        operator.cluster, rbac.GATEWAY_NAME, rbac.OPERATOR_NAMESPACE, work / "kubeconfig"
    )
    log = work / "gateway.log"
    gw = GatewayProcess(
        operator.cluster,
        log,
        kubeconfig=kubeconfig,
        port=gateway_ports[0],
        metrics_port=gateway_ports[1],
        uploads=f"file://{artifacts_root}",
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        denials = [line for line in gw.tail(100000).splitlines() if RBAC_DENIAL.search(line)]
        assert not denials, "the gateway hit RBAC denials:\n" + "\n".join(denials[:20])
        print(f"\ngateway log: {log}")


@pytest.fixture
def kubelet(operator: OperatorProcess, namespace: str, tmp_path: Path) -> Iterator[KubeletStandIn]:
    """The kubelet stand-in for the Job pods of the test's namespace: inspection Jobs of addon
    Models, validation Jobs of Datasets and trainer Jobs run for real (tests/harness/kubelet.py)."""
    harness = KubeletStandIn(operator.cluster.kubeconfig, namespace, tmp_path / "kubelet").start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(autouse=True)
def no_rbac_denials(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that ran the operator: its log shows no permission it lacked."""
    if "operator" not in request.fixturenames:
        yield
        return
    op: OperatorProcess = request.getfixturevalue("operator")
    start = op.log_path.stat().st_size
    yield
    with op.log_path.open("rb") as f:
        f.seek(start)
        new = f.read().decode(errors="replace")
    denials = [line for line in new.splitlines() if RBAC_DENIAL.search(line)]
    assert not denials, (
        "the operator hit RBAC denials under its shipped ClusterRole (add the rule to "
        "operator/graft/gen/rbac.py):\n" + "\n".join(denials[:20])
    )


@pytest.fixture
def namespace(crds: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    wait_for(
        "the default ServiceAccount",
        lambda: crds.get("serviceaccount", "default", name),
        timeout=30,
    )
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_helm.py first: it installs and uninstalls Graft's cluster-wide objects (CRDs,
    ClusterRoles) with Helm, which must happen before the session's fixtures apply them and
    start the shared operator under them."""
    items.sort(key=lambda item: item.path.name != "test_helm.py")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "operator" in getattr(item, "funcargs", {}):
        op: OperatorProcess = item.funcargs["operator"]
        report.sections.append(("operator log (last lines)", op.tail(120)))
