"""Account (the tenant) and User (an email with a role in one account)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from graft.api.common import GraftModel, Quantity, StatusBase


class DeletionPolicy(StrEnum):
    REFUSE = "Refuse"
    DELETE = "Delete"


class AcceleratorQuota(GraftModel):
    """A quota on requests of one accelerator resource."""

    resource: str = Field(
        description="Extended resource name, e.g. amd.com/gpu.", min_length=1, max_length=253
    )
    count: int = Field(
        ge=0, description="Most units of the resource the account's pods may request at once."
    )


class AccountQuota(GraftModel):
    """Limits on what the account's namespace may hold, enforced by the API server at admission."""

    gpus: int | None = Field(
        default=None,
        ge=0,
        description="Most nvidia.com/gpu the account's pods may request at once.",
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
        default=None, description="Most CPU the account's pods may request at once."
    )
    memory: Quantity | None = Field(
        default=None, description="Most memory the account's pods may request at once."
    )
    deployments: int | None = Field(
        default=None, ge=0, description="Most Deployments in the account."
    )
    deployed_models: int | None = Field(
        default=None, ge=0, description="Most DeployedModels in the account."
    )
    fine_tuning_jobs: int | None = Field(
        default=None, ge=0, description="Most FineTuningJobs in the account."
    )
    datasets: int | None = Field(default=None, ge=0, description="Most Datasets in the account.")
    models: int | None = Field(default=None, ge=0, description="Most Models in the account.")


class AccountSpec(GraftModel):
    """Desired state of an Account: the top-level tenant, whose ID is also its namespace's name."""

    display_name: str | None = Field(
        default=None, max_length=256, description="Human-readable name of the account."
    )
    quota: AccountQuota | None = Field(
        default=None, description="Limits enforced on the account's namespace."
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

    resource: str = Field(description="The quota'd resource, as the ResourceQuota names it.")
    hard: str = Field(description="The limit.")
    used: str = Field(description="Current usage.")


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
        pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        max_length=254,
    )
    role: Role = Field(
        description="admin: everything incl. Users; member: all Graft kinds but Users; viewer: read only."
    )


class UserStatus(StatusBase):
    """Observed state of a User."""

    cluster_role: str | None = Field(
        default=None, description="The ClusterRole bound for this user."
    )
    role_binding: str | None = Field(default=None, description="The RoleBinding that grants it.")
