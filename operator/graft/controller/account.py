"""Account reconciler: the account's namespace, ResourceQuota, NetworkPolicy and the operator's
RoleBinding there, its status, the deletion guard.

`reconcile()` reads the Account, its namespace and its ResourceQuota fresh each time, creates the
namespace if it is missing (never adopting one that exists), keeps its Pod Security labels, its
NetworkPolicy and the RoleBinding that lets the operator read its ApiKeys' Secrets (and no
others: graft.plan.account), applies or removes the quota, and writes status once, only when it
changed. `finalize()` runs while a deleted Account waits on
Graft's finalizer: it refuses (condition and Event) while the namespace holds Graft resources,
unless spec.deletionPolicy is Delete; then it deletes the namespace and lets the Account go.
"""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from graft.api.kinds import ACCOUNT_PLURALS, Plural
from graft.api.tenancy import AccountSpec, DeletionPolicy
from graft.controller.context import Context
from graft.controller.kube import Api, error_message
from graft.controller.status import publish
from graft.core import keys
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.objects import Obj, Owner, is_terminating
from graft.plan.account import (
    NETWORK_POLICY_NAME,
    QUOTA_NAME,
    SECRETS_BINDING_NAME,
    AccountProblem,
    NamespaceState,
    account_namespace,
    account_status,
    cluster_role_missing_problem,
    deletion_blocked,
    describe_hard,
    is_graft_account_object,
    missing_namespace_labels,
    namespace_problem,
    namespace_state,
    network_policy,
    network_policy_in_sync,
    quota_hard,
    quota_in_sync,
    quota_problem,
    resource_quota,
    secrets_binding,
    secrets_binding_in_sync,
    secrets_binding_refused_problem,
)

log = logging.getLogger(__name__)

PLURAL = Plural.ACCOUNTS
QUIET = {"QuotaPending"}  # a moment's wait after every quota change: not worth an Event


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Reconcile one Account; `namespace` is "" (Accounts are cluster-scoped)."""
    del namespace
    api = ctx.api
    obj = api.get_graft_cluster(PLURAL, name)
    if obj is None:
        return
    if is_terminating(obj):
        if finalize(api, name) is None:
            api.remove_cluster_finalizer(PLURAL, obj, keys.ACCOUNT_FINALIZER)
        return
    if keys.ACCOUNT_FINALIZER not in (obj["metadata"].get("finalizers") or []):
        api.add_cluster_finalizer(PLURAL, obj, keys.ACCOUNT_FINALIZER)
        # Go on with what was written: a finalizer's event is metadata only, and no handler
        # runs on that, so returning here left a new Account to the next resync (60 s).
        obj = api.get_graft_cluster(PLURAL, name)
        if obj is None or keys.ACCOUNT_FINALIZER not in (obj["metadata"].get("finalizers") or []):
            return  # changed meanwhile (the patch's test failed): the resync adds it
        if is_terminating(obj):
            if finalize(api, name) is None:
                api.remove_cluster_finalizer(PLURAL, obj, keys.ACCOUNT_FINALIZER)
            return
    owner = Owner.of(obj)
    spec = AccountSpec.model_validate(obj.get("spec") or {})
    hard = quota_hard(spec.quota)

    namespace_obj = api.get_namespace(name)
    state = namespace_state(namespace_obj, name, owner.uid)
    if state == NamespaceState.MISSING:
        # create, not apply: if the namespace appeared meanwhile this fails (409) and the retry
        # sees a foreign namespace, instead of silently adopting it.
        namespace_obj = api.create_namespace(account_namespace(owner))
        log.info("created namespace %s for Account %s", name, name)
        api.event(obj, "Normal", "NamespaceCreated", f"created namespace {name}")
        state = NamespaceState.OWNED

    quota: Obj | None = None
    problem = namespace_problem(state, name)
    if state == NamespaceState.OWNED:
        secure_namespace(ctx, owner, namespace_obj)
        access = grant_secret_access(ctx, obj, owner)
        quota = sync_quota(api, obj, owner, hard)
        problem = access or quota_problem(hard, quota)
    report(api, obj, owner=owner, hard=hard, quota=quota, problem=problem)


def secure_namespace(ctx: Context, owner: Owner, namespace: Obj | None) -> None:
    """Pod Security "restricted" on the namespace, and the model servers' NetworkPolicy."""
    api = ctx.api
    if namespace is not None and (missing := missing_namespace_labels(namespace)):
        api.patch_namespace_labels(owner.name, missing)
        log.info("set Pod Security labels on namespace %s", owner.name)
    desired = network_policy(owner, ctx.settings.operator_namespace)
    existing = api.get_network_policy(owner.name, NETWORK_POLICY_NAME)
    if not network_policy_in_sync(existing, desired):
        api.apply(desired)


def grant_secret_access(ctx: Context, obj: Obj, owner: Owner) -> AccountProblem | None:
    """The RoleBinding that grants the operator's ServiceAccount its Secret rights in the
    account's namespace, put back (delete + create: a roleRef cannot change) when it differs;
    why the account's ApiKeys cannot work yet, if they cannot."""
    api, settings = ctx.api, ctx.settings
    desired = secrets_binding(owner, settings.operator_service_account, settings.operator_namespace)
    existing = api.get_role_binding(owner.name, SECRETS_BINDING_NAME)
    if not secrets_binding_in_sync(existing, desired):
        try:
            if existing is not None:
                api.delete_role_binding(
                    owner.name, SECRETS_BINDING_NAME, existing["metadata"]["uid"]
                )
            api.create_role_binding(desired)
        except ApiException as exc:
            if exc.status != 403:
                raise
            message = error_message(exc)
            if "is being terminated" in message:
                return None  # the namespace is going away, and the Account with it
            log.warning(
                "could not bind the operator's Secret rights in %s: %s", owner.name, message
            )
            return secrets_binding_refused_problem(owner.name, message)
        subject = desired["subjects"][0]
        who = f"ServiceAccount {subject['namespace']}/{subject['name']}"
        if existing is None:
            log.info("bound %s to its Secret rights in namespace %s", who, owner.name)
        else:
            log.info("replaced RoleBinding %s/%s", owner.name, SECRETS_BINDING_NAME)
            api.event(
                obj,
                "Normal",
                "RoleBindingReplaced",
                f"RoleBinding {SECRETS_BINDING_NAME} put back: {who} may get and delete Secrets "
                f"in namespace {owner.name} (ClusterRole {desired['roleRef']['name']})",
            )
    if not api.cluster_role_exists(desired["roleRef"]["name"]):
        return cluster_role_missing_problem(owner.name)
    return None


def sync_quota(api: Api, obj: Obj, owner: Owner, hard: dict[str, str]) -> Obj | None:
    """Make the account's ResourceQuota say `hard` (or not exist); return it as it is now."""
    existing = api.get_resource_quota(owner.name, QUOTA_NAME)
    if not hard:
        if existing is not None and is_graft_account_object(existing, owner.name):
            api.delete_resource_quota(owner.name, QUOTA_NAME, existing["metadata"]["uid"])
            api.event(obj, "Normal", "QuotaRemoved", f"removed ResourceQuota {QUOTA_NAME}")
        return None
    desired = resource_quota(owner, hard)
    if quota_in_sync(existing, desired):
        return existing
    applied = api.apply(desired)
    verb = "set" if existing is None else "updated"
    api.event(
        obj, "Normal", "QuotaApplied", f"{verb} ResourceQuota {QUOTA_NAME}: {describe_hard(hard)}"
    )
    return applied


def report(
    api: Api,
    obj: Obj,
    *,
    owner: Owner,
    hard: dict[str, str],
    quota: Obj | None,
    problem: AccountProblem | None,
) -> None:
    """Write status (only if it changed) and an Event when Ready changes."""
    status = account_status(
        owner=owner,
        namespace=owner.name,
        hard=hard,
        quota=quota,
        problem=problem,
        previous=conditions_of(obj),
        now=now_rfc3339(),
    )
    publish(api, obj, PLURAL, status, warning=problem is not None, quiet=QUIET)


def finalize(api: Api, name: str) -> str | None:
    """Deleting an Account: None when it may go, else why not yet (looked at again when
    something in its namespace goes).

    It may go at once when its namespace is not its own (missing, foreign, already terminating).
    Otherwise the namespace must hold no Graft resources, unless deletionPolicy is Delete; then
    the namespace is deleted (the namespace controller removes everything in it) and the Account
    goes, as `kubectl delete namespace` does, without waiting for the content to be gone.
    """
    obj = api.get_graft_cluster(PLURAL, name)
    if obj is None:
        return None
    owner = Owner.of(obj)
    spec = AccountSpec.model_validate(obj.get("spec") or {})
    namespace = api.get_namespace(name)
    if namespace_state(namespace, name, owner.uid) != NamespaceState.OWNED:
        return None  # nothing of this Account's left to delete; a foreign namespace is left alone
    assert namespace is not None
    if spec.deletion_policy == DeletionPolicy.REFUSE:
        found: dict[str, list[str]] = {
            plural: api.list_graft_names(plural, name) for plural in ACCOUNT_PLURALS
        }
        blocked = deletion_blocked(name, found)
        if blocked is not None:
            hard = quota_hard(spec.quota)
            quota = api.get_resource_quota(name, QUOTA_NAME) if hard else None
            report(api, obj, owner=owner, hard=hard, quota=quota, problem=blocked)
            return blocked.message
    if api.delete_namespace(name, namespace["metadata"]["uid"]):
        log.info("deleting namespace %s of deleted Account %s", name, name)
        api.event(
            obj, "Normal", "NamespaceDeleted", f"deleting namespace {name} and everything in it"
        )
    return None
