"""Kubernetes quantities, compared by value."""

from __future__ import annotations

from decimal import Decimal

import pytest

from graft.core.quantities import InvalidQuantity, quantity, same_quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", Decimal(1)),
        (4, Decimal(4)),
        ("500m", Decimal("0.5")),
        ("1.5", Decimal("1.5")),
        ("2k", Decimal(2000)),
        ("1Gi", Decimal(2**30)),
        ("16Gi", Decimal(16 * 2**30)),
        ("1e3", Decimal(1000)),
        ("100M", Decimal(10**8)),
    ],
)
def test_quantity_values(text: str | int, value: Decimal) -> None:
    assert quantity(text) == value


@pytest.mark.parametrize("bad", ["lots", "1Gb", "", "1.2.3", "Gi"])
def test_invalid_quantities(bad: str) -> None:
    with pytest.raises(InvalidQuantity):
        quantity(bad)


def test_same_quantities_ignores_spelling_not_keys() -> None:
    assert same_quantities({"cpu": "1000m", "memory": "1Gi"}, {"cpu": "1", "memory": "1024Mi"})
    assert not same_quantities({"cpu": "1"}, {"cpu": "2"})
    assert not same_quantities({"cpu": "1"}, {"cpu": "1", "memory": "1Gi"})
    assert not same_quantities({"cpu": "nonsense"}, {"cpu": "nonsense"})
