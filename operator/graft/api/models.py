"""Model: a base model or a PEFT (LoRA) addon built on one."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from graft.api.common import REF_PATTERN, GraftModel, StatusBase

CLAIM_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
"""A PersistentVolumeClaim's name: a DNS subdomain (RFC 1123), as the API server requires."""
URI_PATTERN = rf"^((hf|s3|https?|file)://.+|pvc://{CLAIM_NAME}(/.*)?)$"
URI_DESCRIPTION = (
    "Where the artifact lives: hf://<org>/<name>, s3://<bucket>/<key>, pvc://<claim>/<path> "
    "(a claim in the object's own namespace), http(s)://..., or file://<path> for local use."
)


class ModelKind(StrEnum):
    BASE = "Base"
    PEFT_ADDON = "PeftAddon"


class ModelSource(GraftModel):
    """Where the model's weights are."""

    uri: str = Field(description=URI_DESCRIPTION, pattern=URI_PATTERN, max_length=2048)


class ModelSpec(GraftModel):
    """Desired state of a Model: weights plus metadata. Not usable for inference until deployed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind != 'PeftAddon' || has(self.baseModel)",
                    "message": "a PeftAddon model must name its base model in spec.baseModel",
                },
                {
                    "rule": "self.kind != 'Base' || !has(self.baseModel)",
                    "message": "a Base model must not set spec.baseModel (only a PeftAddon is built on a base model)",
                },
                {
                    "rule": "self.kind != 'PeftAddon' || !self.public",
                    "message": "only Base models can be public",
                },
                {
                    "rule": "!self.public || !self.source.uri.startsWith('pvc://')",
                    "message": "a public model cannot be on a pvc:// claim: a claim belongs to "
                    "one account's namespace, and another account's pods would mount their own "
                    "claim of that name; publish it at hf://, s3:// or http(s)://",
                },
                {
                    "rule": "!(has(oldSelf.public) && oldSelf.public) || "
                    "self.source.uri == oldSelf.source.uri",
                    "message": "the source of a public model cannot change: other accounts may "
                    "be serving it; create a new Model for new weights",
                },
            ]
        }
    )

    kind: ModelKind = Field(
        description="Base for a base model; PeftAddon for a LoRA addon on a base model."
    )
    base_model: str | None = Field(
        default=None,
        pattern=REF_PATTERN,
        max_length=253,
        description="PeftAddon only: the base model, as an ID in this account or a full name accounts/<account>/models/<id>.",
    )
    source: ModelSource = Field(description="Where the weights (or the adapter files) are.")
    display_name: str | None = Field(
        default=None, max_length=256, description="Human-readable name."
    )
    description: str | None = Field(
        default=None, max_length=4096, description="What the model is for."
    )
    public: bool = Field(
        default=False,
        description="Base models only: other accounts may deploy it and build addons on it.",
    )


class ModelStatus(StatusBase):
    """Observed state of a Model."""

    lora_rank: int | None = Field(
        default=None, description="PeftAddon: the LoRA rank read from adapter_config.json."
    )
    adapter_source: str | None = Field(
        default=None,
        description="PeftAddon: the source the rank and target modules were read from, by the "
        "inspection Job.",
    )
    job_name: str | None = Field(
        default=None, description="PeftAddon: the Job that reads the adapter's configuration."
    )
    target_modules: list[str] | None = Field(
        default=None, description="PeftAddon: the modules the adapter targets."
    )
    deployments: list[str] | None = Field(
        default=None, description="Deployments the model is loaded in (full names)."
    )
