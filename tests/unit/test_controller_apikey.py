"""The ApiKey reconciler against an in-memory API server: crash safety and idempotence.

`Store` keeps objects as the API server would (resourceVersions, uids, a Secret's stringData as
base64 data, status patches that honour a resourceVersion precondition) and can crash the
operator after any number of writes. The tests assert what the cluster holds afterwards: the key
in the Secret hashes to status.keyHash, no key is ever anywhere but in a Secret, and a reconcile
that finds nothing new writes nothing. The real API server's part (RBAC, garbage collection) is
tests/integration/test_apikeys.py.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from graft.controller import apikey
from graft.controller.context import Context
from graft.core.apikeys import KEY_RE, hash_key
from graft.core.objects import Owner
from graft.core.settings import Settings
from graft.plan import apikey as apikey_plan
from graft.plan.account import SECRETS_BINDING_NAME, secrets_binding

NS = "acme"
ALICE = "alice@example.com"
ACCOUNT = Owner(kind="Account", name=NS, uid="uid-account")

Obj = dict[str, Any]


class Crash(BaseException):
    """The operator process dies here (BaseException: no `except Exception` catches it)."""


class Store:
    """The part of graft.controller.kube.Api the ApiKey reconciler uses, in memory."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.versions = itertools.count(1)
        self.uids = itertools.count(1)
        self.writes = 0
        self.crash_after: int | None = None
        self.events: list[tuple[str, str, str]] = []
        self.status_patches: list[Obj] = []
        self.secrets_made: list[str] = []  # every key ever put in a Secret
        self.forbidden: set[str] = set()
        """The calls ("get", "delete" a Secret, "role": create a Role granting one) the API
        server refuses the operator, as it does where the Account's RoleBinding
        graft-operator-secrets is missing or not honoured yet."""

    # --- bookkeeping ------------------------------------------------------------------------

    def _write(self) -> None:
        if self.crash_after is not None and self.writes >= self.crash_after:
            raise Crash
        self.writes += 1

    def put(self, kind: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", NS)
        meta.setdefault("uid", f"uid-{next(self.uids)}")
        meta["resourceVersion"] = str(next(self.versions))
        meta.setdefault("generation", 1)
        self.objects[(kind, meta["name"])] = obj
        return copy.deepcopy(obj)

    def read(self, kind: str, name: str) -> Obj | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    def _create(self, kind: str, obj: Obj) -> Obj | None:
        self._write()
        if (kind, obj["metadata"]["name"]) in self.objects:
            return None
        return self.put(kind, obj)

    def _delete(self, kind: str, name: str, uid: str) -> bool:
        self._write()
        found = self.objects.get((kind, name))
        if found is None or found["metadata"]["uid"] != uid:
            return False
        del self.objects[(kind, name)]
        return True

    # --- the Api facade ---------------------------------------------------------------------

    def get_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self.read(plural, name)

    cached_graft = get_graft  # no cache: the operator's cache is tested in test_controller_store

    def add_graft_owner(self, plural: str, obj: Obj, reference: Obj) -> Obj | None:
        self._write()
        current = self.objects[(plural, obj["metadata"]["name"])]
        if current["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            return None
        current["metadata"].setdefault("ownerReferences", []).append(reference)
        current["metadata"]["resourceVersion"] = str(next(self.versions))
        return copy.deepcopy(current)

    def patch_graft_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Obj,
        *,
        resource_version: str | None = None,
    ) -> bool:
        self._write()
        current = self.objects.get((plural, name))
        if current is None:
            return False
        if (
            resource_version is not None
            and resource_version != current["metadata"]["resourceVersion"]
        ):
            raise ApiException(status=409, reason="Conflict")
        self.status_patches.append(copy.deepcopy(status))
        merged = current.setdefault("status", {})
        for k, v in status.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = copy.deepcopy(v)
        current["metadata"]["resourceVersion"] = str(next(self.versions))
        return True

    def _allowed(self, call: str) -> None:
        if call in self.forbidden:
            raise ApiException(status=403, reason="Forbidden")

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        self._allowed("get")
        return self.read("secrets", name)

    def create_secret(self, secret: Obj) -> Obj | None:
        stored = {k: v for k, v in secret.items() if k != "stringData"}
        stored["data"] = {
            k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()
        }
        made = self._create("secrets", stored)
        if made is not None:
            self.secrets_made.append(secret["stringData"]["apiKey"])
        return made

    def delete_secret(self, namespace: str, name: str, uid: str) -> bool:
        self._allowed("delete")
        return self._delete("secrets", name, uid)

    def get_role(self, namespace: str, name: str) -> Obj | None:
        return self.read("roles", name)

    def create_role(self, role: Obj) -> Obj:
        self._allowed("role")  # RBAC: nobody grants `get` on a Secret it cannot get itself
        made = self._create("roles", role)
        if made is None:
            raise ApiException(status=409, reason="AlreadyExists")
        return made

    def delete_role(self, namespace: str, name: str, uid: str) -> bool:
        return self._delete("roles", name, uid)

    def get_role_binding(self, namespace: str, name: str) -> Obj | None:
        return self.read("rolebindings", name)

    def create_role_binding(self, binding: Obj) -> Obj:
        made = self._create("rolebindings", binding)
        if made is None:
            raise ApiException(status=409, reason="AlreadyExists")
        return made

    def delete_role_binding(self, namespace: str, name: str, uid: str) -> bool:
        return self._delete("rolebindings", name, uid)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self._write()
        self.events.append((type_, reason, message))


def operator_binding(service_account: str = "graft-operator") -> Obj:
    """The RoleBinding the Account makes in its namespace (graft.plan.account.secrets_binding)."""
    return secrets_binding(ACCOUNT, service_account, "graft-system")


@pytest.fixture
def store() -> Store:
    s = Store()
    s.put("rolebindings", operator_binding())
    s.put(
        "users",
        {
            "apiVersion": "graft.dev/v1alpha1",
            "kind": "User",
            "metadata": {"name": "alice"},
            "spec": {"email": ALICE, "role": "member"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Bound"}]},
        },
    )
    s.put(
        "apikeys",
        {
            "apiVersion": "graft.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "ci"},
            "spec": {"user": "alice"},
        },
    )
    return s


def reconcile(store: Store) -> list[float]:
    """Reconcile the ApiKey; the re-checks it asked for, in seconds."""
    rechecks: list[float] = []
    ctx = Context(
        api=store,  # type: ignore[arg-type]
        settings=Settings(),
        recheck=lambda plural, ns, name, delay: rechecks.append(delay),
    )
    apikey.reconcile(ctx, NS, "ci")
    return rechecks


def ready(store: Store) -> Obj:
    obj = store.read("apikeys", "ci")
    assert obj is not None
    (cond,) = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    return cond


def secret_key(store: Store) -> str:
    secret = store.read("secrets", "ci-apikey")
    assert secret is not None
    return base64.b64decode(secret["data"]["apiKey"]).decode()


def assert_consistent(store: Store) -> None:
    """Ready, and the Secret holds exactly the key status names."""
    obj = store.read("apikeys", "ci")
    assert obj is not None
    assert ready(store)["status"] == "True", ready(store)
    key = secret_key(store)
    assert KEY_RE.fullmatch(key)
    assert hash_key(key) == obj["status"]["keyHash"]
    assert key.split("_")[1] == obj["status"]["keyId"]
    assert obj["status"]["user"] == ALICE


def assert_no_key_outside_secrets(store: Store) -> None:
    said = json.dumps([store.status_patches, store.events])
    said += json.dumps([o for (kind, _), o in store.objects.items() if kind != "secrets"])
    for key in store.secrets_made:
        assert key not in said
        assert key.split("_")[2] not in said


def everything(store: Store) -> Iterator[Obj]:
    yield from (copy.deepcopy(o) for o in store.objects.values())


# --- The happy path -------------------------------------------------------------------------------


def test_first_reconcile_issues_a_key_and_grants_only_its_user(store: Store) -> None:
    reconcile(store)
    assert store.writes == FIRST_RECONCILE_WRITES
    assert_consistent(store)
    obj = store.read("apikeys", "ci")
    assert obj is not None
    (owner,) = obj["metadata"]["ownerReferences"]
    user = store.read("users", "alice")
    assert user is not None
    assert (owner["kind"], owner["uid"]) == ("User", user["metadata"]["uid"])
    binding = store.read("rolebindings", "graft-apikey-ci")
    assert binding is not None
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ALICE}
    ]
    assert [r for _, r, _ in store.events] == ["AccessGranted", "KeyIssued", "Issued"]
    assert_no_key_outside_secrets(store)


def test_the_hash_is_written_before_the_secret_exists(store: Store) -> None:
    order: list[str] = []
    patch, create = store.patch_graft_status, store.create_secret

    def patch_spy(*args: Any, **kwargs: Any) -> bool:
        if "keyHash" in args[3]:
            order.append("status")
        return patch(*args, **kwargs)

    def create_spy(secret: Obj) -> Obj | None:
        order.append("secret")
        return create(secret)

    store.patch_graft_status = patch_spy  # type: ignore[method-assign]
    store.create_secret = create_spy  # type: ignore[method-assign]
    reconcile(store)
    assert order[:2] == ["status", "secret"]


def test_a_reconcile_that_finds_nothing_new_writes_nothing(store: Store) -> None:
    reconcile(store)
    before = list(everything(store))
    writes = store.writes
    for _ in range(3):
        reconcile(store)
    assert store.writes == writes
    assert list(everything(store)) == before


# --- Crashes --------------------------------------------------------------------------------------


FIRST_RECONCILE_WRITES = 9  # owner, Role, RoleBinding, Event, hash, Secret, Event, status, Event


@pytest.mark.parametrize("crash_after", range(FIRST_RECONCILE_WRITES + 1))
def test_a_crash_after_any_write_converges_to_one_consistent_key(
    store: Store, crash_after: int
) -> None:
    """kill -9 after the n-th write of the first reconcile, then a new operator reconciles: the
    Secret holds the key status.keyHash names, and no key is anywhere but in a Secret."""
    store.crash_after = crash_after
    with contextlib.suppress(Crash):
        reconcile(store)
    store.crash_after = None
    reconcile(store)
    assert_consistent(store)
    assert_no_key_outside_secrets(store)
    # A key once in a Secret that still exists is the one status names; every other key made
    # was deleted with its Secret before anyone was told it exists.
    assert store.secrets_made[-1] == secret_key(store)
    assert len(set(store.secrets_made)) == len(store.secrets_made)
    writes = store.writes
    reconcile(store)
    assert store.writes == writes


def test_a_lost_secret_is_replaced_by_a_new_key(store: Store) -> None:
    reconcile(store)
    old = store.read("apikeys", "ci")
    assert old is not None
    del store.objects[("secrets", "ci-apikey")]
    reconcile(store)
    assert_consistent(store)
    new = store.read("apikeys", "ci")
    assert new is not None
    assert new["status"]["keyId"] != old["status"]["keyId"]
    rotated = [e for e in store.events if e[1] == "KeyRotated"]
    assert rotated
    assert rotated[0][0] == "Warning"
    assert "is gone" in rotated[0][2]


def test_a_secret_that_does_not_hold_the_key_is_replaced(store: Store) -> None:
    reconcile(store)
    secret = store.objects[("secrets", "ci-apikey")]
    secret["data"]["apiKey"] = base64.b64encode(b"graft_" + b"0" * 16 + b"_" + b"1" * 64).decode()
    reconcile(store)
    assert_consistent(store)


def test_a_second_writer_cannot_issue_on_stale_state(store: Store) -> None:
    """The hash goes in only on the resourceVersion the reconcile read."""
    reconcile(store)
    del store.objects[("secrets", "ci-apikey")]
    patch = store.patch_graft_status

    def someone_wrote_first(*args: Any, **kwargs: Any) -> bool:
        store.objects[("apikeys", "ci")]["metadata"]["resourceVersion"] = "elsewhere"
        return patch(*args, **kwargs)

    store.patch_graft_status = someone_wrote_first  # type: ignore[method-assign]
    with pytest.raises(ApiException) as caught:
        reconcile(store)
    assert caught.value.status == 409
    assert store.read("secrets", "ci-apikey") is None  # no key was handed out


def test_a_changed_email_revokes_the_old_reader_before_a_new_key_exists(store: Store) -> None:
    reconcile(store)
    old_key = secret_key(store)
    store.objects[("users", "alice")]["spec"]["email"] = "alice@new.example.com"
    order: list[str] = []
    create_binding, create_secret = store.create_role_binding, store.create_secret
    store.create_role_binding = lambda b: order.append("binding") or create_binding(b)  # type: ignore[method-assign]
    store.create_secret = lambda s: order.append("secret") or create_secret(s)  # type: ignore[method-assign]
    reconcile(store)
    assert order == ["binding", "secret"]
    assert secret_key(store) != old_key
    binding = store.read("rolebindings", "graft-apikey-ci")
    assert binding is not None
    assert binding["subjects"][0]["name"] == "alice@new.example.com"
    obj = store.read("apikeys", "ci")
    assert obj is not None
    assert obj["status"]["user"] == "alice@new.example.com"


# --- Waiting, conflicts, expiry -------------------------------------------------------------------


def test_no_key_without_its_user(store: Store) -> None:
    del store.objects[("users", "alice")]
    reconcile(store)
    assert ready(store)["reason"] == "WaitingForUser"
    assert store.read("secrets", "ci-apikey") is None
    assert store.secrets_made == []


def test_a_foreign_secret_is_never_touched(store: Store) -> None:
    store.put("secrets", {"metadata": {"name": "ci-apikey"}, "data": {"x": "eQ=="}})
    reconcile(store)
    assert ready(store)["reason"] == "SecretConflict"
    secret = store.read("secrets", "ci-apikey")
    assert secret is not None
    assert secret["data"] == {"x": "eQ=="}
    assert store.secrets_made == []


def test_an_expired_key_is_not_issued(store: Store) -> None:
    store.objects[("apikeys", "ci")]["spec"]["expiresAt"] = "2020-01-01T00:00:00Z"
    reconcile(store)
    assert ready(store)["reason"] == "Expired"
    assert store.secrets_made == []


def test_an_invalid_spec_fails(store: Store) -> None:
    store.objects[("apikeys", "ci")]["spec"]["expiresAt"] = "2030-01-01T00:00:00"
    reconcile(store)
    cond = ready(store)
    assert cond["reason"] == "InvalidSpec"
    assert "timezone" in cond["message"]


def test_nobody_is_let_read_a_secret_graft_did_not_make(store: Store) -> None:
    """A Secret of the key's name that is not the ApiKey's: no access is granted to it, and
    access granted before (to the ApiKey's own, since deleted) is taken back."""
    store.put("secrets", {"metadata": {"name": "ci-apikey"}, "data": {"x": "eQ=="}})
    reconcile(store)
    assert store.read("roles", "graft-apikey-ci") is None
    assert store.read("rolebindings", "graft-apikey-ci") is None

    del store.objects[("secrets", "ci-apikey")]
    reconcile(store)
    assert_consistent(store)
    assert store.read("rolebindings", "graft-apikey-ci") is not None
    del store.objects[("secrets", "ci-apikey")]
    store.put("secrets", {"metadata": {"name": "ci-apikey"}, "data": {"x": "eQ=="}})
    reconcile(store)
    assert ready(store)["reason"] == "SecretConflict"
    assert store.read("roles", "graft-apikey-ci") is None
    assert store.read("rolebindings", "graft-apikey-ci") is None


# --- The operator's access to the account's Secrets -----------------------------------------------


def test_no_key_until_the_account_lets_the_operator_read_its_secrets(store: Store) -> None:
    """Without the Account's RoleBinding the API server would refuse every Secret call: the key
    waits, touching no Secret, Role or RoleBinding, and is issued once the binding is there."""
    del store.objects[("rolebindings", SECRETS_BINDING_NAME)]
    store.forbidden = {"get", "delete", "role"}
    rechecks = reconcile(store)
    cond = ready(store)
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForAccount")
    assert SECRETS_BINDING_NAME in cond["message"]
    obj = store.read("apikeys", "ci")
    assert obj is not None
    assert obj["status"]["state"] == "Waiting"
    assert store.secrets_made == []
    assert store.read("roles", "graft-apikey-ci") is None
    assert store.read("rolebindings", "graft-apikey-ci") is None
    assert rechecks == [apikey_plan.ACCOUNT_RECHECK_SECONDS]

    store.put("rolebindings", operator_binding())
    store.forbidden = set()
    reconcile(store)
    assert_consistent(store)


def test_a_binding_for_another_service_account_is_not_enough(store: Store) -> None:
    store.put("rolebindings", operator_binding("someone-else"))
    reconcile(store)
    assert ready(store)["reason"] == "WaitingForAccount"
    assert store.secrets_made == []


@pytest.mark.parametrize(
    ("refused", "before"),
    [
        ({"get", "delete", "role"}, "nothing"),
        ({"role"}, "nothing"),
        ({"get", "delete", "role"}, "lost"),
        # A rotation refused between the new hash in status and the new Secret.
        ({"delete"}, "changed"),
    ],
)
def test_a_refused_secret_waits_instead_of_failing(
    store: Store, refused: set[str], before: str
) -> None:
    """The binding is there but the API server does not honour it (yet): a condition and a
    re-check soon, not a reconcile that fails on a 403; once it does, the key is consistent."""
    if before != "nothing":
        reconcile(store)
        if before == "lost":
            del store.objects[("secrets", "ci-apikey")]
        else:
            store.objects[("secrets", "ci-apikey")]["data"]["apiKey"] = "eQ=="
    store.forbidden = refused
    rechecks = reconcile(store)
    cond = ready(store)
    assert cond["reason"] == "WaitingForAccount"
    assert "Forbidden" in cond["message"]
    assert rechecks == [apikey_plan.ACCOUNT_RECHECK_SECONDS]
    store.forbidden = set()
    reconcile(store)
    assert_consistent(store)
    assert_no_key_outside_secrets(store)
