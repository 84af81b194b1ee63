"""The walking skeleton, end to end on a real API server: CRDs, validation, Deployment -> pods."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from harness.dump import dump
from harness.kube import Cluster, OperatorProcess, condition, wait_for

GROUP = "graft.dev/v1alpha1"
SELECTOR = "app.kubernetes.io/component=model-server,graft.dev/deployment={}"


def model(name: str, ns: str, kind: str = "Base", **spec: Any) -> dict[str, Any]:
    body = {"kind": kind, "source": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, **spec}
    return {
        "apiVersion": GROUP,
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def deployment(
    name: str, ns: str, base: str = "base", replicas: int = 2, **spec: Any
) -> dict[str, Any]:
    body = {"baseModel": base, "replicas": replicas, "resources": {"gpus": 1}, **spec}
    return {
        "apiVersion": GROUP,
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.list("pods", ns, SELECTOR.format(name))
        if not p["metadata"].get("deletionTimestamp")
    ]


def ready_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    def is_ready(p: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions") or []
        )

    return [p for p in pods(cluster, ns, name) if is_ready(p)]


def graft_deployment(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get("deployments.graft.dev", name, ns)


def converged(cluster: Cluster, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
    """The Deployment's status says `replicas` ready pods of its generation, and that is true."""
    dep = graft_deployment(cluster, ns, name)
    if not dep:
        return None
    st = dep.get("status") or {}
    ready = condition(dep, "Ready")
    progressing = condition(dep, "Progressing")
    if st.get("observedGeneration") != dep["metadata"]["generation"]:
        return None
    if not (
        ready and ready["status"] == "True" and progressing and progressing["status"] == "False"
    ):
        return None
    all_pods = pods(cluster, ns, name)
    if len(all_pods) != replicas or len(ready_pods(cluster, ns, name)) != replicas:
        return None
    if (st.get("replicas"), st.get("readyReplicas"), st.get("updatedReplicas")) != (
        replicas,
        replicas,
        replicas,
    ):
        return None
    return dep


def with_ready_reason(cluster: Cluster, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    dep = graft_deployment(cluster, ns, name)
    return dep if (condition(dep, "Ready") or {}).get("reason") == reason else None


def replaced(cluster: Cluster, ns: str, victim: str) -> bool:
    ready = ready_pods(cluster, ns, "chat")
    return (
        len(ready) == 1
        and ready[0]["metadata"]["name"] != victim
        and bool(converged(cluster, ns, "chat", 1))
    )


# --- CRDs and API-server validation (no operator needed) ----------------------------------------


def test_crds_are_established_with_printer_columns_and_explain(crds: Cluster) -> None:
    names = json.loads(
        crds.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=graft", "-o", "json").stdout
    )
    assert {i["metadata"]["name"] for i in names["items"]} == {
        f"{p}.graft.dev"
        for p in (
            "accounts",
            "users",
            "apikeys",
            "models",
            "deployments",
            "deployedmodels",
            "datasets",
            "finetuningjobs",
        )
    }
    # The OpenAPI document kubectl explain reads is published a moment after discovery.
    explain = wait_for(
        "kubectl explain to know the CRD",
        lambda: crds.kubectl("explain", "gdeploy.spec.maxAddonRank", check=False).stdout,
        timeout=30,
    )
    assert "vLLM --max-lora-rank" in explain
    resources = crds.kubectl("api-resources", "--api-group=graft.dev", "-o", "name").stdout.split()
    assert len(resources) == 8


INVALID_IDS = ["a.b", "model.v1", "x" * 64, "my.org.model", "1.2.3", "a" * 100]


@pytest.mark.parametrize("bad", INVALID_IDS, ids=lambda s: s if len(s) < 20 else f"{len(s)}-chars")
def test_api_server_rejects_invalid_ids(crds: Cluster, namespace: str, bad: str) -> None:
    proc = crds.kubectl("apply", "-f", "-", input=json.dumps(model(bad, namespace)), check=False)
    assert proc.returncode != 0
    assert "must be a Graft ID: 1-63 characters" in proc.stderr, proc.stderr
    assert crds.get("models.graft.dev", bad, namespace) is None


@pytest.mark.parametrize(
    ("name", "kind", "spec", "message"),
    [
        ("addon", "PeftAddon", {}, "a PeftAddon model must name its base model"),
        ("base", "Base", {"baseModel": "other"}, "a Base model must not set spec.baseModel"),
    ],
)
def test_api_server_enforces_model_kind_rules(
    crds: Cluster, namespace: str, name: str, kind: str, spec: dict[str, Any], message: str
) -> None:
    proc = crds.kubectl(
        "apply", "-f", "-", input=json.dumps(model(name, namespace, kind, **spec)), check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr


@pytest.mark.parametrize(
    ("kind", "spec", "change"),
    [
        ("Dataset", {"source": {"uri": "file:///data/a.jsonl"}}, {"format": "completion"}),
        (
            "FineTuningJob",
            {"baseModel": "b", "dataset": "d", "outputModel": "o"},
            {"outputModel": "other"},
        ),
    ],
)
def test_api_server_keeps_specs_immutable(
    crds: Cluster, namespace: str, kind: str, spec: dict[str, Any], change: dict[str, Any]
) -> None:
    obj = {
        "apiVersion": GROUP,
        "kind": kind,
        "metadata": {"name": "immutable", "namespace": namespace},
        "spec": spec,
    }
    crds.apply(obj)
    changed = {**obj, "spec": {**spec, **change}}
    proc = crds.kubectl("apply", "-f", "-", input=json.dumps(changed), check=False)
    assert proc.returncode != 0
    assert f"{kind} spec is immutable" in proc.stderr


def test_dataset_needs_exactly_one_source(crds: Cluster, namespace: str) -> None:
    obj = {
        "apiVersion": GROUP,
        "kind": "Dataset",
        "metadata": {"name": "two-sources", "namespace": namespace},
        "spec": {"source": {"uri": "file:///x.jsonl", "configMap": {"name": "c", "key": "k"}}},
    }
    proc = crds.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
    assert "set exactly one of source.uri and source.configMap" in proc.stderr


# --- The Deployment reconciler -------------------------------------------------------------------


def test_deployment_lifecycle(operator: OperatorProcess, namespace: str) -> None:
    cluster = operator.cluster
    ns = namespace
    cluster.apply([model("base", ns), deployment("chat", ns, replicas=2)])

    # Two pods, scheduled onto kwok nodes, Running and Ready; `kubectl wait` agrees.
    cluster.kubectl(
        "wait", "deployments.graft.dev/chat", "-n", ns, "--for=condition=Ready", "--timeout=90s"
    )
    dep = wait_for("2 ready replicas", lambda: converged(cluster, ns, "chat", 2), timeout=60)
    dump(dep, "ready")
    for pod in pods(cluster, ns, "chat"):
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
        assert pod["status"]["phase"] == "Running"
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "Deployment",
            "chat",
            dep["metadata"]["uid"],
            True,
        )
        container = pod["spec"]["containers"][0]
        assert (
            container["args"][container["args"].index("--served-model-name") + 1]
            == f"accounts/{ns}/models/base"
        )
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    st = dep["status"]
    assert st["name"] == f"accounts/{ns}/deployments/chat"
    assert st["endpoint"] == f"http://chat.{ns}.svc:8000/v1"
    svc = cluster.get("service", "chat", ns)
    assert svc is not None
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/component": "model-server",
        "graft.dev/deployment": "chat",
    }

    # Scale through the /scale subresource: 2 -> 3 -> 1.
    cluster.kubectl("scale", "deployments.graft.dev/chat", "-n", ns, "--replicas=3")
    wait_for("3 ready replicas", lambda: converged(cluster, ns, "chat", 3), timeout=60)
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/graft.dev/v1alpha1/namespaces/{ns}/deployments/chat/scale"
        ).stdout
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == SELECTOR.format("chat")
    cluster.kubectl("scale", "deployments.graft.dev/chat", "-n", ns, "--replicas=1")
    wait_for("1 ready replica", lambda: converged(cluster, ns, "chat", 1), timeout=60)

    # A deleted pod is replaced.
    victim = pods(cluster, ns, "chat")[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")
    wait_for("the deleted pod to be replaced", lambda: replaced(cluster, ns, victim), timeout=60)

    # A spec change that alters the pod template replaces the pods.
    cluster.kubectl("scale", "deployments.graft.dev/chat", "-n", ns, "--replicas=2")
    wait_for("2 ready replicas", lambda: converged(cluster, ns, "chat", 2), timeout=60)
    old_hashes = {p["metadata"]["labels"]["graft.dev/spec-hash"] for p in pods(cluster, ns, "chat")}
    old_names = {p["metadata"]["name"] for p in pods(cluster, ns, "chat")}
    cluster.apply(deployment("chat", ns, replicas=2, engineArgs=["--max-model-len", "4096"]))
    wait_for(
        "pods on the new template",
        lambda: (
            converged(cluster, ns, "chat", 2)
            and not old_names & {p["metadata"]["name"] for p in pods(cluster, ns, "chat")}
        ),
        timeout=90,
    )
    new_pods = pods(cluster, ns, "chat")
    assert {p["metadata"]["labels"]["graft.dev/spec-hash"] for p in new_pods}.isdisjoint(old_hashes)
    assert all("--max-model-len" in p["spec"]["containers"][0]["args"] for p in new_pods)

    events = cluster.list("events", ns)
    reasons = {
        e["reason"]
        for e in events
        if e["involvedObject"]["name"] == "chat" and e["involvedObject"]["kind"] == "Deployment"
    }
    assert {"ScalingUp", "ScalingDown", "RollingUpdate"} <= reasons

    # Re-applying the unchanged manifest writes nothing: no resourceVersion moves, even after
    # several resync periods of the operator.
    def versions() -> dict[str, str]:
        objs = [
            graft_deployment(cluster, ns, "chat"),
            cluster.get("service", "chat", ns),
            *pods(cluster, ns, "chat"),
        ]
        return {
            f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for o in objs
            if o
        }

    before = versions()
    out = cluster.apply(deployment("chat", ns, replicas=2, engineArgs=["--max-model-len", "4096"]))
    assert "unchanged" in out
    time.sleep(3 * operator.settle_seconds + 2)
    assert versions() == before

    # Deleting the Deployment leaves no pods or Service behind.
    cluster.kubectl("delete", "deployments.graft.dev/chat", "-n", ns, "--timeout=60s")
    wait_for(
        "pods and Service to be gone",
        lambda: (
            not cluster.list("pods", ns, SELECTOR.format("chat"))
            and cluster.get("service", "chat", ns) is None
        ),
        timeout=60,
    )


def test_base_model_must_exist_and_be_a_base_model(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster, ns = operator.cluster, namespace
    cluster.apply(deployment("waiting", ns, base="later", replicas=1))
    dep = wait_for(
        "BaseModelNotFound", lambda: with_ready_reason(cluster, ns, "waiting", "BaseModelNotFound")
    )
    dump(dep, "base-model-not-found")
    ready = condition(dep, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert f"accounts/{ns}/models/later" in ready["message"]
    assert dep["status"]["state"] == "Waiting"
    assert pods(cluster, ns, "waiting") == []

    # The base model appears: the deployment recovers by itself.
    cluster.apply(model("later", ns))
    wait_for(
        "recovery once the model exists", lambda: converged(cluster, ns, "waiting", 1), timeout=60
    )

    # An addon is not a base model: refused with a clear reason and no pods.
    cluster.apply([model("base", ns), model("addon", ns, kind="PeftAddon", baseModel="base")])
    cluster.apply(deployment("wrong", ns, base="addon", replicas=1))
    dep = wait_for(
        "BaseModelNotBase", lambda: with_ready_reason(cluster, ns, "wrong", "BaseModelNotBase")
    )
    dump(dep, "base-model-not-base")
    assert "PeftAddon" in condition(dep, "Ready")["message"]  # type: ignore[index]
    assert dep["status"]["state"] == "Failed"
    time.sleep(2 * operator.settle_seconds)
    assert pods(cluster, ns, "wrong") == []
    warnings = [
        e
        for e in cluster.list("events", ns)
        if e["involvedObject"]["name"] == "wrong" and e["type"] == "Warning"
    ]
    assert [e["reason"] for e in warnings] == ["BaseModelNotBase"]
