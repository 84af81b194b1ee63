"""The pydantic API accepts what the CRDs accept and speaks camelCase."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from graft.api.common import ID_RE
from graft.api.models import ModelSpec
from graft.api.serving import DeploymentSpec, Engine
from graft.api.tenancy import AccountSpec


def test_deployment_defaults_and_wire_names() -> None:
    spec = DeploymentSpec.model_validate({"baseModel": "llama", "enableAddons": True})
    assert spec.replicas == 1
    assert spec.engine == Engine.VLLM
    wire = spec.wire()
    assert wire["baseModel"] == "llama"
    assert wire["maxAddonRank"] == 16
    assert wire["resources"]["gpuResource"] == "nvidia.com/gpu"


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="replica"):
        DeploymentSpec.model_validate({"baseModel": "x", "replica": 2})


def test_references_accept_id_or_full_name() -> None:
    ModelSpec.model_validate(
        {
            "kind": "PeftAddon",
            "baseModel": "accounts/acme/models/llama",
            "source": {"uri": "file:///m"},
        }
    )
    with pytest.raises(ValidationError):
        ModelSpec.model_validate(
            {"kind": "PeftAddon", "baseModel": "Not_An_ID", "source": {"uri": "file:///m"}}
        )
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({"kind": "Base", "source": {"uri": "ftp://x/y"}})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("a-b-9", True),
        ("9abc", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("-a", False),
        ("a-", False),
        ("a.b", False),
        ("Ab", False),
        ("a_b", False),
        ("", False),
    ],
)
def test_id_rule(value: str, ok: bool) -> None:
    assert bool(ID_RE.match(value)) is ok


def test_account_limits_wire_names_and_bounds() -> None:
    spec = AccountSpec.model_validate(
        {"limits": {"requestsPerMinute": 60, "tokensPerMinute": 1000, "concurrentRequests": 2}}
    )
    assert spec.limits is not None
    assert spec.wire()["limits"] == {
        "requestsPerMinute": 60,
        "tokensPerMinute": 1000,
        "concurrentRequests": 2,
    }
    assert AccountSpec().limits is None
    for field in ("requestsPerMinute", "tokensPerMinute", "concurrentRequests"):
        with pytest.raises(ValidationError, match=field):
            AccountSpec.model_validate({"limits": {field: 0}})


def test_autoscaling_defaults_and_wire_names() -> None:
    spec = DeploymentSpec.model_validate({"baseModel": "llama", "autoscaling": {"maxReplicas": 4}})
    assert spec.autoscaling is not None
    assert spec.wire()["autoscaling"] == {
        "minReplicas": 0,
        "maxReplicas": 4,
        "target": {"concurrentRequests": 4.0},
        "scaleUpWindow": "30s",
        "scaleDownWindow": "10m",
        "scaleToZeroWindow": "1h",
    }
    assert DeploymentSpec(base_model="llama").autoscaling is None


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({}, "maxReplicas"),
        ({"maxReplicas": 0}, "maxReplicas"),
        ({"maxReplicas": 2, "minReplicas": 3}, "minReplicas \\(3\\) must not be above maxReplicas"),
        ({"maxReplicas": 2, "target": {"concurrentRequests": 0}}, "concurrentRequests"),
        ({"maxReplicas": 2, "scaleUpWindow": "1.5m"}, "whole hours, minutes and seconds"),
        ({"maxReplicas": 2, "scaleDownWindow": "5m1h"}, "in that order"),
        ({"maxReplicas": 2, "scaleToZeroWindow": ""}, "scaleToZeroWindow"),
        ({"maxReplicas": 2, "maxReplicaz": 3}, "maxReplicaz"),
    ],
)
def test_autoscaling_refuses_what_the_crd_refuses(
    autoscaling: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        DeploymentSpec.model_validate({"baseModel": "llama", "autoscaling": autoscaling})
