"""Models, pure: what is checked without downloading weights, and the status it gives."""

from __future__ import annotations

from typing import Any

import pytest

from graft.api.models import ModelSpec, ModelStatus
from graft.api.reports import InspectionResult
from graft.core.names import Ref
from graft.plan.jobs import JobState, Terminated
from graft.plan.model import (
    AdapterFacts,
    ModelProblem,
    check_base,
    check_source,
    in_use,
    in_use_message,
    inspection_outcome,
    model_status,
    not_ready,
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


def ended(phase: str, message: str, code: int = 0) -> JobState:
    return JobState(phase, "", Terminated("inspect", code, "Completed", message))  # type: ignore[arg-type]


def test_the_inspection_jobs_answer_is_the_adapters_facts() -> None:
    valid = InspectionResult("valid", 8, ("q", "v")).to_message()
    facts = inspection_outcome("file:///a", "sql-inspect", ended("Succeeded", valid))
    assert facts == AdapterFacts("file:///a", 8, ("q", "v"))
    status = ModelStatus()
    facts.record(status)
    assert (status.lora_rank, status.target_modules, status.adapter_source) == (
        8,
        ["q", "v"],
        "file:///a",
    )


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (JobState("Running", "pod sql-inspect-x is running"), ("Inspecting", True)),
        (JobState("Pending"), ("Inspecting", True)),
        (ended("Succeeded", ""), ("InspectionResultMissing", False)),
        (ended("Succeeded", "hello"), ("InspectionResultMissing", False)),
        (
            ended("Failed", InspectionResult("invalid", message="r is 0").to_message(), 1),
            ("InvalidAdapter", False),
        ),
        (
            ended("Failed", InspectionResult("error", message="no such file").to_message(), 1),
            ("AdapterUnreadable", False),
        ),
        (ended("Failed", "Traceback: boom", 137), ("InspectionFailed", False)),
    ],
)
def test_an_adapter_that_was_not_read_is_never_ready(
    job: JobState, expected: tuple[str, bool]
) -> None:
    assert reason(inspection_outcome, "file:///a", "sql-inspect", job) == expected


def test_facts_in_status_count_only_for_the_source_they_were_read_from() -> None:
    status = {"adapterSource": "file:///a", "loraRank": 8, "targetModules": ["q"]}
    assert AdapterFacts.recorded(status, "file:///a") == AdapterFacts("file:///a", 8, ("q",))
    assert AdapterFacts.recorded(status, "file:///b") is None  # the source changed
    assert AdapterFacts.recorded({"loraRank": 8}, "file:///a") is None  # read by the old operator
    assert AdapterFacts.recorded({**status, "loraRank": 0}, "file:///a") is None


def test_why_a_model_is_not_ready_for_its_current_spec() -> None:
    def model(generation: int, seen: int, ready: str, reason_: str = "Validated") -> Any:
        cond = {"type": "Ready", "status": ready, "reason": reason_, "message": "m"}
        cond["observedGeneration"] = seen  # type: ignore[assignment]
        return {"metadata": {"generation": generation}, "status": {"conditions": [cond]}}

    assert not_ready(model(2, 2, "True")) is None
    assert not_ready(model(3, 2, "True")) == "the operator has not checked its current spec yet"
    assert not_ready(model(2, 2, "False", "Inspecting")) == "Inspecting: m"
    assert not_ready({"metadata": {"generation": 1}}) == "it has no status yet"


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
