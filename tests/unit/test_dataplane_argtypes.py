from __future__ import annotations

import argparse

import pytest

from graft.dataplane.argtypes import positive_float, positive_int


def test_positive_values_pass_through() -> None:
    assert positive_int("3") == 3
    assert positive_float("2e-4") == pytest.approx(2e-4)


@pytest.mark.parametrize(("fn", "text", "match"), [
    (positive_int, "0", "must be positive"),
    (positive_int, "-2", "must be positive"),
    (positive_int, "1.5", "not an integer"),
    (positive_float, "0", "must be positive"),
    (positive_float, "nan", "must be positive"),
    (positive_float, "x", "not a number"),
])  # fmt: skip
def test_bad_values_are_refused_with_a_reason(fn: object, text: str, match: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        fn(text)  # type: ignore[operator]
