"""Kubernetes resource quantities ("500m", "16Gi", "1e3", 4), compared by value (pure)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(\d+\.?\d*|\.\d+))"
    r"(?P<suffix>[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


class InvalidQuantity(ValueError):
    """Not a Kubernetes resource quantity."""


def quantity(value: str | int) -> Decimal:
    """The value of a Kubernetes quantity ("500m", "16Gi", "1e3", 4), to compare two spellings."""
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if m is None:
        raise InvalidQuantity(f"{value!r} is not a quantity such as 8, 500m or 64Gi")
    suffix = m["suffix"] or ""
    try:
        number = Decimal(m["number"])
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
    except (InvalidOperation, ValueError) as exc:
        raise InvalidQuantity(f"{value!r} is not a quantity") from exc
    return number * _SUFFIXES[suffix]


def same_quantities(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two resource lists name the same resources with equal values, however spelled."""
    if a.keys() != b.keys():
        return False
    try:
        return all(quantity(a[k]) == quantity(b[k]) for k in a)
    except InvalidQuantity:
        return False
