"""Models, pure: what is checked without downloading weights, and the status it gives."""

from __future__ import annotations

from typing import Any

import pytest

from graft.api.models import ModelSpec, ModelStatus
from graft.core.names import Ref
from graft.plan.model import (
    ModelProblem,
    check_base,
    check_source,
    in_use,
    in_use_message,
    model_status,
    parse_adapter_config,
    record_adapter,
    validated,
)

BASE_REF = Ref(account="acme", id="base", plural="models")


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"kind": "Base", "source": {"uri": "hf://org/m"}, **fields})


def base(public: bool = False, kind: str = "Base") -> dict[str, Any]:
    return {"spec": {"kind": kind, "source": {"uri": "hf://org/m"}, "public": public}}


def reason(fn: Any, *args: Any) -> tuple[str, bool]:
    with pytest.raises(ModelProblem) as caught:
        fn(*args)
    return caught.value.reason, caught.value.waiting


def test_sources_graft_serves() -> None:
    check_source(spec())
    # The CRD's pattern refuses other schemes; an object stored before it did still gets a reason.
    stored = spec()
    stored.source.uri = "ftp://host/m"
    assert reason(check_source, stored) == ("UnsupportedSource", False)


def test_an_addons_base_model() -> None:
    check_base(BASE_REF, base(), "acme")
    assert reason(check_base, BASE_REF, None, "acme") == ("BaseModelNotFound", True)
    assert reason(check_base, BASE_REF, base(kind="PeftAddon"), "acme")[0] == "BaseModelNotBase"
    other = Ref(account="globex", id="base", plural="models")
    assert reason(check_base, other, base(), "acme")[0] == "BaseModelNotShared"
    check_base(other, base(public=True), "acme")


def test_adapter_config() -> None:
    status = ModelStatus()
    record_adapter(
        parse_adapter_config("file:///a", '{"r": 8, "target_modules": ["v", "q"]}'), status
    )
    assert (status.lora_rank, status.target_modules) == (8, ["q", "v"])
    record_adapter({"r": 4, "target_modules": "all-linear"}, status)
    assert (status.lora_rank, status.target_modules) == (4, ["all-linear"])
    assert reason(parse_adapter_config, "file:///a", "{nope")[0] == "InvalidAdapter"
    assert reason(parse_adapter_config, "file:///a", "[1]")[0] == "InvalidAdapter"
    assert reason(record_adapter, {"r": 0}, ModelStatus())[0] == "InvalidAdapter"


def test_status_says_what_the_model_is_or_why_not() -> None:
    addon = spec(kind="PeftAddon", baseModel="base", source={"uri": "file:///adapters/sql"})
    status = ModelStatus(lora_rank=8)
    ready = model_status(
        status,
        generation=2,
        problem=None,
        message=validated(addon, status),
        deployments=["accounts/acme/deployments/chat"],
        previous=[],
        now="2026-11-28T00:00:00Z",
    )
    assert ready.state == "Ready"
    assert (
        ready.conditions[0].message
        == "PeftAddon model from file:///adapters/sql on base, LoRA rank 8"
    )
    assert ready.deployments == ["accounts/acme/deployments/chat"]
    waiting = model_status(
        ModelStatus(),
        generation=2,
        problem=ModelProblem("BaseModelNotFound", "not yet", waiting=True),
        message="",
        deployments=[],
        previous=ready.conditions,
        now="2026-11-28T00:01:00Z",
    )
    assert (waiting.state, waiting.conditions[0].reason) == ("Waiting", "BaseModelNotFound")
    assert waiting.conditions[0].last_transition_time == "2026-11-28T00:01:00Z"


def test_deletion_waits_while_in_use() -> None:
    message = in_use_message(["accounts/acme/deployments/chat"])
    assert message == "deletion waits: still used by accounts/acme/deployments/chat"
    status = in_use({"name": "accounts/acme/models/base"}, message, 3, "2026-11-28T00:00:00Z")
    assert status["state"] == "Terminating"
    assert status["name"] == "accounts/acme/models/base"
    [ready] = status["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "InUse", message)
