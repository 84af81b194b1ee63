"""Data-plane API keys: generation, parsing, hashing for storage, verification and expiry.

Format: ``graft_<key id>_<secret>``, where the key ID is 16 lowercase hex digits (64 random bits)
and the secret 64 lowercase hex digits (256 random bits, from `secrets`). Example:

    graft_3f9c0a1b2c3d4e5f_9b2e...(64 hex digits)

- The key ID is public: logs, events, status and error messages name a key by it
  (``graft_3f9c0a1b2c3d4e5f_...``) and the gateway finds the stored hash by it. It carries no
  secret, so it may be shown anywhere; 64 bits make a collision between two keys negligible.
- The ``graft_`` prefix lets secret scanners and people recognise a leaked key. Hex keeps the
  format unambiguous: neither part can contain the ``_`` separator, so parsing is one regex.
- Only a hash of the whole key is stored (``sha256:<64 hex digits>``); the key itself is shown
  once, when it is made.

Why SHA-256 and not bcrypt/scrypt/argon2: a slow, salted hash protects *low-entropy* secrets
(passwords) from dictionary attacks when the hash store leaks. These secrets are 256 uniformly
random bits, so no dictionary exists and a preimage search on SHA-256 is out of reach however fast
each guess is; salting adds nothing either, as no two keys share a secret. A slow hash would only
cost the gateway tens of milliseconds of CPU on every request (or push it into caching plaintext
keys in memory). Hashing the whole key, ID included, binds a stored hash to its ID.

Verification compares digests with `hmac.compare_digest`, so the time taken does not reveal how
much of a guess was right; the secret is checked before the expiry, so someone without the secret
learns nothing about a key's expiry either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

PREFIX = "graft"
KEY_ID_BYTES = 8  # 64 bits: an identifier, unique among an installation's keys
SECRET_BYTES = 32  # 256 bits of entropy: the part that authenticates
HASH_SCHEME = "sha256"

KEY_RE = re.compile(
    rf"{PREFIX}_(?P<id>[0-9a-f]{{{KEY_ID_BYTES * 2}}})_(?P<secret>[0-9a-f]{{{SECRET_BYTES * 2}}})"
)
HASH_RE = re.compile(rf"{HASH_SCHEME}:[0-9a-f]{{64}}")
KEY_FORMAT = f"{PREFIX}_<16 hex digits>_<64 hex digits>"


class MalformedKey(ValueError):
    """The presented string is not a Graft API key at all (wrong prefix, length or characters)."""


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str = field(repr=False)  # never in a log line, not even by accident

    def __str__(self) -> str:
        return display(self.key_id)


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: `key` goes to the user once; `key_id` and `key_hash` are stored."""

    key_id: str
    key: str = field(repr=False)
    key_hash: str


def display(key_id: str) -> str:
    """How logs and messages name a key: its public part, never the secret."""
    return f"{PREFIX}_{key_id}_..."


def generate(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> NewKey:
    """A new random key and the hash to store. `token_bytes` is injectable for tests only."""
    key_id = token_bytes(KEY_ID_BYTES).hex()
    secret = token_bytes(SECRET_BYTES).hex()
    key = f"{PREFIX}_{key_id}_{secret}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


def parse(key: str) -> ParsedKey:
    """Split a presented key into its ID and secret; MalformedKey when it is not a Graft key.
    The message never repeats the presented string: it may be someone's secret of another kind."""
    # fullmatch, not match with ^...$: `$` also matches before a trailing newline.
    match = KEY_RE.fullmatch(key)
    if match is None:
        raise MalformedKey(f"not a Graft API key: expected {KEY_FORMAT}")
    return ParsedKey(key_id=match["id"], secret=match["secret"])


def hash_key(key: str) -> str:
    """The stored form of a key: ``sha256:<hex digest>`` of the whole key string."""
    return f"{HASH_SCHEME}:{hashlib.sha256(key.encode('ascii')).hexdigest()}"


def verify(key: str, key_hash: str) -> bool:
    """Whether `key` hashes to `key_hash`, compared in constant time. A stored hash of an unknown
    scheme never verifies (fail closed), rather than being compared as something else."""
    if HASH_RE.fullmatch(key_hash) is None:
        return False
    return hmac.compare_digest(hash_key(key), key_hash)


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a key with this expiry is no longer valid at `now` (timezone-aware datetimes).
    The key stops working at expires_at itself, not a moment later."""
    return expires_at is not None and now >= expires_at


@dataclass(frozen=True)
class StoredKey:
    """What the gateway knows about one key (from an ApiKey object): never the key itself."""

    key_id: str
    key_hash: str
    account: str
    expires_at: datetime | None = None


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
