"""The autoscaling recommender: how many replicas a Deployment should have, and why.

Input: the spec (min and max replicas, the target of concurrent requests per replica, three
windows), load samples (time, requests in flight in total: running on a replica or waiting for
one), the current replica count and `now`. Output: a replica count and a sentence for a person.
The operator's leader runs it (graft.controller.autoscaler) on the load the gateways export;
it lives in plan/ because the operator is what runs it, and plan/ is pure.

A sample's count holds until the next sample (the load is a step function sampled by the
autoscaler), so the value in effect when a window opens is the last sample at or before its start.
One sample's desired replica count is ceil(in flight / target).

The rules, in the order they are applied:

1. Bounds: a current count outside [minReplicas, maxReplicas] (the spec just changed) moves to the
   nearest bound at once.
2. From zero: with no replica and any request in flight (pending), 1 replica at once, whatever
   the windows say: a request is waiting and nothing else can serve it.
3. Up: to the *lowest* desired count seen over the last scaleUpWindow (default 30 s), when that is
   above the current count. Load must be sustained for the whole window to add replicas, so a
   spike shorter than the window adds none: a replica is costly (a GPU, minutes of start-up)
   and a short spike is absorbed by the replicas' queues. This is the HPA's stabilization-window
   rule for scaling up (it uses the lowest recommendation in the window), with a default of 30 s
   instead of the HPA's 0.
4. To zero: when minReplicas is 0, no request was in flight at any moment of the last
   scaleToZeroWindow (default 1 h, at least the installation's floor, 5 min by default) and none
   arrived in it either. The samples must cover the whole window: an operator that became the
   leader 10 minutes ago does not know the hour before, and does not guess.
5. Down: to the *highest* desired count seen over the last scaleDownWindow (default 10 min), when
   that is below the current count, but never below 1 (zero is rule 4's decision alone). This is
   the HPA's rule for scaling down: the window remembers the recent peak, so a dip does not drop
   replicas that the next burst needs again.
6. Otherwise: stay.

Every result is clamped to [minReplicas, maxReplicas]. An autoscaler with less history than a
window acts on what it has for scaling up and down (it has not seen a peak, so there is none to
keep), as the HPA does after a restart; only rule 4 insists on a complete window. With no
samples at all it keeps the current count.

The load is a step function, so a sample that repeats the one before it says nothing new:
`LoadHistory` keeps only the changes, and an idle Deployment with an hour-long window costs one
sample, not 720.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from graft.core.settings import DEFAULT_MIN_SCALE_TO_ZERO_WINDOW

DEFAULT_SCALE_UP_WINDOW = 30.0
DEFAULT_SCALE_DOWN_WINDOW = 600.0
DEFAULT_SCALE_TO_ZERO_WINDOW = 3600.0
MIN_SCALE_TO_ZERO_WINDOW = DEFAULT_MIN_SCALE_TO_ZERO_WINDOW
"""The default floor of scaleToZeroWindow; an installation sets its own with
GRAFT_MIN_SCALE_TO_ZERO_WINDOW (see core.settings for why there is one)."""


@dataclass(frozen=True)
class AutoscaleSpec:
    max_replicas: int
    target_concurrency: float  # concurrent requests one replica should carry
    min_replicas: int = 0
    scale_up_window: float = DEFAULT_SCALE_UP_WINDOW  # seconds
    scale_down_window: float = DEFAULT_SCALE_DOWN_WINDOW
    scale_to_zero_window: float = DEFAULT_SCALE_TO_ZERO_WINDOW
    min_scale_to_zero_window: float = MIN_SCALE_TO_ZERO_WINDOW
    """The floor scale_to_zero_window may not go below (the operator raises a shorter window to
    it before building the spec, and says so in status)."""

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 0:
            problems.append(f"minReplicas must be 0 or more, not {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            problems.append(
                f"maxReplicas ({self.max_replicas}) must be at least 1 and at least "
                f"minReplicas ({self.min_replicas})"
            )
        if not self.target_concurrency > 0:
            problems.append(f"target must be above 0, not {self.target_concurrency}")
        if self.scale_up_window < 0 or self.scale_down_window < 0:
            problems.append("scaleUpWindow and scaleDownWindow must not be negative")
        if self.min_scale_to_zero_window < 0:
            problems.append(
                f"the scaleToZeroWindow floor must not be negative, not "
                f"{self.min_scale_to_zero_window:g}s"
            )
        if self.scale_to_zero_window < self.min_scale_to_zero_window:
            problems.append(
                f"scaleToZeroWindow must be at least {self.min_scale_to_zero_window:g}s, "
                f"not {self.scale_to_zero_window:g}s"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def longest_window(self) -> float:
        return max(self.scale_up_window, self.scale_down_window, self.scale_to_zero_window)


@dataclass(frozen=True)
class LoadSample:
    at: float  # seconds, on the same clock as `now`
    in_flight: int  # requests running on a replica or waiting for one, over all replicas


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    reason: str


def desired(in_flight: int, target: float) -> int:
    """Replicas that carry `in_flight` requests at `target` each."""
    return math.ceil(in_flight / target) if in_flight > 0 else 0


def in_window(samples: Sequence[LoadSample], start: float, now: float) -> list[int]:
    """The in-flight counts in effect during [start, now]: the one in effect at `start` (the
    last sample at or before it) and every sample after it up to `now`. `samples` sorted."""
    values = []
    before: LoadSample | None = None
    for s in samples:
        if s.at <= start:
            before = s
        elif s.at <= now:
            values.append(s.in_flight)
    return ([before.in_flight] if before is not None else []) + values


def covers(samples: Sequence[LoadSample], start: float) -> bool:
    """Whether the samples say what happened from `start` on (one is at or before it)."""
    return bool(samples) and samples[0].at <= start


def recommend(
    spec: AutoscaleSpec,
    samples: Iterable[LoadSample],
    current: int,
    now: float,
    last_request_at: float | None = None,
) -> Recommendation:
    """The replica count for now (see the module docstring for the rules). `last_request_at` is
    when the latest request arrived (None: none since the samples began); it catches a request
    that came and went between two samples."""
    history = sorted((s for s in samples if s.at <= now), key=lambda s: s.at)
    low, high = spec.min_replicas, spec.max_replicas

    def clamp(n: int) -> int:
        return min(high, max(low, n))

    if current < low:
        return Recommendation(low, f"{current} replicas is below minReplicas {low}")
    if current > high:
        return Recommendation(high, f"{current} replicas is above maxReplicas {high}")
    if not history:
        return Recommendation(current, "no load measured yet; keeping the current replicas")

    latest = history[-1].in_flight
    if current == 0 and latest > 0:
        return Recommendation(
            clamp(1), f"{latest} request(s) waiting and no replica: scaling up from zero"
        )

    target = spec.target_concurrency
    up_values = in_window(history, now - spec.scale_up_window, now)
    up = min(desired(v, target) for v in up_values)
    if up > current:
        n = clamp(up)
        return Recommendation(
            n,
            f"at least {min(up_values)} requests in flight for {spec.scale_up_window:g}s "
            f"need {up} replicas at {target:g} each" + (f" (maxReplicas {high})" if n < up else ""),
        )

    zero_start = now - spec.scale_to_zero_window
    if low == 0 and current > 0:
        idle = (
            covers(history, zero_start)
            and not any(in_window(history, zero_start, now))
            and (last_request_at is None or last_request_at <= zero_start)
        )
        if idle:
            return Recommendation(
                0, f"no requests for {spec.scale_to_zero_window:g}s: scaling to zero"
            )

    down_values = in_window(history, now - spec.scale_down_window, now)
    down = max(desired(v, target) for v in down_values)
    n = clamp(max(down, 1))
    if n < current:
        return Recommendation(
            n,
            f"at most {max(down_values)} requests in flight over the last "
            f"{spec.scale_down_window:g}s need {n} replicas at {target:g} each",
        )
    return Recommendation(current, f"{latest} requests in flight; {current} replicas carry them")


class LoadHistory:
    """The samples a recommender needs, and no more: the changes inside the longest window plus
    the sample in effect when it opened. A sample equal to the one before it is not kept (the
    earlier one holds until the next change), so memory grows with how often the load moves,
    not with how long the windows are. Not thread-safe; one owner records and reads."""

    def __init__(self, keep: float) -> None:
        self.keep = keep
        self._samples: list[LoadSample] = []

    def record(self, at: float, in_flight: int) -> None:
        if self._samples and at < self._samples[-1].at:
            raise ValueError(
                f"samples must be recorded in time order: {at} after {self._samples[-1].at}"
            )
        if not self._samples or self._samples[-1].in_flight != in_flight:
            self._samples.append(LoadSample(at, in_flight))
        self._prune(at)

    def samples(self) -> list[LoadSample]:
        return list(self._samples)

    def _prune(self, now: float) -> None:
        start = now - self.keep
        # Keep the last sample at or before `start`: it is the value in effect when the window
        # opens, and what proves the window is covered.
        first = 0
        for i, s in enumerate(self._samples):
            if s.at <= start:
                first = i
            else:
                break
        del self._samples[:first]
