"""The Account's RoleBinding that lets the operator read its namespace's Secrets, against a fake
API: made, left alone when it is right, put back when it is not, and reported when it cannot be
made or grants nothing. (The real API server's part, RBAC itself, is
tests/integration/test_accounts.py.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from graft.controller import account
from graft.controller.context import Context
from graft.core import keys
from graft.core.objects import Owner
from graft.core.settings import Settings
from graft.plan.account import SECRETS_BINDING_NAME, secrets_binding

Obj = dict[str, Any]

ACCOUNT = Owner(kind="Account", name="acme", uid="uid-acme", generation=1)
OBJ: Obj = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "Account",
    "metadata": {"name": "acme", "uid": "uid-acme", "generation": 1},
}


class FakeApi:
    def __init__(self) -> None:
        self.bindings: dict[str, Obj] = {}
        self.cluster_roles = {keys.ACCOUNT_SECRETS_CLUSTER_ROLE}
        self.calls: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.refuse_create: ApiException | None = None
        self.uids = iter(range(1, 100))

    def get_role_binding(self, namespace: str, name: str) -> Obj | None:
        assert namespace == "acme"
        found = self.bindings.get(name)
        return copy.deepcopy(found) if found is not None else None

    def create_role_binding(self, binding: Obj) -> Obj:
        self.calls.append("create")
        if self.refuse_create is not None:
            raise self.refuse_create
        name = binding["metadata"]["name"]
        if name in self.bindings:
            raise ApiException(status=409, reason="AlreadyExists")
        made = copy.deepcopy(binding)
        made["metadata"]["uid"] = f"uid-{next(self.uids)}"
        self.bindings[name] = made
        return copy.deepcopy(made)

    def delete_role_binding(self, namespace: str, name: str, uid: str) -> bool:
        self.calls.append("delete")
        found = self.bindings.get(name)
        if found is None or found["metadata"]["uid"] != uid:
            return False
        del self.bindings[name]
        return True

    def cluster_role_exists(self, name: str) -> bool:
        return name in self.cluster_roles

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def grant(api: FakeApi, settings: Settings | None = None) -> Any:
    ctx = Context(api=api, settings=settings or Settings())  # type: ignore[arg-type]
    return account.grant_secret_access(ctx, OBJ, ACCOUNT)


def test_the_binding_is_made_once_for_the_operators_own_service_account() -> None:
    api = FakeApi()
    settings = Settings(
        operator_namespace="platform", operator_service_account="acme-graft-operator"
    )
    assert grant(api, settings) is None
    binding = api.bindings[SECRETS_BINDING_NAME]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "acme-graft-operator", "namespace": "platform"}
    ]
    assert binding["roleRef"]["name"] == keys.ACCOUNT_SECRETS_CLUSTER_ROLE
    assert binding["metadata"]["ownerReferences"][0]["uid"] == "uid-acme"
    assert api.events == []
    assert grant(api, settings) is None
    assert api.calls == ["create"]  # in sync: nothing more


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b.update(subjects=[{"kind": "User", "name": "mallory@example.com"}]),
        lambda b: b["subjects"].append({"kind": "User", "name": "mallory@example.com"}),
        lambda b: b["metadata"].update(labels={}),
        lambda b: b["metadata"].update(ownerReferences=[]),
    ],
    ids=["other-subject", "extra-subject", "no-labels", "no-owner"],
)
def test_a_changed_or_foreign_binding_is_put_back(change: Any) -> None:
    api = FakeApi()
    stray = secrets_binding(ACCOUNT, "graft-operator", "graft-system")
    change(stray)
    stray["metadata"]["uid"] = "uid-stray"
    api.bindings[SECRETS_BINDING_NAME] = stray
    assert grant(api) is None
    assert api.calls == ["delete", "create"]
    binding = api.bindings[SECRETS_BINDING_NAME]
    assert binding["metadata"]["uid"] != "uid-stray"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "graft-operator", "namespace": "graft-system"}
    ]
    assert [r for r, _ in api.events] == ["RoleBindingReplaced"]


def test_a_missing_cluster_role_is_reported() -> None:
    api = FakeApi()
    api.cluster_roles = set()
    problem = grant(api)
    assert problem is not None
    assert (problem.reason, problem.state) == ("ClusterRoleMissing", "Waiting")
    # The binding is made all the same: it works as soon as the ClusterRole is installed.
    assert SECRETS_BINDING_NAME in api.bindings


def test_a_refused_binding_is_reported_not_raised() -> None:
    api = FakeApi()
    api.refuse_create = ApiException(status=403, reason="Forbidden")
    problem = grant(api)
    assert problem is not None
    assert (problem.reason, problem.state) == ("SecretsBindingRefused", "Waiting")
    assert "Forbidden" in problem.message


def test_a_namespace_going_away_is_no_problem() -> None:
    api = FakeApi()
    api.refuse_create = ApiException(status=403, reason="Forbidden")
    api.refuse_create.body = (
        '{"message": "rolebindings is forbidden: unable to create new content in namespace '
        'acme because it is being terminated"}'
    )
    assert grant(api) is None


def test_other_errors_are_retried() -> None:
    api = FakeApi()
    api.refuse_create = ApiException(status=500, reason="Internal Server Error")
    with pytest.raises(ApiException):
        grant(api)
