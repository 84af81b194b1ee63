"""Account (the tenant), User (an email with a role in one account) and ApiKey (a User's key for
the data plane)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, ConfigDict, Field, field_validator

from graft.api.common import (
    EXTENDED_RESOURCE_PATTERN,
    ID_PATTERN,
    GraftModel,
    Quantity,
    StatusBase,
    quantity_rule,
)

NVIDIA_GPU = "nvidia.com/gpu"
# Kept simple on purpose: the cluster's identity provider is the real judge of addresses; this
# only stops obvious typos (no @, spaces, no domain) before they become a useless RoleBinding.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
EMAIL_RE = re.compile(EMAIL_PATTERN)
EMAIL_RULE = "spec.email must be an email address such as alice@example.com"


class DeletionPolicy(StrEnum):
    REFUSE = "Refuse"
    DELETE = "Delete"


class AcceleratorQuota(GraftModel):
    """A quota on requests of one accelerator resource."""

    resource: str = Field(
        description="Extended resource name, e.g. amd.com/gpu or habana.ai/gaudi.",
        pattern=EXTENDED_RESOURCE_PATTERN,
        max_length=253,
    )
    count: int = Field(
        ge=0, description="Most units of the resource the account's pods may request at once."
    )


def _quantity_rule(field: str) -> dict[str, Any]:
    return quantity_rule(field, "quota")


class AccountQuota(GraftModel):
    """Limits on what the account's namespace may hold, enforced by the API server at admission."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!has(self.gpus) || !has(self.accelerators) || "
                        f"!self.accelerators.exists(a, a.resource == '{NVIDIA_GPU}')"
                    ),
                    "message": f"set the {NVIDIA_GPU} quota in quota.gpus or in quota.accelerators, not both",
                },
                _quantity_rule("cpu"),
                _quantity_rule("memory"),
            ]
        }
    )

    gpus: int | None = Field(
        default=None,
        ge=0,
        description=f"Most {NVIDIA_GPU} the account's pods may request at once.",
    )
    accelerators: list[AcceleratorQuota] | None = Field(
        default=None,
        description="Quotas on other accelerator resources.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["resource"],
        },
    )
    cpu: Quantity | None = Field(
        default=None,
        description=(
            "Most CPU the account's pods may request at once. Once set, every pod in the account "
            "must state its CPU request (spec.resources.cpu), or the API server refuses it."
        ),
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            "Most memory the account's pods may request at once. Once set, every pod in the "
            "account must state its memory request (spec.resources.memory)."
        ),
    )
    deployments: int | None = Field(
        default=None, ge=0, description="Most Deployments in the account."
    )
    deployed_models: int | None = Field(
        default=None, ge=0, description="Most DeployedModels in the account."
    )
    fine_tuning_jobs: int | None = Field(
        default=None,
        ge=0,
        description="Most FineTuningJobs in the account (finished ones count until deleted).",
    )
    datasets: int | None = Field(default=None, ge=0, description="Most Datasets in the account.")
    models: int | None = Field(default=None, ge=0, description="Most Models in the account.")


class RequestLimits(GraftModel):
    """Data-plane limits of the account, enforced by the gateway (not by the API server)."""

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests per minute the gateway admits for the account, over all its "
            "Deployments and API keys: a token bucket that holds one minute's allowance (an idle "
            "account may burst that much) and refills continuously. Unset: unlimited. A refused "
            "request gets HTTP 429 with Retry-After."
        ),
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most tokens (prompt plus completion) per minute, as a token bucket like "
            "requestsPerMinute: a request is charged its prompt when admitted and settled against "
            "the usage it reports when it ends, so an account that overspends waits until the "
            "bucket refills. Unset: unlimited."
        ),
    )
    concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most requests of the account in flight at once: further requests get HTTP 429 "
            "until one ends. Unset: unlimited."
        ),
    )


class AccountSpec(GraftModel):
    """Desired state of an Account: the top-level tenant, whose ID is also its namespace's name."""

    display_name: str | None = Field(
        default=None, max_length=256, description="Human-readable name of the account."
    )
    quota: AccountQuota | None = Field(
        default=None,
        description="Limits enforced on the account's namespace; none when unset.",
    )
    limits: RequestLimits | None = Field(
        default=None,
        description=(
            "Rate and concurrency limits the gateway enforces on the account's inference "
            "requests; none when unset."
        ),
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.REFUSE,
        description=(
            "What deleting the Account does while its namespace still holds Graft resources: "
            "Refuse keeps waiting (with a condition saying why); Delete removes everything."
        ),
    )


class QuotaUsage(GraftModel):
    """Usage of one quota'd resource."""

    resource: str = Field(
        description="The quota'd resource, as the ResourceQuota names it, e.g. requests.nvidia.com/gpu."
    )
    hard: str = Field(description="The limit.")
    used: str | None = Field(
        default=None,
        description="Current usage; absent until the API server has counted it.",
    )


class AccountStatus(StatusBase):
    """Observed state of an Account."""

    namespace: str | None = Field(
        default=None, description="The namespace that holds the account's resources."
    )
    quota: list[QuotaUsage] | None = Field(
        default=None,
        description="Usage against each quota'd resource.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["resource"],
        },
    )


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class UserSpec(GraftModel):
    """Desired state of a User: an email address with a role in the account."""

    email: str = Field(
        description="The user's email address, as the cluster's identity provider presents it (the Kubernetes User subject).",
        min_length=3,
        max_length=254,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.matches(r'{EMAIL_PATTERN}')", "message": EMAIL_RULE}
            ]
        },
    )
    role: Role = Field(
        description="admin: everything incl. Users; member: all Graft kinds but Users; viewer: read only."
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not EMAIL_RE.match(value):
            raise ValueError(EMAIL_RULE)
        return value


class UserStatus(StatusBase):
    """Observed state of a User."""

    cluster_role: str | None = Field(
        default=None, description="The ClusterRole bound for this user."
    )
    role_binding: str | None = Field(default=None, description="The RoleBinding that grants it.")


# The public ID and the stored hash of an API key, as graft.core.apikeys makes them (a unit test
# holds the two together: api/ imports nothing else from graft).
API_KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
API_KEY_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"


class ApiKeySpec(GraftModel):
    """Desired state of an ApiKey: a key to the gateway for one User, made by the operator."""

    user: str = Field(
        pattern=ID_PATTERN,
        max_length=63,
        description=(
            "ID of the User in this account the key belongs to: only that User can read the "
            "Secret that holds the key, and deleting the User deletes the key. Cannot change."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec.user cannot change: create a new ApiKey for the other User",
                }
            ]
        },
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description=(
            "When the key stops working (RFC 3339 with a time zone, e.g. 2026-12-31T23:59:59Z); "
            "never when unset. May be changed, e.g. to extend a key."
        ),
    )
    description: str | None = Field(
        default=None, max_length=256, description="What the key is for, for people."
    )


class ApiKeyStatus(StatusBase):
    """Observed state of an ApiKey: what the gateway needs to check a key, never the key."""

    key_id: str | None = Field(
        default=None,
        pattern=API_KEY_ID_PATTERN,
        description="The key's public ID (16 hex digits, graft_<keyId>_<secret>): how the gateway finds the key.",
    )
    key_hash: str | None = Field(
        default=None,
        pattern=API_KEY_HASH_PATTERN,
        description="SHA-256 of the whole key, sha256:<64 hex digits>; the key itself is only in the Secret.",
    )
    redacted_key: str | None = Field(
        default=None,
        description="The key as messages and kubectl show it, graft_<keyId>_..., without its secret.",
    )
    secret_name: str | None = Field(
        default=None,
        description="The Secret in this namespace whose apiKey field holds the key; only the key's User can read it.",
    )
    user: str | None = Field(default=None, description="Email of the User the key was issued to.")
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the key stops working (spec.expiresAt); never when unset."
    )
