"""Models: what can be checked without downloading weights, and the status (pure).

A Model is Ready when its source is a scheme Graft serves and, for an addon, its base model
exists, is a Base model and is this account's own or public. Where an addon's
adapter_config.json was read, its LoRA rank and target modules go into status, where the
DeployedModel admission finds the rank. A Model in use is not deleted out from under its users.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from graft.api.common import Condition
from graft.api.models import ModelKind, ModelSpec, ModelStatus
from graft.core.conditions import conditions_of, set_condition
from graft.core.names import Ref
from graft.core.objects import Obj

SUPPORTED_SCHEMES = ("hf", "s3", "pvc", "http", "https", "file")
ADAPTER_CONFIG = "adapter_config.json"


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


def parse_adapter_config(uri: str, text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ModelProblem("InvalidAdapter", f"{uri}/{ADAPTER_CONFIG} is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelProblem("InvalidAdapter", f"{uri}/{ADAPTER_CONFIG} is not a JSON object")
    return config


def record_adapter(config: dict[str, Any], status: ModelStatus) -> None:
    """The LoRA rank and target modules of an adapter_config.json, into status."""
    rank = config.get("r")
    modules = config.get("target_modules")
    if not isinstance(rank, int) or rank < 1:
        raise ModelProblem(
            "InvalidAdapter", f"{ADAPTER_CONFIG} has no valid LoRA rank r (got {rank!r})"
        )
    status.lora_rank = rank
    if isinstance(modules, list):
        status.target_modules = sorted(str(m) for m in modules)
    elif isinstance(modules, str):
        status.target_modules = [modules]


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
