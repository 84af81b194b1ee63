"""Deployment (model-server pods hosting one base model plus addons) and DeployedModel."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from graft.api.common import (
    DURATION_MAX_LENGTH,
    DURATION_PATTERN,
    DURATION_RULE,
    REF_PATTERN,
    GraftModel,
    ResourceRequests,
    StatusBase,
)


class Engine(StrEnum):
    VLLM = "VLLM"
    REFERENCE = "Reference"


MANAGED_ENGINE_FLAGS = (
    "model",
    "served-model-name",
    "host",
    "port",
    "api-key",
    "enable-lora",
    "max-loras",
    "max-lora-rank",
    "lora-modules",
)
"""Flags Graft sets on every model server; engineArgs may not name them, nor abbreviate them
(argparse accepts unambiguous prefixes) nor spell them with underscores (vLLM accepts those)."""

RESERVED_ENV = (
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "VLLM_API_KEY",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
)
"""Variables a Deployment's env may not set: they would reach GPUs the quota did not count, or
replace what Graft manages (the API key, run-time LoRA loading)."""


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


ENGINE_ARGS_RULE = (
    "self.all(a, !a.startsWith('--') || !"
    + _cel_list(MANAGED_ENGINE_FLAGS)
    + ".exists(f, f.startsWith(a.substring(2).split('=')[0].replace('_', '-'))))"
)
ENV_RULE = "self.all(e, !(e.name in " + _cel_list(RESERVED_ENV) + "))"


class EnvVar(GraftModel):
    """An environment variable for the model-server container."""

    name: str = Field(
        description="Variable name.", pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256
    )
    value: str = Field(default="", description="Variable value.")


class RolloutStrategy(GraftModel):
    """How a template change replaces the replicas, as apps/v1's RollingUpdate (whole numbers)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.maxSurge > 0 || self.maxUnavailable > 0",
                    "message": "maxSurge and maxUnavailable cannot both be 0: no pod could ever "
                    "be replaced",
                }
            ]
        }
    )

    max_surge: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Pods created above spec.replicas during a rollout. When a quota refuses "
        "them, pods are replaced one at a time instead.",
    )
    max_unavailable: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Ready pods a rollout may take away below spec.replicas (the Deployment stays "
        "Ready meanwhile).",
    )


MAX_REPLICAS = 1000
DURATION_RE = re.compile(DURATION_PATTERN)
WINDOWS = ("scaleUpWindow", "scaleDownWindow", "scaleToZeroWindow")


def _duration_rule(field: str) -> dict[str, Any]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"self.matches(r'{DURATION_PATTERN}')",
                "message": f"autoscaling.{field} {DURATION_RULE}",
            }
        ]
    }


def _window(default: str, field: str, description: str) -> Any:
    return Field(
        default=default,
        min_length=2,
        max_length=DURATION_MAX_LENGTH,
        description=description,
        json_schema_extra=_duration_rule(field),
    )


class AutoscalingTarget(GraftModel):
    """The load one replica should carry; only concurrent requests for now."""

    concurrent_requests: float = Field(
        default=4.0,
        gt=0,
        le=100_000,
        description="Requests in flight (running on a replica or waiting for one, summed over "
        "the gateways) that one replica should carry: the autoscaler wants "
        "ceil(in flight / concurrentRequests) replicas.",
    )


class Autoscaling(GraftModel):
    """Replicas sized from the load the gateways measure, by the operator's autoscaler."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "message": "autoscaling.minReplicas must not be above maxReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(
        default=0,
        ge=0,
        le=MAX_REPLICAS,
        description="Fewest replicas; 0 lets the Deployment scale to zero after "
        "scaleToZeroWindow without requests (the first request then waits for a replica to "
        "start).",
    )
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="Most replicas.")
    target: AutoscalingTarget = Field(
        default_factory=AutoscalingTarget,
        description="The load one replica should carry (concurrentRequests 4 when unset).",
    )
    scale_up_window: str = _window(
        "30s",
        "scaleUpWindow",
        "How long load must stay high before replicas are added: the autoscaler scales up to "
        "the lowest count the load asked for over this window, so a shorter spike adds none. "
        "A duration: whole hours, minutes, seconds in that order (30s, 10m, 1h30m); 0s reacts "
        "at once.",
    )
    scale_down_window: str = _window(
        "10m",
        "scaleDownWindow",
        "How long load must stay low before replicas are removed: the autoscaler scales down to "
        "the highest count the load asked for over this window (never below 1; zero is "
        "scaleToZeroWindow's).",
    )
    scale_to_zero_window: str = _window(
        "1h",
        "scaleToZeroWindow",
        "With minReplicas 0: scale to zero after this long without a request. The "
        "installation may set a floor (GRAFT_MIN_SCALE_TO_ZERO_WINDOW, 5m by default); a "
        "shorter window uses the floor, and status.autoscaling.scaleToZeroWindow says so.",
    )

    @field_validator("scale_up_window", "scale_down_window", "scale_to_zero_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not DURATION_RE.fullmatch(value):
            raise ValueError(f"{value!r} {DURATION_RULE}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.minReplicas ({self.min_replicas}) must not be above maxReplicas "
                f"({self.max_replicas})"
            )
        return self


class DeploymentSpec(GraftModel):
    """Desired state of a Deployment: model-server replicas hosting ONE base model and its addons."""

    base_model: str = Field(
        pattern=REF_PATTERN,
        max_length=253,
        description="The Base model to serve, as an ID in this account or a full name accounts/<account>/models/<id>.",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Number of model-server pods. With spec.autoscaling the operator's "
        "autoscaler sets it (through the /scale subresource, as kubectl scale, an HPA or KEDA "
        "would): leave it out of manifests that are re-applied.",
    )
    engine: Engine = Field(
        default=Engine.VLLM,
        description="Model server: VLLM (GPU) or Reference (Graft's CPU-capable server).",
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Container image; defaults to the engine's image.",
    )
    enable_addons: bool = Field(
        default=False, description="Serve LoRA addons next to the base model (multi-LoRA)."
    )
    max_addons: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Most addons loaded at once per replica (vLLM --max-loras).",
    )
    max_addon_rank: int = Field(
        default=16,
        ge=1,
        le=512,
        description="Highest LoRA rank an addon may have (vLLM --max-lora-rank).",
    )
    resources: ResourceRequests = Field(
        default_factory=ResourceRequests, description="Compute resources of each replica."
    )
    engine_args: list[Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None,
        max_length=128,
        description="Extra command-line arguments for the engine. The flags Graft manages ("
        + ", ".join(f"--{f}" for f in MANAGED_ENGINE_FLAGS)
        + ") are refused, abbreviated or not.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": ENGINE_ARGS_RULE,
                    "message": "engineArgs may not set a flag Graft manages: "
                    + ", ".join(f"--{f}" for f in MANAGED_ENGINE_FLAGS),
                }
            ]
        },
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=128,
        description="Extra environment variables for the model-server container; "
        + ", ".join(RESERVED_ENV)
        + " are refused.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {
                    "rule": ENV_RULE,
                    "message": "env may not set " + ", ".join(RESERVED_ENV),
                }
            ],
        },
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the replicas must run on."
    )
    strategy: RolloutStrategy = Field(
        default_factory=RolloutStrategy,
        description="How replicas are replaced when the template changes (maxSurge 1, "
        "maxUnavailable 0 by default, like apps/v1).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Size the Deployment from its load: the operator's autoscaler sets "
        "spec.replicas between minReplicas and maxReplicas from the requests in flight the "
        "gateways report. Unset: spec.replicas stays as written (kubectl scale, an HPA or KEDA "
        "may still drive it through /scale).",
    )


class AutoscalingStatus(GraftModel):
    """What the autoscaler last decided, and on what load."""

    desired_replicas: int = Field(
        ge=0, description="The replica count the autoscaler wants now (spec.replicas follows)."
    )
    in_flight: int | None = Field(
        default=None,
        ge=0,
        description="Requests in flight over all gateways (running on a replica or waiting for "
        "one) at the latest sample written; refreshed at most every 30 s while only the load "
        "moves.",
    )
    reason: str = Field(
        description="One CamelCase word: ScaledUp, ScaledDown, ScaledToZero, ScaledFromZero, "
        "Stable, OutOfBounds, PartialMetrics or NoMetrics."
    )
    message: str = Field(default="", description="The autoscaler's reasoning, for a person.")
    last_scale_time: str | None = Field(
        default=None,
        description="When the autoscaler last changed spec.replicas (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    scale_to_zero_window: str | None = Field(
        default=None,
        description="The scaleToZeroWindow in effect: the spec's, or the installation's floor "
        "(GRAFT_MIN_SCALE_TO_ZERO_WINDOW) when the spec's is shorter.",
    )


class DeploymentStatus(StatusBase):
    """Observed state of a Deployment."""

    replicas: int | None = Field(
        default=None, description="Model-server pods that exist (not terminating)."
    )
    ready_replicas: int | None = Field(
        default=None, description="Pods of the current template that are Ready."
    )
    updated_replicas: int | None = Field(
        default=None, description="Pods built from the current template."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the pods, for the /scale subresource."
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster URL of the OpenAI-compatible API."
    )
    addons: list[str] | None = Field(
        default=None, description="Addons every ready replica serves (full model names)."
    )
    autoscaling: AutoscalingStatus | None = Field(
        default=None,
        description="The autoscaler's latest decision; absent without spec.autoscaling.",
    )


class DeployedModelSpec(GraftModel):
    """Desired state of a DeployedModel: one addon loaded into one Deployment at run time."""

    model: str = Field(
        pattern=REF_PATTERN,
        max_length=253,
        description="The addon Model to load (ID or full name).",
    )
    deployment: str = Field(
        pattern=REF_PATTERN,
        max_length=253,
        description="The Deployment to load it into (ID or full name).",
    )


class DeployedModelStatus(StatusBase):
    """Observed state of a DeployedModel."""

    served_name: str | None = Field(
        default=None, description="The name requests put in the `model` field."
    )
    replicas: int | None = Field(default=None, description="Ready replicas of the deployment.")
    loaded_replicas: int | None = Field(
        default=None, description="Ready replicas that really serve the addon."
    )
