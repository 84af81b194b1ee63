"""Data-plane API keys: their format, how a new one is made, and the hash that is stored (pure).

The operator makes keys (graft.controller.apikey) and the gateway checks them
(graft.gateway.apikeys); both use this one module, so a key the operator issues is a key the
gateway accepts.

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
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

PREFIX = "graft"
KEY_ID_BYTES = 8  # 64 bits: an identifier, unique among an installation's keys
SECRET_BYTES = 32  # 256 bits of entropy: the part that authenticates
HASH_SCHEME = "sha256"

KEY_RE = re.compile(
    rf"{PREFIX}_(?P<id>[0-9a-f]{{{KEY_ID_BYTES * 2}}})_(?P<secret>[0-9a-f]{{{SECRET_BYTES * 2}}})"
)
HASH_RE = re.compile(rf"{HASH_SCHEME}:[0-9a-f]{{64}}")
KEY_FORMAT = f"{PREFIX}_<16 hex digits>_<64 hex digits>"


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


def hash_key(key: str) -> str:
    """The stored form of a key: ``sha256:<hex digest>`` of the whole key string."""
    return f"{HASH_SCHEME}:{hashlib.sha256(key.encode('ascii')).hexdigest()}"


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a key with this expiry is no longer valid at `now` (timezone-aware datetimes).
    The key stops working at expires_at itself, not a moment later: the operator's Expired
    condition and the gateway's refusal use this one rule."""
    return expires_at is not None and now >= expires_at
