"""Dataset (immutable training examples) and FineTuningJob (dataset -> LoRA addon Model)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from graft.api.common import ID_PATTERN, REF_PATTERN, GraftModel, ResourceRequests, StatusBase
from graft.api.models import URI_DESCRIPTION, URI_PATTERN


class DatasetFormat(StrEnum):
    CHAT = "chat"
    COMPLETION = "completion"


class ConfigMapKey(GraftModel):
    """A key of a ConfigMap in the account's namespace."""

    name: str = Field(
        description="ConfigMap name, in the Dataset's namespace.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    key: str = Field(
        description="Key holding the JSONL data (a ConfigMap holds at most 1 MiB; use a URI for more).",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class DatasetSource(GraftModel):
    """Where the JSONL data is: exactly one of uri and configMap."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.uri) != has(self.configMap)",
                    "message": "set exactly one of source.uri and source.configMap",
                }
            ]
        }
    )

    uri: str | None = Field(
        default=None, pattern=URI_PATTERN, max_length=2048, description=URI_DESCRIPTION
    )
    config_map: ConfigMapKey | None = Field(
        default=None, description="A ConfigMap key holding the data."
    )


class DatasetSpec(GraftModel):
    """Desired state of a Dataset: an immutable set of training examples."""

    source: DatasetSource = Field(description="Where the data is.")
    format: DatasetFormat = Field(
        default=DatasetFormat.CHAT,
        description='chat: {"messages":[{"role":"system|user|assistant","content":"..."}]} per line; completion: {"prompt":"...","completion":"..."} per line.',
    )
    filename: str | None = Field(
        default=None,
        max_length=255,
        description="File name for the dataset's signature (sha256, filename); defaults to the URI's or key's last segment.",
    )


class DatasetStatus(StatusBase):
    """Observed state of a Dataset, filled in by validation."""

    sha256: str | None = Field(
        default=None,
        description="SHA-256 of the data, hex. Its first 63 characters are also in the label graft.dev/sha256-prefix.",
    )
    size_bytes: int | None = Field(default=None, description="Size of the data in bytes.")
    example_count: int | None = Field(default=None, description="Number of examples.")
    filename: str | None = Field(
        default=None,
        description="File name used in the signature (sha256, filename); also in the label graft.dev/filename.",
    )
    errors: list[str] | None = Field(
        default=None,
        max_length=20,
        description="Problems validation found (at most 20), each starting with its line number where it has one.",
    )
    job_name: str | None = Field(
        default=None, description="The batch/v1 Job that validates (or validated) the data."
    )


class Hyperparameters(GraftModel):
    """Training settings."""

    epochs: int = Field(default=1, ge=1, le=100, description="Passes over the dataset.")
    learning_rate: float = Field(default=1e-4, gt=0, le=1, description="Optimizer learning rate.")
    lora_rank: int = Field(default=8, ge=1, le=512, description="LoRA rank r.")
    lora_alpha: int = Field(
        default=16, ge=1, le=4096, description="LoRA alpha (scaling is alpha / rank)."
    )
    batch_size: int = Field(default=4, ge=1, le=1024, description="Examples per optimizer step.")
    max_context_length: int = Field(
        default=2048,
        ge=16,
        le=1048576,
        description="Tokens per example; longer ones are truncated.",
    )
    seed: int = Field(
        default=42, ge=0, description="Random seed; the same seed and data give the same adapter."
    )
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many steps (overrides epochs)."
    )
    target_modules: list[str] | None = Field(
        default=None, description="Modules to adapt; defaults to all linear projections."
    )


class FineTuningJobSpec(GraftModel):
    """Desired state of a FineTuningJob: train a LoRA addon from a dataset and publish it as a Model."""

    base_model: str = Field(
        pattern=REF_PATTERN,
        max_length=253,
        description="The Base model to train on (ID or full name).",
    )
    dataset: str = Field(
        pattern=REF_PATTERN, max_length=253, description="The training Dataset (ID or full name)."
    )
    evaluation_dataset: str | None = Field(
        default=None,
        pattern=REF_PATTERN,
        max_length=253,
        description="Optional evaluation Dataset.",
    )
    output_model: str = Field(
        pattern=ID_PATTERN,
        max_length=63,
        description="ID of the addon Model to create in this account.",
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Training settings."
    )
    resources: ResourceRequests = Field(
        default_factory=ResourceRequests, description="Compute resources of the trainer pod."
    )
    deployment: str | None = Field(
        default=None,
        pattern=REF_PATTERN,
        max_length=253,
        description="Optional Deployment to load the result into (creates a DeployedModel).",
    )


RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"

MAX_PROGRESS_STEPS = 1 << 40
"""The largest step count progress may report (far beyond any real run; bounds what a trainer
can make the API server store)."""
MAX_LOSS = 1e9
MAX_CURVE_POINTS = 100
"""Points of status.progress.lossCurve, at most: the curve stays a small part of a report."""
LossPoint = Annotated[
    list[Annotated[float, Field(ge=0, le=MAX_LOSS)]], Field(min_length=2, max_length=2)
]
"""One point of a loss curve: [step, loss]."""


class TrainingProgress(GraftModel):
    """How far a running trainer is, as it last reported (every few seconds at most)."""

    step: int = Field(ge=0, le=MAX_PROGRESS_STEPS, description="Optimizer steps done.")
    total_steps: int = Field(
        ge=0, le=MAX_PROGRESS_STEPS, description="Optimizer steps the run will take in all."
    )
    epoch: int = Field(ge=0, le=MAX_PROGRESS_STEPS, description="The epoch being trained (from 1).")
    total_epochs: int = Field(ge=0, le=MAX_PROGRESS_STEPS, description="Epochs the run covers.")
    loss: float | None = Field(
        default=None, ge=0, le=MAX_LOSS, description="Training loss at the last step."
    )
    examples_per_second: float | None = Field(
        default=None, ge=0, le=1e9, description="Examples trained per second so far."
    )
    eta_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_PROGRESS_STEPS,
        description="Seconds until the last step, at the speed measured so far (0 once done).",
    )
    loss_curve: list[LossPoint] | None = Field(
        default=None,
        max_length=MAX_CURVE_POINTS,
        description=(
            "The training loss so far as [step, loss] points, steps ascending, at most "
            f"{MAX_CURVE_POINTS} (the trainer downsamples a longer run evenly, keeping the "
            "first and the last step)."
        ),
    )
    updated_at: str = Field(
        max_length=40,
        pattern=RFC3339_PATTERN,
        description="When the trainer measured this (RFC 3339).",
    )

    @model_validator(mode="after")
    def _curve_is_a_curve(self) -> TrainingProgress:
        """A curve the dashboard can plot: whole, ascending steps and finite losses (JSON
        parsers accept NaN and Infinity, which no axis can scale to)."""
        last = -1.0
        for step, loss in self.loss_curve or []:
            if not step.is_integer() or step <= last:
                raise ValueError("lossCurve steps must be whole numbers in ascending order")
            if not math.isfinite(loss):
                raise ValueError("lossCurve losses must be finite numbers")
            last = step
        return self


class FineTuningJobStatus(StatusBase):
    """Observed state of a FineTuningJob."""

    job_name: str | None = Field(default=None, description="The batch/v1 Job running the trainer.")
    output_model: str | None = Field(
        default=None, description="Full name of the addon Model created."
    )
    output_uri: str | None = Field(
        default=None, description="Where the trainer writes (wrote) the adapter files."
    )
    deployed_model: str | None = Field(
        default=None,
        description="Full name of the DeployedModel created to load the result into spec.deployment.",
    )
    final_loss: float | None = Field(default=None, description="Training loss at the last step.")
    steps: int | None = Field(default=None, description="Optimizer steps run.")
    start_time: str | None = Field(default=None, description="When training started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When training ended (RFC 3339).")
    progress: TrainingProgress | None = Field(
        default=None,
        description="Live training progress. The trainer reports it through the Graft gateway, "
        "which writes it here while the job runs (GRAFT_GATEWAY_URL set on the operator); the "
        "operator writes the final figures when the job succeeds, and nothing writes it after.",
    )
