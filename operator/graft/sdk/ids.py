"""IDs the SDK derives from what a user names: file names, job names (pure).

A Graft ID is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'. A name is
lowercased, every run of other characters becomes one '-', and it is trimmed; when the ID is
taken by a resource with another signature, '-' and the first 8 hex digits of the signature's
SHA-256 are appended (the base trimmed to leave room), so the same signature always lands on the
same suffixed ID and a re-run finds it again.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath

from graft.core.names import is_id

MAX_ID = 63
SUFFIX_HEX = 8
_INVALID = re.compile(r"[^a-z0-9]+")
DATA_SUFFIXES = (".jsonl", ".json", ".txt")


def to_id(name: str, *, default: str, max_length: int = MAX_ID) -> str:
    """`name` as a valid Graft ID of at most `max_length` characters (`default` if nothing is
    left of it)."""
    text = _INVALID.sub("-", name.lower()).strip("-")[:max_length].rstrip("-")
    return text if text and is_id(text) else default


def signature_hash(*parts: str) -> str:
    """The SHA-256 of a signature's parts (joined by NUL: no part holds one)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def with_suffix(id_: str, signature: str) -> str:
    """`id_` trimmed and suffixed with '-' + 8 hex digits of `signature` (a signature_hash)."""
    base = id_[: MAX_ID - SUFFIX_HEX - 1].rstrip("-")
    return f"{base}-{signature[:SUFFIX_HEX]}"


def dataset_id(filename: str) -> str:
    """A Dataset's ID from its file name: the name without its directory and data suffix."""
    name = PurePath(filename).name
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return to_id(name, default="dataset")


def job_id(name: str) -> str:
    """A FineTuningJob's ID from the SDK job's `name`."""
    return to_id(name, default="job")


def candidates(id_: str, signature: str) -> tuple[str, str]:
    """The ID to try first, and the one to use when the first is taken by another signature."""
    return id_, with_suffix(id_, signature)


def pair_id(first: str, second: str) -> str:
    """An ID for a pair of IDs (an addon in a Deployment): `first-second`, hashed when too long."""
    joined = f"{first}-{second}"
    if len(joined) <= MAX_ID:
        return joined
    return with_suffix(joined, signature_hash(first, second))
