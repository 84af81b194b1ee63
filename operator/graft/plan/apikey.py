"""An ApiKey's Secret, the Role and RoleBinding that let its User read it, and its status (pure).

The operator makes every key (graft.core.apikeys.generate), never a person, and keeps it in one
place only:

- status: the key's public ID and its SHA-256 (keyId, keyHash), which the gateway checks
  presented keys against; never the key.
- the Secret `<apikey>-apikey` (field `apiKey`): the key itself, written once (the Secret is
  immutable) and owned by the ApiKey. No status, Event, log line or message holds the key.
- the Role and RoleBinding `graft-apikey-<apikey>`: `get` on that one Secret for the key's User
  (the subject its User's RoleBinding names). Graft's account roles grant no Secrets at all, so
  nobody else in the account can read it.

Crash safety: a new key's hash is written to status first (on the resourceVersion the reconcile
read, so that two writers cannot both issue a key), and only then is its Secret created. Wherever
a crash interrupts that, the next reconcile finds either no Secret or a Secret whose key does not
hash to status.keyHash. Nobody can have read a key that is not in its Secret, so a new key (a new
key ID) replaces it: `key_action` says Rotate. A key in its Secret is kept until the ApiKey goes,
unless its User's email changes (another person may then read the Secret). So every key ID has
exactly one key, shown at most in one Secret, and once Ready is True status.keyHash is the hash of
the key in the Secret.

The ApiKey belongs to its User (an ownerReference the operator adds), so the garbage collector
deletes a User's keys with the User, whether or not the operator runs; the Secret, Role and
RoleBinding belong to the ApiKey and go with it the same way.

The operator may get and delete Secrets only in namespaces whose Account bound it those rights
(graft.plan.account.secrets_binding); until that RoleBinding is there (and the API server honours
it), a key waits (`WaitingForAccount`) instead of failing on 403s.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from graft.api.common import Condition
from graft.api.tenancy import ApiKeyStatus
from graft.core import keys
from graft.core.apikeys import NewKey, display, hash_key, is_expired
from graft.core.conditions import rfc3339, set_condition
from graft.core.objects import Obj, Owner, condition, is_ready, is_terminating, labels, labels_of
from graft.plan.account import SECRETS_BINDING_NAME, grants_secrets
from graft.plan.user import subjects_of, user_subject

SECRET_FIELD = "apiKey"
"""The field of the Secret that holds the key."""

EXPIRED = "Expired"
WAITING_FOR_ACCOUNT = "WaitingForAccount"
ACCOUNT_RECHECK_SECONDS = 5.0
"""How soon a key the API server refused Secret access for is looked at again: a RoleBinding
that was just made may take a moment to be honoured (its event woke the key already)."""
EXPIRY_SLACK_SECONDS = 1.0
"""A re-check scheduled for a key's expiry runs this long after it, so that it finds the key
expired rather than a moment before (and schedules another)."""


def secret_name(apikey: str) -> str:
    """The Secret that holds an ApiKey's key; a Graft ID is at most 63 characters, so this never
    truncates."""
    return f"{apikey}-apikey"


def access_name(apikey: str) -> str:
    """The Role and the RoleBinding that let an ApiKey's User read its Secret."""
    return f"graft-apikey-{apikey}"


def _labels(component: str, owner: Owner, user: str, **extra: str) -> dict[str, str]:
    return labels(component, owner, {keys.ACCOUNT: owner.namespace, keys.USER: user, **extra})


# --- The Secret --------------------------------------------------------------------------------


def key_secret(owner: Owner, user: str, new: NewKey) -> Obj:
    """The Secret that holds `new.key`, the only place the key is ever written."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        # A key never changes in place: a new key is a new Secret, with a new key ID.
        "immutable": True,
        "metadata": {
            "name": secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": _labels(keys.API_KEY_SECRET, owner, user, **{keys.KEY_ID: new.key_id}),
            "ownerReferences": [owner.reference()],
        },
        "stringData": {SECRET_FIELD: new.key},
    }


def held_key(secret: Obj) -> str | None:
    """The key a Secret holds (its apiKey field, decoded), or None when it holds none."""
    raw = (secret.get("data") or {}).get(SECRET_FIELD)
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None


# --- Who may read it ---------------------------------------------------------------------------


def access_role(owner: Owner, user: str) -> Obj:
    """`get` on the key's one Secret: not list or watch, which would show every Secret."""
    return {
        "apiVersion": f"{keys.RBAC_GROUP}/v1",
        "kind": "Role",
        "metadata": {
            "name": access_name(owner.name),
            "namespace": owner.namespace,
            "labels": _labels(keys.API_KEY_ACCESS, owner, user),
            "ownerReferences": [owner.reference()],
        },
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [secret_name(owner.name)],
                "verbs": ["get"],
            }
        ],
    }


def access_binding(owner: Owner, user: str, email: str) -> Obj:
    """The key's Role for its User, named as the User's own RoleBinding names it."""
    return {
        "apiVersion": f"{keys.RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": access_name(owner.name),
            "namespace": owner.namespace,
            "labels": _labels(keys.API_KEY_ACCESS, owner, user),
            "ownerReferences": [owner.reference()],
        },
        "roleRef": {"apiGroup": keys.RBAC_GROUP, "kind": "Role", "name": access_name(owner.name)},
        "subjects": [user_subject(email)],
    }


def access_in_sync(existing: Obj, desired: Obj) -> bool:
    """The existing Role or RoleBinding grants what the desired one does, with its labels."""
    found = labels_of(existing)
    if any(found.get(k) != v for k, v in desired["metadata"]["labels"].items()):
        return False
    if desired["kind"] == "Role":
        return bool(existing.get("rules") == desired["rules"])
    return bool(
        existing.get("roleRef") == desired["roleRef"]
        and subjects_of(existing) == desired["subjects"]
    )


class Claim(StrEnum):
    """Whose the object of a child's name is."""

    MISSING = "Missing"
    OURS = "Ours"  # made for this ApiKey (owned by its uid)
    GOING = "Going"  # being deleted, or made for an earlier ApiKey of this name (the GC's)
    FOREIGN = "Foreign"  # not made by Graft for an ApiKey of this name: never touched


def claim(existing: Obj | None, owner: Owner) -> Claim:
    if existing is None:
        return Claim.MISSING
    if is_terminating(existing):
        return Claim.GOING
    refs = (existing.get("metadata") or {}).get("ownerReferences") or []
    if any(r.get("uid") == owner.uid for r in refs):
        return Claim.OURS
    found = labels_of(existing)
    if (
        found.get(keys.MANAGED_BY) == keys.MANAGED_BY_VALUE
        and found.get(owner.label) == owner.name
        and any(r.get("kind") == owner.kind for r in refs)
    ):
        return Claim.GOING
    return Claim.FOREIGN


# --- The key -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A key as status records it: everything about it but the key."""

    key_id: str
    key_hash: str
    secret_name: str
    user: str
    """The email of the User it was issued to."""

    @classmethod
    def of(cls, new: NewKey, apikey: str, email: str) -> Issued:
        return cls(new.key_id, new.key_hash, secret_name(apikey), email)

    @property
    def display(self) -> str:
        return display(self.key_id)


def issued_key(status: Obj | None) -> Issued | None:
    """The key an ApiKey's status records, or None when none was issued."""
    found = status or {}
    key_id, key_hash = found.get("keyId"), found.get("keyHash")
    if not key_id or not key_hash:
        return None
    return Issued(key_id, key_hash, found.get("secretName") or "", found.get("user") or "")


KEY_FIELDS = ("keyId", "keyHash", "redactedKey", "secretName", "user")


def key_fields(issued: Issued) -> Obj:
    """The status fields that record a key, written before its Secret exists (and nothing else:
    conditions are the end of the reconcile's business)."""
    status = _with_key(ApiKeyStatus(), issued).wire()
    return {k: status[k] for k in KEY_FIELDS}


def _with_key(status: ApiKeyStatus, issued: Issued | None) -> ApiKeyStatus:
    if issued is not None:
        status.key_id = issued.key_id
        status.key_hash = issued.key_hash
        status.redacted_key = issued.display
        status.secret_name = issued.secret_name
        status.user = issued.user
    return status


class KeyAction(StrEnum):
    KEEP = "Keep"
    ISSUE = "Issue"  # no key yet
    ROTATE = "Rotate"  # the issued key is lost, or no longer its User's: a new one replaces it


@dataclass(frozen=True)
class KeyDecision:
    action: KeyAction
    why: str = ""


def key_action(issued: Issued | None, secret: Obj | None, email: str) -> KeyDecision:
    """What to do about the key, given the one status records, the key's Secret when it is this
    ApiKey's (None when there is none), and its User's email now."""
    if issued is None:
        return KeyDecision(KeyAction.ISSUE)
    if secret is None:
        return KeyDecision(
            KeyAction.ROTATE,
            f"Secret {issued.secret_name} is gone, and with it key {issued.display}",
        )
    held = held_key(secret)
    if held is None or hash_key(held) != issued.key_hash:
        return KeyDecision(
            KeyAction.ROTATE,
            f"Secret {issued.secret_name} does not hold key {issued.display} (it was never "
            "handed out, or was changed)",
        )
    if issued.user != email:
        return KeyDecision(
            KeyAction.ROTATE,
            f"the User's email changed from {issued.user} to {email}, and {issued.user} may "
            f"have read key {issued.display}",
        )
    return KeyDecision(KeyAction.KEEP)


# --- Problems ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyProblem:
    """Why an ApiKey is not Ready, as a condition reason and message; `waiting`: the next event
    or re-check may fix it, else only a change of spec (or of what conflicts) does."""

    reason: str
    message: str
    waiting: bool

    @property
    def state(self) -> str:
        if self.waiting:
            return "Waiting"
        return EXPIRED if self.reason == EXPIRED else "Failed"


def expired_problem(
    issued: Issued | None, expires_at: datetime | None, now: datetime
) -> KeyProblem | None:
    if expires_at is None or not is_expired(expires_at, now):
        return None
    what = f"key {issued.display}" if issued is not None else "the key"
    return KeyProblem(
        "Expired",
        f"{what} expired at {rfc3339(expires_at)}: set a later spec.expiresAt, or create a new "
        "ApiKey",
        waiting=False,
    )


def user_references(apikey: Obj) -> list[Obj]:
    """The ApiKey's ownerReferences to Users (the operator adds one, to its User)."""
    refs = (apikey.get("metadata") or {}).get("ownerReferences") or []
    return [r for r in refs if r.get("kind") == "User" and r.get("apiVersion") == keys.API_VERSION]


def user_reference(user: Obj) -> Obj:
    """The ApiKey's ownerReference to its User: the garbage collector deletes the key with the
    User. Not a controller reference: the User's reconciler does not manage keys."""
    return Owner.of(user).reference(controller=False)


def user_problem(apikey: Obj, user_id: str, user: Obj | None) -> KeyProblem | None:
    """A key is issued for, and usable by, a User that exists and is Ready (so is bound in an
    account's namespace); a key whose User is going goes with it."""
    namespace = apikey["metadata"]["namespace"]
    refs = user_references(apikey)
    if user is None and not refs:
        return KeyProblem(
            "WaitingForUser",
            f"User {user_id} does not exist in account {namespace} (yet); the key is issued "
            "once it does",
            waiting=True,
        )
    if (
        user is None
        or is_terminating(user)
        or (refs and all(r.get("uid") != user["metadata"]["uid"] for r in refs))
    ):
        return KeyProblem(
            "UserDeleted",
            f"User {user_id} is deleted or being deleted; the garbage collector deletes this "
            "ApiKey, its Secret and who may read it with the User",
            waiting=True,
        )
    if not is_ready(user):
        why = (condition(user, "Ready") or {}).get("reason") or "no status yet"
        return KeyProblem(
            "WaitingForUser",
            f"User {user_id} is not Ready ({why}); its key is issued, and usable, once it is",
            waiting=True,
        )
    return None


def account_access_problem(
    binding: Obj | None, namespace: str, service_account: str, operator_namespace: str
) -> KeyProblem | None:
    """A key is issued where the operator may read it back: in a namespace whose Account bound
    the operator its Secret rights (`binding`: the RoleBinding of that name there, or None)."""
    if grants_secrets(binding, service_account, operator_namespace):
        return None
    return KeyProblem(
        "WaitingForAccount",
        f"the operator may not read Secrets in namespace {namespace} yet: RoleBinding "
        f"{SECRETS_BINDING_NAME}, which Account {namespace} makes there for it, is missing or "
        f"binds another ServiceAccount (see the Account's Ready condition); the key is issued "
        "once it is there",
        waiting=True,
    )


def access_refused_problem(namespace: str, message: str) -> KeyProblem:
    """The API server refused the operator a Secret (or the Role that lets the User read one)
    although the account's RoleBinding is there: it is not honoured yet, or its ClusterRole is
    missing."""
    return KeyProblem(
        "WaitingForAccount",
        f"the API server refused the operator access to the key's Secret in namespace "
        f"{namespace} ({message}); it holds that right through RoleBinding "
        f"{SECRETS_BINDING_NAME} of Account {namespace} (see the Account's Ready condition), "
        "and tries again shortly",
        waiting=True,
    )


CONFLICT_REASONS = {
    "Secret": "SecretConflict",
    "Role": "RoleConflict",
    "RoleBinding": "RoleBindingConflict",
}


def conflict_problem(kind: str, name: str, namespace: str) -> KeyProblem:
    return KeyProblem(
        CONFLICT_REASONS[kind],
        f"{kind} {name} in namespace {namespace} exists and was not made by Graft for this "
        "ApiKey; Graft does not take it over: delete it, or give the ApiKey another name",
        waiting=False,
    )


def claim_problem(found: Claim, kind: str, name: str, namespace: str) -> KeyProblem | None:
    """Why the object of a child's name keeps this ApiKey from making its own, if it does."""
    if found == Claim.FOREIGN:
        return conflict_problem(kind, name, namespace)
    if found == Claim.GOING:
        return cleanup_problem(kind, name, namespace)
    return None


def cleanup_problem(kind: str, name: str, namespace: str) -> KeyProblem:
    return KeyProblem(
        "WaitingForCleanup",
        f"{kind} {name} in namespace {namespace} is being deleted, or belongs to an earlier "
        "ApiKey of this name that the garbage collector deletes; this ApiKey makes its own once "
        "it is gone",
        waiting=True,
    )


# --- Status and when to look again -------------------------------------------------------------


def api_key_status(
    *,
    owner: Owner,
    full_name: str,
    user: str,
    issued: Issued | None,
    expires_at: datetime | None,
    problem: KeyProblem | None,
    previous: list[Condition],
    now: str,
) -> ApiKeyStatus:
    """The status: the issued key's ID and hash (also while not Ready: the gateway refuses an
    expired key by its expiry, and a gone User's key goes with the User), and Ready."""
    if problem is None:
        if issued is None:
            raise ValueError("an ApiKey without a problem has an issued key")
        expiry = (
            "it never expires" if expires_at is None else f"it expires at {rfc3339(expires_at)}"
        )
        ready, reason, state = True, "Issued", "Ready"
        message = (
            f"key {issued.display} of {issued.user} (User {user}) is in Secret "
            f"{issued.secret_name}, which only that User can read; {expiry}"
        )
    else:
        ready, reason, message, state = False, problem.reason, problem.message, problem.state
    conditions = set_condition(
        previous, "Ready", ready, reason, message, generation=owner.generation, now=now
    )
    status = ApiKeyStatus(
        observed_generation=owner.generation,
        name=full_name,
        state=state,
        conditions=conditions,
        expires_at=expires_at,
    )
    return _with_key(status, issued)


def recheck_after(
    expires_at: datetime | None,
    now: datetime,
    resync: float,
    problem: KeyProblem | None = None,
) -> float:
    """Seconds until the operator looks at an ApiKey again: just after its expiry when that
    comes before the resync interval, else the resync interval (which also notices a Secret or
    Role someone deleted: the operator watches no Secrets); soon when it waits for the account's
    RoleBinding to be honoured."""
    after = resync
    if problem is not None and problem.reason == WAITING_FOR_ACCOUNT:
        after = min(after, ACCOUNT_RECHECK_SECONDS)
    if expires_at is None or expires_at <= now:
        return after
    return min(after, (expires_at - now).total_seconds() + EXPIRY_SLACK_SECONDS)
