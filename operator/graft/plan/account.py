"""An Account's Namespace, ResourceQuota, NetworkPolicy, the operator's RoleBinding, status and
deletion guard (pure).

An Account owns the namespace named after its ID, but only one it created itself: a namespace
that already exists is never adopted, changed or deleted. The account's quota is a ResourceQuota
in that namespace, so the API server enforces it at admission.

The operator holds no cluster-wide right to read or delete Secrets. In each namespace its Account
created, the Account binds ClusterRole graft-operator-account-secrets to the operator's own
ServiceAccount (RoleBinding graft-operator-secrets), which is what lets the ApiKey reconciler read
a key's Secret back there, and nowhere else. The operator may make that binding because its
ClusterRole has `bind` on that one ClusterRole, not because it holds the rights itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from graft.api.common import Condition
from graft.api.kinds import Plural
from graft.api.tenancy import NVIDIA_GPU, AccountQuota, AccountStatus, QuotaUsage
from graft.core import keys
from graft.core.conditions import set_condition
from graft.core.names import account_full_name
from graft.core.objects import Obj, Owner, is_terminating, labels, labels_of, owned_by
from graft.core.quantities import same_quantities
from graft.plan.podsecurity import namespace_labels

QUOTA_NAME = "graft-quota"
"""The one ResourceQuota an Account owns in its namespace."""

# Object-count quotas, by AccountQuota field: the ResourceQuota key counts objects of the kind.
COUNTED_KINDS: tuple[tuple[str, Plural], ...] = (
    ("deployments", Plural.DEPLOYMENTS),
    ("deployed_models", Plural.DEPLOYED_MODELS),
    ("fine_tuning_jobs", Plural.FINE_TUNING_JOBS),
    ("datasets", Plural.DATASETS),
    ("models", Plural.MODELS),
)

# --- The account's Namespace --------------------------------------------------------------------


class NamespaceState(StrEnum):
    MISSING = "Missing"
    OWNED = "Owned"  # created by this Account
    TERMINATING = "Terminating"  # ours (or an earlier Account's of this name), going away
    FOREIGN = "Foreign"  # exists and was not created by this Account


def namespace_state(namespace: Obj | None, account: str, uid: str) -> NamespaceState:
    if namespace is None:
        return NamespaceState.MISSING
    ours = owned_by(namespace, uid)
    graft_account = is_graft_account_object(namespace, account)
    if namespace["metadata"].get("deletionTimestamp") and (ours or graft_account):
        return NamespaceState.TERMINATING
    return NamespaceState.OWNED if ours else NamespaceState.FOREIGN


def is_graft_account_object(obj: Obj, account: str) -> bool:
    """Made by Graft for this account (a namespace or ResourceQuota someone else made is left
    alone)."""
    found = labels_of(obj)
    return (
        found.get(keys.MANAGED_BY) == keys.MANAGED_BY_VALUE and found.get(keys.ACCOUNT) == account
    )


def account_namespace(owner: Owner) -> Obj:
    """The namespace of an account: named after the account, owned by it."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": owner.name,
            "labels": {**labels(keys.ACCOUNT_NAMESPACE, owner), **namespace_labels()},
            "ownerReferences": [owner.reference()],
        },
    }


def missing_namespace_labels(namespace: Obj) -> dict[str, str]:
    """The Pod Security labels an account namespace lacks (one made by an older Graft, or whose
    labels someone changed): the operator puts them back."""
    found = labels_of(namespace)
    return {k: v for k, v in namespace_labels().items() if found.get(k) != v}


# --- The account's NetworkPolicy ----------------------------------------------------------------

NETWORK_POLICY_NAME = "graft-model-servers"


def network_policy(owner: Owner, operator_namespace: str) -> Obj:
    """Model-server pods accept traffic from their own namespace and from Graft's operator and
    gateway pods, nothing else (enforced where the cluster's network plugin enforces policies)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": owner.name,
            "labels": labels(keys.ACCOUNT_NETWORK_POLICY, owner),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "podSelector": {"matchLabels": {keys.COMPONENT: keys.MODEL_SERVER}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {}}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
                            },
                            "podSelector": {
                                "matchExpressions": [
                                    {
                                        "key": keys.COMPONENT,
                                        "operator": "In",
                                        "values": [
                                            keys.OPERATOR_COMPONENT,
                                            keys.GATEWAY_COMPONENT,
                                        ],
                                    }
                                ]
                            },
                        }
                    ]
                },
            ],
        },
    }


def network_policy_in_sync(existing: Obj | None, desired: Obj) -> bool:
    if existing is None:
        return False
    found = labels_of(existing)
    if any(found.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return False
    return bool(existing.get("spec") == desired["spec"])


# --- The operator's access to the account's Secrets ---------------------------------------------

SECRETS_BINDING_NAME = "graft-operator-secrets"
"""The RoleBinding in an account's namespace that grants the operator
keys.ACCOUNT_SECRETS_CLUSTER_ROLE there."""


def operator_subject(service_account: str, namespace: str) -> Obj:
    """The operator's own ServiceAccount as an RBAC subject."""
    return {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}


def secrets_binding(owner: Owner, service_account: str, operator_namespace: str) -> Obj:
    """Bind the operator's Secret rights (get, delete) to its ServiceAccount in the account's
    namespace only; owned by the Account (and gone with the namespace anyway)."""
    return {
        "apiVersion": f"{keys.RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": SECRETS_BINDING_NAME,
            "namespace": owner.name,
            "labels": labels(keys.ACCOUNT_SECRETS_BINDING, owner),
            "ownerReferences": [owner.reference()],
        },
        "roleRef": {
            "apiGroup": keys.RBAC_GROUP,
            "kind": "ClusterRole",
            "name": keys.ACCOUNT_SECRETS_CLUSTER_ROLE,
        },
        "subjects": [operator_subject(service_account, operator_namespace)],
    }


def _subjects(binding: Obj) -> list[Obj]:
    """A RoleBinding's subjects as `operator_subject` writes them (the API server may add an
    empty apiGroup)."""
    return [
        {k: s.get(k) for k in ("kind", "name", "namespace")} for s in binding.get("subjects") or []
    ]


def secrets_binding_in_sync(existing: Obj | None, desired: Obj) -> bool:
    """The existing RoleBinding is the desired one: same role, subject, labels and owner. Any
    other RoleBinding of that name in the account's namespace is replaced (it is Graft's name in
    a namespace Graft created; account users cannot make RoleBindings)."""
    if existing is None or is_terminating(existing):
        return False
    found = labels_of(existing)
    if any(found.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return False
    if not owned_by(existing, desired["metadata"]["ownerReferences"][0]["uid"]):
        return False
    return bool(
        existing.get("roleRef") == desired["roleRef"] and _subjects(existing) == desired["subjects"]
    )


def grants_secrets(binding: Obj | None, service_account: str, operator_namespace: str) -> bool:
    """Whether this RoleBinding (the account's SECRETS_BINDING_NAME) gives the operator its
    Secret rights in the namespace: it exists, is not going, and binds that ClusterRole to the
    operator's ServiceAccount."""
    if binding is None or is_terminating(binding):
        return False
    role = binding.get("roleRef") or {}
    return (
        role.get("kind") == "ClusterRole"
        and role.get("name") == keys.ACCOUNT_SECRETS_CLUSTER_ROLE
        and operator_subject(service_account, operator_namespace) in _subjects(binding)
    )


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


def resource_quota(owner: Owner, hard: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": owner.name,
            "labels": labels(keys.ACCOUNT_QUOTA, owner),
            "ownerReferences": [owner.reference()],
        },
        "spec": {"hard": hard},
    }


def quota_in_sync(existing: Obj | None, desired: Obj) -> bool:
    """The existing ResourceQuota already is the desired one (limits, labels, owner)."""
    if existing is None:
        return False
    found = labels_of(existing)
    if any(found.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return False
    if not owned_by(existing, desired["metadata"]["ownerReferences"][0]["uid"]):
        return False
    hard = (existing.get("spec") or {}).get("hard") or {}
    return same_quantities(hard, desired["spec"]["hard"])


def quota_enforced(existing: Obj | None, hard: dict[str, str]) -> bool:
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


def quota_usage(hard: dict[str, str], existing: Obj | None) -> list[QuotaUsage]:
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


def cluster_role_missing_problem(namespace: str) -> AccountProblem:
    role = keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    return AccountProblem(
        "ClusterRoleMissing",
        f"ClusterRole {role} does not exist, so RoleBinding {SECRETS_BINDING_NAME} in namespace "
        f"{namespace} lets the operator read no Secret there and the account's ApiKeys wait: "
        "install Graft's RBAC (helm upgrade, or kubectl apply -f deploy/graft.yaml)",
        "Waiting",
    )


def secrets_binding_refused_problem(namespace: str, message: str) -> AccountProblem:
    role = keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    return AccountProblem(
        "SecretsBindingRefused",
        f"the API server refused RoleBinding {SECRETS_BINDING_NAME} in namespace {namespace} "
        f"({message}); the account's ApiKeys wait until it exists: the operator's ClusterRole "
        f"needs `bind` on ClusterRole {role} (install Graft's RBAC from the same release as the "
        "operator)",
        "Waiting",
    )


def quota_problem(hard: dict[str, str], existing: Obj | None) -> AccountProblem | None:
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
    quota: Obj | None,
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


def remaining_resources(found: Mapping[str, list[str]], per_kind: int = 5) -> str:
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


def deletion_blocked(namespace: str, found: Mapping[str, list[str]]) -> AccountProblem | None:
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
