"""Graft's shipped RBAC: least privilege, what each role may do, and no drift from the chart
(deploy/graft.yaml is checked against the chart by tests/unit/test_chart.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from graft.api.kinds import ALL_KINDS
from graft.api.tenancy import Role
from graft.core import keys
from graft.core.names import cluster_role_name
from graft.core.settings import Settings
from graft.gen import chart, rbac

ROOT = Path(__file__).resolve().parents[2]
RBAC_TEMPLATE = ROOT / "deploy" / "charts" / "graft" / chart.RBAC_TEMPLATE


def allows(
    role: rbac.ClusterRole, group: str, resource: str, verb: str, name: str | None = None
) -> bool:
    """What the API server's RBAC authorizer decides for one request (no wildcards to handle)."""
    return any(
        group in r.api_groups
        and resource in r.resources
        and verb in r.verbs
        and (not r.resource_names or name in r.resource_names)
        for r in role.rules
    )


def test_rendered_cluster_roles_are_the_manifests() -> None:
    for role in rbac.CLUSTER_ROLES:
        assert yaml.safe_load(rbac.render_cluster_role(role)) == role.manifest()


def test_chart_rbac_template_is_generated_from_this_module() -> None:
    text = RBAC_TEMPLATE.read_text()
    assert text == chart.rbac_template(), "the chart's RBAC is out of date: run `make chart`"
    for role in (*rbac.CLUSTER_ROLES, *GATEWAY_ROLES):
        assert "\n".join(rbac.render_rules(role)) in text


GATEWAY_ROLES = (rbac.GATEWAY_ROLE, rbac.GATEWAY_NAMESPACE_ROLE)


@pytest.mark.parametrize(
    "role",
    [*rbac.CLUSTER_ROLES, *GATEWAY_ROLES],
    ids=[*(r.name for r in rbac.CLUSTER_ROLES), "graft-gateway", "graft-gateway-role"],
)
def test_no_wildcards_and_every_rule_says_why(role: rbac.ClusterRole) -> None:
    for rule in role.rules:
        for value in (*rule.api_groups, *rule.resources, *rule.verbs, *rule.resource_names):
            assert "*" not in value, f"{role.name}: {rule.why}"
        assert rule.why.strip()
        assert "\n" not in rule.why
        assert rule.resources
        assert rule.verbs


def test_operator_can_do_what_the_reconcilers_do() -> None:
    op = rbac.OPERATOR_ROLE
    for kind in ALL_KINDS:
        for verb in ("get", "list", "watch", "patch"):
            assert allows(op, "graft.dev", kind.plural, verb), (kind.plural, verb)
        assert allows(op, "graft.dev", f"{kind.plural}/status", "patch")
    needed = [
        # Account
        ("", "namespaces", "get"),
        ("", "namespaces", "create"),
        ("", "namespaces", "delete"),
        ("", "resourcequotas", "get"),
        ("", "resourcequotas", "list"),
        ("", "resourcequotas", "watch"),
        ("", "resourcequotas", "create"),
        ("", "resourcequotas", "patch"),
        ("", "resourcequotas", "delete"),
        ("graft.dev", "accounts/finalizers", "update"),
        # User
        ("rbac.authorization.k8s.io", "rolebindings", "get"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "delete"),
        ("graft.dev", "users/finalizers", "update"),
        # Deployment
        ("", "pods", "create"),
        ("", "pods", "delete"),
        ("", "pods", "watch"),
        ("", "services", "patch"),
        ("", "events", "create"),
        # ApiKey (get and delete on Secrets: ACCOUNT_SECRETS_ROLE, in account namespaces)
        ("", "secrets", "create"),
        ("rbac.authorization.k8s.io", "roles", "get"),
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "roles", "delete"),
        ("graft.dev", "apikeys/finalizers", "update"),
    ]
    for group, resource, verb in needed:
        assert allows(op, group, resource, verb), (group, resource, verb)
    secrets = rbac.ACCOUNT_SECRETS_ROLE
    for verb in ("get", "delete"):
        assert allows(secrets, "", "secrets", verb, "ci-apikey")
    # The Account binds it to the operator in its namespace.
    name = keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    assert secrets.name == name
    assert allows(op, "rbac.authorization.k8s.io", "clusterroles", "bind", name)
    assert allows(op, "rbac.authorization.k8s.io", "clusterroles", "get", name)
    assert allows(op, "rbac.authorization.k8s.io", "rolebindings", "create")
    assert allows(op, "rbac.authorization.k8s.io", "rolebindings", "delete")


def test_operator_binds_only_the_user_roles_and_its_account_secrets_role() -> None:
    op = rbac.OPERATOR_ROLE
    for role in Role:
        name = cluster_role_name(role)
        assert allows(op, "rbac.authorization.k8s.io", "clusterroles", "bind", name)
        assert allows(op, "rbac.authorization.k8s.io", "clusterroles", "get", name)
        assert rbac.USER_ROLES[role.value].name == name
    bindable = {
        name
        for rule in op.rules
        if "clusterroles" in rule.resources and "bind" in rule.verbs
        for name in rule.resource_names
    }
    assert bindable == {*rbac.USER_CLUSTER_ROLES, keys.ACCOUNT_SECRETS_CLUSTER_ROLE}
    for rule in op.rules:
        if "clusterroles" in rule.resources:
            assert rule.resource_names, f"bind or get on every ClusterRole: {rule.why}"
    for other in ("cluster-admin", "admin", "edit", rbac.OPERATOR_NAME, rbac.GATEWAY_NAME, None):
        assert not allows(op, "rbac.authorization.k8s.io", "clusterroles", "bind", other)
    # It cannot grant itself anything else either.
    for verb in ("create", "update", "patch", "escalate"):
        assert not allows(op, "rbac.authorization.k8s.io", "clusterroles", verb)
        assert not allows(op, "rbac.authorization.k8s.io", "clusterrolebindings", verb)
    # The Roles it creates (an ApiKey's) grant only what it holds itself: no escalate, no bind.
    for verb in ("escalate", "bind", "update", "patch"):
        assert not allows(op, "rbac.authorization.k8s.io", "roles", verb)


def test_operator_holds_no_cluster_wide_right_to_read_or_delete_secrets() -> None:
    """Cluster-wide, the operator may only create Secrets (a Deployment's server key, an
    ApiKey's key); it reads and deletes them only where an Account binds it
    ACCOUNT_SECRETS_ROLE, and then by name: it can neither enumerate nor stream Secrets, nor
    change one in place, anywhere."""
    op = rbac.OPERATOR_ROLE
    assert allows(op, "", "secrets", "create")
    for verb in ("get", "list", "watch", "update", "patch", "delete", "deletecollection"):
        assert not allows(op, "", "secrets", verb), verb
        assert not allows(op, "", "secrets", verb, "ci-apikey"), verb
    secrets = rbac.ACCOUNT_SECRETS_ROLE
    assert {v for r in secrets.rules for v in r.verbs} == {"get", "delete"}
    assert {(g, res) for r in secrets.rules for g in r.api_groups for res in r.resources} == {
        ("", "secrets")
    }
    # In its own namespace: the seed Secret, by name.
    own = rbac.OPERATOR_NAMESPACE_ROLE
    assert allows(own, "", "secrets", "get", rbac.SEED_SECRET)
    assert not allows(own, "", "secrets", "get", "ci-apikey")
    for verb in ("list", "watch", "delete", "update", "patch"):
        assert not allows(own, "", "secrets", verb, rbac.SEED_SECRET)


def test_the_account_secrets_role_is_only_bound_in_account_namespaces() -> None:
    """Graft ships no binding of it (no ClusterRoleBinding, no RoleBinding): only an Account's
    RoleBinding graft-operator-secrets, in the account's namespace, grants it."""
    name = keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    assert name in {m["metadata"]["name"] for m in rbac.manifests() if m["kind"] == "ClusterRole"}
    refs = [m["roleRef"]["name"] for m in rbac.manifests() if "roleRef" in m]
    assert name not in refs


def test_the_default_identity_is_the_operators_settings() -> None:
    """`graft run` without GRAFT_OPERATOR_NAMESPACE / GRAFT_OPERATOR_SERVICE_ACCOUNT binds
    the ServiceAccount these manifests make."""
    settings = Settings()
    sa = rbac.service_account()["metadata"]
    assert (sa["namespace"], sa["name"]) == (
        settings.operator_namespace,
        settings.operator_service_account,
    )


ACCOUNT_KINDS = [k.plural for k in ALL_KINDS if k.namespaced]


@pytest.mark.parametrize("plural", ACCOUNT_KINDS)
def test_user_roles_on_graft_kinds(plural: str) -> None:
    admin, member, viewer = (rbac.USER_ROLES[r.value] for r in Role)
    for verb in ("get", "list", "watch"):
        assert allows(viewer, "graft.dev", plural, verb)
        assert allows(member, "graft.dev", plural, verb)
    for verb in ("create", "update", "patch", "delete"):
        assert allows(admin, "graft.dev", plural, verb)
        assert allows(member, "graft.dev", plural, verb) is (plural != "users")
        assert not allows(viewer, "graft.dev", plural, verb)


def test_user_roles_reach_nothing_cluster_wide_and_no_secrets() -> None:
    for role in rbac.USER_ROLES.values():
        assert not allows(role, "graft.dev", "accounts", "get")
        assert not allows(role, "", "secrets", "get")
        assert not allows(role, "rbac.authorization.k8s.io", "rolebindings", "create")
        assert not allows(role, "", "pods", "create")


def test_only_admins_debug_pods() -> None:
    admin, member, viewer = (rbac.USER_ROLES[r.value] for r in Role)
    for resource, verb in (("pods", "list"), ("pods/log", "get"), ("events", "list")):
        assert allows(admin, "", resource, verb)
        assert not allows(member, "", resource, verb)
        assert not allows(viewer, "", resource, verb)
    assert allows(admin, "events.k8s.io", "events", "watch")


def test_roles_nest() -> None:
    """Whatever a viewer may do a member may, and whatever a member may an admin may."""
    admin, member, viewer = (rbac.USER_ROLES[r.value] for r in Role)
    for lower, upper in ((viewer, member), (member, admin)):
        for rule in lower.rules:
            for group in rule.api_groups:
                for resource in rule.resources:
                    for verb in rule.verbs:
                        assert allows(upper, group, resource, verb), (upper.name, resource, verb)


def test_manifests_are_plain_yaml_data() -> None:
    """What `kubectl apply` gets must dump as YAML (no enum values left in it)."""
    text = yaml.safe_dump_all(rbac.manifests())
    assert list(yaml.safe_load_all(text)) == rbac.manifests()


def test_gateway_watches_what_its_cache_follows() -> None:
    """The kinds of the gateway's watch cache, each readable; a right it lacks would leave its
    cache unsynced (and the gateway not ready) forever."""
    from graft.gateway import kube

    gateway = rbac.GATEWAY_ROLE
    assert {str(k) for k in kube.GRAFT_KINDS} == set(rbac.GATEWAY_KINDS)
    for plural in kube.GRAFT_KINDS:
        for verb in ("list", "watch"):
            assert allows(gateway, "graft.dev", plural, verb), (plural, verb)
        assert not allows(gateway, "graft.dev", plural, "patch")
    assert allows(gateway, "", "pods", "watch")
    assert allows(gateway, "graft.dev", "deployments/scale", "patch")
    assert not allows(gateway, "", "pods", "create")


def test_gateway_writes_progress_and_nothing_else_of_a_finetuning_job() -> None:
    gateway = rbac.GATEWAY_ROLE
    assert allows(gateway, "graft.dev", "finetuningjobs/status", "patch")
    for verb in ("create", "update", "patch", "delete"):
        assert not allows(gateway, "graft.dev", "finetuningjobs", verb), verb
    for verb in ("update", "create", "delete"):
        assert not allows(gateway, "graft.dev", "finetuningjobs/status", verb), verb
    for plural in ("models", "deployments", "datasets", "apikeys"):
        assert not allows(gateway, "graft.dev", f"{plural}/status", "patch"), plural


def test_gateway_reads_only_the_key_seed() -> None:
    for role in GATEWAY_ROLES:
        for verb in ("get", "list", "watch"):
            assert not allows(role, "", "secrets", verb, "tenant-secret")
    assert not allows(rbac.GATEWAY_ROLE, "", "secrets", "get", rbac.SEED_SECRET)
    assert allows(rbac.GATEWAY_NAMESPACE_ROLE, "", "secrets", "get", rbac.SEED_SECRET)
