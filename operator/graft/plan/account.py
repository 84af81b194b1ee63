"""Accounts and Users: the Namespace, ResourceQuota and RoleBinding they own, and their status
(pure).

An Account owns the namespace named after its ID, but only one it created itself: a namespace
that already exists is never adopted, changed or deleted. The account's quota is a ResourceQuota
in that namespace, so the API server enforces it at admission. A User is a RoleBinding in the
account's namespace from the User's email (a Kubernetes `User` subject) to one of the ClusterRoles
Graft ships (graft.gen.rbac).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from graft.api.common import Condition
from graft.api.tenancy import (
    NVIDIA_GPU,
    AccountQuota,
    AccountStatus,
    QuotaUsage,
    Role,
    UserStatus,
)
from graft.core import keys
from graft.core.conditions import set_condition
from graft.gen.rbac import user_cluster_role

QUOTA_NAME = "graft-quota"
"""The one ResourceQuota an Account owns in its namespace."""

RBAC_GROUP = "rbac.authorization.k8s.io"

# Object-count quotas, by AccountQuota field: the ResourceQuota key counts objects of the kind.
COUNTED_KINDS: tuple[tuple[str, str], ...] = (
    ("deployments", "deployments"),
    ("deployed_models", "deployedmodels"),
    ("fine_tuning_jobs", "finetuningjobs"),
    ("datasets", "datasets"),
    ("models", "models"),
)

ACCOUNT_KINDS: tuple[str, ...] = (
    "deployments",
    "deployedmodels",
    "finetuningjobs",
    "datasets",
    "models",
    "users",
)
"""The Graft kinds an account's namespace can hold (plurals); they guard Account deletion."""


@dataclass(frozen=True)
class Owner:
    """A Graft object that owns children (an Account or a User)."""

    kind: str
    name: str
    uid: str
    generation: int
    namespace: str = ""

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": keys.API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def account_full_name(account: str) -> str:
    """An Account's full name: the root of its resources' names, accounts/<account>/..."""
    return f"accounts/{account}"


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    return labels


# --- Quantities ---------------------------------------------------------------------------------

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(\d+\.?\d*|\.\d+))"
    r"(?P<suffix>[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


class InvalidQuantity(ValueError):
    """Not a Kubernetes resource quantity."""


def quantity(value: str | int) -> Decimal:
    """The value of a Kubernetes quantity ("500m", "16Gi", "1e3", 4), to compare two spellings."""
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if m is None:
        raise InvalidQuantity(f"{value!r} is not a quantity such as 8, 500m or 64Gi")
    suffix = m["suffix"] or ""
    try:
        number = Decimal(m["number"])
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
    except (InvalidOperation, ValueError) as exc:
        raise InvalidQuantity(f"{value!r} is not a quantity") from exc
    return number * _SUFFIXES[suffix]


def same_quantities(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two resource lists name the same resources with equal values, however spelled."""
    if a.keys() != b.keys():
        return False
    try:
        return all(quantity(a[k]) == quantity(b[k]) for k in a)
    except InvalidQuantity:
        return False


# --- The account's Namespace --------------------------------------------------------------------


class NamespaceState(StrEnum):
    MISSING = "Missing"
    OWNED = "Owned"  # created by this Account
    TERMINATING = "Terminating"  # ours (or an earlier Account's of this name), going away
    FOREIGN = "Foreign"  # exists and was not created by this Account


def namespace_state(namespace: dict[str, Any] | None, account: str, uid: str) -> NamespaceState:
    if namespace is None:
        return NamespaceState.MISSING
    ours = owned_by(namespace, uid)
    labels = _labels(namespace)
    graft_account = (
        labels.get(keys.MANAGED_BY) == keys.MANAGED_BY_VALUE and labels.get(keys.ACCOUNT) == account
    )
    if namespace["metadata"].get("deletionTimestamp") and (ours or graft_account):
        return NamespaceState.TERMINATING
    return NamespaceState.OWNED if ours else NamespaceState.FOREIGN


def account_labels(account: str, component: str) -> dict[str, str]:
    return {
        keys.MANAGED_BY: keys.MANAGED_BY_VALUE,
        keys.PART_OF: keys.PART_OF_VALUE,
        keys.COMPONENT: component,
        keys.ACCOUNT: account,
    }


def account_namespace(owner: Owner) -> dict[str, Any]:
    """The namespace of an account: named after the account, owned by it."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": owner.name,
            "labels": account_labels(owner.name, keys.ACCOUNT_NAMESPACE),
            "ownerReferences": [owner.reference()],
        },
    }


# --- The account's ResourceQuota ----------------------------------------------------------------


def quota_hard(quota: AccountQuota | None) -> dict[str, str]:
    """spec.hard of the account's ResourceQuota; empty when nothing is limited."""
    if quota is None:
        return {}
    hard: dict[str, str] = {}
    if quota.gpus is not None:
        hard[f"requests.{NVIDIA_GPU}"] = str(quota.gpus)
    for accelerator in quota.accelerators or ():
        # Extended resources can only be limited by their requests (requests == limits).
        hard[f"requests.{accelerator.resource}"] = str(accelerator.count)
    if quota.cpu is not None:
        hard["requests.cpu"] = str(quota.cpu)
    if quota.memory is not None:
        hard["requests.memory"] = str(quota.memory)
    for field, plural in COUNTED_KINDS:
        count = getattr(quota, field)
        if count is not None:
            hard[f"count/{plural}.{keys.GROUP}"] = str(count)
    return dict(sorted(hard.items()))


def resource_quota(owner: Owner, hard: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": owner.name,
            "labels": account_labels(owner.name, keys.ACCOUNT_QUOTA),
            "ownerReferences": [owner.reference()],
        },
        "spec": {"hard": hard},
    }


def is_graft_quota(existing: dict[str, Any], account: str) -> bool:
    """Made by Graft for this account (a ResourceQuota someone else made is left alone)."""
    labels = _labels(existing)
    return (
        labels.get(keys.MANAGED_BY) == keys.MANAGED_BY_VALUE and labels.get(keys.ACCOUNT) == account
    )


def quota_in_sync(existing: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """The existing ResourceQuota already is the desired one (limits, labels, owner)."""
    if existing is None:
        return False
    labels = _labels(existing)
    if any(labels.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return False
    if not owned_by(existing, desired["metadata"]["ownerReferences"][0]["uid"]):
        return False
    hard = (existing.get("spec") or {}).get("hard") or {}
    return same_quantities(hard, desired["spec"]["hard"])


def quota_enforced(existing: dict[str, Any] | None, hard: dict[str, str]) -> bool:
    """The API server enforces `hard`: it has taken the limits into status and counted usage.

    Until then the quota admission refuses every request the quota covers ("status unknown for
    quota"), and an old limit stays in force, so the Account is not Ready yet.
    """
    if existing is None:
        return False
    status = existing.get("status") or {}
    enforced = status.get("hard") or {}
    used = status.get("used") or {}
    return same_quantities(enforced, hard) and all(k in used for k in hard)


def quota_usage(hard: dict[str, str], existing: dict[str, Any] | None) -> list[QuotaUsage]:
    """Usage against each limit, as the API server counted it."""
    used = ((existing or {}).get("status") or {}).get("used") or {}
    return [
        QuotaUsage(resource=resource, hard=limit, used=used.get(resource))
        for resource, limit in hard.items()
    ]


def describe_hard(hard: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in hard.items())


# --- Account status and the deletion guard ------------------------------------------------------


@dataclass(frozen=True)
class AccountProblem:
    """Why an Account is not Ready, as a condition reason and message."""

    reason: str
    message: str
    state: str  # Waiting, Failed or Deleting


def namespace_problem(state: NamespaceState, namespace: str) -> AccountProblem | None:
    if state == NamespaceState.FOREIGN:
        return AccountProblem(
            "NamespaceConflict",
            f"namespace {namespace} already exists and was not created by this Account; Graft "
            "never adopts, changes or deletes a namespace it did not create: delete or rename "
            "that namespace, or choose another account ID",
            "Failed",
        )
    if state == NamespaceState.TERMINATING:
        return AccountProblem(
            "NamespaceTerminating",
            f"namespace {namespace} is still being deleted; it is created again once it is gone",
            "Waiting",
        )
    return None


def quota_problem(hard: dict[str, str], existing: dict[str, Any] | None) -> AccountProblem | None:
    if not hard or quota_enforced(existing, hard):
        return None
    namespace = ((existing or {}).get("metadata") or {}).get("namespace", "")
    return AccountProblem(
        "QuotaPending",
        f"waiting for the API server to count usage against ResourceQuota {QUOTA_NAME}"
        + (f" in namespace {namespace}" if namespace else "")
        + "; it enforces the quota from then on",
        "Waiting",
    )


def account_status(
    *,
    owner: Owner,
    namespace: str,
    hard: dict[str, str],
    quota: dict[str, Any] | None,
    problem: AccountProblem | None,
    previous: list[Condition],
    now: str,
) -> AccountStatus:
    if problem is None:
        limits = f"quota {describe_hard(hard)}" if hard else "no quota"
        ready, reason, state = True, "Provisioned", "Ready"
        message = f"namespace {namespace} is ready; {limits}"
    else:
        ready, reason, message, state = False, problem.reason, problem.message, problem.state
    conditions = set_condition(
        previous, "Ready", ready, reason, message, generation=owner.generation, now=now
    )
    owns_namespace = problem is None or problem.reason not in (
        "NamespaceConflict",
        "NamespaceTerminating",
    )
    return AccountStatus(
        observed_generation=owner.generation,
        name=account_full_name(owner.name),
        state=state,
        conditions=conditions,
        namespace=namespace if owns_namespace else None,
        quota=quota_usage(hard, quota) if hard and owns_namespace else None,
    )


def remaining_resources(found: dict[str, list[str]], per_kind: int = 5) -> str:
    """A short list of what a namespace still holds, e.g. "models: base, addon; users: alice"."""
    parts = []
    for plural in sorted(found):
        names = sorted(found[plural])
        if not names:
            continue
        shown = ", ".join(names[:per_kind])
        more = len(names) - per_kind
        parts.append(f"{plural}: {shown}" + (f" and {more} more" if more > 0 else ""))
    return "; ".join(parts)


def deletion_blocked(namespace: str, found: dict[str, list[str]]) -> AccountProblem | None:
    """Why a Refuse-policy Account cannot be deleted yet, or None when nothing is left."""
    left = remaining_resources(found)
    if not left:
        return None
    return AccountProblem(
        "DeletionBlocked",
        f"the Account is not deleted while namespace {namespace} still holds Graft resources "
        f"({left}): delete them first, or set spec.deletionPolicy: Delete to delete them "
        "together with the account",
        "Deleting",
    )


# --- A User's RoleBinding -----------------------------------------------------------------------


def cluster_role_name(role: Role | str) -> str:
    """The ClusterRole Graft ships for a role (graft.gen.rbac defines it)."""
    return user_cluster_role(role)


def binding_name(user: str) -> str:
    """The RoleBinding of a User; a Graft ID is at most 63 characters, so this never truncates."""
    return f"graft-user-{user}"


def role_binding(owner: Owner, email: str, role: Role | str) -> dict[str, Any]:
    """Bind `email` (a Kubernetes User subject, as an OIDC provider presents it) to the role."""
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": binding_name(owner.name),
            "namespace": owner.namespace,
            "labels": {
                **account_labels(owner.namespace, keys.USER_BINDING),
                keys.USER: owner.name,
            },
            "ownerReferences": [owner.reference()],
        },
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": cluster_role_name(role)},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": email}],
    }


class BindingAction(StrEnum):
    NONE = "None"
    CREATE = "Create"
    REPLACE = "Replace"  # delete, then create: a RoleBinding's roleRef cannot change
    CONFLICT = "Conflict"  # a RoleBinding of that name that Graft did not make for this User


def binding_action(existing: dict[str, Any] | None, desired: dict[str, Any]) -> BindingAction:
    if existing is None:
        return BindingAction.CREATE
    labels = _labels(existing)
    d_meta = desired["metadata"]
    if (
        labels.get(keys.MANAGED_BY) != keys.MANAGED_BY_VALUE
        or labels.get(keys.USER) != d_meta["labels"][keys.USER]
    ):
        return BindingAction.CONFLICT
    same = (
        existing.get("roleRef") == desired["roleRef"]
        and [
            {k: s.get(k) for k in ("apiGroup", "kind", "name")}
            for s in existing.get("subjects") or []
        ]
        == desired["subjects"]
        and owned_by(existing, d_meta["ownerReferences"][0]["uid"])
        and all(labels.get(k) == v for k, v in d_meta["labels"].items())
    )
    return BindingAction.NONE if same else BindingAction.REPLACE


@dataclass(frozen=True)
class UserProblem:
    reason: str
    message: str
    waiting: bool


def account_problem(
    namespace: str, account: dict[str, Any] | None, ns: dict[str, Any] | None
) -> UserProblem | None:
    """A User grants access only in a namespace its Account created."""
    if account is None:
        return UserProblem(
            "AccountNotFound",
            f"namespace {namespace} is not an account's namespace: there is no Account "
            f"{namespace}; create the User in its account's namespace",
            waiting=True,
        )
    if ns is None or not owned_by(ns, account["metadata"]["uid"]):
        return UserProblem(
            "AccountNotReady",
            f"Account {namespace} does not own namespace {namespace} (yet); see its Ready "
            "condition",
            waiting=True,
        )
    return None


def conflict_problem(binding: str, namespace: str) -> UserProblem:
    return UserProblem(
        "RoleBindingConflict",
        f"RoleBinding {binding} in namespace {namespace} exists and was not made by Graft for "
        "this User; Graft does not take it over: delete it, or give the User another ID",
        waiting=False,
    )


def missing_role_problem(role: str) -> UserProblem:
    return UserProblem(
        "ClusterRoleMissing",
        f"ClusterRole {role} does not exist, so the binding would grant nothing: install "
        "Graft's RBAC (kubectl apply -f deploy/operator.yaml)",
        waiting=True,
    )


def user_status(
    *,
    owner: Owner,
    full_name: str,
    email: str,
    role: Role | str,
    problem: UserProblem | None,
    previous: list[Condition],
    now: str,
) -> UserStatus:
    cluster_role = cluster_role_name(role)
    binding = binding_name(owner.name)
    if problem is None:
        ready, reason, state = True, "Bound", "Ready"
        message = (
            f"{email} is {Role(role).value} in account {owner.namespace}: RoleBinding {binding} "
            f"grants ClusterRole {cluster_role}"
        )
    else:
        ready, reason, message = False, problem.reason, problem.message
        state = "Waiting" if problem.waiting else "Failed"
    conditions = set_condition(
        previous, "Ready", ready, reason, message, generation=owner.generation, now=now
    )
    return UserStatus(
        observed_generation=owner.generation,
        name=full_name,
        state=state,
        conditions=conditions,
        cluster_role=cluster_role,
        role_binding=binding if problem is None else None,
    )
