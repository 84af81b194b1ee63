"""The gateway's catalog: who a key belongs to, what an account may list and call, and where a
request for a model goes. Built from objects shaped as the API server sends them."""

from __future__ import annotations

from typing import Any

import pytest

from graft.gateway import apikeys
from graft.gateway.catalog import Catalog, Target, build
from graft.gateway.errors import ApiError
from graft.gateway.limits import AccountLimits


def obj(kind: str, ns: str | None, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": "2026-11-28T10:00:00Z", **meta}
    if ns is not None:
        metadata["namespace"] = ns
    return {"apiVersion": "graft.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


def model(ns: str, name: str, kind: str = "Base", public: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "source": {"uri": "hf://x/y"}, "public": public}
    if kind == "PeftAddon":
        spec["baseModel"] = "base"
    return obj("Model", ns, name, spec)


def deployment(ns: str, name: str, base: str, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return obj("Deployment", ns, name, {"baseModel": base, "replicas": replicas, **extra})


def deployed(ns: str, name: str, model_: str, dep: str) -> dict[str, Any]:
    return obj("DeployedModel", ns, name, {"model": model_, "deployment": dep})


def api_key(ns: str, name: str, user: str, key: apikeys.NewKey, **spec: Any) -> dict[str, Any]:
    o = obj("ApiKey", ns, name, {"user": user, **spec})
    o["status"] = {"keyId": key.key_id, "keyHash": key.key_hash}
    return o


def world() -> Catalog:
    """Accounts a and b; a has a private base, an addon on it and a DeployedModel; b publishes
    a public base, deployed in b; c deploys b's public base on its own."""
    return build(
        accounts=[obj("Account", None, "a", {"limits": {"requestsPerMinute": 10}})],
        models=[
            model("a", "base"),
            model("a", "addon", "PeftAddon"),
            model("a", "idle"),  # not deployed anywhere
            model("b", "pub", public=True),
            model("b", "secret"),
        ],
        deployments=[
            deployment("a", "chat", "base"),
            deployment("b", "pubdep", "pub"),
            deployment("b", "secretdep", "secret"),
            deployment("c", "mine", "accounts/b/models/pub"),
        ],
        deployed_models=[deployed("a", "tuned", "addon", "chat")],
    )


def target(found: Target | ApiError) -> Target:
    assert isinstance(found, Target), found
    return found


def status(found: Target | ApiError) -> int:
    assert isinstance(found, ApiError), found
    return found.status


def test_own_base_addon_and_deployed_model_route_to_the_own_deployment() -> None:
    cat = world()
    base = target(cat.resolve("a", "accounts/a/models/base"))
    assert base.served_name == "accounts/a/models/base"
    assert [d.full_name for d in base.deployments] == ["accounts/a/deployments/chat"]
    addon = target(cat.resolve("a", "accounts/a/models/addon"))
    assert [d.id for d in addon.deployments] == ["chat"]
    dm = target(cat.resolve("a", "accounts/a/deployedmodels/tuned"))
    assert dm.served_name == "accounts/a/models/addon"  # what the replicas list
    assert [d.id for d in dm.deployments] == ["chat"]
    assert target(cat.resolve("a", "base")).served_name == "accounts/a/models/base"


def test_another_accounts_private_names_are_refused_without_saying_whether_they_exist() -> None:
    cat = world()
    assert status(cat.resolve("b", "accounts/a/models/addon")) == 403
    assert status(cat.resolve("b", "accounts/a/models/no-such-model")) == 403
    assert status(cat.resolve("b", "accounts/a/deployedmodels/tuned")) == 403
    assert status(cat.resolve("a", "accounts/b/models/secret")) == 403


def test_unknown_undeployed_and_malformed_names_are_404() -> None:
    cat = world()
    assert status(cat.resolve("a", "accounts/a/models/nope")) == 404
    assert status(cat.resolve("a", "accounts/a/models/idle")) == 404
    assert status(cat.resolve("a", "accounts/a/deployedmodels/nope")) == 404
    assert status(cat.resolve("a", "gpt-4o mini")) == 404
    assert status(cat.resolve("a", "accounts/a/datasets/x")) == 404


def test_a_public_model_is_served_by_the_callers_own_deployment_else_by_its_publisher() -> None:
    cat = world()
    # a has no deployment of it: b (the publisher) serves it.
    assert [d.full_name for d in target(cat.resolve("a", "accounts/b/models/pub")).deployments] == [
        "accounts/b/deployments/pubdep"
    ]
    # c deploys it itself: c's own replicas, never b's (nor would a ever use c's).
    assert [d.full_name for d in target(cat.resolve("c", "accounts/b/models/pub")).deployments] == [
        "accounts/c/deployments/mine"
    ]


def test_models_list_shows_what_the_account_can_call() -> None:
    cat = world()
    listed = {m.id: m for m in cat.visible("a")}
    assert set(listed) == {
        "accounts/a/models/base",
        "accounts/a/models/addon",
        "accounts/a/deployedmodels/tuned",
        "accounts/b/models/pub",
    }
    assert listed["accounts/a/deployedmodels/tuned"].parent == "accounts/a/models/addon"
    assert listed["accounts/b/models/pub"].owned_by == "b"
    assert {m.id for m in cat.visible("b")} == {"accounts/b/models/pub", "accounts/b/models/secret"}


def test_keys_work_while_the_key_and_its_user_exist() -> None:
    k1, k2, k3 = apikeys.generate(), apikeys.generate(), apikeys.generate()
    users = [obj("User", "a", "alice", {"email": "alice@example.com", "role": "member"})]
    cat = build(
        users=users,
        api_keys=[
            api_key("a", "k1", "alice", k1, expiresAt="2030-01-01T00:00:00Z"),
            api_key("a", "k2", "bob", k2),  # bob is no User (deleted): revoked
            api_key(
                "a",
                "k3",
                "alice",
                k3,
            ),
        ],
    )
    found = cat.key(k1.key_id)
    assert found is not None
    assert found.account == "a"
    assert found.expires_at is not None
    assert found.expires_at.year == 2030
    assert cat.key(k2.key_id) is None
    assert cat.key(k3.key_id) is not None
    deleting = api_key("a", "k3", "alice", k3)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T11:00:00Z"
    assert build(users=users, api_keys=[deleting]).key(k3.key_id) is None
    gone_user = dict(users[0], metadata={**users[0]["metadata"], "deletionTimestamp": "x"})
    assert (
        build(users=[gone_user], api_keys=[api_key("a", "k3", "alice", k3)]).key(k3.key_id) is None
    )


def test_a_key_carries_its_users_role() -> None:
    keys = {name: apikeys.generate() for name in ("ada", "mia", "vic", "odd")}
    roles = {"ada": "admin", "mia": "member", "vic": "viewer", "odd": "owner"}
    cat = build(
        users=[
            obj("User", "a", name, {"email": f"{name}@example.com", "role": role})
            for name, role in roles.items()
        ],
        api_keys=[api_key("a", f"{name}-key", name, k) for name, k in keys.items()],
    )
    got = {name: cat.keys[k.key_id].role for name, k in keys.items()}
    # A role the API does not know (a hand-edited object) is no role: the least privilege.
    assert got == {"ada": "admin", "mia": "member", "vic": "viewer", "odd": None}


def test_a_key_without_a_hash_yet_is_unknown() -> None:
    k = apikeys.generate()
    pending = api_key("a", "k", "alice", k)
    pending["status"] = {}
    users = [obj("User", "a", "alice", {"email": "a@example.com", "role": "member"})]
    assert build(users=users, api_keys=[pending]).keys == {}


def test_limits_come_from_the_account_spec_and_bad_ones_are_skipped() -> None:
    cat = build(
        accounts=[
            obj(
                "Account", None, "a", {"limits": {"requestsPerMinute": 10, "concurrentRequests": 2}}
            ),
            obj("Account", None, "b", {"limits": {"tokensPerMinute": 0}}),
        ]
    )
    assert cat.limits_of("a") == AccountLimits(requests_per_minute=10, concurrent_requests=2)
    assert cat.limits_of("b") == AccountLimits()
    assert cat.limits_of("nobody") == AccountLimits()
    assert any("account b" in p for p in cat.problems)


@pytest.mark.parametrize(
    "spec", [{"baseModel": "Not_An_ID"}, {"baseModel": "accounts/a/datasets/x"}]
)
def test_a_deployment_with_a_reference_that_does_not_parse_is_skipped(spec: dict[str, Any]) -> None:
    cat = build(deployments=[obj("Deployment", "a", "odd", spec)], models=[model("a", "base")])
    assert cat.deployments == {}
    assert cat.problems


def test_autoscaling_is_read_from_the_deployment() -> None:
    cat = build(
        deployments=[
            deployment(
                "a", "z", "base", replicas=0, autoscaling={"minReplicas": 0, "maxReplicas": 3}
            )
        ]
    )
    dep = cat.deployments["accounts/a/deployments/z"]
    assert dep.replicas == 0
    assert dep.autoscaling is not None
    assert dep.autoscaling.max_replicas == 3
