"""What keeps one tenant's specs from reaching past their own account (pure parts)."""

from __future__ import annotations

import pytest

from graft.api.serving import MANAGED_ENGINE_FLAGS, DeploymentSpec
from graft.core import keys
from graft.core.objects import Owner
from graft.core.serverkeys import server_key
from graft.core.settings import ConfigError, Settings, repository
from graft.plan.account import account_namespace, missing_namespace_labels, network_policy
from graft.plan.deployment import pod_spec, spec_problem
from graft.plan.engines import ServerSpec, overridden_flags, reserved_env
from graft.plan.jobs import _job
from graft.plan.podsecurity import RUN_AS_USER, restricted

OWNER = Owner(kind="Deployment", name="chat", uid="uid-1", namespace="acme", generation=1)
ACCOUNT = Owner(kind="Account", name="acme", uid="uid-a", namespace="", generation=1)


@pytest.mark.parametrize(
    "arg",
    [
        "--port",
        "--port=9000",
        "--served-model-name",
        "--served_model_name=x",  # vLLM reads underscores as dashes
        "--max-lora",  # argparse takes unambiguous prefixes
        "--lora-mod",
        "--api_key=k",
        "--mod",
        "--h",
        "--",
    ],
)
def test_managed_flags_are_refused_in_any_spelling(arg: str) -> None:
    assert overridden_flags([arg]) == [arg]


@pytest.mark.parametrize(
    "arg", ["--dtype", "half", "--max-model-len=4096", "--model-loader-extra-config", "-tp", "2"]
)
def test_other_flags_pass(arg: str) -> None:
    assert overridden_flags([arg]) == []


def test_every_managed_flag_is_one_graft_sets() -> None:
    from graft.plan.engines import container_for

    spec = ServerSpec(
        model_path="/m", served_name="s", image="i", enable_addons=True, api_key_secret="k"
    )
    args = set(container_for("VLLM", spec)["args"])
    for flag in MANAGED_ENGINE_FLAGS:
        if flag not in ("api-key", "lora-modules"):  # the key is an env var; modules optional
            assert f"--{flag}" in args, flag


def test_reserved_env() -> None:
    assert reserved_env(["FOO", "CUDA_VISIBLE_DEVICES", "VLLM_API_KEY"]) == [
        "CUDA_VISIBLE_DEVICES",
        "VLLM_API_KEY",
    ]


def spec(**fields: object) -> DeploymentSpec:
    return DeploymentSpec.model_validate({"baseModel": "base", **fields})


def test_spec_problems() -> None:
    allowed = Settings().image_allowed
    assert spec_problem(spec(engineArgs=["--dtype", "half"]), allowed) is None
    bad_flag = spec_problem(spec(engineArgs=["--port=1"]), allowed)
    assert bad_flag is not None
    assert bad_flag.reason == "InvalidSpec"
    assert not bad_flag.waiting
    assert "--port=1" in bad_flag.message
    bad_env = spec_problem(spec(env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]), allowed)
    assert bad_env is not None
    assert "NVIDIA_VISIBLE_DEVICES" in bad_env.message
    image = spec_problem(spec(image="evil.example.com/miner:1"), allowed)
    assert image is not None
    assert image.reason == "ImageNotAllowed"
    assert spec_problem(spec(image="vllm/vllm-openai:v0.12.0"), allowed) is None
    assert spec_problem(spec(image="ghcr.io/graft-dev/graft@sha256:abc"), allowed) is None


def test_allowed_images_setting() -> None:
    s = Settings.from_env({"GRAFT_ALLOWED_IMAGES": "registry.example.com/, quay.io/acme/vllm"})
    assert s.image_allowed("registry.example.com/team/server:1")
    assert s.image_allowed("quay.io/acme/vllm:2")
    assert not s.image_allowed("quay.io/acme/vllm-evil:2")
    assert not s.image_allowed("registry.example.com.evil.io/x:1")
    assert s.image_allowed(Settings().vllm_image)  # the operator's own images always
    with pytest.raises(ConfigError, match="GRAFT_ALLOWED_IMAGES"):
        Settings.from_env({"GRAFT_ALLOWED_IMAGES": "a b"})
    assert repository("host:5000/a/b:tag") == "host:5000/a/b"
    assert repository("a/b@sha256:00") == "a/b"


def assert_restricted(pod: dict[str, object]) -> None:
    ctx = pod["securityContext"]
    assert ctx == {  # type: ignore[comparison-overlap]
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    containers = [*pod.get("initContainers", []), *pod["containers"]]  # type: ignore[misc]
    assert containers
    for c in containers:
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        }


def test_model_server_pods_are_restricted_and_hold_no_token() -> None:
    for engine in ("VLLM", "Reference"):
        server = ServerSpec(model_path="/m", served_name="s", image="i", api_key_secret="k")
        pod = pod_spec(spec(engine=engine), server, [])
        assert_restricted(pod)
        assert pod["automountServiceAccountToken"] is False
        env = pod["containers"][0]["env"]
        key = next(e for e in env if e["name"] == "VLLM_API_KEY")
        assert key["valueFrom"] == {"secretKeyRef": {"name": "k", "key": "api-key"}}


def test_job_pods_are_restricted() -> None:
    job = _job(
        name="j",
        owner=OWNER,
        job_labels={},
        pod={"initContainers": [{"name": "a"}], "containers": [{"name": "b"}]},
        settings=Settings(),
        deadline=None,
    )
    pod = job["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["automountServiceAccountToken"] is False
    assert restricted(pod) == pod  # idempotent


def test_account_namespace_enforces_restricted() -> None:
    ns = account_namespace(ACCOUNT)
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert missing_namespace_labels(ns) == {}
    old = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}
    assert missing_namespace_labels(old)["pod-security.kubernetes.io/enforce"] == "restricted"


def test_network_policy_selects_model_servers_and_admits_only_graft() -> None:
    policy = network_policy(ACCOUNT, "graft-system")
    spec_ = policy["spec"]
    assert spec_["podSelector"] == {"matchLabels": {keys.COMPONENT: keys.MODEL_SERVER}}
    assert spec_["policyTypes"] == ["Ingress"]
    same_ns, graft = spec_["ingress"]
    assert same_ns == {"from": [{"podSelector": {}}]}
    peer = graft["from"][0]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "graft-system"}
    }
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["operator", "gateway"]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-a"


def test_server_keys_are_derived_per_deployment() -> None:
    a = server_key(b"seed", "acme", "chat")
    assert a == server_key(b"seed", "acme", "chat")
    assert a != server_key(b"seed", "acme", "chat2")
    assert a != server_key(b"seed", "other", "chat")
    assert a != server_key(b"other seed", "acme", "chat")
    assert len(a) > 40


def test_an_unreadable_spec_is_a_condition() -> None:
    from graft.plan.deployment import invalid_spec_status

    st = invalid_spec_status(OWNER, "accounts/acme/deployments/chat", "replicas: bad", [], "T")
    (ready,) = st.conditions
    assert (ready.status, ready.reason, ready.message) == ("False", "InvalidSpec", "replicas: bad")
    assert st.state == "Failed"


@pytest.mark.parametrize("resource", ["gpu", "nvidia.com/", "/gpu"])
def test_extended_resources_need_a_domain(resource: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DeploymentSpec.model_validate({"baseModel": "b", "resources": {"gpuResource": resource}})
