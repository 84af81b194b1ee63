"""Models: what can be checked without downloading weights, and the status (pure).

A Model is Ready when its source is a scheme Graft serves and, for an addon, its base model
exists, is a Base model and is this account's own or public, and its adapter_config.json was
read and has a LoRA rank. The operator reads nothing a tenant names: an inspection Job in the
Model's namespace (`graft model inspect`) reads the file and reports through its termination
message (`inspection_outcome`). The rank and target modules go into status, where the
DeployedModel admission finds the rank, with the source they were read from, so a Model is
inspected once per source. A Model in use is not deleted out from under its users.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

from graft.api.common import Condition
from graft.api.models import ModelKind, ModelSpec, ModelStatus
from graft.api.reports import InspectionResult, shorten
from graft.core.conditions import conditions_of, set_condition
from graft.core.names import Ref
from graft.core.objects import Obj, condition
from graft.plan.jobs import JobState

SUPPORTED_SCHEMES = ("hf", "s3", "pvc", "http", "https", "file")


class ModelProblem(Exception):
    """Why a Model is not Ready: a condition reason and message; `waiting` when it may resolve
    by itself (the base model appears), else only a spec change fixes it."""

    def __init__(self, reason: str, message: str, waiting: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.waiting = reason, message, waiting


def check_source(spec: ModelSpec) -> None:
    scheme = urlparse(spec.source.uri).scheme
    if scheme not in SUPPORTED_SCHEMES:
        raise ModelProblem(
            "UnsupportedSource",
            f"{scheme}:// is not a supported source ({', '.join(SUPPORTED_SCHEMES)})",
        )


def check_base(ref: Ref, base: Obj | None, namespace: str) -> None:
    """An addon's base model: it exists, is a Base model, and is ours or public."""
    if base is None:
        raise ModelProblem(
            "BaseModelNotFound", f"base model {ref.full_name} does not exist (yet)", waiting=True
        )
    base_spec = ModelSpec.model_validate(base.get("spec") or {})
    if base_spec.kind != ModelKind.BASE:
        raise ModelProblem(
            "BaseModelNotBase", f"{ref.full_name} is a {base_spec.kind} model, not a Base model"
        )
    if ref.account != namespace and not base_spec.public:
        raise ModelProblem(
            "BaseModelNotShared",
            f"{ref.full_name} belongs to account {ref.account} and is not public",
        )


@dataclass(frozen=True)
class AdapterFacts:
    """What an addon's adapter_config.json says, as its inspection Job read it."""

    source: str
    lora_rank: int
    target_modules: tuple[str, ...] = ()

    def record(self, status: ModelStatus) -> None:
        status.adapter_source = self.source
        status.lora_rank = self.lora_rank
        status.target_modules = list(self.target_modules) or None

    @classmethod
    def recorded(cls, status: Obj, source: str) -> AdapterFacts | None:
        """The facts a previous inspection of this very source left in status, if any."""
        rank = status.get("loraRank")
        if status.get("adapterSource") != source or not isinstance(rank, int) or rank < 1:
            return None
        modules = status.get("targetModules") or []
        return cls(source, rank, tuple(str(m) for m in modules))


def inspection_outcome(source: str, job_name: str, job: JobState) -> AdapterFacts:
    """The facts of a finished inspection Job; ModelProblem while it runs or when it failed."""
    if job.phase in ("Pending", "Running"):
        detail = job.detail or "the inspection pod is running"
        raise ModelProblem("Inspecting", f"Job {job_name}: {detail}", waiting=True)
    terminated = job.result
    text = terminated.message if terminated else ""
    result = InspectionResult.from_message(text) if terminated else None
    if job.phase == "Succeeded":
        if result is None or result.status != "valid" or result.lora_rank is None:
            why = (
                "its pod left no result in its termination message"
                if not text.strip()
                else f"its result is unreadable: {shorten(text, 300)}"
            )
            raise ModelProblem(
                "InspectionResultMissing",
                f"inspection Job {job_name} succeeded but {why}; does its image run "
                "`graft model inspect`?",
            )
        return AdapterFacts(source, result.lora_rank, result.target_modules)
    if result is not None and result.status == "invalid":
        raise ModelProblem("InvalidAdapter", result.message)
    if result is not None and result.status == "error":
        raise ModelProblem("AdapterUnreadable", result.message or job.detail)
    where = (
        f" ({terminated.container} exited with code {terminated.exit_code})" if terminated else ""
    )
    detail = text.strip() or job.detail or "no message"
    raise ModelProblem(
        "InspectionFailed",
        f"inspection Job {job_name} failed{where}: {shorten(detail, 2000)}",
    )


def validated(spec: ModelSpec, status: ModelStatus) -> str:
    """What a Ready model is, in words (the Ready condition's message)."""
    what = f"{spec.kind} model from {spec.source.uri}"
    if spec.kind == ModelKind.PEFT_ADDON:
        what += f" on {spec.base_model}"
        if status.lora_rank is not None:
            what += f", LoRA rank {status.lora_rank}"
    return what


def model_status(
    status: ModelStatus,
    *,
    generation: int,
    problem: ModelProblem | None,
    message: str,
    deployments: list[str],
    previous: list[Condition],
    now: str,
) -> ModelStatus:
    """Complete `status` (name and adapter facts already set) with Ready and the users;
    `message` says what the model is when it is Ready."""
    if problem is None:
        status.deployments = deployments or None
        status.conditions = set_condition(
            previous, "Ready", True, "Validated", message, generation=generation, now=now
        )
        status.state = "Ready"
    else:
        status.conditions = set_condition(
            previous,
            "Ready",
            False,
            problem.reason,
            problem.message,
            generation=generation,
            now=now,
        )
        status.state = "Waiting" if problem.waiting else "Failed"
    return status


def not_ready(obj: Obj) -> str | None:
    """Why a Model is not Ready for its current spec ("<reason>: <message>"), or None."""
    ready = condition(obj, "Ready")
    generation = obj["metadata"].get("generation", 0)
    if ready is None:
        return "it has no status yet"
    seen = ready.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    if isinstance(seen, int) and seen < generation:
        return "the operator has not checked its current spec yet"
    if ready.get("status") != "True":
        return f"{ready.get('reason')}: {ready.get('message')}"
    return None


IN_USE_LISTED = 10
"""How many users the in-use message names; the rest are counted (5,000 names would not fit)."""


def in_use_message(users: list[str]) -> str:
    """Why a Model's deletion waits: the full names of what still uses it (the first few)."""
    named = ", ".join(users[:IN_USE_LISTED])
    more = len(users) - IN_USE_LISTED
    return f"deletion waits: still used by {named}" + (f" and {more} more" if more > 0 else "")


def in_use(previous: Obj, message: str, generation: int | None, now: str) -> Obj:
    """The status of a Model whose deletion waits (`in_use_message`)."""
    conditions = set_condition(
        conditions_of({"status": previous}),
        "Ready",
        False,
        "InUse",
        message,
        generation=generation,
        now=now,
    )
    return {**previous, "conditions": [c.wire() for c in conditions], "state": "Terminating"}
