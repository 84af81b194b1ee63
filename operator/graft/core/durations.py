"""Durations as the CRDs spell them (graft.api.common.DURATION_PATTERN): 30s, 10m, 1h, 1h30m (pure).

A subset of Go's time.ParseDuration, which is what Kubernetes users know from HPA behaviour and
probes: whole hours, minutes and seconds, in that order, each at most once. No fractions and no
ms/us/ns: the windows they express are seconds to hours long. The CRD refuses anything else at
admission; `parse_duration` refuses the same, for objects admitted under an older CRD.
"""

from __future__ import annotations

import math
import re

from graft.api.common import DURATION_PATTERN, DURATION_RULE

_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in `text` ("1h30m" is 5400). ValueError, with the rule, for anything else."""
    match = _DURATION_RE.fullmatch(text)
    if match is None or not text:
        raise ValueError(f"{text!r} {DURATION_RULE}")
    total = 0
    for part in match.groups():
        if part:
            total += int(part[:-1]) * _UNIT_SECONDS[part[-1]]
    return total


def format_duration(seconds: float) -> str:
    """The shortest duration string for whole `seconds`: 5400 is "1h30m", 0 is "0s". What
    parse_duration reads back; fractions are rounded up (a floor is never undercut)."""
    rest = max(0, math.ceil(seconds))
    if rest == 0:
        return "0s"
    out = ""
    for unit, size in _UNIT_SECONDS.items():
        count, rest = divmod(rest, size)
        if count:
            out += f"{count}{unit}"
    return out
