"""A User's RoleBinding and status (pure).

A User is a RoleBinding in its account's namespace from the User's email (a Kubernetes `User`
subject, as an OIDC provider presents it) to one of the ClusterRoles Graft ships
(graft.gen.rbac). The binding is named after the User and owned by it; a role change replaces it,
since a RoleBinding's roleRef cannot change. A User grants nothing outside a namespace its
Account created.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from graft.api.common import Condition
from graft.api.tenancy import Role, UserStatus
from graft.core import keys
from graft.core.conditions import set_condition
from graft.core.names import cluster_role_name
from graft.core.objects import Obj, Owner, labels, labels_of, owned_by


def binding_name(user: str) -> str:
    """The RoleBinding of a User; a Graft ID is at most 63 characters, so this never truncates."""
    return f"graft-user-{user}"


def user_subject(email: str) -> Obj:
    """The RBAC subject of a User: its email as a Kubernetes `User`, as an OIDC provider presents
    it. Everything Graft grants a User (its role, its ApiKeys' Secrets) names this subject."""
    return {"apiGroup": keys.RBAC_GROUP, "kind": "User", "name": email}


def subjects_of(binding: Obj) -> list[Obj]:
    """A RoleBinding's subjects as `user_subject` writes them (the API server may add fields)."""
    return [
        {k: s.get(k) for k in ("apiGroup", "kind", "name")} for s in binding.get("subjects") or []
    ]


def role_binding(owner: Owner, email: str, role: Role | str) -> Obj:
    """Bind `email` (a Kubernetes User subject, as an OIDC provider presents it) to the role."""
    return {
        "apiVersion": f"{keys.RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": binding_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels(keys.USER_BINDING, owner, {keys.ACCOUNT: owner.namespace}),
            "ownerReferences": [owner.reference()],
        },
        "roleRef": {
            "apiGroup": keys.RBAC_GROUP,
            "kind": "ClusterRole",
            "name": cluster_role_name(role),
        },
        "subjects": [user_subject(email)],
    }


class BindingAction(StrEnum):
    NONE = "None"
    CREATE = "Create"
    REPLACE = "Replace"  # delete, then create: a RoleBinding's roleRef cannot change
    CONFLICT = "Conflict"  # a RoleBinding of that name that Graft did not make for this User


def binding_action(existing: Obj | None, desired: Obj) -> BindingAction:
    if existing is None:
        return BindingAction.CREATE
    found = labels_of(existing)
    d_meta = desired["metadata"]
    if (
        found.get(keys.MANAGED_BY) != keys.MANAGED_BY_VALUE
        or found.get(keys.USER) != d_meta["labels"][keys.USER]
    ):
        return BindingAction.CONFLICT
    same = (
        existing.get("roleRef") == desired["roleRef"]
        and subjects_of(existing) == desired["subjects"]
        and owned_by(existing, d_meta["ownerReferences"][0]["uid"])
        and all(found.get(k) == v for k, v in d_meta["labels"].items())
    )
    return BindingAction.NONE if same else BindingAction.REPLACE


@dataclass(frozen=True)
class UserProblem:
    reason: str
    message: str
    waiting: bool


def account_problem(namespace: str, account: Obj | None, ns: Obj | None) -> UserProblem | None:
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
        "Graft's RBAC (helm install, or kubectl apply -f deploy/graft.yaml)",
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
