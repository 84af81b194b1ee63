"""ApiKey reconciler: issue a User's key for the gateway, keep it in a Secret only that User can
read, and keep status.keyHash the hash of the key in that Secret.

A reconcile, in this order (graft.plan.apikey says why it is crash-safe):

1. the ApiKey is owned by its User, so that deleting the User deletes its keys;
   then it waits (`WaitingForAccount`) until its Account's RoleBinding graft-operator-secrets
   lets the operator get and delete Secrets in the namespace (it may nowhere else), and when the
   API server still refuses that access, instead of failing on the 403;
2. the Role and RoleBinding that let the User get the key's Secret: only when a Secret of that
   name is missing or this ApiKey's (else they are taken back: nobody reads a Secret Graft did
   not make for the key), and before the key, so that when the User's email changes the old
   address loses access before a new key exists;
3. the key, when there is none or its Secret is gone or does not hold it: the new key's hash into
   status first (on the resourceVersion this reconcile read), then its Secret;
4. status, and a re-check just after the key expires or after the resync interval.

ApiKeys carry no finalizer (no kopf timer; the re-check is graft.controller.rechecks), so they go
with their User through the garbage collector even while the operator is down, and their Secret,
Role and RoleBinding go with them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.tenancy import ApiKeySpec, UserSpec
from graft.controller.context import Context
from graft.controller.kube import Api, error_message
from graft.controller.status import publish
from graft.core.apikeys import generate
from graft.core.conditions import conditions_of, rfc3339
from graft.core.names import full_name
from graft.core.objects import Obj, Owner, is_terminating
from graft.plan.account import SECRETS_BINDING_NAME
from graft.plan.apikey import (
    Claim,
    Issued,
    KeyAction,
    KeyProblem,
    access_binding,
    access_in_sync,
    access_name,
    access_refused_problem,
    access_role,
    account_access_problem,
    api_key_status,
    claim,
    claim_problem,
    expired_problem,
    issued_key,
    key_action,
    key_fields,
    key_secret,
    recheck_after,
    secret_name,
    user_problem,
    user_reference,
    user_references,
)

log = logging.getLogger(__name__)

PLURAL = Plural.API_KEYS


class ApiKeyGone(Exception):
    """The ApiKey was deleted during the reconcile: nothing is left to do."""


class SecretRace(RuntimeError):
    """A Secret of the key's name appeared between reading and creating it; the retry reads it
    and, since it does not hold the key status names, replaces it."""


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return  # the garbage collector removes the Secret, Role and RoleBinding it owns
    owner = Owner.of(obj)
    now = datetime.now(UTC)
    issued = issued_key(obj.get("status"))
    try:
        spec = ApiKeySpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        user_id = str((obj.get("spec") or {}).get("user", ""))
        invalid = KeyProblem("InvalidSpec", str(exc), waiting=False)
        report(
            api, obj, owner, user=user_id, issued=issued, expires_at=None, problem=invalid, now=now
        )
        return

    user = api.cached_graft(Plural.USERS, namespace, spec.user)
    if user is not None and not is_terminating(user) and not user_references(obj):
        obj = adopt(api, obj, user)
    problem = expired_problem(issued, spec.expires_at, now) or user_problem(obj, spec.user, user)
    if problem is None:
        settings = ctx.settings
        problem = account_access_problem(
            api.get_role_binding(namespace, SECRETS_BINDING_NAME),
            namespace,
            settings.operator_service_account,
            settings.operator_namespace,
        )
    try:
        if problem is None and user is not None:
            email = UserSpec.model_validate(user.get("spec") or {}).email
            issued, problem = issue(api, obj, owner, user=spec.user, email=email, issued=issued)
    except ApiKeyGone:
        return
    except ApiException as exc:
        if exc.status != 403:
            raise
        # The account's RoleBinding is there, but the API server does not honour it (yet):
        # whatever this reconcile wrote, the next one finds it consistent (graft.plan.apikey).
        problem = access_refused_problem(namespace, error_message(exc))
    report(
        api,
        obj,
        owner,
        user=spec.user,
        issued=issued,
        expires_at=spec.expires_at,
        problem=problem,
        now=now,
    )
    ctx.recheck(
        PLURAL,
        namespace,
        name,
        recheck_after(spec.expires_at, now, ctx.settings.resync_seconds, problem),
    )


def adopt(api: Api, obj: Obj, user: Obj) -> Obj:
    """Make the User the ApiKey's owner; the patched ApiKey (or the one read, when someone
    changed it meanwhile: the next reconcile tries again)."""
    patched = api.add_graft_owner(PLURAL, obj, user_reference(user))
    if patched is None:
        return obj
    meta = obj["metadata"]
    log.info(
        "ApiKey %s/%s now belongs to User %s",
        meta["namespace"],
        meta["name"],
        user["metadata"]["name"],
    )
    return patched


def issue(
    api: Api, obj: Obj, owner: Owner, *, user: str, email: str, issued: Issued | None
) -> tuple[Issued | None, KeyProblem | None]:
    """Access to the key's Secret for its User, then the key in it. A Secret of that name that
    is not this ApiKey's is never touched, and nobody is let read it: access this ApiKey granted
    before is taken back."""
    name, namespace = secret_name(owner.name), owner.namespace
    secret = api.get_secret(namespace, name)
    found = claim(secret, owner)
    problem = claim_problem(found, "Secret", name, namespace)
    if problem is not None:
        revoke_access(api, owner)
        return issued, problem
    problem = grant_access(api, obj, owner, user, email)
    if problem is not None:
        return issued, problem
    ours = secret if found == Claim.OURS else None
    return ensure_key(api, obj, owner, user=user, email=email, issued=issued, secret=ours)


def revoke_access(api: Api, owner: Owner) -> None:
    """Delete this ApiKey's Role and RoleBinding (only its own: by uid)."""
    name, namespace = access_name(owner.name), owner.namespace
    for get, delete in (
        (api.get_role_binding, api.delete_role_binding),
        (api.get_role, api.delete_role),
    ):
        existing = get(namespace, name)
        if existing is not None and claim(existing, owner) == Claim.OURS:
            delete(namespace, name, existing["metadata"]["uid"])
            log.info("revoked %s %s/%s", existing.get("kind") or "access", namespace, name)


def grant_access(api: Api, obj: Obj, owner: Owner, user: str, email: str) -> KeyProblem | None:
    """The Role that allows `get` on the key's Secret, and its RoleBinding to the User's email;
    put back (delete + create: a RoleBinding's roleRef cannot change) when they differ."""
    binding_changed = False
    for desired, get, create, delete in (
        (access_role(owner, user), api.get_role, api.create_role, api.delete_role),
        (
            access_binding(owner, user, email),
            api.get_role_binding,
            api.create_role_binding,
            api.delete_role_binding,
        ),
    ):
        kind, meta = desired["kind"], desired["metadata"]
        existing = get(meta["namespace"], meta["name"])
        problem = claim_problem(claim(existing, owner), kind, meta["name"], meta["namespace"])
        if problem is not None:
            return problem
        if existing is not None:
            if access_in_sync(existing, desired):
                continue
            delete(meta["namespace"], meta["name"], existing["metadata"]["uid"])
        create(desired)
        binding_changed = binding_changed or kind == "RoleBinding"
        verb = "replaced" if existing else "created"
        log.info("%s %s %s/%s", verb, kind, meta["namespace"], meta["name"])
    if binding_changed:
        api.event(
            obj,
            "Normal",
            "AccessGranted",
            f"{email} may get Secret {secret_name(owner.name)} (Role and RoleBinding "
            f"{access_name(owner.name)}); nobody else in the account can",
        )
    return None


def ensure_key(
    api: Api,
    obj: Obj,
    owner: Owner,
    *,
    user: str,
    email: str,
    issued: Issued | None,
    secret: Obj | None,
) -> tuple[Issued | None, KeyProblem | None]:
    """The key status names, in its Secret (`secret`: this ApiKey's, as read; None when there is
    none): kept when it is there, else a new one (its hash first, then its Secret)."""
    namespace = owner.namespace
    decision = key_action(issued, secret, email)
    if decision.action == KeyAction.KEEP:
        return issued, None

    new = generate()
    fresh = Issued.of(new, owner.name, email)
    # The hash before the key: a crash from here on leaves status naming a key that no Secret
    # holds (nobody has seen it), which the next reconcile replaces; never a Secret whose key
    # status does not name. The resourceVersion makes a second writer fail instead of issuing.
    version = obj["metadata"]["resourceVersion"]
    if not api.patch_graft_status(
        PLURAL, namespace, owner.name, key_fields(fresh), resource_version=version
    ):
        raise ApiKeyGone
    if secret is not None:
        api.delete_secret(namespace, secret["metadata"]["name"], secret["metadata"]["uid"])
    if api.create_secret(key_secret(owner, user, new)) is None:
        raise SecretRace(
            f"Secret {secret_name(owner.name)} in namespace {namespace} appeared meanwhile; "
            "looking again"
        )
    if decision.action == KeyAction.ROTATE and issued is not None:
        api.event(
            obj,
            "Warning",
            "KeyRotated",
            f"key {issued.display} replaced by {fresh.display} in Secret {fresh.secret_name}: "
            f"{decision.why}; the old key no longer works",
        )
    else:
        api.event(
            obj,
            "Normal",
            "KeyIssued",
            f"issued key {fresh.display} to {email} (User {user}) in Secret {fresh.secret_name}",
        )
    log.info(
        "%s key %s of ApiKey %s/%s",
        "rotated" if decision.action == KeyAction.ROTATE else "issued",
        fresh.display,
        namespace,
        owner.name,
    )
    return fresh, None


def report(
    api: Api,
    obj: Obj,
    owner: Owner,
    *,
    user: str,
    issued: Issued | None,
    expires_at: datetime | None,
    problem: KeyProblem | None,
    now: datetime,
) -> None:
    status = api_key_status(
        owner=owner,
        full_name=full_name(owner.namespace, PLURAL, owner.name),
        user=user,
        issued=issued,
        expires_at=expires_at,
        problem=problem,
        previous=conditions_of(obj),
        now=rfc3339(now),
    )
    publish(api, obj, PLURAL, status, warning=problem is not None)
