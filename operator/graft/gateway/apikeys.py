"""Data-plane API keys as the gateway sees them: parsing, verification, expiry, authentication.

The format, the generation and the stored hash are graft.core.apikeys (the operator issues keys
with them); they are re-exported here so that the gateway has one module to import. Only a hash
of a key is ever stored (``sha256:<64 hex digits>``); see graft.core.apikeys for why SHA-256.

Verification compares digests with `hmac.compare_digest`, so the time taken does not reveal how
much of a guess was right; the secret is checked before the expiry, so someone without the secret
learns nothing about a key's expiry either.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from graft.core.apikeys import (
    HASH_RE,
    HASH_SCHEME,
    KEY_FORMAT,
    KEY_ID_BYTES,
    KEY_RE,
    PREFIX,
    SECRET_BYTES,
    NewKey,
    display,
    generate,
    hash_key,
    is_expired,
)

__all__ = [
    "HASH_RE",
    "HASH_SCHEME",
    "KEY_FORMAT",
    "KEY_ID_BYTES",
    "KEY_RE",
    "PREFIX",
    "SECRET_BYTES",
    "KeyRejected",
    "MalformedKey",
    "NewKey",
    "ParsedKey",
    "Rejection",
    "StoredKey",
    "authenticate",
    "bearer_token",
    "display",
    "generate",
    "hash_key",
    "is_expired",
    "parse",
    "verify",
]


class MalformedKey(ValueError):
    """The presented string is not a Graft API key at all (wrong prefix, length or characters)."""


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str = field(repr=False)  # never in a log line, not even by accident

    def __str__(self) -> str:
        return display(self.key_id)


def parse(key: str) -> ParsedKey:
    """Split a presented key into its ID and secret; MalformedKey when it is not a Graft key.
    The message never repeats the presented string: it may be someone's secret of another kind."""
    # fullmatch, not match with ^...$: `$` also matches before a trailing newline.
    match = KEY_RE.fullmatch(key)
    if match is None:
        raise MalformedKey(f"not a Graft API key: expected {KEY_FORMAT}")
    return ParsedKey(key_id=match["id"], secret=match["secret"])


def verify(key: str, key_hash: str) -> bool:
    """Whether `key` hashes to `key_hash`, compared in constant time. A stored hash of an unknown
    scheme never verifies (fail closed), rather than being compared as something else."""
    if HASH_RE.fullmatch(key_hash) is None:
        return False
    return hmac.compare_digest(hash_key(key), key_hash)


@dataclass(frozen=True)
class StoredKey:
    """What the gateway knows about one key (from an ApiKey object): never the key itself."""

    key_id: str
    key_hash: str
    account: str
    expires_at: datetime | None = None
    role: str | None = None
    """The role of the key's User in its account (admin, member, viewer; api/tenancy.Role), for
    what a role decides in the gateway (dataset uploads need admin or member). None when the
    User names none the gateway knows: such a key is treated as the least privileged."""


class Rejection(StrEnum):
    """Why a presented key was refused. All of them answer 401; the reason is for logs."""

    MISSING = "Missing"
    MALFORMED = "Malformed"
    UNKNOWN = "UnknownKey"
    WRONG_SECRET = "WrongSecret"
    EXPIRED = "Expired"


class KeyRejected(Exception):
    def __init__(self, reason: Rejection, message: str, key_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.key_id = key_id


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive, as
    RFC 9110 says), or None when there is no such header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(
    presented: str | None,
    lookup: Callable[[str], StoredKey | None],
    now: datetime,
) -> StoredKey:
    """The stored key that `presented` proves, or KeyRejected saying why not.

    Order matters: parse, find by ID, check the secret, and only then the expiry, so that only
    the holder of the real secret learns that a key has expired. Unknown ID and wrong secret get
    the same message, so a caller cannot probe which key IDs exist.
    """
    if presented is None:
        raise KeyRejected(
            Rejection.MISSING,
            "Missing API key: send it as 'Authorization: Bearer <key>'.",
        )
    try:
        parsed = parse(presented)
    except MalformedKey as exc:
        raise KeyRejected(Rejection.MALFORMED, f"Malformed API key: {exc}.") from None
    stored = lookup(parsed.key_id)
    incorrect = f"Incorrect API key provided: {display(parsed.key_id)}."
    if stored is None:
        raise KeyRejected(Rejection.UNKNOWN, incorrect, parsed.key_id)
    if not verify(presented, stored.key_hash):
        raise KeyRejected(Rejection.WRONG_SECRET, incorrect, parsed.key_id)
    expires_at = stored.expires_at
    if expires_at is not None and is_expired(expires_at, now):
        raise KeyRejected(
            Rejection.EXPIRED,
            f"API key {display(parsed.key_id)} expired at {expires_at.isoformat()}; "
            "create a new ApiKey.",
            parsed.key_id,
        )
    return stored
