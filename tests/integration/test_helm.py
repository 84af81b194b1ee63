"""The Helm chart on a real API server: `helm install` creates everything and its pod is admitted
(in a namespace that enforces the restricted Pod Security Standard); an operator running as the
chart's ServiceAccount reconciles examples/ to Ready, so the chart's RBAC is enough; `helm
upgrade` applies a changed CRD; `helm uninstall` leaves the CRDs and users' resources in place.

The operator pod itself is a kwok fake (no container runs), so the operator runs here as a
`graft run` process with a token of the chart's ServiceAccount. The test installs cluster-wide
objects (CRDs, ClusterRoles), so it runs first in its session (see conftest.py) and leaves the
cluster as it found it; it adopts Graft's cluster-wide objects when something else installed them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.api.kinds import ALL_KINDS
from graft.gen import chart, rbac
from harness.kube import RBAC_DENIAL, ROOT, Cluster, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn

RELEASE = "graft-it"
NAMESPACE = "graft-it"
OPERATOR = f"{RELEASE}-operator"  # the chart's ServiceAccount and Deployment for this release
CHART = ROOT / chart.CHART_DIR
EXAMPLES = ROOT / "examples"
HELM_TIMEOUT = "120s"


class Helm:
    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.binary = chart.helm_binary()
        self.env = cluster.env(
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def release_exists(self) -> bool:
        return self("status", RELEASE, "-n", NAMESPACE, check=False).returncode == 0


def cluster_scoped(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["kind"] in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    ]


def resource(kind: str) -> str:
    """kubectl's unambiguous name of a kind the chart renders."""
    return {
        "CustomResourceDefinition": "customresourcedefinitions.apiextensions.k8s.io",
        "ClusterRole": "clusterroles.rbac.authorization.k8s.io",
        "ClusterRoleBinding": "clusterrolebindings.rbac.authorization.k8s.io",
        "Role": "roles.rbac.authorization.k8s.io",
        "RoleBinding": "rolebindings.rbac.authorization.k8s.io",
        "ServiceAccount": "serviceaccounts",
        "Deployment": "deployments.apps",
        "Service": "services",
        "PodDisruptionBudget": "poddisruptionbudgets.policy",
    }[kind]


def adopt(cluster: Cluster, kind: str, name: str) -> None:
    """Let the release take over an object something else created (Helm's adoption rules)."""
    cluster.kubectl(
        "label", "--overwrite", resource(kind), name, "app.kubernetes.io/managed-by=Helm"
    )
    cluster.kubectl(
        "annotate",
        "--overwrite",
        resource(kind),
        name,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={NAMESPACE}",
    )


def token_kubeconfig(cluster: Cluster, path: Path) -> str:
    """A kubeconfig that authenticates as the chart's ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", OPERATOR, "-n", NAMESPACE, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [server],
                "users": [{"name": OPERATOR, "user": {"token": token}}],
                "contexts": [
                    {"name": OPERATOR, "context": {"cluster": server["name"], "user": OPERATOR}}
                ],
                "current-context": OPERATOR,
            }
        )
    )
    path.chmod(0o600)
    whoami = json.loads(
        Cluster(kubeconfig=str(path)).kubectl("auth", "whoami", "-o", "json").stdout
    )
    assert (
        whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"
    )
    return str(path)


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / path).read_text()) if d]


def example_objects() -> list[dict[str, Any]]:
    """The Graft objects of examples/ that become Ready on the local control plane: the
    Account, its User and the User's ApiKey (account.yaml), the base Model and its Deployment
    (quickstart.yaml; kwok runs the model-server pods) and the Dataset (training/dataset.yaml;
    the kubelet stand-in runs its validation Job). Not the FineTuningJob: its trainer would
    fetch SmolLM2 from the Hugging Face Hub, which this machine cannot reach."""
    docs = _docs("account.yaml") + _docs("quickstart.yaml")
    docs += [d for d in _docs("training/dataset.yaml") if d["kind"] == "Dataset"]
    kinds = ["Account", "User", "ApiKey", "Model", "Deployment", "Dataset"]
    assert [d["kind"] for d in docs] == kinds
    return docs


def example_config_maps() -> list[dict[str, Any]]:
    """The ConfigMap the example Dataset reads."""
    return [d for d in _docs("training/dataset.yaml") if d["kind"] == "ConfigMap"]


def ref(doc: dict[str, Any]) -> tuple[str, str, str | None]:
    return (
        f"{doc['kind'].lower()}s.graft.dev",
        doc["metadata"]["name"],
        doc["metadata"].get("namespace"),
    )


def ready(cluster: Cluster, doc: dict[str, Any]) -> dict[str, Any] | None:
    obj = cluster.get(*ref(doc))
    cond = condition(obj, "Ready")
    return obj if cond and cond["status"] == "True" else None


class Cleanup:
    """Leaves the cluster as the test found it, whatever step failed."""

    def __init__(self, cluster: Cluster, helm: Helm, log: Path) -> None:
        self.cluster = cluster
        self.helm = helm
        self.log = log
        self.preexisting: set[tuple[str, str]] = set()
        self.installed = False
        """Whether this run got as far as adopting and installing (then it restores)."""

    def custom_resources(self) -> None:
        """Delete the examples' objects; an operator (as admin) handles their finalizers."""
        docs = example_objects()
        if not any(self.cluster.get(*ref(d)) for d in docs if self._crd_exists(d)):
            return
        # An operator as cluster admin, with its Lease and key seed in the release's namespace
        # (graft-system may not exist yet: this test runs first on a fresh cluster).
        if self.cluster.get("namespace", NAMESPACE) is None:
            self.cluster.kubectl("create", "namespace", NAMESPACE)
        op = OperatorProcess(
            self.cluster,
            self.log,
            resync_seconds=1.0,
            env={
                "GRAFT_OPERATOR_NAMESPACE": NAMESPACE,
                "GRAFT_OPERATOR_SERVICE_ACCOUNT": OPERATOR,
            },
        )
        op.start()
        try:
            for doc in reversed(docs):  # Model and User before their Account
                if not self._crd_exists(doc):
                    continue
                kind, name, ns = ref(doc)
                args = ["delete", kind, name, "--ignore-not-found", "--wait=false"]
                self.cluster.kubectl(*args, *(["-n", ns] if ns else []))
            for doc in docs:
                if self._crd_exists(doc):
                    wait_for(
                        f"{doc['kind']} {doc['metadata']['name']} to go",
                        lambda d=doc: self.cluster.get(*ref(d)) is None,
                        timeout=120,
                    )
        finally:
            op.stop()

    def _crd_exists(self, doc: dict[str, Any]) -> bool:
        return self.cluster.get("crd", ref(doc)[0]) is not None

    def leftovers(self) -> None:
        """What an interrupted earlier run left: its release, namespace and examples' objects
        (never Graft's CRDs or ClusterRoles, which may be someone else's: see `everything`)."""
        if self.helm.release_exists() or self.cluster.get("namespace", NAMESPACE) is not None:
            self.everything()

    def everything(self) -> None:
        self.custom_resources()
        if self.helm.release_exists():
            self.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", HELM_TIMEOUT)
        demo = example_objects()[0]["metadata"]["name"]
        self.cluster.kubectl(
            "delete", "namespace", NAMESPACE, demo, "--ignore-not-found", "--wait=false"
        )
        if not self.installed:
            return
        for kind in ALL_KINDS:
            if ("CustomResourceDefinition", kind.crd_name) not in self.preexisting:
                self.cluster.kubectl("delete", "crd", kind.crd_name, "--ignore-not-found")
        if any(k == "CustomResourceDefinition" for k, _ in self.preexisting):
            # Back to exactly crds/ (the upgrade changed one).
            self.cluster.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=graft-tests",
                "-f",
                str(ROOT / "crds"),
            )
        restore = [
            m
            for m in rbac.manifests()
            if (m["kind"], m["metadata"]["name"]) in self.preexisting and m["kind"] == "ClusterRole"
        ]
        if restore:
            self.cluster.apply(
                restore, "--server-side", "--force-conflicts", "--field-manager=graft-tests"
            )
        wait_for(
            f"namespace {NAMESPACE} to go",
            lambda: self.cluster.get("namespace", NAMESPACE) is None,
            timeout=120,
        )


@pytest.fixture
def helm(cluster: Cluster, tmp_path: Path) -> Helm:
    try:
        return Helm(cluster, tmp_path / "helm")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def cleanup(cluster: Cluster, helm: Helm, tmp_path: Path) -> Iterator[Cleanup]:
    clean = Cleanup(cluster, helm, tmp_path / "cleanup-operator.log")
    clean.leftovers()
    yield clean
    clean.everything()


def test_helm_install_upgrade_uninstall(
    cluster: Cluster, helm: Helm, cleanup: Cleanup, tmp_path: Path
) -> None:
    times: dict[str, float] = {}
    start = time.monotonic()

    # What the release will hold; Graft's cluster-wide objects that something else installed
    # (kubectl apply -f deploy/graft.yaml, another test session) are adopted, then restored.
    rendered = [
        d
        for d in yaml.safe_load_all(
            helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE).stdout
        )
        if d
    ]
    for doc in example_objects()[:1]:
        if cluster.get("crd", ref(doc)[0]) and cluster.get(*ref(doc)) is not None:
            pytest.skip(f"examples' {doc['kind']} {doc['metadata']['name']} exists (make demo?)")
    cleanup.installed = True
    for kind, name in cluster_scoped(rendered):
        if cluster.get(resource(kind), name) is not None:
            cleanup.preexisting.add((kind, name))
            adopt(cluster, kind, name)

    # A typo'd value is refused against the cluster too, naming it.
    typo = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--set", "workerz=2", check=False)
    assert typo.returncode != 0
    assert "workerz" in typo.stderr

    # --- install, into a namespace that enforces the restricted Pod Security Standard ---------
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--wait", "--timeout", HELM_TIMEOUT)
    times["install"] = time.monotonic() - start
    for doc in rendered:
        ns = doc["metadata"].get("namespace")
        obj = cluster.get(resource(doc["kind"]), doc["metadata"]["name"], ns)
        assert obj is not None, (doc["kind"], doc["metadata"]["name"])
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        *(k.crd_name for k in ALL_KINDS),
    )
    pods = cluster.list("pods", NAMESPACE, "app.kubernetes.io/component=operator")
    assert len(pods) == 1, pods
    (pod,) = pods
    assert pod["spec"]["serviceAccountName"] == OPERATOR
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    deployment = cluster.get("deployments.apps", OPERATOR, NAMESPACE)
    assert deployment is not None
    assert deployment["status"].get("readyReplicas") == 1  # kwok's fake pod, admitted and "ready"

    # --- the chart's RBAC is enough: an operator with the ServiceAccount's token ---------------
    kubeconfig = token_kubeconfig(cluster, tmp_path / "operator.kubeconfig")
    log = tmp_path / "operator.log"
    operator = OperatorProcess(
        cluster,
        log,
        resync_seconds=2.0,
        kubeconfig=kubeconfig,
        env={
            # As the chart's Deployment sets them (downward API): the seed Secret lives there,
            # and each Account binds its namespace's Secrets to this ServiceAccount.
            "GRAFT_OPERATOR_NAMESPACE": NAMESPACE,
            "GRAFT_OPERATOR_SERVICE_ACCOUNT": OPERATOR,
            # Job pods wait for the kubelet stand-in instead of being ended by kwok.
            "GRAFT_JOB_POD_ANNOTATIONS": json.dumps({"kwok.graft.dev/run-duration": "1h"}),
        },
    )
    operator.start()
    kubelet: KubeletStandIn | None = None
    try:
        account, *content = example_objects()
        cluster.apply(account)
        wait_for("the example Account to be Ready", lambda: ready(cluster, account), timeout=180)
        kubelet = KubeletStandIn(
            cluster.kubeconfig, account["metadata"]["name"], tmp_path / "kubelet"
        ).start()
        cluster.apply([*example_config_maps(), *content])
        for doc in content:
            wait_for(
                f"the example {doc['kind']} to be Ready",
                lambda d=doc: ready(cluster, d),
                timeout=120,
            )
        times["ready"] = time.monotonic() - start
        user = content[0]
        bindings = cluster.list("rolebindings", user["metadata"]["namespace"])
        # Binding graft-member needs the chart's `bind` rule on the user ClusterRoles.
        assert any(b["roleRef"]["name"] == "graft-member" for b in bindings), bindings
        # The ApiKey's Secret (read back, and the Role on it) needs the Account's binding of
        # graft-operator-account-secrets to this release's ServiceAccount (the chart's `bind`
        # rule on that ClusterRole), and the operator holds those rights there only.
        demo = account["metadata"]["name"]
        (secrets,) = [b for b in bindings if b["metadata"]["name"] == "graft-operator-secrets"]
        assert secrets["roleRef"]["name"] == "graft-operator-account-secrets"
        assert [
            {k: s.get(k) for k in ("kind", "name", "namespace")} for s in secrets["subjects"]
        ] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
        assert cluster.get("secret", "alice-ci-apikey", demo) is not None
        who = f"--as=system:serviceaccount:{NAMESPACE}:{OPERATOR}"
        for ns, expected in ((demo, "yes"), ("default", "no"), (NAMESPACE, "no")):
            answer = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, who, check=False)
            assert answer.stdout.strip() == expected, (ns, answer.stdout, answer.stderr)

        # --- upgrade: a changed CRD (an added printer column) is applied -----------------------
        changed = tmp_path / "chart"
        shutil.copytree(CHART, changed)
        crd_file = changed / chart.CRD_TEMPLATES / "accounts.graft.dev.yaml"
        text = crd_file.read_text()
        column = "    additionalPrinterColumns:\n"
        assert column in text
        crd_file.write_text(
            text.replace(
                column,
                column
                + "    - name: Display\n      type: string\n      jsonPath: .spec.displayName\n",
            )
        )
        helm("upgrade", RELEASE, str(changed), "-n", NAMESPACE, "--wait", "--timeout", HELM_TIMEOUT)
        crd = cluster.get("crd", "accounts.graft.dev")
        assert crd is not None
        columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert "Display" in columns, columns
        listing = cluster.kubectl("get", "accounts.graft.dev", account["metadata"]["name"]).stdout
        assert "DISPLAY" in listing
        assert "Demo team" in listing
        times["upgrade"] = time.monotonic() - start
        assert ready(cluster, account), "the Account stays Ready across the upgrade"
    finally:
        if kubelet is not None:
            kubelet.stop()
        operator.stop()
    denials = [
        line for line in log.read_text(errors="replace").splitlines() if RBAC_DENIAL.search(line)
    ]
    assert not denials, "the chart's RBAC lacks a permission:\n" + "\n".join(denials[:20])

    # --- uninstall: the CRDs and users' resources stay -----------------------------------------
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", HELM_TIMEOUT)
    times["uninstall"] = time.monotonic() - start
    for kind in ALL_KINDS:
        assert cluster.get("crd", kind.crd_name) is not None, kind.crd_name
    for doc in example_objects():
        assert cluster.get(*ref(doc)) is not None, doc["kind"]
    assert cluster.get("deployments.apps", OPERATOR, NAMESPACE) is None
    assert cluster.get("serviceaccount", OPERATOR, NAMESPACE) is None
    assert cluster.get(resource("ClusterRoleBinding"), OPERATOR) is None
    print(
        "\nhelm test timings (s since start): "
        + json.dumps({k: round(v, 1) for k, v in times.items()})
    )
