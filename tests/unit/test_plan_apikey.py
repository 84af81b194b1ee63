"""ApiKeys, pure: the Secret, the Role and RoleBinding, when a key is kept, issued or rotated, the
User it belongs to, expiry, and a status that never holds the key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from graft.api.common import ConditionStatus
from graft.api.kinds import API_KEY
from graft.api.tenancy import API_KEY_HASH_PATTERN, API_KEY_ID_PATTERN, ApiKeySpec, ApiKeyStatus
from graft.core import keys
from graft.core.apikeys import generate, hash_key
from graft.core.objects import Owner
from graft.plan.account import secrets_binding
from graft.plan.apikey import (
    ACCOUNT_RECHECK_SECONDS,
    EXPIRY_SLACK_SECONDS,
    Claim,
    Issued,
    KeyAction,
    KeyProblem,
    access_binding,
    access_in_sync,
    access_refused_problem,
    access_role,
    account_access_problem,
    api_key_status,
    claim,
    conflict_problem,
    expired_problem,
    held_key,
    issued_key,
    key_action,
    key_fields,
    key_secret,
    recheck_after,
    user_problem,
    user_reference,
)
from graft.plan.user import role_binding

KEY = Owner(kind="ApiKey", name="ci", uid="uid-ci", namespace="acme", generation=2)
ALICE = "alice@example.com"
NOW = datetime(2026, 3, 2, 9, 14, 5, tzinfo=UTC)
STAMP = "2026-03-02T09:14:05Z"


def as_read(secret: dict[str, Any]) -> dict[str, Any]:
    """A Secret as the API server returns it: stringData folded into base64 data."""
    out = {k: v for k, v in secret.items() if k != "stringData"}
    out["data"] = {
        k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()
    }
    out["metadata"] = {**secret["metadata"], "uid": "uid-secret"}
    return out


def user(uid: str = "uid-alice", *, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "alice", "namespace": "acme", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = STAMP
    reason = "Bound" if ready else "AccountNotFound"
    return {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "User",
        "metadata": meta,
        "spec": {"email": ALICE, "role": "member"},
        "status": {"conditions": [{"type": "Ready", "status": str(ready), "reason": reason}]},
    }


def api_key(*owner_uids: str) -> dict[str, Any]:
    refs = [
        {"apiVersion": "graft.dev/v1alpha1", "kind": "User", "name": "alice", "uid": uid}
        for uid in owner_uids
    ]
    return {"metadata": {"name": "ci", "namespace": "acme", "ownerReferences": refs}}


# --- The API --------------------------------------------------------------------------------------


def test_spec_needs_a_user_id_and_an_expiry_with_a_time_zone() -> None:
    spec = ApiKeySpec.model_validate({"user": "alice", "expiresAt": "2026-12-31T23:59:59Z"})
    assert spec.expires_at == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert spec.wire() == {"user": "alice", "expiresAt": "2026-12-31T23:59:59Z"}
    with pytest.raises(ValidationError, match="timezone"):
        ApiKeySpec.model_validate({"user": "alice", "expiresAt": "2026-12-31T23:59:59"})
    for ref in ("accounts/acme/users/alice", "Alice", ""):
        with pytest.raises(ValidationError):
            ApiKeySpec.model_validate({"user": ref})
    with pytest.raises(ValidationError, match="key"):
        ApiKeySpec.model_validate({"user": "alice", "key": "graft_..."})  # nobody brings a key


def test_status_patterns_are_the_ones_keys_are_made_with() -> None:
    new = generate()
    status = ApiKeyStatus(key_id=new.key_id, key_hash=new.key_hash)
    assert status.key_id == new.key_id
    with pytest.raises(ValidationError):
        ApiKeyStatus(key_hash=new.key)  # never the key itself
    assert API_KEY_ID_PATTERN == "^[0-9a-f]{16}$"
    assert API_KEY_HASH_PATTERN == "^sha256:[0-9a-f]{64}$"


def test_kind() -> None:
    assert (API_KEY.kind, API_KEY.plural, API_KEY.short_names) == ("ApiKey", "apikeys", ("gkey",))
    assert API_KEY.namespaced
    assert not API_KEY.spec_immutable  # only spec.user is


# --- The Secret -----------------------------------------------------------------------------------


def test_the_secret_holds_the_key_once_and_is_owned_by_the_api_key() -> None:
    new = generate()
    secret = key_secret(KEY, "alice", new)
    meta = secret["metadata"]
    assert (secret["kind"], secret["type"], secret["immutable"]) == ("Secret", "Opaque", True)
    assert (meta["name"], meta["namespace"]) == ("ci-apikey", "acme")
    assert secret["stringData"] == {"apiKey": new.key}
    assert meta["labels"] == {
        keys.MANAGED_BY: "graft",
        keys.PART_OF: "graft",
        keys.NAME: "graft",
        keys.COMPONENT: "apikey-secret",
        keys.INSTANCE: "ci",
        "graft.dev/apikey": "ci",
        keys.ACCOUNT: "acme",
        keys.USER: "alice",
        "graft.dev/key-id": new.key_id,
    }
    (ref,) = meta["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "ApiKey",
        "ci",
        "uid-ci",
        True,
    )
    assert held_key(as_read(secret)) == new.key
    assert new.key not in json.dumps(meta)


@pytest.mark.parametrize("data", [None, {}, {"apiKey": "%%%"}, {"apiKey": 3}, {"other": "eA=="}])
def test_a_secret_without_a_readable_key_holds_none(data: dict[str, Any] | None) -> None:
    assert held_key({"data": data}) is None


# --- Who may read it ------------------------------------------------------------------------------


def test_only_the_keys_user_may_get_its_one_secret() -> None:
    role = access_role(KEY, "alice")
    binding = access_binding(KEY, "alice", ALICE)
    assert role["kind"] == "Role"
    assert role["metadata"]["name"] == binding["metadata"]["name"] == "graft-apikey-ci"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["ci-apikey"],
            "verbs": ["get"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "graft-apikey-ci",
    }
    # The same subject as the User's own RoleBinding.
    user_binding = role_binding(Owner("User", "alice", "uid-alice", "acme"), ALICE, "member")
    assert binding["subjects"] == user_binding["subjects"]
    for obj in (role, binding):
        assert obj["metadata"]["labels"][keys.COMPONENT] == "apikey-access"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-ci"


def test_access_in_sync_compares_grants_and_labels() -> None:
    role, binding = access_role(KEY, "alice"), access_binding(KEY, "alice", ALICE)
    read = {**binding, "subjects": [{**binding["subjects"][0], "namespace": None}]}
    assert access_in_sync(role, role)
    assert access_in_sync(read, binding)
    wider = {**role, "rules": [{**role["rules"][0], "verbs": ["get", "list"]}]}
    assert not access_in_sync(wider, role)
    other = access_binding(KEY, "alice", "mallory@example.com")
    assert not access_in_sync(other, binding)
    unlabelled = {**role, "metadata": {**role["metadata"], "labels": {}}}
    assert not access_in_sync(unlabelled, role)


def test_claims() -> None:
    ours = access_role(KEY, "alice")
    assert claim(None, KEY) == Claim.MISSING
    assert claim(ours, KEY) == Claim.OURS
    earlier = access_role(Owner("ApiKey", "ci", "uid-earlier", "acme"), "alice")
    assert claim(earlier, KEY) == Claim.GOING
    going = {**ours, "metadata": {**ours["metadata"], "deletionTimestamp": STAMP}}
    assert claim(going, KEY) == Claim.GOING
    assert claim({"metadata": {"name": "ci-apikey"}}, KEY) == Claim.FOREIGN
    # Graft's labels alone do not make it ours: someone could copy them.
    copied = {"metadata": {"labels": ours["metadata"]["labels"]}}
    assert claim(copied, KEY) == Claim.FOREIGN


# --- Keep, issue or rotate ------------------------------------------------------------------------


def issued_and_secret(email: str = ALICE) -> tuple[Issued, dict[str, Any]]:
    new = generate()
    return Issued.of(new, "ci", email), as_read(key_secret(KEY, "alice", new))


def test_a_first_key_is_issued() -> None:
    assert key_action(None, None, ALICE).action == KeyAction.ISSUE
    # A Secret of ours without a key in status holds a key nobody can use: replaced.
    _, secret = issued_and_secret()
    assert key_action(None, secret, ALICE).action == KeyAction.ISSUE


def test_a_key_in_its_secret_is_kept() -> None:
    issued, secret = issued_and_secret()
    assert key_action(issued, secret, ALICE).action == KeyAction.KEEP


def test_a_lost_key_is_rotated() -> None:
    """A crash after status took the hash and before the Secret was made, or a deleted Secret:
    nobody can have the key status names, so a new one replaces it."""
    issued, secret = issued_and_secret()
    decision = key_action(issued, None, ALICE)
    assert decision.action == KeyAction.ROTATE
    assert "Secret ci-apikey is gone" in decision.why
    other, _ = issued_and_secret()
    decision = key_action(other, secret, ALICE)
    assert decision.action == KeyAction.ROTATE
    assert "does not hold key" in decision.why
    assert key_action(issued, {**secret, "data": {}}, ALICE).action == KeyAction.ROTATE


def test_a_key_whose_users_email_changed_is_rotated() -> None:
    issued, secret = issued_and_secret()
    decision = key_action(issued, secret, "alice@new.example.com")
    assert decision.action == KeyAction.ROTATE
    assert f"from {ALICE} to alice@new.example.com" in decision.why


def test_the_status_records_the_key_but_never_holds_it() -> None:
    new = generate()
    issued = Issued.of(new, "ci", ALICE)
    fields = key_fields(issued)
    assert fields == {
        "keyId": new.key_id,
        "keyHash": new.key_hash,
        "redactedKey": f"graft_{new.key_id}_...",
        "secretName": "ci-apikey",
        "user": ALICE,
    }
    assert issued_key(fields) == issued
    assert issued_key({}) is None
    assert issued_key({"keyId": new.key_id}) is None
    status = api_key_status(
        owner=KEY,
        full_name="accounts/acme/apikeys/ci",
        user="alice",
        issued=issued,
        expires_at=None,
        problem=None,
        previous=[],
        now=STAMP,
    )
    secret = new.key.rsplit("_", 1)[1]
    assert secret not in json.dumps(status.wire())
    assert new.key not in repr(issued)
    assert new.key not in repr(new)


# --- The User -------------------------------------------------------------------------------------


def test_an_api_key_belongs_to_its_user() -> None:
    ref = user_reference(user())
    assert ref == {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "User",
        "name": "alice",
        "uid": "uid-alice",
        "controller": False,
        "blockOwnerDeletion": True,
    }


def test_user_problems() -> None:
    waiting = user_problem(api_key(), "alice", None)
    assert waiting is not None
    assert (waiting.reason, waiting.waiting, waiting.state) == ("WaitingForUser", True, "Waiting")
    assert "User alice does not exist in account acme (yet)" in waiting.message

    not_ready = user_problem(api_key("uid-alice"), "alice", user(ready=False))
    assert not_ready is not None
    assert not_ready.reason == "WaitingForUser"
    assert "AccountNotFound" in not_ready.message

    for key, found in (
        (api_key("uid-alice"), user(deleting=True)),
        (api_key("uid-alice"), None),  # gone: the garbage collector follows
        (api_key("uid-old"), user("uid-new")),  # deleted and made again: not the same User
    ):
        deleted = user_problem(key, "alice", found)
        assert deleted is not None
        assert (deleted.reason, deleted.waiting) == ("UserDeleted", True)

    assert user_problem(api_key("uid-alice"), "alice", user()) is None
    assert user_problem(api_key(), "alice", user()) is None  # the reference comes next


# --- Expiry ---------------------------------------------------------------------------------------


def test_expiry() -> None:
    issued, _ = issued_and_secret()
    assert expired_problem(issued, None, NOW) is None
    assert expired_problem(issued, NOW + timedelta(seconds=1), NOW) is None
    expired = expired_problem(issued, NOW, NOW)  # at expiresAt itself, as the gateway says
    assert expired is not None
    assert (expired.reason, expired.waiting, expired.state) == ("Expired", False, "Expired")
    assert expired.message == (
        f"key {issued.display} expired at 2026-03-02T09:14:05Z: set a later spec.expiresAt, or "
        "create a new ApiKey"
    )
    before_any = expired_problem(None, NOW - timedelta(hours=1), NOW)
    assert before_any is not None
    assert before_any.message.startswith("the key expired at 2026-03-02T08:14:05Z")


def test_a_recheck_is_scheduled_at_expiry_not_polled() -> None:
    assert recheck_after(None, NOW, 60) == 60
    assert recheck_after(NOW + timedelta(seconds=10), NOW, 60) == 10 + EXPIRY_SLACK_SECONDS
    assert recheck_after(NOW + timedelta(days=30), NOW, 60) == 60
    assert recheck_after(NOW - timedelta(seconds=1), NOW, 60) == 60


def test_a_key_waits_for_its_accounts_binding() -> None:
    """The operator may read Secrets only where the Account bound it that right."""
    account = Owner(kind="Account", name="acme", uid="uid-acme")
    binding = secrets_binding(account, "graft-operator", "graft-system")
    assert account_access_problem(binding, "acme", "graft-operator", "graft-system") is None
    for found, sa in ((None, "graft-operator"), (binding, "acme-graft-operator")):
        problem = account_access_problem(found, "acme", sa, "graft-system")
        assert problem is not None
        assert (problem.reason, problem.state) == ("WaitingForAccount", "Waiting")
        assert "graft-operator-secrets" in problem.message
        assert "Account acme" in problem.message
    refused = access_refused_problem("acme", 'secrets "ci-apikey" is forbidden')
    assert (refused.reason, refused.state) == ("WaitingForAccount", "Waiting")
    assert "is forbidden" in refused.message
    # Looked at again soon (a new RoleBinding may take a moment to be honoured), or at expiry.
    assert recheck_after(None, NOW, 60, refused) == ACCOUNT_RECHECK_SECONDS
    assert recheck_after(NOW + timedelta(seconds=1), NOW, 60, refused) == 1 + EXPIRY_SLACK_SECONDS
    assert recheck_after(None, NOW, 2, refused) == 2
    other = KeyProblem("WaitingForUser", "", waiting=True)
    assert recheck_after(None, NOW, 60, other) == 60


# --- Status ---------------------------------------------------------------------------------------


def status_for(
    problem: KeyProblem | None,
    issued: Issued | None,
    expires_at: datetime | None = None,
    previous: ApiKeyStatus | None = None,
) -> ApiKeyStatus:
    return api_key_status(
        owner=KEY,
        full_name="accounts/acme/apikeys/ci",
        user="alice",
        issued=issued,
        expires_at=expires_at,
        problem=problem,
        previous=previous.conditions if previous else [],
        now=STAMP,
    )


def test_issued_status() -> None:
    issued, _ = issued_and_secret()
    expires = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    status = status_for(None, issued, expires)
    wire = status.wire()
    assert wire["observedGeneration"] == 2
    assert wire["name"] == "accounts/acme/apikeys/ci"
    assert wire["state"] == "Ready"
    assert wire["keyId"] == issued.key_id
    assert wire["keyHash"] == issued.key_hash
    assert wire["redactedKey"] == f"graft_{issued.key_id}_..."
    assert wire["secretName"] == "ci-apikey"
    assert wire["user"] == ALICE
    assert wire["expiresAt"] == "2026-12-31T23:59:59Z"
    (ready,) = wire["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Issued")
    assert ready["observedGeneration"] == 2
    assert ready["message"] == (
        f"key graft_{issued.key_id}_... of {ALICE} (User alice) is in Secret ci-apikey, which "
        "only that User can read; it expires at 2026-12-31T23:59:59Z"
    )
    assert "never expires" in status_for(None, issued).conditions[0].message
    assert "expiresAt" not in status_for(None, issued).wire()


def test_waiting_for_user_status_has_no_key_yet() -> None:
    problem = user_problem(api_key(), "alice", None)
    wire = status_for(problem, None).wire()
    assert wire["state"] == "Waiting"
    assert wire["conditions"][0]["status"] == "False"
    assert wire["conditions"][0]["reason"] == "WaitingForUser"
    assert not {"keyId", "keyHash", "secretName", "user", "redactedKey"} & set(wire)


def test_expired_status_keeps_the_key_id_and_hash() -> None:
    issued, _ = issued_and_secret()
    expires = NOW - timedelta(minutes=1)
    ready = status_for(None, issued, expires)
    expired = status_for(expired_problem(issued, expires, NOW), issued, expires, ready)
    wire = expired.wire()
    assert wire["state"] == "Expired"
    assert (wire["keyId"], wire["keyHash"]) == (issued.key_id, issued.key_hash)
    assert wire["expiresAt"] == "2026-03-02T09:13:05Z"
    assert wire["conditions"][0]["reason"] == "Expired"
    assert wire["conditions"][0]["status"] == ConditionStatus.FALSE


def test_rotated_status_names_only_the_new_key() -> None:
    old, _ = issued_and_secret()
    new = Issued.of(generate(), "ci", ALICE)
    before = status_for(None, old)
    after = status_for(None, new, previous=before)
    wire = after.wire()
    assert (wire["keyId"], wire["keyHash"]) == (new.key_id, new.key_hash)
    assert old.key_id not in json.dumps(wire)
    # Still Ready, and since Ready did not move, its transition time stays.
    assert after.conditions[0].last_transition_time == before.conditions[0].last_transition_time


def test_conflicts_fail_and_say_what_to_do() -> None:
    for kind, reason in (
        ("Secret", "SecretConflict"),
        ("Role", "RoleConflict"),
        ("RoleBinding", "RoleBindingConflict"),
    ):
        problem = conflict_problem(kind, "x", "acme")
        assert (problem.reason, problem.waiting, problem.state) == (reason, False, "Failed")
        assert "delete it, or give the ApiKey another name" in problem.message
        assert status_for(problem, None).wire()["state"] == "Failed"


def test_a_ready_status_needs_a_key() -> None:
    with pytest.raises(ValueError, match="issued key"):
        status_for(None, None)


def test_hash_is_of_the_whole_key() -> None:
    new = generate()
    assert Issued.of(new, "ci", ALICE).key_hash == hash_key(new.key)
