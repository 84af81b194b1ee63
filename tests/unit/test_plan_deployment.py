"""Builders for the engine container, model-server pods and Service, and Deployment status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from graft.api.common import Condition, ConditionStatus
from graft.api.serving import DeploymentSpec
from graft.core import keys
from graft.core.objects import Owner
from graft.plan.deployment import (
    BlockedBy,
    ObservedPod,
    autoscaling_of,
    deployment_status,
    model_server_pod,
    pod_spec,
    resource_requirements,
    service,
    service_name,
    spec_hash,
)
from graft.plan.engines import Addon, ServerSpec, container_for
from graft.plan.storage import UnsupportedSource, addon_path, addons_claim_mount, locate

OWNER = Owner(kind="Deployment", name="chat", namespace="acme", uid="uid-1", generation=3)
SERVED = "accounts/acme/models/llama"


def server(**kw: object) -> ServerSpec:
    base = {"model_path": "meta/llama", "served_name": SERVED, "image": "vllm/vllm-openai:test"}
    return ServerSpec(**(base | kw))  # type: ignore[arg-type]


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_vllm_base_model_args() -> None:
    c = container_for("VLLM", server())
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert arg(c["args"], "--model") == "meta/llama"
    assert arg(c["args"], "--served-model-name") == SERVED
    assert arg(c["args"], "--port") == "8000"
    assert "--enable-lora" not in c["args"]
    # As a non-root user (Pod Security restricted) it needs a writable HOME; nothing else.
    assert c["env"] == [{"name": "HOME", "value": "/tmp"}]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_vllm_lora_args_and_startup_addons() -> None:
    addon = Addon(name="accounts/acme/models/sql", path="/adapters/sql", base_model_name=SERVED)
    c = container_for(
        "VLLM",
        server(
            enable_addons=True,
            max_addons=6,
            max_addon_rank=32,
            addons=(addon,),
            extra_args=("--dtype", "half"),
        ),
    )
    args = c["args"]
    assert "--enable-lora" in args
    assert arg(args, "--max-loras") == "6"
    assert arg(args, "--max-lora-rank") == "32"
    assert json.loads(arg(args, "--lora-modules")) == {
        "name": "accounts/acme/models/sql",
        "path": "/adapters/sql",
        "base_model_name": SERVED,
    }
    # The tenant's extra args come first, so Graft's own flags win where one is repeated.
    assert args[:2] == ["--dtype", "half"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in c["env"]


def test_reference_engine_runs_graft_serve() -> None:
    c = container_for("Reference", server(enable_addons=True, image="registry.local/graft:dev"))
    assert c["command"] == ["graft"]
    assert c["args"][0] == "serve"
    assert c["image"] == "registry.local/graft:dev"
    assert "--enable-lora" in c["args"]


def test_gpu_requests_equal_limits() -> None:
    assert resource_requirements(2, "nvidia.com/gpu", "4", "16Gi") == {
        "requests": {"nvidia.com/gpu": "2", "cpu": "4", "memory": "16Gi"},
        "limits": {"nvidia.com/gpu": "2", "memory": "16Gi"},
    }
    assert resource_requirements(0, "nvidia.com/gpu", None, None) == {}


def test_pod_is_owned_labelled_and_hashed() -> None:
    spec = DeploymentSpec.model_validate({"baseModel": "llama", "nodeSelector": {"gpu": "a100"}})
    ps = pod_spec(
        spec, server(resources=resource_requirements(1, "nvidia.com/gpu", None, None)), []
    )
    h = spec_hash(ps)
    pod = model_server_pod(OWNER, ps, h)
    meta = pod["metadata"]
    assert meta["generateName"] == f"chat-{h[:5]}-"
    assert meta["labels"][keys.SPEC_HASH] == h
    assert meta["labels"][keys.DEPLOYMENT] == "chat"
    owner = meta["ownerReferences"][0]
    assert owner["controller"] is True
    assert owner["uid"] == "uid-1"
    assert owner["kind"] == "Deployment"
    assert owner["apiVersion"] == "graft.dev/v1alpha1"
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_spec_hash_changes_with_the_template_only() -> None:
    spec = DeploymentSpec.model_validate({"baseModel": "llama"})
    a = spec_hash(pod_spec(spec, server(), []))
    assert a == spec_hash(pod_spec(spec, server(), []))
    assert a != spec_hash(pod_spec(spec, server(extra_args=("--x",)), []))
    assert a != spec_hash(pod_spec(spec, server(max_addons=2, enable_addons=True), []))


def test_service_selects_the_pods() -> None:
    svc = service(OWNER)
    assert svc["metadata"]["name"] == "chat"
    assert svc["spec"]["selector"] == {keys.DEPLOYMENT: "chat", keys.COMPONENT: keys.MODEL_SERVER}
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_service_name_for_ids_starting_with_a_digit() -> None:
    name = service_name("7b-chat")
    assert name.startswith("graft-")
    assert len(name) <= 63
    assert name == service_name("7b-chat")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("hf://meta/llama-3", "meta/llama-3"),
        ("file:///srv/models/x", "/srv/models/x"),
        ("pvc://weights/base/llama", "/models/model/base/llama"),
    ],
)
def test_locate(uri: str, path: str) -> None:
    assert locate(uri).path == path


def test_locate_pvc_mounts_read_only() -> None:
    loc = locate("pvc://weights/llama")
    assert loc.volumes == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    ]
    assert loc.mounts[0]["readOnly"] is True


@pytest.mark.parametrize(
    "uri", ["s3://bucket/key", "https://x/y", "hf://only-one-part", "file://relative"]
)
def test_locate_refuses_what_it_cannot_serve(uri: str) -> None:
    with pytest.raises(UnsupportedSource):
        locate(uri)


def status(desired: int, pods: list[ObservedPod], blocked: BlockedBy | None = None, previous=None):  # type: ignore[no-untyped-def]
    spec = DeploymentSpec.model_validate({"baseModel": "llama", "replicas": desired})
    return deployment_status(
        owner=OWNER, spec=spec, full_name="accounts/acme/deployments/chat", pods=pods,
        current_hash="h", blocked=blocked, previous=previous or [], now="T1",
    )  # fmt: skip


def cond(st, type_):  # type: ignore[no-untyped-def]
    return next(c for c in st.conditions if c.type == type_)


def test_status_ready_when_all_replicas_ready() -> None:
    st = status(2, [ObservedPod("a", "h", True), ObservedPod("b", "h", True)])
    assert (st.replicas, st.ready_replicas, st.updated_replicas) == (2, 2, 2)
    assert cond(st, "Ready").status == "True"
    assert cond(st, "Progressing").status == "False"
    assert st.state == "Ready"
    assert st.observed_generation == 3
    assert st.selector == "app.kubernetes.io/component=model-server,graft.dev/deployment=chat"
    assert st.endpoint == "http://chat.acme.svc:8000/v1"


def test_status_progressing_while_scaling() -> None:
    st = status(3, [ObservedPod("a", "h", True), ObservedPod("b", "h", False)])
    assert cond(st, "Ready").status == "False"
    assert cond(st, "Ready").message == "1/3 replicas ready"
    assert cond(st, "Progressing").reason == "ScalingUp"
    assert st.state == "Progressing"


def test_status_blocked() -> None:
    st = status(2, [], BlockedBy("BaseModelNotFound", "base model x does not exist", waiting=True))
    assert cond(st, "Ready").status == "False"
    assert cond(st, "Ready").reason == "BaseModelNotFound"
    assert st.state == "Waiting"
    assert st.replicas == 0


@pytest.mark.parametrize(
    ("uri", "claim", "path"),
    [
        ("file:///srv/adapters/sql", None, "/srv/adapters/sql"),
        ("hf://acme/sql-lora", "graft-artifacts", "acme/sql-lora"),
        (
            "pvc://graft-artifacts/acme/models/sql",
            "graft-artifacts",
            "/models/addons/acme/models/sql",
        ),
        ("pvc://other-claim/sql", "graft-artifacts", None),
        ("pvc://graft-artifacts/sql", None, None),
        ("s3://bucket/sql", "graft-artifacts", None),
    ],
)
def test_addon_path_is_what_every_replica_can_reach(
    uri: str, claim: str | None, path: str | None
) -> None:
    assert addon_path(uri, claim) == path


def test_addons_claim_is_mounted_read_only_where_addon_paths_point() -> None:
    mount = addons_claim_mount("graft-artifacts")
    assert mount.volumes == [
        {
            "name": "addons",
            "persistentVolumeClaim": {"claimName": "graft-artifacts", "readOnly": True},
        }
    ]
    assert mount.mounts == [{"name": "addons", "mountPath": "/models/addons", "readOnly": True}]
    assert addon_path("pvc://graft-artifacts/x", "graft-artifacts").startswith(
        mount.mounts[0]["mountPath"]
    )  # type: ignore[union-attr]


def test_a_held_rollout_keeps_ready_and_says_why_in_progressing() -> None:
    from graft.plan.deployment import SURGE_REFUSED

    held = BlockedBy(SURGE_REFUSED, "a pod above spec.replicas was refused (quota)", waiting=True)
    pods = [ObservedPod("o1", "old", True), ObservedPod("o2", "old", True)]
    st = status(2, pods, blocked=held)
    assert cond(st, "Ready").status == "True"
    progressing = cond(st, "Progressing")
    assert (progressing.status, progressing.reason) == ("True", SURGE_REFUSED)
    assert "0 of 2 pods on the current template" in progressing.message
    # Any other refusal is a failure to run at all.
    st = status(2, [], blocked=BlockedBy("PodCreationForbidden", "quota", waiting=True))
    assert cond(st, "Ready").status == "False"


def test_after_a_refused_surge_ready_holds_until_the_rollout_is_done() -> None:
    """The reconciles after the refusal create nothing (no refusal to see), yet one replica is
    still away by design until the last new pod is ready: Ready stays True, Progressing keeps
    saying why, and both settle when the rollout converges."""
    from graft.plan.deployment import SURGE_REFUSED

    held = BlockedBy(SURGE_REFUSED, "a pod above spec.replicas was refused (quota)", waiting=True)
    first = status(2, [ObservedPod("o1", "old", True), ObservedPod("o2", "old", True, True)], held)
    steps = [
        # o2 gone, its replacement not ready yet: one old replica serves.
        [ObservedPod("o1", "old", True), ObservedPod("n1", "h", False)],
        # o1 deleted in turn, n1 ready, n2 starting.
        [
            ObservedPod("o1", "old", True, True),
            ObservedPod("n1", "h", True),
            ObservedPod("n2", "h", False),
        ],
        # No old pod left; the last new one is still starting.
        [ObservedPod("n1", "h", True), ObservedPod("n2", "h", False)],
    ]
    previous = first.conditions
    for pods in steps:
        st = status(2, pods, previous=previous)
        assert cond(st, "Ready").status == "True", pods
        assert (cond(st, "Progressing").status, cond(st, "Progressing").reason) == (
            "True",
            SURGE_REFUSED,
        )
        previous = st.conditions
    done = status(
        2, [ObservedPod("n1", "h", True), ObservedPod("n2", "h", True)], previous=previous
    )
    assert (cond(done, "Progressing").status, cond(done, "Progressing").reason) == (
        "False",
        "Stable",
    )
    # Without a refused surge, maxUnavailable 0 means a missing replica is not Ready.
    plain = status(2, [ObservedPod("n1", "h", True), ObservedPod("n2", "h", False)])
    assert cond(plain, "Ready").status == "False"
    # Nor does a refusal long past carry over into the next rollout once one converged.
    again = status(
        2, [ObservedPod("n1", "h", True), ObservedPod("o", "old", False)], previous=done.conditions
    )
    assert cond(again, "Progressing").reason == "RollingUpdate"


# --- The autoscaler's part of the status -------------------------------------------------------


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386, as the API server applies the status patch publish() sends (lists replaced)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def published(previous: dict[str, object], new: dict[str, object]) -> object:
    """The status after controller.status.publish() wrote `new` over `previous`."""
    patch: dict[str, object] = {k: None for k in previous if k not in new}
    patch.update(new)
    return merge_patch(previous, patch)


AUTOSCALED = {"baseModel": "llama", "replicas": 2, "autoscaling": {"maxReplicas": 4}}
AUTOSCALER_CONDITION = Condition(
    type="Autoscaling",
    status=ConditionStatus.TRUE,
    reason="ScaledUp",
    message="at least 8 requests in flight for 30s need 2 replicas at 4 each",
    last_transition_time="T0",
    observed_generation=3,
)
AUTOSCALER_STATUS = {
    "desiredReplicas": 2,
    "inFlight": 8,
    "reason": "ScaledUp",
    "message": "at least 8 requests in flight for 30s need 2 replicas at 4 each",
    "lastScaleTime": "2025-01-01T00:00:00Z",
    "scaleToZeroWindow": "1h",
}


def reconciled(spec: dict[str, Any], before: dict[str, Any]) -> Any:
    """What a Deployment reconcile leaves in status, given the status it read."""
    pods = [ObservedPod("a", "h", True), ObservedPod("b", "h", True)]
    new = deployment_status(
        owner=OWNER,
        spec=DeploymentSpec.model_validate(spec),
        full_name="accounts/acme/deployments/chat",
        pods=pods,
        current_hash="h",
        blocked=None,
        previous=[Condition.model_validate(c) for c in before.get("conditions") or []],
        now="T1",
        autoscaling=autoscaling_of(before),
    )
    return published(before, new.wire())


def test_a_reconcile_keeps_what_the_autoscaler_wrote() -> None:
    before = {
        "observedGeneration": 3,
        "conditions": [AUTOSCALER_CONDITION.wire()],
        "autoscaling": AUTOSCALER_STATUS,
    }
    after = reconciled(AUTOSCALED, before)
    assert after["autoscaling"] == AUTOSCALER_STATUS
    conditions = {c["type"]: c for c in after["conditions"]}
    assert conditions["Autoscaling"] == AUTOSCALER_CONDITION.wire()
    assert conditions["Ready"]["status"] == "True"
    # And a second reconcile changes nothing: no write at all.
    assert reconciled(AUTOSCALED, after) == after


def test_without_spec_autoscaling_its_status_and_condition_go() -> None:
    before = {"conditions": [AUTOSCALER_CONDITION.wire()], "autoscaling": AUTOSCALER_STATUS}
    after = reconciled({"baseModel": "llama", "replicas": 2}, before)
    assert "autoscaling" not in after
    assert [c["type"] for c in after["conditions"]] == ["Ready", "Progressing"]


def test_an_autoscaling_status_of_another_shape_is_dropped_not_fatal() -> None:
    assert autoscaling_of({"autoscaling": {"desiredReplicas": "many"}}) is None
    assert autoscaling_of({}) is None
    assert autoscaling_of(None) is None
    status = autoscaling_of({"autoscaling": AUTOSCALER_STATUS})
    assert status is not None
    assert status.wire() == AUTOSCALER_STATUS
