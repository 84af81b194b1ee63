from __future__ import annotations

import pytest

from graft.core.names import InvalidReference, full_name, is_dns1035_label, parse_ref


def test_short_id_resolves_in_own_account() -> None:
    ref = parse_ref("llama", "models", account="acme")
    assert (ref.account, ref.id) == ("acme", "llama")
    assert ref.full_name == "accounts/acme/models/llama" == full_name("acme", "models", "llama")


def test_full_name_resolves_in_other_account() -> None:
    ref = parse_ref("accounts/shared/models/base-1", "models", account="acme")
    assert (ref.account, ref.id) == ("shared", "base-1")


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("accounts/acme/datasets/x", "names datasets"),
        ("Bad", "Graft ID"),
        ("accounts/Acme/models/x", "Graft ID"),
    ],
)
def test_bad_references(ref: str, match: str) -> None:
    with pytest.raises(InvalidReference, match=match):
        parse_ref(ref, "models", account="acme")


def test_dns1035() -> None:
    assert is_dns1035_label("abc-1")
    assert not is_dns1035_label("1abc")
