"""Types shared by every Graft kind: conditions, IDs, references and the base model classes."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
ID_RE = re.compile(ID_PATTERN)
ID_RULE = (
    "must be a Graft ID: 1-63 characters of lowercase letters a-z, digits 0-9 and '-', "
    "not starting or ending with '-' (no dots, no uppercase)"
)
# A reference to another resource: its ID in the same account, or its full name.
REF_PATTERN = (
    r"^(accounts/[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-zA-Z]+/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)

DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
"""A duration as Go writes it, restricted to whole hours, minutes and seconds in that order, each
at most once: 30s, 10m, 1h, 1h30m, 90s. Empty is refused by a minimum length of 2 beside it."""
DURATION_RULE = (
    "must be a duration of whole hours, minutes and seconds in that order, each at most once, "
    "e.g. 30s, 10m, 1h or 1h30m"
)
DURATION_MAX_LENGTH = 16


class GraftModel(BaseModel):
    """Base for every spec and status type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the Kubernetes API (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


CONDITION_MESSAGE_MAX = 32768
"""The longest condition message the schema admits; longer ones are cut (core.conditions)."""


class Condition(GraftModel):
    """One aspect of the object's current state, in the standard Kubernetes condition shape."""

    type: str = Field(
        description="Type of the condition, an adjective or past tense: Ready, Progressing, Succeeded, Failed.",
        max_length=316,
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word saying why the condition is in this state.", max_length=1024
    )
    message: str = Field(
        default="",
        description="Human-readable detail on the condition.",
        max_length=CONDITION_MESSAGE_MAX,
    )
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        description="Current state of the object as a list of conditions, keyed by type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class StatusBase(GraftModel):
    """Fields every Graft status carries."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status was computed from."
    )
    name: str | None = Field(
        default=None, description="Full resource name, accounts/<account>/<plural>/<id>."
    )
    state: str | None = Field(
        default=None,
        description="Short summary of the conditions for printer columns, e.g. Ready, Progressing, Failed.",
    )
    conditions: Conditions = Field(default_factory=list)


def _int_or_string_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    )


Quantity = Annotated[
    int | str,
    Field(json_schema_extra=_int_or_string_schema),
]
"""A Kubernetes resource quantity such as 2, 500m, 16Gi."""


EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$"
)
"""An extended resource name: a domain, a slash and a name (the API server refuses a pod that
requests one without a domain)."""


def quantity_rule(field: str, where: str) -> dict[str, Any]:
    """A CEL rule that the API server checks at admission: `field` is a quantity."""
    return {
        "rule": f"!has(self.{field}) || type(self.{field}) == int || isQuantity(self.{field})",
        "message": f"{where}.{field} must be a Kubernetes quantity such as 8, 500m or 64Gi",
    }


class ResourceRequests(GraftModel):
    """Compute resources for the pods Graft runs."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                quantity_rule("cpu", "resources"),
                quantity_rule("memory", "resources"),
            ]
        }
    )

    gpus: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Number of accelerators each pod requests (and is limited to).",
    )
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource name of the accelerator, e.g. nvidia.com/gpu or amd.com/gpu "
        "(a domain is required).",
        pattern=EXTENDED_RESOURCE_PATTERN,
        max_length=253,
    )
    cpu: Quantity | None = Field(default=None, description="CPU each pod requests, e.g. 4 or 500m.")
    memory: Quantity | None = Field(
        default=None, description="Memory each pod requests, e.g. 16Gi."
    )
