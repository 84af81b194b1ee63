"""Integration tests run against a real kube-apiserver.

Unless KUBECONFIG points at a cluster, the session starts the local control plane
(hack/localcluster.py: etcd, kube-apiserver, controller-manager, scheduler, kwok) and stops it
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

import pytest

from kube import ROOT, Cluster, OperatorProcess, wait_for


def _localcluster(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster.py"), *args],
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
            [sys.executable, str(ROOT / "hack" / "localcluster.py"), "kubeconfig"],
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
def operator(
    crds: Cluster, tmp_path_factory: pytest.TempPathFactory, artifacts_root: Path
) -> Iterator[OperatorProcess]:
    """The one operator of the test session (two would fight over the same objects).

    Job pods get an annotation that keeps kwok from completing them by itself, so the
    kubelet stand-in (tests/kubelet.py) runs their containers and reports how they ended.
    """
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    env = {
        "GRAFT_ARTIFACTS_URI": f"file://{artifacts_root}",
        "GRAFT_JOB_POD_ANNOTATIONS": json.dumps({"kwok.graft.dev/run-duration": "1h"}),
    }
    op = OperatorProcess(crds, log, env=env)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        # Keep the log where CI output can point to it.
        print(f"\noperator log: {log}")


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "operator" in getattr(item, "funcargs", {}):
        op: OperatorProcess = item.funcargs["operator"]
        report.sections.append(("operator log (last lines)", op.tail(120)))
