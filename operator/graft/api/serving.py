"""Deployment (model-server pods hosting one base model plus addons) and DeployedModel."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from graft.api.common import REF_PATTERN, GraftModel, ResourceRequests, StatusBase


class Engine(StrEnum):
    VLLM = "VLLM"
    REFERENCE = "Reference"


class EnvVar(GraftModel):
    """An environment variable for the model-server container."""

    name: str = Field(
        description="Variable name.", pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256
    )
    value: str = Field(default="", description="Variable value.")


class DeploymentSpec(GraftModel):
    """Desired state of a Deployment: model-server replicas hosting ONE base model and its addons."""

    base_model: str = Field(
        pattern=REF_PATTERN,
        max_length=253,
        description="The Base model to serve, as an ID in this account or a full name accounts/<account>/models/<id>.",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Number of model-server pods.")
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
    engine_args: list[str] | None = Field(
        default=None, description="Extra command-line arguments for the engine, appended last."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        description="Extra environment variables for the model-server container.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the replicas must run on."
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
