"""Graft's RBAC, the one source of truth: the operator's ClusterRole, the ClusterRole of its
rights on Secrets (bound only in account namespaces), the three ClusterRoles Users are bound to,
the operator's ServiceAccount and ClusterRoleBinding, and the gateway's own ServiceAccount,
ClusterRole and Role (pure).

`graft chart` writes them into the Helm chart (deploy/charts/graft/templates/rbac.yaml, with the
ServiceAccount's name and namespace templated), `graft manifests` renders deploy/graft.yaml from
that chart, and `make verify` fails when either drifts from this module. Every rule says why it exists; no rule
uses `*`. To give a reconciler a new permission, add a Rule to OPERATOR_RULES (the integration
tests run the operator under exactly these rules, so a missing one fails them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from graft.api.kinds import ACCOUNT_PLURALS, ALL_KINDS, Plural
from graft.api.tenancy import Role
from graft.core import keys
from graft.core.names import cluster_role_name
from graft.core.objects import INSTALLED_LABELS
from graft.core.settings import DEFAULT_OPERATOR_NAMESPACE, DEFAULT_OPERATOR_SERVICE_ACCOUNT

RBAC_API_VERSION = f"{keys.RBAC_GROUP}/v1"
CORE = ""

OPERATOR_NAMESPACE = DEFAULT_OPERATOR_NAMESPACE
OPERATOR_NAME = DEFAULT_OPERATOR_SERVICE_ACCOUNT
"""The operator's ServiceAccount for release graft in graft-system, which `graft run` assumes
when GRAFT_OPERATOR_NAMESPACE and GRAFT_OPERATOR_SERVICE_ACCOUNT are unset; also the fixed name
of its ClusterRole."""
SERVICE_ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_NAME}"

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete", "deletecollection")

GRAFT_KINDS = tuple(str(k.plural) for k in ALL_KINDS)
ACCOUNT_KINDS = tuple(str(p) for p in ACCOUNT_PLURALS)
"""The kinds that live in an account's namespace (all but Account)."""
OWNER_KINDS = tuple(
    str(p)
    for p in (
        Plural.ACCOUNTS,
        Plural.USERS,
        Plural.API_KEYS,
        Plural.DEPLOYMENTS,
        Plural.DATASETS,
        Plural.MODELS,
        Plural.FINE_TUNING_JOBS,
    )
)
"""Graft kinds whose objects own children (namespace, RoleBinding, ApiKeys and their Secrets,
pods, Jobs, Models)."""


@dataclass(frozen=True)
class Rule:
    """One PolicyRule, with the reason it exists."""

    why: str
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    def manifest(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "apiGroups": list(self.api_groups),
            "resources": [str(r) for r in self.resources],  # plain strings, for YAML
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            rule["resourceNames"] = list(self.resource_names)
        return rule


@dataclass(frozen=True)
class ClusterRole:
    name: str
    description: str
    rules: tuple[Rule, ...]

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": RBAC_API_VERSION,
            "kind": "ClusterRole",
            "metadata": {"name": self.name, "labels": dict(INSTALLED_LABELS)},
            "rules": [r.manifest() for r in self.rules],
        }


USER_CLUSTER_ROLES = tuple(cluster_role_name(r) for r in Role)


# --- The operator -------------------------------------------------------------------------------

OPERATOR_RULES: tuple[Rule, ...] = (
    Rule(
        "kopf: discover Graft's kinds from the CRDs and notice when they are installed or upgraded.",
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
    ),
    # Graft's own kinds.
    Rule(
        "All reconcilers: watch every Graft kind; patch them for kopf's finalizer and annotations.",
        (keys.GROUP,),
        GRAFT_KINDS,
        ("get", "list", "watch", "patch"),
    ),
    Rule(
        "All reconcilers: write the status they observed.",
        (keys.GROUP,),
        tuple(f"{p}/status" for p in GRAFT_KINDS),
        ("get", "patch"),
    ),
    Rule(
        "Owners: blockOwnerDeletion on children needs it where OwnerReferencesPermissionEnforcement is on.",
        (keys.GROUP,),
        tuple(f"{p}/finalizers" for p in OWNER_KINDS),
        ("update",),
    ),
    Rule(
        "FineTuningJob: publish the trained addon as a Model, and a DeployedModel when asked.",
        (keys.GROUP,),
        (Plural.MODELS, Plural.DEPLOYED_MODELS),
        ("create",),
    ),
    # Deployment.
    Rule(
        "Deployment: create, replace and delete model-server pods; watch them for readiness. "
        "Autoscaler: list the gateway pods (in the operator's namespace) to scrape their metrics.",
        (CORE,),
        ("pods",),
        ("get", "list", "watch", "create", "delete"),
    ),
    Rule(
        "Autoscaler: set the replicas of Deployments with spec.autoscaling through /scale (as "
        "kubectl scale, an HPA or KEDA would).",
        (keys.GROUP,),
        (f"{Plural.DEPLOYMENTS}/scale",),
        ("patch",),
    ),
    Rule(
        "Deployment: the Service in front of its pods (server-side apply).",
        (CORE,),
        ("services",),
        ("get", "create", "patch"),
    ),
    Rule(
        "Deployment, ApiKey: create the Secret a Deployment's model servers read their API key "
        "from (the operator derives it), and the Secret that holds an ApiKey's key. Create only, "
        "in any namespace (a Deployment needs no Account): it reads, changes or deletes no "
        "Secret. get and delete come from ClusterRole graft-operator-account-secrets, which "
        "only an Account binds, in its own namespace.",
        (CORE,),
        ("secrets",),
        ("create",),
    ),
    Rule(
        "All reconcilers: Events for the transitions a person wants to see.",
        (CORE,),
        ("events",),
        ("create",),
    ),
    # Account and User.
    Rule(
        "Account: create the account's namespace (Pod Security restricted), restore its Pod "
        "Security labels, watched (Graft's own, by label) so that a change is undone at once; "
        "delete it when the Account is deleted. kopf, under `graft run --namespace`: list and "
        "watch namespaces to know which of them exist.",
        (CORE,),
        ("namespaces",),
        ("get", "list", "watch", "create", "patch", "delete"),
    ),
    Rule(
        "Account: the NetworkPolicy that lets only the account, the operator and the gateway "
        "reach its model servers (server-side apply), watched (Graft's own, by label) so that "
        "a change is undone at once.",
        ("networking.k8s.io",),
        ("networkpolicies",),
        ("get", "list", "watch", "create", "patch"),
    ),
    Rule(
        "Account: the account's ResourceQuota (server-side apply), watched for usage.",
        (CORE,),
        ("resourcequotas",),
        ("get", "list", "watch", "create", "patch", "delete"),
    ),
    Rule(
        "Account, User, ApiKey: one RoleBinding per Account (the operator's Secrets there), per "
        "User (to its role) and per ApiKey (to its Role), replaced (delete + create) when it "
        "changes, watched so that a changed or deleted one is put back.",
        (keys.RBAC_GROUP,),
        ("rolebindings",),
        ("get", "list", "watch", "create", "delete"),
    ),
    Rule(
        "ApiKey: one Role per key that lets its User get the key's one Secret, replaced "
        "(delete + create) when it changes.",
        (keys.RBAC_GROUP,),
        ("roles",),
        ("get", "create", "delete"),
    ),
    Rule(
        "User: bind only Graft's user roles (bind, instead of holding all their permissions).",
        (keys.RBAC_GROUP,),
        ("clusterroles",),
        ("get", "bind"),
        USER_CLUSTER_ROLES,
    ),
    Rule(
        "Account: bind graft-operator-account-secrets to the operator in the account's "
        "namespace (bind: the operator holds its rights only where an Account binds them).",
        (keys.RBAC_GROUP,),
        ("clusterroles",),
        ("get", "bind"),
        (keys.ACCOUNT_SECRETS_CLUSTER_ROLE,),
    ),
    # Dataset and FineTuningJob.
    Rule(
        "Dataset, FineTuningJob, Model: the validation, trainer and inspection Jobs, watched to "
        "completion; a Model's inspection Job is replaced when its source changes.",
        ("batch",),
        ("jobs",),
        ("get", "list", "watch", "create", "delete"),
    ),
    Rule(
        "Dataset: read the data of a configMap source.",
        (CORE,),
        ("configmaps",),
        ("get",),
    ),
    Rule(
        "Dataset, FineTuningJob: check that the claim of a pvc:// source exists.",
        (CORE,),
        ("persistentvolumeclaims",),
        ("get",),
    ),
)

OPERATOR_ROLE = ClusterRole(
    OPERATOR_NAME,
    "The operator: what every reconciler needs, nothing more.",
    OPERATOR_RULES,
)

ACCOUNT_SECRETS_ROLE = ClusterRole(
    keys.ACCOUNT_SECRETS_CLUSTER_ROLE,
    "The operator's rights on Secrets, bound to it by each Account's RoleBinding "
    "graft-operator-secrets in the account's namespace, and nowhere else.",
    (
        Rule(
            "ApiKey: read a key's Secret back by name (does it still hold the key status.keyHash "
            "names?); RBAC also refuses to create the Role that lets the key's User get it to "
            "anyone who cannot get it. Never list or watch: the operator cannot enumerate Secrets.",
            (CORE,),
            ("secrets",),
            ("get",),
        ),
        Rule(
            "ApiKey: delete a key's Secret that does not hold the key status.keyHash names, "
            "before a new key replaces it (by uid: only the Secret it read).",
            (CORE,),
            ("secrets",),
            ("delete",),
        ),
    ),
)


# --- The roles Users are bound to ---------------------------------------------------------------

_SEE_QUOTA = Rule(
    "See the account's quota and usage (kubectl describe quota).",
    (CORE,),
    ("resourcequotas",),
    READ,
)
_SCALE = Rule(
    "kubectl scale on Graft Deployments.",
    (keys.GROUP,),
    ("deployments/scale",),
    ("get", "update", "patch"),
)
_CONFIGMAPS = Rule(
    "Provide Dataset data as ConfigMaps in the account.",
    (CORE,),
    ("configmaps",),
    (*READ, *WRITE),
)

ADMIN_ROLE = ClusterRole(
    cluster_role_name(Role.ADMIN),
    "An account's admin: every Graft kind including Users, plus reading pods, logs and events.",
    (
        Rule(
            "Every Graft kind of the account, including its Users.",
            (keys.GROUP,),
            ACCOUNT_KINDS,
            (*READ, *WRITE),
        ),
        _SCALE,
        _CONFIGMAPS,
        _SEE_QUOTA,
        Rule(
            "Debug the account's workloads: its pods.",
            (CORE,),
            ("pods",),
            READ,
        ),
        Rule("Debug the account's workloads: pod logs.", (CORE,), ("pods/log",), ("get",)),
        Rule(
            "See what happened in the account.",
            (CORE, "events.k8s.io"),
            ("events",),
            READ,
        ),
    ),
)

MEMBER_ROLE = ClusterRole(
    cluster_role_name(Role.MEMBER),
    "An account's member: every Graft kind but Users, which it can only read.",
    (
        Rule(
            "Every Graft kind of the account except Users.",
            (keys.GROUP,),
            tuple(p for p in ACCOUNT_KINDS if p != Plural.USERS),
            (*READ, *WRITE),
        ),
        Rule(
            "See who else is in the account (as the hosted platform shows its members).",
            (keys.GROUP,),
            (Plural.USERS,),
            READ,
        ),
        _SCALE,
        _CONFIGMAPS,
        _SEE_QUOTA,
    ),
)

VIEWER_ROLE = ClusterRole(
    cluster_role_name(Role.VIEWER),
    "An account's viewer: reads every Graft kind of the account, changes nothing.",
    (
        Rule("Read every Graft kind of the account.", (keys.GROUP,), ACCOUNT_KINDS, READ),
        _SEE_QUOTA,
    ),
)

USER_ROLES: dict[str, ClusterRole] = {
    Role.ADMIN.value: ADMIN_ROLE,
    Role.MEMBER.value: MEMBER_ROLE,
    Role.VIEWER.value: VIEWER_ROLE,
}
CLUSTER_ROLES = (OPERATOR_ROLE, ACCOUNT_SECRETS_ROLE, ADMIN_ROLE, MEMBER_ROLE, VIEWER_ROLE)


# --- Manifests ----------------------------------------------------------------------------------


def service_account() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": OPERATOR_NAME,
            "namespace": OPERATOR_NAMESPACE,
            "labels": dict(INSTALLED_LABELS),
        },
    }


def cluster_role_binding() -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_NAME, "labels": dict(INSTALLED_LABELS)},
        "roleRef": {"apiGroup": keys.RBAC_GROUP, "kind": "ClusterRole", "name": OPERATOR_NAME},
        "subjects": [
            {"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE}
        ],
    }


# --- In the operator's own namespace ------------------------------------------------------------

SEED_SECRET = keys.SERVER_KEY_SEED_SECRET
LEASE_NAME = keys.LEADER_LEASE

OPERATOR_NAMESPACE_RULES: tuple[Rule, ...] = (
    Rule(
        "Model-server API keys: create the seed Secret they are derived from, at first start.",
        (CORE,),
        ("secrets",),
        ("create",),
    ),
    Rule(
        "Model-server API keys: read the seed Secret, and no other Secret of this namespace "
        "(the ClusterRole grants no get on Secrets).",
        (CORE,),
        ("secrets",),
        ("get",),
        (SEED_SECRET,),
    ),
    Rule(
        "Leader election: create the operator's Lease the first time.",
        ("coordination.k8s.io",),
        ("leases",),
        ("create",),
    ),
    Rule(
        "Leader election: hold and renew the operator's Lease, and no other.",
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "update"),
        (LEASE_NAME,),
    ),
)
OPERATOR_NAMESPACE_ROLE = ClusterRole(
    OPERATOR_NAME,
    "The operator, in its own namespace only.",
    OPERATOR_NAMESPACE_RULES,
)


def operator_namespace_role() -> dict[str, Any]:
    """A Role (not a ClusterRole): these rights hold in the operator's namespace only."""
    manifest = OPERATOR_NAMESPACE_ROLE.manifest()
    manifest["kind"] = "Role"
    manifest["metadata"]["namespace"] = OPERATOR_NAMESPACE
    return manifest


def operator_namespace_role_binding() -> dict[str, Any]:
    return {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": {
            "name": OPERATOR_NAME,
            "namespace": OPERATOR_NAMESPACE,
            "labels": dict(INSTALLED_LABELS),
        },
        "roleRef": {"apiGroup": keys.RBAC_GROUP, "kind": "Role", "name": OPERATOR_NAME},
        "subjects": [
            {"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE}
        ],
    }


# --- The gateway --------------------------------------------------------------------------------
# `graft gateway` (graft.gateway): a watch cache of the objects it authenticates and routes by,
# the model-server pods it proxies to, two writes (scale from zero, trainers' progress) and the
# key seed. Its own ServiceAccount, so the API's front door holds none of the operator's rights.

GATEWAY_NAME = "graft-gateway"
GATEWAY_KINDS = (
    str(Plural.ACCOUNTS),
    str(Plural.USERS),
    "apikeys",
    str(Plural.MODELS),
    str(Plural.DEPLOYMENTS),
    str(Plural.DEPLOYED_MODELS),
    str(Plural.FINE_TUNING_JOBS),
    str(Plural.DATASETS),
)
"""The Graft kinds the gateway's watch cache follows (graft.gateway.kube.GRAFT_KINDS); ApiKey by
its plural, a plain string, so the rule holds whether or not this tree defines the kind yet."""

GATEWAY_RULES: tuple[Rule, ...] = (
    Rule(
        "Watch cache: accounts, users and API keys authenticate a request; models, deployments "
        "and deployed models route it; fine-tuning jobs check a trainer's progress report; "
        "datasets are shown on the read-only dashboard (listed once, then watched).",
        (keys.GROUP,),
        GATEWAY_KINDS,
        READ,
    ),
    Rule(
        "Routing: the model-server pods behind each Deployment, listed and watched by label "
        "selector across account namespaces (the API server cannot narrow a right by label).",
        (CORE,),
        ("pods",),
        ("list", "watch"),
    ),
    Rule(
        "Scale from zero: a request for a Deployment at 0 replicas sets it to 1 (a JSON patch "
        "that tests the old value) through the scale subresource, nothing else of its spec.",
        (keys.GROUP,),
        ("deployments/scale",),
        ("patch",),
    ),
    Rule(
        "Live training progress: a trainer's report (checked against its per-job token) is "
        "merged into its FineTuningJob's status.progress, nothing else of the object.",
        (keys.GROUP,),
        ("finetuningjobs/status",),
        ("patch",),
    ),
    Rule(
        "Authenticate a ServiceAccount's bearer token.",
        ("authentication.k8s.io",),
        ("tokenreviews",),
        ("create",),
    ),
    Rule(
        "Authorize that ServiceAccount, as the API server would, before serving it.",
        ("authorization.k8s.io",),
        ("subjectaccessreviews",),
        ("create",),
    ),
)
GATEWAY_ROLE = ClusterRole(
    GATEWAY_NAME,
    "The gateway: read what it authenticates and routes by, scale a Deployment from zero, "
    "write trainers' progress.",
    GATEWAY_RULES,
)

GATEWAY_NAMESPACE_ROLE = ClusterRole(
    GATEWAY_NAME,
    "The gateway, in the operator's namespace only.",
    (
        Rule(
            "Model-server API keys: read the seed Secret the operator derives them from, and no "
            "other Secret (tenants' Secrets are never read).",
            (CORE,),
            ("secrets",),
            ("get",),
            (SEED_SECRET,),
        ),
    ),
)


def _gateway_subjects() -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": OPERATOR_NAMESPACE}]


def gateway_manifests() -> list[dict[str, Any]]:
    """The gateway's ServiceAccount, ClusterRole and Role, and their bindings, in the order to
    apply them (the chart renders them only with gateway.enabled)."""
    role = GATEWAY_NAMESPACE_ROLE.manifest()
    role["kind"] = "Role"
    role["metadata"]["namespace"] = OPERATOR_NAMESPACE
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": GATEWAY_NAME,
                "namespace": OPERATOR_NAMESPACE,
                "labels": dict(INSTALLED_LABELS),
            },
        },
        GATEWAY_ROLE.manifest(),
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": GATEWAY_NAME, "labels": dict(INSTALLED_LABELS)},
            "roleRef": {"apiGroup": keys.RBAC_GROUP, "kind": "ClusterRole", "name": GATEWAY_NAME},
            "subjects": _gateway_subjects(),
        },
        role,
        {
            "apiVersion": RBAC_API_VERSION,
            "kind": "RoleBinding",
            "metadata": {
                "name": GATEWAY_NAME,
                "namespace": OPERATOR_NAMESPACE,
                "labels": dict(INSTALLED_LABELS),
            },
            "roleRef": {"apiGroup": keys.RBAC_GROUP, "kind": "Role", "name": GATEWAY_NAME},
            "subjects": _gateway_subjects(),
        },
    ]


def manifests() -> list[dict[str, Any]]:
    """Every RBAC object Graft ships, in the order to apply them."""
    return [
        service_account(),
        *(role.manifest() for role in CLUSTER_ROLES),
        cluster_role_binding(),
        operator_namespace_role(),
        operator_namespace_role_binding(),
        *gateway_manifests(),
    ]


_PLAIN = re.compile(r"^[a-z][a-z0-9./-]*$")


def _flow(items: tuple[str, ...]) -> str:
    """A YAML flow sequence, quoting only what needs it ("" for the core group)."""
    return "[" + ", ".join(i if _PLAIN.match(i) else json.dumps(i) for i in items) + "]"


def render_rules(role: ClusterRole) -> list[str]:
    """The `rules:` block of a ClusterRole as YAML lines, each rule's reason a comment above it."""
    lines = ["rules:"]
    for rule in role.rules:
        lines.append(f"  # {rule.why}")
        lines.append(f"  - apiGroups: {_flow(rule.api_groups)}")
        lines.append(f"    resources: {_flow(rule.resources)}")
        lines.append(f"    verbs: {_flow(rule.verbs)}")
        if rule.resource_names:
            lines.append(f"    resourceNames: {_flow(rule.resource_names)}")
    return lines


def render_cluster_role(role: ClusterRole) -> str:
    """A ClusterRole as YAML with each rule's reason as a comment above it."""
    head = yaml.safe_dump(
        {k: v for k, v in role.manifest().items() if k != "rules"}, sort_keys=False
    )
    lines = [f"# {role.name}: {role.description}", head.rstrip("\n"), *render_rules(role)]
    return "\n".join(lines) + "\n"
