"""User reconciler: one RoleBinding from the User's email to the ClusterRole of its role.

The binding is named after the User and owned by it. A role change replaces it (a RoleBinding's
roleRef cannot change); deleting the User revokes it through the garbage collector (the
binding's owner is gone), within seconds and whether or not the operator runs: Users carry no
finalizer. A User grants nothing outside a namespace its Account created.
"""

from __future__ import annotations

import logging

from graft.api.kinds import Plural
from graft.api.tenancy import UserSpec
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.status import publish
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.names import cluster_role_name, full_name
from graft.core.objects import Obj, Owner, is_terminating, owned_by
from graft.plan.user import (
    BindingAction,
    UserProblem,
    account_problem,
    binding_action,
    binding_name,
    conflict_problem,
    missing_role_problem,
    role_binding,
    user_status,
)

log = logging.getLogger(__name__)

PLURAL = Plural.USERS


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return  # the garbage collector removes the binding it owns
    owner = Owner.of(obj)
    spec = UserSpec.model_validate(obj.get("spec") or {})
    desired = role_binding(owner, spec.email, spec.role)
    existing = api.get_role_binding(namespace, binding_name(name))
    action = binding_action(existing, desired)

    problem = account_problem(
        namespace, api.cached_graft(Plural.ACCOUNTS, "", namespace), api.get_namespace(namespace)
    )
    if problem is not None:
        # No account, no access: drop a binding this User had (never someone else's).
        if existing is not None and owned_by(existing, owner.uid):
            api.delete_role_binding(
                namespace, existing["metadata"]["name"], existing["metadata"]["uid"]
            )
    elif not api.cluster_role_exists(cluster_role_name(spec.role)):
        problem = missing_role_problem(cluster_role_name(spec.role))
    elif action == BindingAction.CONFLICT:
        problem = conflict_problem(binding_name(name), namespace)
    elif action != BindingAction.NONE:
        bind(api, obj, existing, desired, action)

    report(api, obj, owner, spec, problem)


def bind(api: Api, obj: Obj, existing: Obj | None, desired: Obj, action: BindingAction) -> None:
    meta = desired["metadata"]
    role = desired["roleRef"]["name"]
    email = desired["subjects"][0]["name"]
    if action == BindingAction.REPLACE and existing is not None:
        api.delete_role_binding(meta["namespace"], meta["name"], existing["metadata"]["uid"])
    api.create_role_binding(desired)
    if action == BindingAction.REPLACE and existing is not None:
        before = existing.get("roleRef", {}).get("name")
        message = f"RoleBinding {meta['name']} replaced: {email} now has ClusterRole {role}"
        if before != role:
            message += f" (was {before})"
        api.event(obj, "Normal", "RoleBindingReplaced", message)
    else:
        api.event(obj, "Normal", "RoleBindingCreated", f"bound {email} to ClusterRole {role}")
    log.info(
        "%s RoleBinding %s/%s -> %s", action.value.lower(), meta["namespace"], meta["name"], role
    )


def report(api: Api, obj: Obj, owner: Owner, spec: UserSpec, problem: UserProblem | None) -> None:
    status = user_status(
        owner=owner,
        full_name=full_name(owner.namespace, PLURAL, owner.name),
        email=spec.email,
        role=spec.role,
        problem=problem,
        previous=conditions_of(obj),
        now=now_rfc3339(),
    )
    publish(api, obj, PLURAL, status, warning=problem is not None)
