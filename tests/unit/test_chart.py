"""The Helm chart deploy/charts/graft: it lints, renders valid Kubernetes objects with default
and non-default values, refuses a typo'd value, carries the generated CRDs and RBAC unchanged,
and the committed generated files (chart and deploy/graft.yaml) are up to date.

Needs the helm binary (`make controlplane` builds it; .ci/run does before the tests).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import graft
from graft.api.kinds import ALL_KINDS
from graft.controller.metrics import DEFAULT_URL, parse_endpoint
from graft.core import keys, settings
from graft.core.objects import INSTALLED_LABELS, Owner
from graft.gateway import main as gateway_main
from graft.gen import chart, rbac
from graft.plan.account import network_policy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / chart.CHART_DIR
KUBERNETES_VERSION = "1.36"
"""The Kubernetes version the local control plane runs (hack/versions.env)."""

SETTINGS_ENV = {v for k, v in vars(settings).items() if k.endswith("_ENV") and isinstance(v, str)}
PENDING_ENV: set[str] = set()
"""Variables the chart sets that graft.core.settings does not read yet (issue 10)."""

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, check=False, timeout=120)


def render(
    helm: str,
    *args: str,
    release: str = "graft",
    namespace: str = "graft-system",
    values: dict[str, Any] | None = None,
    tmp_path: Path | None = None,
) -> list[Doc]:
    flags = list(args)
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        flags += ["-f", str(path)]
    proc = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *flags)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def component(docs: list[Doc], kind: str, name: str) -> Doc:
    """The one object of this kind with app.kubernetes.io/component `name` (the chart names
    objects after the release, so tests that render other releases find them by component)."""
    found = [
        d for d in docs if d["kind"] == kind and d["metadata"]["labels"].get(keys.COMPONENT) == name
    ]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in found]
    return found[0]


def operator_deployment(docs: list[Doc]) -> Doc:
    return component(docs, "Deployment", keys.OPERATOR_COMPONENT)


def gateway_deployment(docs: list[Doc]) -> Doc:
    return component(docs, "Deployment", keys.GATEWAY_COMPONENT)


def operator_container(docs: list[Doc]) -> Doc:
    pod = operator_deployment(docs)["spec"]["template"]["spec"]
    container: Doc = pod["containers"][0]
    return container


def gateway_container(docs: list[Doc]) -> Doc:
    pod = gateway_deployment(docs)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return dict(container)


def env_of(docs: list[Doc]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in operator_container(docs)["env"]}


EVERYTHING: dict[str, Any] = {
    "image": {
        "repository": "registry.example.com/graft-operator",
        "tag": "dev",
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "runtimeImage": "registry.example.com/graft:dev",
    "trainerImage": "registry.example.com/graft-trainer:dev",
    "vllmImage": "vllm/vllm-openai:v0.12.0",
    "allowedImages": ["registry.example.com/", "vllm/vllm-openai"],
    "artifactsUri": "file:///srv/graft",
    "storageSecret": "s3-credentials",
    "jobPodAnnotations": {"sidecar.istio.io/inject": "false"},
    "dataset": {"maxBytes": 4294967296, "maxExamples": 10},
    "resyncSeconds": 2.5,
    "workers": 3,
    "modelServerTimeoutSeconds": 45,
    "autoscaler": {
        "intervalSeconds": 2,
        "minScaleToZeroWindowSeconds": 30,
        "gatewayMetrics": ["http://10.0.0.1:9100/metrics", "http://10.0.0.2:9100/metrics"],
    },
    "trainingProgress": {"enabled": True, "gatewayUrl": "https://gw.example.internal:8443"},
    "logLevel": "debug",
    "extraEnv": [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
    ],
    "crds": {"enabled": True, "keep": False},
    "serviceAccount": {"name": "graft-sa", "annotations": {"example.com/role": "graft"}},
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "ml"},
    "priorityClassName": "system-cluster-critical",
    "resources": {
        "requests": {"cpu": "200m", "memory": "300Mi"},
        "limits": {"cpu": 1, "memory": "1Gi"},
    },
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                ]
            }
        }
    },
    "serviceMonitor": {
        "enabled": True,
        "port": 9100,
        "path": "/prom",
        "labels": {"release": "prometheus"},
    },
    "gateway": {
        "enabled": True,
        "replicaCount": 3,
        "queueTimeoutSeconds": 42.5,
        "service": {
            "type": "LoadBalancer",
            "port": 8000,
            "annotations": {"example.com/load-balancer": "internal"},
        },
        "podAnnotations": {"example.com/team": "ml"},
        "resources": {
            "requests": {"cpu": "250m", "memory": "300Mi"},
            "limits": {"cpu": 2, "memory": "2Gi"},
        },
        "nodeSelector": {"pool": "edge"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {keys.COMPONENT: "gateway"}},
                        },
                    }
                ]
            }
        },
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "serviceMonitor": {
            "enabled": True,
            "interval": "15s",
            "scrapeTimeout": "5s",
            "labels": {"release": "prometheus"},
        },
    },
}

VALUE_SETS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "no-crds": ({"crds": {"enabled": False}}, ()),
    "crds-not-kept": ({"crds": {"keep": False}, "replicaCount": 0}, ()),
    "everything": (EVERYTHING, ("--set", "crds.keep=false")),
    "other-release": ({"logLevel": "debug"}, ()),
    "no-gateway": ({"gateway": {"enabled": False}}, ()),
    "gateway-node-port": (
        {
            "gateway": {
                "replicaCount": 4,
                "service": {"type": "NodePort"},
                "podDisruptionBudget": {"minAvailable": "50%"},
            }
        },
        (),
    ),
}
RELEASES = {"other-release": ("acme", "platform")}


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[Doc]:
    return render(helm)


def test_lint_strict(helm: str) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    everything = run_helm(
        helm, "lint", "--strict", str(CHART), "--set-json", 'serviceMonitor={"enabled":true}'
    )
    assert everything.returncode == 0, everything.stdout + everything.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_are_valid_kubernetes(helm: str, name: str, tmp_path: Path) -> None:
    values, flags = VALUE_SETS[name]
    release, namespace = RELEASES.get(name, ("graft", "graft-system"))
    docs = render(
        helm, *flags, release=release, namespace=namespace, values=values, tmp_path=tmp_path
    )
    assert docs
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            assert doc["kind"] == "ServiceMonitor"
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {where}: {exc.message} at {list(exc.path)}")
        if doc["metadata"].get("namespace") is not None:
            assert doc["metadata"]["namespace"] == namespace, where
        labels = doc["metadata"]["labels"]
        assert labels.items() >= INSTALLED_LABELS.items(), where
        assert labels["app.kubernetes.io/instance"] == release, where
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= kinds
    assert ("CustomResourceDefinition" in kinds) is (values.get("crds", {}).get("enabled", True))
    gateway = values.get("gateway", {})
    gateway_on = gateway.get("enabled", True)
    components = {
        kind: {d["metadata"]["labels"][keys.COMPONENT] for d in docs if d["kind"] == kind}
        for kind in ("Deployment", "ServiceMonitor")
    }
    assert components["Deployment"] == {"operator", "gateway"} if gateway_on else {"operator"}
    monitors = set()
    if values.get("serviceMonitor", {}).get("enabled"):
        monitors.add("operator")
    if gateway_on and gateway.get("serviceMonitor", {}).get("enabled"):
        monitors.add("gateway")
    assert components["ServiceMonitor"] == monitors


def container_port(container: Doc, name: str) -> int:
    port: int = next(p for p in container["ports"] if p["name"] == name)["containerPort"]
    return port


def metrics_arg(container: Doc) -> str:
    found = [a for a in container["args"] if a.startswith("--metrics=")]
    assert len(found) == 1, container["args"]
    return str(found[0].removeprefix("--metrics="))


def test_operator_pod(default_docs: list[Doc]) -> None:
    deployment = one(default_docs, "Deployment", rbac.OPERATOR_NAME)
    assert deployment["spec"]["replicas"] == 1
    # Leader election: the new pod waits as a standby while the old one still serves.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    template = deployment["spec"]["template"]
    assert (
        template["metadata"]["labels"].items()
        >= {
            "app.kubernetes.io/name": "graft",
            "app.kubernetes.io/instance": "graft",
            "app.kubernetes.io/component": "operator",
        }.items()
    )
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    pod = template["spec"]
    assert pod["serviceAccountName"] == rbac.OPERATOR_NAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["image"] == f"ghcr.io/graft-dev/graft-operator:{graft.__version__}"
    assert container["command"] == ["graft"]
    assert container["args"][0] == "run"
    assert "--verbose" not in container["args"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    port = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_the_operator_serves_metrics_without_a_service_monitor(default_docs: list[Doc]) -> None:
    """As `graft run` does by default, on the port the pod declares."""
    container = operator_container(default_docs)
    assert metrics_arg(container) == DEFAULT_URL
    endpoint = parse_endpoint(metrics_arg(container))
    assert endpoint is not None
    assert container_port(container, "metrics") == endpoint.port == 9090
    assert container_port(container, "health") != endpoint.port
    assert not [
        d
        for d in default_docs
        if d["kind"] in ("Service", "ServiceMonitor")
        and d["metadata"]["labels"][keys.COMPONENT] == keys.OPERATOR_COMPONENT
    ]


def test_the_service_monitor_scrapes_the_operators_metrics(helm: str, tmp_path: Path) -> None:
    docs = render(helm, release="acme", namespace="platform", values=EVERYTHING, tmp_path=tmp_path)
    deployment = operator_deployment(docs)
    container = operator_container(docs)
    # The operator serves where the values say...
    assert metrics_arg(container) == "http://0.0.0.0:9100/prom"
    assert container_port(container, "metrics") == 9100
    # ...the Service forwards its metrics port to the container's, and selects the operator...
    service = component(docs, "Service", keys.OPERATOR_COMPONENT)
    assert service["metadata"]["namespace"] == "platform"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # ...and the ServiceMonitor selects that Service and scrapes the path the operator serves.
    monitor = component(docs, "ServiceMonitor", keys.OPERATOR_COMPONENT)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["platform"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/prom")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_trainers_report_progress_to_the_charts_gateway_by_default(
    helm: str, tmp_path: Path
) -> None:
    """GRAFT_GATEWAY_URL: the gateway Service of the release (its name, namespace and port), a
    URL the operator's settings take; none without a gateway or with progress turned off."""
    env = env_of(render(helm))
    assert env["GRAFT_GATEWAY_URL"] == "http://graft-gateway.graft-system.svc:80"
    other = {"gateway": {"service": {"port": 8000}}}
    docs = render(helm, release="acme", namespace="platform", values=other, tmp_path=tmp_path)
    service = component(
        [
            d
            for d in docs
            if d["kind"] == "Service"
            and "ports" in d["spec"]
            and d["spec"]["ports"][0]["name"] == "http"
        ],
        "Service",
        keys.GATEWAY_COMPONENT,
    )
    url = env_of(docs)["GRAFT_GATEWAY_URL"]
    assert url == f"http://{service['metadata']['name']}.platform.svc:8000"
    assert settings.Settings.from_env({"GRAFT_GATEWAY_URL": url}).gateway_url == url
    for values in ({"gateway": {"enabled": False}}, {"trainingProgress": {"enabled": False}}):
        assert "GRAFT_GATEWAY_URL" not in env_of(render(helm, values=values, tmp_path=tmp_path))
    # A URL of one's own, with or without the chart's gateway.
    own = {"gateway": {"enabled": False}, "trainingProgress": {"gatewayUrl": "http://gw:8080"}}
    assert env_of(render(helm, values=own, tmp_path=tmp_path))["GRAFT_GATEWAY_URL"] == (
        "http://gw:8080"
    )
    bad = run_helm(
        helm, "template", "graft", str(CHART), "--set", "trainingProgress.gatewayUrl=gw:8080/x"
    )
    assert bad.returncode != 0
    assert "gatewayUrl" in bad.stderr


def test_the_health_port_is_not_the_metrics_port(helm: str) -> None:
    proc = run_helm(helm, "template", "graft", str(CHART), "--set", "serviceMonitor.port=8080")
    assert proc.returncode != 0
    assert "serviceMonitor.port: 8080 is the operator's health port" in proc.stderr


def test_default_settings_are_the_operators(default_docs: list[Doc]) -> None:
    env = env_of(default_docs)
    assert env["GRAFT_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env[settings.OPERATOR_SERVICE_ACCOUNT_ENV] == {
        "fieldRef": {"fieldPath": "spec.serviceAccountName"}
    }
    names = {k: v for k, v in env.items() if isinstance(v, str)}
    parsed = settings.Settings.from_env(names)
    # But one: the operator alone knows no gateway; the chart installs one and says where it is.
    own = dataclasses.replace(
        settings.Settings(), gateway_url="http://graft-gateway.graft-system.svc:80"
    )
    assert parsed == own, "the chart's defaults must be the operator's own"
    assert names[settings.IMAGE_ENV] == settings.DEFAULT_REFERENCE_IMAGE
    assert set(env) <= SETTINGS_ENV | PENDING_ENV, set(env) - SETTINGS_ENV - PENDING_ENV


def test_values_reach_the_operator(helm: str, tmp_path: Path) -> None:
    docs = render(helm, release="acme", namespace="platform", values=EVERYTHING, tmp_path=tmp_path)
    env = env_of(docs)
    assert env["GRAFT_IMAGE"] == env["GRAFT_REFERENCE_IMAGE"] == "registry.example.com/graft:dev"
    assert env["GRAFT_TRAINER_IMAGE"] == "registry.example.com/graft-trainer:dev"
    assert env["GRAFT_ALLOWED_IMAGES"] == "registry.example.com/,vllm/vllm-openai"
    assert env["GRAFT_SERVER_TIMEOUT_SECONDS"] == "45"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    parsed = settings.Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert parsed.vllm_image == "vllm/vllm-openai:v0.12.0"
    assert parsed.artifacts_uri == "file:///srv/graft"
    assert parsed.storage_secret == "s3-credentials"
    assert parsed.pod_annotations == {"sidecar.istio.io/inject": "false"}
    assert parsed.dataset_max_bytes == 4294967296
    assert parsed.dataset_max_examples == 10
    assert parsed.resync_seconds == 2.5
    assert parsed.workers == 3
    assert (parsed.autoscaler_interval, parsed.min_scale_to_zero_window) == (2, 30)
    assert parsed.gateway_metrics == (
        "http://10.0.0.1:9100/metrics",
        "http://10.0.0.2:9100/metrics",
    )
    assert parsed.gateway_url == "https://gw.example.internal:8443"
    container = operator_container(docs)
    assert container["image"] == "registry.example.com/graft-operator:dev"
    assert "--verbose" in container["args"]
    assert any(p["name"] == "metrics" for p in container["ports"])
    pod = operator_deployment(docs)["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/scrape": "true"}
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["serviceAccountName"] == "graft-sa"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    sa = one(docs, "ServiceAccount", "graft-sa")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == ("graft-sa", "platform")
    assert sa["metadata"]["annotations"] == {"example.com/role": "graft"}
    binding = one(docs, "ClusterRoleBinding", "acme-graft-operator")
    assert binding["metadata"]["name"] == "acme-graft-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "graft-sa", "namespace": "platform"}
    ]
    # Each Account binds its namespace's Secrets to this pod's own ServiceAccount, which the
    # operator learns from the downward API, whatever the release or the value call it.
    assert env[settings.OPERATOR_SERVICE_ACCOUNT_ENV] == {
        "fieldRef": {"fieldPath": "spec.serviceAccountName"}
    }
    assert env[settings.OPERATOR_NAMESPACE_ENV] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    secrets = one(docs, "ClusterRole", keys.ACCOUNT_SECRETS_CLUSTER_ROLE)
    assert {v for rule in secrets["rules"] for v in rule["verbs"]} == {"get", "delete"}
    assert not [
        d for d in docs if (d.get("roleRef") or {}).get("name") == keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    ], "only Accounts bind it, in their namespaces"
    monitor = component(docs, "ServiceMonitor", keys.OPERATOR_COMPONENT)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = component(docs, "Service", keys.OPERATOR_COMPONENT)
    assert (
        service["spec"]["selector"] == operator_deployment(docs)["spec"]["selector"]["matchLabels"]
    )


def test_rbac_is_gen_rbac(default_docs: list[Doc]) -> None:
    shipped = [
        d
        for d in default_docs
        if d["kind"]
        in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    generated = rbac.manifests()

    def by_name(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
        # Helm orders what it renders by kind (ServiceAccounts first), not by file.
        return {
            (d["kind"], d["metadata"]["name"]): {k: v for k, v in d.items() if k != "metadata"}
            for d in docs
        }

    assert len(shipped) == len(generated)
    assert by_name(shipped) == by_name(generated)


def test_a_typo_in_a_value_is_refused_by_name(helm: str) -> None:
    for flag, name in (
        ("workerz=3", "workerz"),
        ("image.tga=x", "tga"),
        ("crds.keeep=false", "keeep"),
    ):
        proc = run_helm(helm, "template", "graft", str(CHART), "--set", flag)
        assert proc.returncode != 0, flag
        assert name in proc.stderr, proc.stderr
    wrong_type = run_helm(helm, "template", "graft", str(CHART), "--set", "workers=many")
    assert wrong_type.returncode != 0
    assert "workers" in wrong_type.stderr


def test_values_schema_is_strict_and_self_contained() -> None:
    text = (CHART / "values.schema.json").read_text()
    assert "$ref" not in text
    assert "http" not in text.replace("http://json-schema.org", "")
    schema = yaml.safe_load(text)
    # Every object is closed, or a typed map; "passed through to Kubernetes" objects (affinity's
    # parts, valueFrom's sources, the gateway's uploads volume source) are the only open ones.
    open_ = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                open_.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")

    walk(schema, "")
    passed_through = ("affinity", "valueFrom", "/gateway/properties/uploads/properties/volume")
    assert all(any(t in p for t in passed_through) for p in open_), open_
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)


def test_crds_are_kept_annotated_and_optional(helm: str, default_docs: list[Doc]) -> None:
    crds = [d for d in default_docs if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == sorted(k.crd_name for k in ALL_KINDS)
    for crd in crds:
        annotations = crd["metadata"]["annotations"]
        assert annotations["helm.sh/resource-policy"] == "keep"
        assert annotations["argocd.argoproj.io/sync-wave"] == "-10"
        assert annotations["argocd.argoproj.io/sync-options"] == "ServerSideApply=true"
    not_kept = render(helm, "--set", "crds.keep=false")
    for crd in (d for d in not_kept if d["kind"] == "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in crd["metadata"]["annotations"]
    assert not [
        d
        for d in render(helm, "--set", "crds.enabled=false")
        if d["kind"] == "CustomResourceDefinition"
    ]


def test_chart_crds_are_the_crds_directory(default_docs: list[Doc]) -> None:
    for kind in ALL_KINDS:
        committed = yaml.safe_load((ROOT / "crds" / f"{kind.crd_name}.yaml").read_text())
        rendered = one(default_docs, "CustomResourceDefinition", kind.crd_name)
        assert rendered["spec"] == committed["spec"], kind.crd_name
        assert rendered["metadata"]["labels"].items() >= committed["metadata"]["labels"].items()


def test_version_is_the_package_version() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == graft.__version__


def test_generated_files_are_up_to_date(helm: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert chart.write_chart(CHART, check=True) == 0, capsys.readouterr().err
    wanted = chart.render_manifests(CHART, helm)
    assert (ROOT / chart.MANIFESTS).read_text() == wanted, "run `make manifests`"
    docs = [d for d in yaml.safe_load_all(wanted) if d]
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == rbac.OPERATOR_NAMESPACE
    kinds = [d["kind"] for d in docs]
    assert kinds.index("CustomResourceDefinition") < kinds.index("Deployment")
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["graft.yaml"]


def test_argocd_health_hook_carries_the_generated_checks(helm: str) -> None:
    from graft.gen import argocd

    docs = render(helm, "--set", "argocd.health.enabled=true")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert cm["data"] == argocd.configmap_data()
    assert not [d for d in render(helm) if d["kind"] == "ConfigMap"]


# --- The gateway --------------------------------------------------------------------------------


def gateway_args(container: Doc) -> argparse.Namespace:
    """The container's command line, parsed by `graft gateway`'s own parser."""
    parser = argparse.ArgumentParser(prog="graft")
    gateway_main.register(parser.add_subparsers(dest="command"))
    assert container["command"] == ["graft"]
    return parser.parse_args(container["args"])


def test_gateway_pod(default_docs: list[Doc]) -> None:
    deployment = one(default_docs, "Deployment", rbac.GATEWAY_NAME)
    assert deployment["metadata"]["namespace"] == rbac.OPERATOR_NAMESPACE
    assert deployment["spec"]["replicas"] == 2
    # Stateless: a rollout adds a ready pod before it stops an old one.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    # The operator finds the gateway's pods by this label, in its own namespace.
    assert labels[keys.COMPONENT] == keys.GATEWAY_COMPONENT
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    operator_selector = operator_deployment(default_docs)["spec"]["selector"]["matchLabels"]
    assert not operator_selector.items() <= labels.items()
    pod = template["spec"]
    assert pod["serviceAccountName"] == rbac.GATEWAY_NAME
    operator_pod = operator_deployment(default_docs)["spec"]["template"]["spec"]
    assert pod["securityContext"] == operator_pod["securityContext"]
    container = gateway_container(default_docs)
    assert container["image"] == operator_container(default_docs)["image"]
    assert container["securityContext"] == operator_container(default_docs)["securityContext"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    args = gateway_args(container)
    assert args.func is gateway_main.run
    assert args.namespace == rbac.OPERATOR_NAMESPACE  # where the key seed Secret is
    assert args.queue_timeout == 300
    assert not args.verbose
    # The default artifact store is pvc://, which the gateway cannot reach: uploads answer 501.
    assert args.uploads is None
    assert args.max_upload_bytes == 1 << 30  # dataset.maxBytes
    assert "envFrom" not in container
    # The API on the port named http, the metrics on the port named metrics (the autoscaler
    # scrapes that name), each where the gateway listens.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9091}
    assert gateway_main.address(args.listen, "--listen", "") == ("0.0.0.0", ports["http"])
    assert gateway_main.address(args.metrics, "--metrics", "") == ("0.0.0.0", ports["metrics"])
    assert args.metrics.endswith("/metrics")
    for probe, path in (
        ("startupProbe", "/health"),
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # It listens at once; a slow API server keeps it unready, never restarts it.
    assert "initialDelaySeconds" not in container["readinessProbe"]


def test_gateway_service_and_disruption_budget(default_docs: list[Doc]) -> None:
    labels = gateway_deployment(default_docs)["spec"]["template"]["metadata"]["labels"]
    service = one(default_docs, "Service", rbac.GATEWAY_NAME)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= labels.items()
    budget = one(default_docs, "PodDisruptionBudget", rbac.GATEWAY_NAME)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Metrics are served without a ServiceMonitor, but no Service exposes them by default.
    assert [d["metadata"]["name"] for d in default_docs if d["kind"] == "Service"] == [
        rbac.GATEWAY_NAME
    ]


def test_values_reach_the_gateway(helm: str, tmp_path: Path) -> None:
    docs = render(helm, release="acme", namespace="platform", values=EVERYTHING, tmp_path=tmp_path)
    deployment = one(docs, "Deployment", "acme-graft-gateway")
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"] == {"example.com/team": "ml"}
    assert "team" not in template["metadata"]["labels"]  # podLabels are the operator's
    pod = template["spec"]
    assert pod["serviceAccountName"] == "acme-graft-gateway"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "edge"}
    assert pod["tolerations"] == EVERYTHING["gateway"]["tolerations"]
    assert pod["affinity"] == EVERYTHING["gateway"]["affinity"]
    container = gateway_container(docs)
    assert container["image"] == "registry.example.com/graft-operator:dev"
    assert container["resources"] == EVERYTHING["gateway"]["resources"]
    args = gateway_args(container)
    assert (args.namespace, args.queue_timeout, args.verbose) == ("platform", 42.5, True)
    service = one(docs, "Service", "acme-graft-gateway")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["metadata"]["annotations"] == {"example.com/load-balancer": "internal"}
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    # The metrics Service and the ServiceMonitor scrape the port the gateway serves them on.
    metrics = one(docs, "Service", "acme-graft-gateway-metrics")
    assert metrics["spec"]["ports"] == [
        {"name": "metrics", "port": 9091, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert metrics["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    monitor = component(docs, "ServiceMonitor", keys.GATEWAY_COMPONENT)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["platform"]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    ]
    # Only the metrics Service has a port named metrics: the API's Service is not scraped.
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]


def test_the_gateway_stores_uploads_where_the_values_say(helm: str) -> None:
    s3 = gateway_container(
        render(
            helm,
            "--set",
            "gateway.uploads.uri=s3://datasets/graft",
            "--set",
            "gateway.uploads.s3Secret=uploads-s3",
            "--set",
            "dataset.maxBytes=5000000",
        )
    )
    args = gateway_args(s3)
    assert (args.uploads, args.max_upload_bytes) == ("s3://datasets/graft", 5_000_000)
    assert s3["envFrom"] == [{"secretRef": {"name": "uploads-s3"}}]
    # A file:// artifact store is the default, on the volume that holds it.
    docs = render(
        helm,
        "--set",
        "artifactsUri=file:///srv/graft",
        "--set-json",
        'gateway.uploads.volume={"persistentVolumeClaim": {"claimName": "shared"}}',
    )
    local = gateway_container(docs)
    assert gateway_args(local).uploads == "file:///srv/graft"
    assert {"name": "uploads", "mountPath": "/srv/graft"} in local["volumeMounts"]
    volumes = gateway_deployment(docs)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "uploads", "persistentVolumeClaim": {"claimName": "shared"}} in volumes
    # A volume without a file:// store to mount it for is a mistake, said so.
    proc = run_helm(
        helm,
        "template",
        "graft",
        str(CHART),
        "--set-json",
        'gateway.uploads.volume={"emptyDir": {}}',
    )
    assert proc.returncode != 0
    assert "gateway.uploads.volume is for a file:// store" in proc.stderr
    bad = run_helm(helm, "template", "graft", str(CHART), "--set", "gateway.uploads.uri=pvc://x")
    assert bad.returncode != 0
    assert "/gateway/uploads/uri" in bad.stderr


def test_the_gateway_can_be_disabled(helm: str) -> None:
    docs = render(helm, "--set", "gateway.enabled=false")
    left = [
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if "gateway" in d["metadata"]["name"]
        or d["metadata"]["labels"].get(keys.COMPONENT) == keys.GATEWAY_COMPONENT
    ]
    assert left == []
    assert len(render(helm)) - len(docs) == 5 + 3  # RBAC; Deployment, Service, PDB


def test_one_gateway_replica_has_no_disruption_budget(helm: str) -> None:
    """minAvailable 1 of 1 replica would block every node drain."""
    docs = render(helm, "--set", "gateway.replicaCount=1")
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    proc = run_helm(
        helm, "template", "graft", str(CHART), "--set", "gateway.podDisruptionBudget.minAvailable=2"
    )
    assert proc.returncode != 0
    assert "gateway.podDisruptionBudget.minAvailable (2) must be below" in proc.stderr


def rules(role: Doc) -> set[tuple[str, str, str, str | None]]:
    """(group, resource, verb, resourceName) of every request the role allows."""
    return {
        (group, resource, verb, name)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [None]
    }


def test_gateway_rbac_is_exactly_what_it_needs(helm: str) -> None:
    docs = render(helm, release="acme", namespace="platform")
    read = ("get", "list", "watch")
    kinds = (
        "accounts",
        "users",
        "apikeys",
        "models",
        "deployments",
        "deployedmodels",
        "finetuningjobs",
        "datasets",  # shown on the dashboard
    )
    cluster_role = one(docs, "ClusterRole", rbac.GATEWAY_NAME)
    assert rules(cluster_role) == {
        *(("graft.dev", kind, verb, None) for kind in kinds for verb in read),
        ("", "pods", "list", None),
        ("", "pods", "watch", None),
        ("graft.dev", "deployments/scale", "patch", None),
        ("graft.dev", "finetuningjobs/status", "patch", None),
        ("authentication.k8s.io", "tokenreviews", "create", None),
        ("authorization.k8s.io", "subjectaccessreviews", "create", None),
    }
    role = one(docs, "Role", "acme-graft-gateway")
    assert role["metadata"]["namespace"] == "platform"
    assert rules(role) == {("", "secrets", "get", keys.SERVER_KEY_SEED_SECRET)}
    subject = {"kind": "ServiceAccount", "name": "acme-graft-gateway", "namespace": "platform"}
    sa = one(docs, "ServiceAccount", "acme-graft-gateway")
    assert sa["metadata"]["namespace"] == "platform"
    for kind, role_kind, role_name in (
        ("ClusterRoleBinding", "ClusterRole", rbac.GATEWAY_NAME),
        ("RoleBinding", "Role", "acme-graft-gateway"),
    ):
        binding = one(docs, kind, "acme-graft-gateway")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role_name,
        }
        assert binding["subjects"] == [subject]
    # Bound to no one else, and no one else bound to it.
    bound = [
        d
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding") and subject in d["subjects"]
    ]
    assert {d["metadata"]["name"] for d in bound} == {"acme-graft-gateway"}
    to_gateway = [
        d
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and d["roleRef"]["name"] in (rbac.GATEWAY_NAME, "acme-graft-gateway")
    ]
    assert {d["metadata"]["name"] for d in to_gateway} == {"acme-graft-gateway"}
    assert (
        gateway_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"]
        == sa["metadata"]["name"]
    )


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def admitted(policy: Doc, pod_namespace: str, pod_labels: dict[str, str]) -> bool:
    """Whether an ingress rule of the NetworkPolicy admits a pod from that namespace (whose
    labels are the API server's kubernetes.io/metadata.name only)."""
    namespace_labels = {"kubernetes.io/metadata.name": pod_namespace}
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                if not selects(peer["namespaceSelector"], namespace_labels):
                    continue
            elif pod_namespace != policy["metadata"]["namespace"]:
                continue
            if selects(peer.get("podSelector", {}), pod_labels):
                return True
    return False


def test_account_network_policy_admits_the_gateway(helm: str) -> None:
    """Every account's NetworkPolicy lets the chart's gateway (and operator) pods reach its model
    servers: the operator builds it for its own namespace, which the chart's Deployment sets."""
    docs = render(helm, release="acme", namespace="platform")
    env = env_of(docs)
    assert env[settings.OPERATOR_NAMESPACE_ENV] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    account = Owner(kind="Account", name="team-a", uid="uid-a")
    policy = network_policy(account, "platform")
    server = {keys.COMPONENT: keys.MODEL_SERVER}
    assert selects(policy["spec"]["podSelector"], server)
    for deployment in (gateway_deployment(docs), operator_deployment(docs)):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        namespace = deployment["metadata"]["namespace"]
        assert admitted(policy, namespace, labels), deployment["metadata"]["name"]
        # Not the same labels from any other namespace (a tenant cannot label its way in).
        assert not admitted(policy, "team-b", labels)
    other = {**gateway_deployment(docs)["spec"]["template"]["metadata"]["labels"]}
    other[keys.COMPONENT] = "something-else"
    assert not admitted(policy, "platform", other)
    assert admitted(policy, "team-a", {"any": "pod"})  # the account's own namespace


# --- examples/ against the CRDs' schemas --------------------------------------------------------


def _closed(schema: Any, top: bool = True) -> Any:
    """The openAPIV3Schema as JSON Schema draft 4 (which has its boolean exclusiveMinimum):
    x-kubernetes-* dropped, and objects with properties closed, as the API server's strict field
    validation (kubectl's default) refuses unknown fields."""
    if isinstance(schema, list):
        return [_closed(s, False) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: _closed(v, False) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if top:
        node["properties"]["metadata"] = {"type": "object"}
    return node


EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_match_their_crds(default_docs: list[Doc], path: Path) -> None:
    crds = {
        d["spec"]["names"]["kind"]: d
        for d in default_docs
        if d["kind"] == "CustomResourceDefinition"
    }
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
        where = f"{path.name}: {doc['kind']} {doc['metadata']['name']}"
        if doc["apiVersion"].startswith(f"{rbac.keys.GROUP}/"):
            version = crds[doc["kind"]]["spec"]["versions"][0]
            assert doc["apiVersion"].endswith("/" + version["name"]), where
            schema = _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
            assert not errors, f"{where}: " + "; ".join(
                f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
            )
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_closed_schema_catches_a_typo(default_docs: list[Doc]) -> None:
    crd = one(default_docs, "CustomResourceDefinition", "accounts.graft.dev")
    schema = _closed(copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    typo = {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "Account",
        "metadata": {"name": "a"},
        "spec": {"quotaa": {}},
    }
    assert any("quotaa" in e.message for e in jsonschema.Draft4Validator(schema).iter_errors(typo))
