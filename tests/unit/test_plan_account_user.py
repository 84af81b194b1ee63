"""Accounts and Users, pure: namespace ownership, the quota, the deletion guard, RoleBindings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from graft.api.common import ConditionStatus
from graft.api.tenancy import AccountQuota, AccountSpec, Role, UserSpec
from graft.core import keys
from graft.core.objects import Owner
from graft.plan.account import (
    QUOTA_NAME,
    SECRETS_BINDING_NAME,
    NamespaceState,
    account_namespace,
    account_status,
    cluster_role_missing_problem,
    deletion_blocked,
    grants_secrets,
    namespace_problem,
    namespace_state,
    quota_enforced,
    quota_hard,
    quota_in_sync,
    quota_problem,
    quota_usage,
    remaining_resources,
    resource_quota,
    secrets_binding,
    secrets_binding_in_sync,
    secrets_binding_refused_problem,
)
from graft.plan.user import (
    BindingAction,
    account_problem,
    binding_action,
    binding_name,
    role_binding,
    user_status,
)

ACCOUNT = Owner(kind="Account", name="acme", uid="uid-acme", generation=3)
USER = Owner(kind="User", name="alice", uid="uid-alice", generation=1, namespace="acme")


def quota(**fields: Any) -> AccountQuota:
    return AccountQuota.model_validate(fields)


def namespace(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "acme", **meta}}


# --- The namespace ------------------------------------------------------------------------------


def test_namespace_is_owned_by_the_account_and_labelled() -> None:
    ns = account_namespace(ACCOUNT)
    assert ns["metadata"]["name"] == "acme"
    assert ns["metadata"]["labels"][keys.MANAGED_BY] == "graft"
    assert ns["metadata"]["labels"][keys.ACCOUNT] == "acme"
    (ref,) = ns["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["apiVersion"]) == (
        "Account",
        "uid-acme",
        "graft.dev/v1alpha1",
    )


def test_namespace_states() -> None:
    ours = account_namespace(ACCOUNT)
    assert namespace_state(None, "acme", "uid-acme") == NamespaceState.MISSING
    assert namespace_state(ours, "acme", "uid-acme") == NamespaceState.OWNED
    # Someone's namespace of the same name, even one that carries Graft's labels, is not ours.
    assert namespace_state(namespace(), "acme", "uid-acme") == NamespaceState.FOREIGN
    assert namespace_state(ours, "acme", "another-uid") == NamespaceState.FOREIGN
    terminating = {**ours, "metadata": {**ours["metadata"], "deletionTimestamp": "now"}}
    assert namespace_state(terminating, "acme", "uid-acme") == NamespaceState.TERMINATING
    # An earlier Account of the same name left its namespace terminating: wait for it.
    assert namespace_state(terminating, "acme", "new-uid") == NamespaceState.TERMINATING
    foreign_going = namespace(deletionTimestamp="now")
    assert namespace_state(foreign_going, "acme", "uid-acme") == NamespaceState.FOREIGN


def test_namespace_conflict_says_what_to_do() -> None:
    problem = namespace_problem(NamespaceState.FOREIGN, "acme")
    assert problem is not None
    assert problem.reason == "NamespaceConflict"
    assert "never adopts" in problem.message
    assert "choose another account ID" in problem.message
    assert namespace_problem(NamespaceState.OWNED, "acme") is None


# --- The operator's access to the account's Secrets ---------------------------------------------

OPERATOR_SA = {"kind": "ServiceAccount", "name": "graft-operator", "namespace": "graft-system"}


def test_secrets_binding_binds_the_secrets_role_to_the_operator_in_the_account_only() -> None:
    binding = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    meta = binding["metadata"]
    assert (binding["kind"], meta["name"], meta["namespace"]) == (
        "RoleBinding",
        SECRETS_BINDING_NAME,
        "acme",
    )
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": keys.ACCOUNT_SECRETS_CLUSTER_ROLE,
    }
    assert binding["subjects"] == [OPERATOR_SA]
    assert meta["labels"][keys.COMPONENT] == keys.ACCOUNT_SECRETS_BINDING
    assert meta["labels"][keys.ACCOUNT] == "acme"
    (ref,) = meta["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("Account", "uid-acme", True)
    # The chart's ServiceAccount of another release, in another namespace.
    other = secrets_binding(ACCOUNT, "acme-graft-operator", "platform")
    assert other["subjects"] == [
        {"kind": "ServiceAccount", "name": "acme-graft-operator", "namespace": "platform"}
    ]


def test_secrets_binding_in_sync_compares_role_subject_labels_and_owner() -> None:
    desired = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    assert not secrets_binding_in_sync(None, desired)
    # As the API server returns it: an empty apiGroup on the ServiceAccount subject.
    served = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    served["subjects"] = [{**OPERATOR_SA, "apiGroup": ""}]
    served["metadata"]["uid"] = "uid-binding"
    assert secrets_binding_in_sync(served, desired)
    assert not secrets_binding_in_sync(
        secrets_binding(ACCOUNT, "someone-else", "graft-system"), desired
    )
    earlier = Owner(kind="Account", name="acme", uid="uid-earlier", generation=1)
    assert not secrets_binding_in_sync(
        secrets_binding(earlier, "graft-operator", "graft-system"), desired
    )
    unlabelled = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    unlabelled["metadata"]["labels"] = {}
    assert not secrets_binding_in_sync(unlabelled, desired)
    to_admin = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    to_admin["roleRef"]["name"] = "cluster-admin"
    assert not secrets_binding_in_sync(to_admin, desired)
    going = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    going["metadata"]["deletionTimestamp"] = "now"
    assert not secrets_binding_in_sync(going, desired)


def test_grants_secrets_is_whether_the_operator_may_read_the_accounts_secrets() -> None:
    binding = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    assert grants_secrets(binding, "graft-operator", "graft-system")
    assert not grants_secrets(None, "graft-operator", "graft-system")
    assert not grants_secrets(binding, "acme-graft-operator", "graft-system")
    assert not grants_secrets(binding, "graft-operator", "platform")
    other_role = {**binding, "roleRef": {**binding["roleRef"], "name": "graft-viewer"}}
    assert not grants_secrets(other_role, "graft-operator", "graft-system")
    going = {**binding, "metadata": {**binding["metadata"], "deletionTimestamp": "now"}}
    assert not grants_secrets(going, "graft-operator", "graft-system")


def test_secret_access_problems_are_waits_that_say_what_to_do() -> None:
    missing = cluster_role_missing_problem("acme")
    assert (missing.reason, missing.state) == ("ClusterRoleMissing", "Waiting")
    assert keys.ACCOUNT_SECRETS_CLUSTER_ROLE in missing.message
    assert "install Graft's RBAC" in missing.message
    refused = secrets_binding_refused_problem("acme", "cannot bind")
    assert (refused.reason, refused.state) == ("SecretsBindingRefused", "Waiting")
    assert "cannot bind" in refused.message
    assert "`bind`" in refused.message
    status = account_status(
        owner=ACCOUNT, namespace="acme", hard={}, quota=None, problem=missing, previous=[], now="T"
    )
    wire = status.wire()
    assert wire["state"] == "Waiting"
    assert wire["namespace"] == "acme"  # the namespace is the account's all the same
    assert wire["conditions"][0]["reason"] == "ClusterRoleMissing"


# --- The quota ----------------------------------------------------------------------------------


def test_quota_hard_maps_every_field() -> None:
    hard = quota_hard(
        quota(
            gpus=4,
            accelerators=[{"resource": "amd.com/gpu", "count": 2}],
            cpu="500m",
            memory="64Gi",
            deployments=1,
            deployedModels=10,
            fineTuningJobs=2,
            datasets=20,
            models=30,
        )
    )
    assert hard == {
        "count/datasets.graft.dev": "20",
        "count/deployedmodels.graft.dev": "10",
        "count/deployments.graft.dev": "1",
        "count/finetuningjobs.graft.dev": "2",
        "count/models.graft.dev": "30",
        "requests.amd.com/gpu": "2",
        "requests.cpu": "500m",
        "requests.memory": "64Gi",
        "requests.nvidia.com/gpu": "4",
    }
    assert list(hard) == sorted(hard)


def test_no_quota_means_no_resource_quota() -> None:
    assert quota_hard(None) == {}
    assert quota_hard(quota()) == {}
    assert quota_hard(AccountSpec.model_validate({}).quota) == {}
    assert quota_hard(quota(gpus=0)) == {"requests.nvidia.com/gpu": "0"}


def test_resource_quota_shape() -> None:
    rq = resource_quota(ACCOUNT, {"requests.nvidia.com/gpu": "1"})
    assert rq["metadata"]["name"] == QUOTA_NAME
    assert rq["metadata"]["namespace"] == "acme"
    assert rq["metadata"]["labels"][keys.COMPONENT] == keys.ACCOUNT_QUOTA
    assert rq["metadata"]["ownerReferences"][0]["uid"] == "uid-acme"
    assert rq["spec"] == {"hard": {"requests.nvidia.com/gpu": "1"}}


def test_quota_in_sync_compares_values_labels_and_owner() -> None:
    desired = resource_quota(ACCOUNT, {"requests.cpu": "1", "requests.memory": "1Gi"})
    existing = resource_quota(ACCOUNT, {"requests.cpu": "1000m", "requests.memory": "1024Mi"})
    assert quota_in_sync(existing, desired)
    assert not quota_in_sync(None, desired)
    assert not quota_in_sync(resource_quota(ACCOUNT, {"requests.cpu": "2"}), desired)
    stray = resource_quota(ACCOUNT, {"requests.cpu": "1", "requests.memory": "1Gi"})
    stray["metadata"]["labels"] = {}
    assert not quota_in_sync(stray, desired)
    other = resource_quota(
        Owner(kind="Account", name="acme", uid="old", generation=1), desired["spec"]["hard"]
    )
    assert not quota_in_sync(other, desired)


def with_status(rq: dict[str, Any], hard: dict[str, str], used: dict[str, str]) -> dict[str, Any]:
    return {**rq, "status": {"hard": hard, "used": used}}


def test_quota_is_enforced_once_the_api_server_counted_it() -> None:
    hard = {"count/deployments.graft.dev": "1", "requests.cpu": "2"}
    rq = resource_quota(ACCOUNT, hard)
    assert not quota_enforced(None, hard)
    assert not quota_enforced(rq, hard)  # no status yet
    assert not quota_enforced(with_status(rq, {"requests.cpu": "2"}, {"requests.cpu": "0"}), hard)
    stale = with_status(
        rq, {"count/deployments.graft.dev": "1", "requests.cpu": "1"}, dict.fromkeys(hard, "0")
    )
    assert not quota_enforced(stale, hard)
    uncounted = with_status(rq, {**hard, "requests.cpu": "2000m"}, {"requests.cpu": "0"})
    assert not quota_enforced(uncounted, hard)
    counted = with_status(rq, {**hard, "requests.cpu": "2000m"}, dict.fromkeys(hard, "0"))
    assert quota_enforced(counted, hard)
    assert quota_problem(hard, counted) is None
    pending = quota_problem(hard, rq)
    assert pending is not None
    assert pending.reason == "QuotaPending"


def test_quota_usage_lists_limits_with_usage() -> None:
    hard = {"count/deployments.graft.dev": "1", "requests.nvidia.com/gpu": "2"}
    rq = with_status(resource_quota(ACCOUNT, hard), hard, {"requests.nvidia.com/gpu": "1"})
    usage = [u.wire() for u in quota_usage(hard, rq)]
    assert usage == [
        {"resource": "count/deployments.graft.dev", "hard": "1"},
        {"resource": "requests.nvidia.com/gpu", "hard": "2", "used": "1"},
    ]


# --- Account status and the deletion guard ------------------------------------------------------


def test_ready_account_status() -> None:
    hard = {"requests.nvidia.com/gpu": "2"}
    rq = with_status(resource_quota(ACCOUNT, hard), hard, {"requests.nvidia.com/gpu": "0"})
    status = account_status(
        owner=ACCOUNT, namespace="acme", hard=hard, quota=rq, problem=None, previous=[], now="T1"
    )
    wire = status.wire()
    assert wire["name"] == "accounts/acme"
    assert wire["namespace"] == "acme"
    assert wire["state"] == "Ready"
    assert wire["observedGeneration"] == 3
    (ready,) = status.conditions
    assert (ready.type, ready.status, ready.reason) == (
        "Ready",
        ConditionStatus.TRUE,
        "Provisioned",
    )
    assert "requests.nvidia.com/gpu=2" in ready.message
    assert wire["quota"] == [{"resource": "requests.nvidia.com/gpu", "hard": "2", "used": "0"}]
    again = account_status(
        owner=ACCOUNT,
        namespace="acme",
        hard=hard,
        quota=rq,
        problem=None,
        previous=status.conditions,
        now="T2",
    )
    assert again.wire() == wire  # nothing changed: nothing to write


def test_conflicting_account_claims_no_namespace() -> None:
    status = account_status(
        owner=ACCOUNT,
        namespace="acme",
        hard={"requests.cpu": "1"},
        quota=None,
        problem=namespace_problem(NamespaceState.FOREIGN, "acme"),
        previous=[],
        now="T1",
    )
    wire = status.wire()
    assert wire["state"] == "Failed"
    assert "namespace" not in wire
    assert "quota" not in wire
    assert wire["conditions"][0]["reason"] == "NamespaceConflict"


def test_deletion_guard_lists_what_is_left() -> None:
    assert deletion_blocked("acme", {"models": [], "users": []}) is None
    found = {"models": ["base", "addon"], "users": ["alice"], "deployments": []}
    problem = deletion_blocked("acme", found)
    assert problem is not None
    assert problem.reason == "DeletionBlocked"
    assert "models: addon, base; users: alice" in problem.message
    assert "spec.deletionPolicy: Delete" in problem.message


def test_remaining_resources_stays_short() -> None:
    names = [f"m{i}" for i in range(8)]
    assert remaining_resources({"models": names}) == "models: m0, m1, m2, m3, m4 and 3 more"


# --- Users --------------------------------------------------------------------------------------


def test_user_spec_validates_the_email() -> None:
    UserSpec.model_validate({"email": "alice@example.com", "role": "member"})
    for bad in ("alice", "alice@example", "a b@example.com", "@example.com"):
        with pytest.raises(ValidationError, match="email address"):
            UserSpec.model_validate({"email": bad, "role": "member"})
    with pytest.raises(ValidationError):
        UserSpec.model_validate({"email": "alice@example.com", "role": "owner"})


@pytest.mark.parametrize(
    ("role", "cluster_role"),
    [("admin", "graft-admin"), ("member", "graft-member"), ("viewer", "graft-viewer")],
)
def test_role_binding_binds_the_email_to_the_role(role: str, cluster_role: str) -> None:
    rb = role_binding(USER, "alice@example.com", role)
    assert rb["metadata"]["name"] == binding_name("alice") == "graft-user-alice"
    assert rb["metadata"]["namespace"] == "acme"
    assert rb["metadata"]["labels"][keys.USER] == "alice"
    assert rb["metadata"]["ownerReferences"][0]["uid"] == "uid-alice"
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": cluster_role,
    }
    assert rb["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}
    ]


def test_binding_actions() -> None:
    desired = role_binding(USER, "alice@example.com", Role.MEMBER)
    assert binding_action(None, desired) == BindingAction.CREATE
    # As the API server returns it: with defaults and metadata of its own.
    existing = role_binding(USER, "alice@example.com", Role.MEMBER)
    existing["metadata"]["uid"] = "rb-uid"
    existing["metadata"]["labels"]["extra"] = "kept"
    assert binding_action(existing, desired) == BindingAction.NONE
    promoted = role_binding(USER, "alice@example.com", Role.ADMIN)
    assert binding_action(existing, promoted) == BindingAction.REPLACE
    renamed = role_binding(USER, "alice@corp.example.com", Role.MEMBER)
    assert binding_action(existing, renamed) == BindingAction.REPLACE
    recreated = role_binding(
        Owner(kind="User", name="alice", uid="new-uid", generation=1, namespace="acme"),
        "alice@example.com",
        Role.MEMBER,
    )
    assert binding_action(existing, recreated) == BindingAction.REPLACE
    foreign = {"metadata": {"name": "graft-user-alice", "labels": {}}, "roleRef": {}}
    assert binding_action(foreign, desired) == BindingAction.CONFLICT
    for_bob = role_binding(
        Owner(kind="User", name="bob", uid="uid-bob", generation=1, namespace="acme"),
        "bob@example.com",
        Role.MEMBER,
    )
    assert binding_action(for_bob, desired) == BindingAction.CONFLICT


def test_users_grant_access_only_in_their_accounts_namespace() -> None:
    acct = {"metadata": {"name": "acme", "uid": "uid-acme"}}
    ours = account_namespace(ACCOUNT)
    assert account_problem("acme", acct, ours) is None
    missing = account_problem("acme", None, ours)
    assert missing is not None
    assert missing.reason == "AccountNotFound"
    foreign = account_problem("acme", acct, namespace())
    assert foreign is not None
    assert foreign.reason == "AccountNotReady"


def test_user_status() -> None:
    status = user_status(
        owner=USER,
        full_name="accounts/acme/users/alice",
        email="alice@example.com",
        role="admin",
        problem=None,
        previous=[],
        now="T1",
    ).wire()
    assert status["name"] == "accounts/acme/users/alice"
    assert status["clusterRole"] == "graft-admin"
    assert status["roleBinding"] == "graft-user-alice"
    assert status["state"] == "Ready"
    assert status["conditions"][0]["reason"] == "Bound"
    assert "alice@example.com is admin in account acme" in status["conditions"][0]["message"]
