"""ApiKeys on a real API server: the key in its Secret, who may read it, expiry, and the garbage
collector.

The operator runs as its shipped ServiceAccount under the generated ClusterRole (conftest.py), so
a permission the ApiKey reconciler lacks fails these tests (and the check for RBAC denials after
each one). People act through impersonation (`kubectl --as=alice@example.com`), which the API
server authorizes as it would alice's own token; `kubectl auth can-i --as` asks it the same
question through a SubjectAccessReview. The local control plane runs kube-controller-manager, so
ownerReferences are followed by the real garbage collector.

With GRAFT_DUMP_FIXTURES=<dir>, the objects in each state Argo CD should judge are dumped as
fixtures for deploy/argocd/graft.dev/ApiKey (tests/harness/dump.py, hack/argocd-fixtures.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.dump import dump
from harness.kube import Cluster, OperatorProcess, condition, wait_for

GROUP = "graft.dev/v1alpha1"
KIND = "apikeys.graft.dev"
ALICE, BOB, CAROL, VIC = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "vic@example.com",
)
KEY_RE = r"graft_[0-9a-f]{16}_[0-9a-f]{64}"


# --- Fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def accounts(operator: OperatorProcess) -> Iterator[Callable[[str], str]]:
    """Make Ready Accounts with unique IDs; delete them with everything in them afterwards."""
    cluster = operator.cluster
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        cluster.apply(
            {"apiVersion": GROUP, "kind": "Account", "metadata": {"name": name}, "spec": {}}
        )
        made.append(name)
        wait_for(f"Account {name} Ready", lambda: ready(cluster, "accounts.graft.dev", name), 120)
        return name

    yield make
    for name in made:
        cluster.kubectl(
            "patch", "accounts.graft.dev", name, "--type=merge",
            "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "accounts.graft.dev", name, "--wait=false", check=False)


def user(name: str, ns: str, email: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "User",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"email": email, "role": role},
    }


def api_key(name: str, ns: str, owner: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "ApiKey",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"user": owner, **spec},
    }


def current(obj: dict[str, Any] | None) -> bool:
    if obj is None:
        return False
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"].get("generation"))


def ready(cluster: Cluster, kind: str, name: str, ns: str | None = None) -> dict[str, Any] | None:
    obj = cluster.get(kind, name, ns)
    ok = current(obj) and (condition(obj, "Ready") or {}).get("status") == "True"
    return obj if ok else None


def with_reason(cluster: Cluster, name: str, ns: str, reason: str) -> dict[str, Any] | None:
    obj = cluster.get(KIND, name, ns)
    ok = current(obj) and (condition(obj, "Ready") or {}).get("reason") == reason
    return obj if ok else None


def key_ready(cluster: Cluster, name: str, ns: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(f"ApiKey {name} Ready", lambda: ready(cluster, KIND, name, ns), timeout)


def if_expired_at(obj: dict[str, Any] | None, at: datetime) -> dict[str, Any] | None:
    """obj when its status is about the expiry `at` (not an earlier spec's)."""
    return obj if obj and obj["status"].get("expiresAt") == rfc3339(at) else None


def key_in_secret(cluster: Cluster, name: str, ns: str) -> str:
    secret = cluster.get("secret", name, ns)
    assert secret is not None, f"no Secret {name}"
    return base64.b64decode(secret["data"]["apiKey"]).decode()


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def can_i(cluster: Cluster, who: str, verb: str, resource: str, ns: str, *flags: str) -> bool:
    """The API server's SubjectAccessReview; `resource` may be TYPE/NAME (one object)."""
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, "-n", ns, f"--as={who}", *flags, check=False
    )
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def events_of(cluster: Cluster, name: str, ns: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "events", "-n", ns, "-o", "json",
        f"--field-selector=involvedObject.kind=ApiKey,involvedObject.name={name}",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def versions(cluster: Cluster, name: str, ns: str) -> dict[str, str]:
    found = {
        "apikey": cluster.get(KIND, name, ns),
        "secret": cluster.get("secret", f"{name}-apikey", ns),
        "role": cluster.get("role", f"graft-apikey-{name}", ns),
        "rolebinding": cluster.get("rolebinding", f"graft-apikey-{name}", ns),
    }
    return {k: o["metadata"]["resourceVersion"] for k, o in found.items() if o is not None}


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- Issuing a key, and who may read it ---------------------------------------------------------


def test_a_key_is_issued_once_into_a_secret_only_its_user_can_read(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("keys")

    # The ApiKey first: it waits for its User.
    created = cluster.kubectl(
        "create", "-o", "json", "-f", "-",
        input=json.dumps(api_key("ci", ns, "alice", description="CI pipeline")),
    ).stdout  # fmt: skip
    dump(json.loads(created), "new")
    waiting = wait_for(
        "WaitingForUser", lambda: with_reason(cluster, "ci", ns, "WaitingForUser"), 30
    )
    dump(waiting, "waiting-for-user")
    assert "User alice does not exist" in (condition(waiting, "Ready") or {})["message"]
    assert cluster.get("secret", "ci-apikey", ns) is None

    cluster.apply(
        [
            user("alice", ns, ALICE, "member"),
            user("bob", ns, BOB, "member"),
            user("carol", ns, CAROL, "admin"),
            user("vic", ns, VIC, "viewer"),
        ]
    )
    obj = key_ready(cluster, "ci", ns)
    dump(obj, "issued")
    status = obj["status"]
    key = key_in_secret(cluster, "ci-apikey", ns)
    assert status["keyHash"] == sha256(key)
    assert key.startswith(f"graft_{status['keyId']}_")
    assert status["redactedKey"] == f"graft_{status['keyId']}_..."
    assert (status["secretName"], status["user"], status["state"]) == ("ci-apikey", ALICE, "Ready")
    assert status["name"] == f"accounts/{ns}/apikeys/ci"
    assert "expiresAt" not in status
    assert "never expires" in (condition(obj, "Ready") or {})["message"]

    # The key is nowhere but in its Secret: not in the ApiKey, not in its Events.
    secret_part = key.rsplit("_", 1)[1]
    assert secret_part not in json.dumps(obj)
    events = events_of(cluster, "ci", ns)
    assert secret_part not in json.dumps(events)
    assert {"AccessGranted", "KeyIssued", "Issued"} <= {e["reason"] for e in events}

    # Owners: the ApiKey belongs to its User, the Secret, Role and RoleBinding to the ApiKey.
    alice = cluster.get("users.graft.dev", "alice", ns)
    assert alice is not None
    (to_user,) = obj["metadata"]["ownerReferences"]
    assert (to_user["kind"], to_user["uid"]) == ("User", alice["metadata"]["uid"])
    assert not obj["metadata"].get("finalizers")
    secret = cluster.get("secret", "ci-apikey", ns)
    assert secret is not None
    assert (secret["type"], secret["immutable"]) == ("Opaque", True)
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "graft"
    assert secret["metadata"]["labels"]["graft.dev/key-id"] == status["keyId"]
    for child in (
        secret,
        cluster.get("role", "graft-apikey-ci", ns),
        cluster.get("rolebinding", "graft-apikey-ci", ns),
    ):
        assert child is not None
        assert child["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    # Only alice may read it: not another member, not an admin of the account, not a viewer.
    assert can_i(cluster, ALICE, "get", "secret/ci-apikey", ns)
    for who in (BOB, CAROL, VIC):
        assert not can_i(cluster, who, "get", "secret/ci-apikey", ns), who
    assert not can_i(cluster, ALICE, "list", "secrets", ns)
    assert not can_i(cluster, ALICE, "get", "secret/other-apikey", ns)
    # The README's way to get it, as alice.
    got = cluster.kubectl(
        f"--as={ALICE}", "get", "secret", "ci-apikey", "-n", ns, "-o", "jsonpath={.data.apiKey}"
    )
    assert base64.b64decode(got.stdout).decode() == key
    refused = cluster.kubectl(f"--as={BOB}", "get", "secret", "ci-apikey", "-n", ns, check=False)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr

    # Members and admins make and delete keys; viewers only see them.
    for who in (ALICE, BOB, CAROL):
        assert can_i(cluster, who, "create", KIND, ns)
        assert can_i(cluster, who, "delete", KIND, ns)
    assert can_i(cluster, VIC, "list", KIND, ns)
    assert not can_i(cluster, VIC, "create", KIND, ns)
    # Nobody in the account can write status (where the hash the gateway trusts lives).
    for who in (ALICE, CAROL):
        assert not can_i(cluster, who, "patch", KIND, ns, "--subresource=status")

    # Re-applying the same manifest changes nothing, even after several re-checks. (The ApiKey
    # was made with `kubectl create`: a first apply only adds kubectl's last-applied annotation.)
    cluster.apply(api_key("ci", ns, "alice", description="CI pipeline"))
    before = versions(cluster, "ci", ns)
    assert len(before) == 4
    out = cluster.apply(api_key("ci", ns, "alice", description="CI pipeline"))
    assert "unchanged" in out
    time.sleep(3 * operator.settle_seconds + 2)
    assert versions(cluster, "ci", ns) == before
    assert key_in_secret(cluster, "ci-apikey", ns) == key

    # spec.user cannot change; it is an ID in this account.
    moved = cluster.kubectl(
        "patch", KIND, "ci", "-n", ns, "--type=merge", "-p", '{"spec":{"user":"bob"}}',
        check=False,
    )  # fmt: skip
    assert moved.returncode != 0
    assert "spec.user cannot change" in moved.stderr
    bad = cluster.kubectl(
        "create", "-f", "-", check=False,
        input=json.dumps(api_key("elsewhere", ns, "accounts/other/users/alice")),
    )  # fmt: skip
    assert bad.returncode != 0
    assert "spec.user" in bad.stderr


def test_a_lost_secret_gets_a_new_key(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("lost")
    cluster.apply([user("alice", ns, ALICE, "member"), api_key("ci", ns, "alice")])
    first = key_ready(cluster, "ci", ns)["status"]
    old_key = key_in_secret(cluster, "ci-apikey", ns)

    # Someone with more rights than the account's users deletes the Secret: the next re-check
    # (the operator watches no Secrets) issues a new key, since nobody can have the old one.
    cluster.kubectl("delete", "secret", "ci-apikey", "-n", ns)

    def rotated_key() -> dict[str, Any] | None:
        obj = ready(cluster, KIND, "ci", ns)
        if obj is None or obj["status"]["keyId"] == first["keyId"]:
            return None
        return obj if cluster.get("secret", "ci-apikey", ns) else None

    rotated = wait_for("a new key", rotated_key, timeout=4 * operator.resync_seconds + 30)
    new_key = key_in_secret(cluster, "ci-apikey", ns)
    assert new_key != old_key
    assert rotated["status"]["keyHash"] == sha256(new_key)
    warnings = [e for e in events_of(cluster, "ci", ns) if e["reason"] == "KeyRotated"]
    assert warnings
    assert warnings[0]["type"] == "Warning"
    assert first["keyId"] in warnings[0]["message"]
    assert old_key.rsplit("_", 1)[1] not in warnings[0]["message"]


# --- Expiry -------------------------------------------------------------------------------------


def test_keys_expire_at_their_time(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("exp")
    # The key is issued first with an expiry far off, then given one a few seconds ahead: how
    # long issuing takes on a busy machine must not decide whether the test sees it Ready.
    far = datetime.now(UTC) + timedelta(days=1)
    past = datetime.now(UTC) - timedelta(minutes=1)
    cluster.apply(
        [
            user("alice", ns, ALICE, "member"),
            api_key("soon", ns, "alice", expiresAt=rfc3339(far)),
            api_key("past", ns, "alice", expiresAt=rfc3339(past)),
        ]
    )

    # Already past: never issued.
    gone = wait_for("Expired", lambda: with_reason(cluster, "past", ns, "Expired"), 60)
    assert gone["status"]["state"] == "Expired"
    assert "keyId" not in gone["status"]
    assert cluster.get("secret", "past-apikey", ns) is None

    # Issued, then Expired once its time has come (with the test operator's 2 s resync this
    # cannot tell the re-check scheduled at expiry from a resync; tests/unit/test_plan_apikey.py
    # and test_controller_rechecks.py do).
    issued = key_ready(cluster, "soon", ns)
    assert issued["status"]["expiresAt"] == rfc3339(far)
    assert f"it expires at {rfc3339(far)}" in (condition(issued, "Ready") or {})["message"]
    # Whole seconds: the API server keeps expiresAt to the second, so the key rightly expires
    # at .000 of that second (a sub-second `soon` made `now >= soon` fail below, in CI).
    soon = (datetime.now(UTC) + timedelta(seconds=10)).replace(microsecond=0)
    cluster.apply(api_key("soon", ns, "alice", expiresAt=rfc3339(soon)))
    expired = wait_for(
        "the key Expired",
        lambda: if_expired_at(with_reason(cluster, "soon", ns, "Expired"), soon),
        timeout=60,
    )
    dump(expired, "expired")
    assert datetime.now(UTC) >= soon
    ready_cond = condition(expired, "Ready") or {}
    assert ready_cond["status"] == "False"
    assert f"expired at {rfc3339(soon)}" in ready_cond["message"]
    assert expired["status"]["keyId"] == issued["status"]["keyId"]  # the gateway says why
    assert "Expired" in {e["reason"] for e in events_of(cluster, "soon", ns)}

    # A later expiry makes the same key usable again.
    later = datetime.now(UTC) + timedelta(days=30)
    cluster.apply(api_key("soon", ns, "alice", expiresAt=rfc3339(later)))
    again = key_ready(cluster, "soon", ns)
    assert again["status"]["keyId"] == issued["status"]["keyId"]
    assert again["status"]["expiresAt"] == rfc3339(later)


# --- Conflicts ----------------------------------------------------------------------------------


def test_a_secret_graft_did_not_make_is_never_taken_over(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("taken")
    cluster.kubectl(
        "create", "secret", "generic", "taken-apikey", "-n", ns, "--from-literal=apiKey=mine"
    )
    cluster.apply([user("alice", ns, ALICE, "member"), api_key("taken", ns, "alice")])
    conflict = wait_for(
        "SecretConflict", lambda: with_reason(cluster, "taken", ns, "SecretConflict"), 30
    )
    dump(conflict, "secret-conflict")
    assert conflict["status"]["state"] == "Failed"
    assert "keyId" not in conflict["status"]
    assert key_in_secret(cluster, "taken-apikey", ns) == "mine"
    assert not can_i(cluster, ALICE, "get", "secret/taken-apikey", ns)


# --- Deletion: the garbage collector ------------------------------------------------------------


def test_deleting_a_key_deletes_its_secret_and_access(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("del")
    cluster.apply([user("alice", ns, ALICE, "member"), api_key("ci", ns, "alice")])
    key_ready(cluster, "ci", ns)
    cluster.kubectl("delete", KIND, "ci", "-n", ns, "--timeout=30s")
    wait_for(
        "the Secret, Role and RoleBinding gone",
        lambda: not versions(cluster, "ci", ns),
        timeout=60,
    )
    assert not can_i(cluster, ALICE, "get", "secret/ci-apikey", ns)


def test_deleting_the_user_deletes_its_keys_even_with_the_operator_down(
    operator: OperatorProcess, accounts: Callable[[str], str]
) -> None:
    cluster = operator.cluster
    ns = accounts("gc")
    cluster.apply(
        [
            user("alice", ns, ALICE, "member"),
            user("bob", ns, BOB, "member"),
            api_key("one", ns, "alice"),
            api_key("two", ns, "alice"),
            api_key("bobs", ns, "bob"),
        ]
    )
    for name in ("one", "two", "bobs"):
        key_ready(cluster, name, ns)

    operator.stop()
    try:
        cluster.kubectl("delete", "users.graft.dev", "alice", "-n", ns, "--timeout=30s")
        wait_for(
            "alice's ApiKeys, their Secrets and access gone",
            lambda: (
                not (
                    cluster.get(KIND, "one", ns)
                    or cluster.get(KIND, "two", ns)
                    or versions(cluster, "one", ns)
                    or versions(cluster, "two", ns)
                )
            ),
            timeout=90,
        )
    finally:
        operator.start()
    assert not can_i(cluster, ALICE, "get", "secret/one-apikey", ns)
    # Bob's key is untouched.
    assert ready(cluster, KIND, "bobs", ns) is not None
    assert cluster.get("secret", "bobs-apikey", ns) is not None
