"""Durations as the CRDs spell them: parsing, formatting, and the same rule as the CRD pattern."""

from __future__ import annotations

import re

import pytest

from graft.api.common import DURATION_PATTERN
from graft.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0),
        ("30s", 30),
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2h0m5s", 7205),
        ("1m30s", 90),
        ("48h", 172_800),
    ],
)
def test_durations_parse_to_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize(
    "text", ["", "30", "s", "1.5h", "30s1m", "1m1m", "-5s", "5 s", "1d", "500ms", "1H", " 1h"]
)
def test_anything_else_is_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match="whole hours, minutes and seconds"):
        parse_duration(text)
    # The CRD's pattern refuses the same (the empty string by minLength).
    assert not text or not re.fullmatch(DURATION_PATTERN, text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (30, "30s"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (7.2, "8s"),
    ],
)
def test_formatting_is_the_shortest_form_and_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) >= seconds
