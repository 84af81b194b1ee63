from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from graft.gateway import apikeys
from graft.gateway.apikeys import (
    KeyRejected,
    MalformedKey,
    Rejection,
    StoredKey,
    authenticate,
    bearer_token,
    generate,
    hash_key,
    is_expired,
    parse,
    verify,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def counting_bytes() -> Callable[[int], bytes]:
    """Deterministic stand-in for secrets.token_bytes: 0x01, 0x02, ... per call."""
    calls = iter(range(1, 100))

    def token_bytes(n: int) -> bytes:
        return bytes([next(calls)]) * n

    return token_bytes


def test_generated_key_has_the_documented_format_and_parses_back() -> None:
    new = generate()
    assert apikeys.KEY_RE.fullmatch(new.key)
    assert new.key.startswith(f"graft_{new.key_id}_")
    parsed = parse(new.key)
    assert parsed.key_id == new.key_id
    assert len(parsed.secret) == 64  # 32 bytes, 256 bits
    assert new.key_hash == hash_key(new.key)


def test_generation_uses_256_bits_for_the_secret_and_64_for_the_id() -> None:
    asked: list[int] = []

    def token_bytes(n: int) -> bytes:
        asked.append(n)
        return b"\xab" * n

    new = generate(token_bytes)
    assert asked == [8, 32]
    assert new.key == "graft_" + "ab" * 8 + "_" + "ab" * 32


def test_two_keys_differ() -> None:
    a, b = generate(), generate()
    assert a.key_id != b.key_id
    assert parse(a.key).secret != parse(b.key).secret


def test_hash_is_sha256_of_the_whole_key() -> None:
    key = generate(counting_bytes()).key
    assert hash_key(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_secrets_stay_out_of_reprs() -> None:
    new = generate()
    secret = parse(new.key).secret
    assert secret not in repr(new)
    assert secret not in repr(parse(new.key))
    assert secret not in str(parse(new.key))
    assert str(parse(new.key)) == f"graft_{new.key_id}_..."


@pytest.mark.parametrize(
    "text",
    [
        "",
        "graft_",
        "sk-" + "a" * 48,  # someone else's key format
        "graft_0123456789abcdef",  # no secret
        "graft_0123456789abcdef_" + "a" * 63,  # secret one digit short
        "graft_0123456789abcdef_" + "a" * 65,
        "graft_0123456789ABCDEF_" + "a" * 64,  # uppercase
        "graft_0123456789abcde_" + "a" * 65,  # separator moved
        "grafx_0123456789abcdef_" + "a" * 64,
        "graft_0123456789abcdef_" + "g" * 64,  # not hex
        " graft_0123456789abcdef_" + "a" * 64,  # whitespace is not trimmed silently
        "graft_0123456789abcdef_" + "a" * 64 + "\n",
    ],
)
def test_malformed_keys_raise_a_typed_error_that_does_not_echo_them(text: str) -> None:
    with pytest.raises(MalformedKey) as caught:
        parse(text)
    if len(text.strip()) > len("graft_"):
        assert text.strip() not in str(caught.value)


def test_verify_accepts_the_key_and_nothing_else() -> None:
    new = generate(counting_bytes())
    assert verify(new.key, new.key_hash)
    wrong_secret = new.key[:-1] + ("0" if new.key[-1] != "0" else "1")
    assert not verify(wrong_secret, new.key_hash)


def test_verify_fails_closed_on_an_unknown_hash_scheme() -> None:
    new = generate()
    digest = new.key_hash.removeprefix("sha256:")
    assert not verify(new.key, "bcrypt:" + digest)
    assert not verify(new.key, digest)
    assert not verify(new.key, "")


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real = apikeys.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    new = generate()
    assert verify(new.key, new.key_hash)
    assert seen == [(new.key_hash, new.key_hash)]


def test_expiry_is_inclusive_of_the_instant() -> None:
    at = NOW
    assert not is_expired(None, NOW)
    assert not is_expired(at, NOW - timedelta(microseconds=1))
    assert is_expired(at, NOW)
    assert is_expired(at, NOW + timedelta(days=1))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


class Store:
    def __init__(self, *keys: StoredKey) -> None:
        self.keys = {k.key_id: k for k in keys}
        self.looked_up: list[str] = []

    def __call__(self, key_id: str) -> StoredKey | None:
        self.looked_up.append(key_id)
        return self.keys.get(key_id)


def stored(new: apikeys.NewKey, expires_at: datetime | None = None) -> StoredKey:
    return StoredKey(new.key_id, new.key_hash, account="acme", expires_at=expires_at)


def rejection(presented: str | None, store: Store) -> KeyRejected:
    with pytest.raises(KeyRejected) as caught:
        authenticate(presented, store, NOW)
    return caught.value


def test_authenticate_returns_the_stored_key() -> None:
    new = generate()
    store = Store(stored(new, expires_at=NOW + timedelta(seconds=1)))
    assert authenticate(new.key, store, NOW).account == "acme"
    assert store.looked_up == [new.key_id]


def test_missing_and_malformed_keys_are_rejected_before_any_lookup() -> None:
    store = Store()
    assert rejection(None, store).reason == Rejection.MISSING
    assert rejection("sk-nope", store).reason == Rejection.MALFORMED
    assert store.looked_up == []


def test_unknown_id_and_wrong_secret_look_the_same_to_the_caller() -> None:
    new = generate(counting_bytes())
    wrong = f"graft_{new.key_id}_{'f' * 64}"
    unknown = f"graft_{'e' * 16}_{'f' * 64}"
    store = Store(stored(new))
    wrong_secret = rejection(wrong, store)
    unknown_id = rejection(unknown, store)
    assert wrong_secret.reason == Rejection.WRONG_SECRET
    assert unknown_id.reason == Rejection.UNKNOWN
    assert wrong_secret.message.replace(new.key_id, "X") == unknown_id.message.replace(
        "e" * 16, "X"
    )
    assert "f" * 64 not in wrong_secret.message
    assert wrong_secret.key_id == new.key_id


def test_an_expired_key_is_rejected_and_says_so() -> None:
    new = generate()
    store = Store(stored(new, expires_at=NOW - timedelta(minutes=1)))
    rejected = rejection(new.key, store)
    assert rejected.reason == Rejection.EXPIRED
    assert "expired" in rejected.message
    assert new.key_id in rejected.message


def test_expiry_is_not_revealed_without_the_secret() -> None:
    new = generate()
    store = Store(stored(new, expires_at=NOW - timedelta(minutes=1)))
    rejected = rejection(f"graft_{new.key_id}_{'0' * 64}", store)
    assert rejected.reason == Rejection.WRONG_SECRET
    assert "expired" not in rejected.message


def test_the_gateway_checks_keys_with_the_operators_implementation() -> None:
    """The operator issues keys with graft.core.apikeys; the gateway must not have a copy."""
    from graft.core import apikeys as core

    for name in ("generate", "hash_key", "display", "is_expired", "KEY_RE", "HASH_RE", "NewKey"):
        assert getattr(apikeys, name) is getattr(core, name), name
