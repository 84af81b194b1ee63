"""The autoscaler's decisions (pure): from what the gateways said to a replica count, a status and
a condition. graft.controller.autoscaler does the I/O around them, in the operator's leader.

Every pass (GRAFT_AUTOSCALER_INTERVAL) the autoscaler scrapes every gateway's metrics and, per
Deployment with spec.autoscaling:

- sums `graft_gateway_in_flight{namespace, deployment}` over the gateways that answered into one
  LoadSample, and counts a request as arrived when any gateway's
  `graft_gateway_deployment_requests_total` rose since the last pass (so a request that came and
  went between two passes still keeps the Deployment from scaling to zero);
- asks the recommender (graft.plan.autoscale) for a replica count;
- when it differs from spec.replicas, scales through /scale, which is also what an HPA or KEDA
  would do instead.

What the gateways did not say is never guessed:

- no gateway answered (or none was found): no sample, no scaling (NoMetrics); only the bounds
  act, since they need no load (as the HPA enforces minReplicas and maxReplicas without metrics);
- some answered: the sum of those is a lower bound of the load, so it may scale up, never down
  (PartialMetrics).

The memory (LoadBook) is the leader's alone: a new leader starts with none, so it never scales to
zero before it has seen a whole scaleToZeroWindow itself (the recommender's rule 4).

Status is written only when it changed, and the numbers that move with every pass (inFlight,
the message) at most every STATUS_REFRESH_SECONDS unless something else changed with them: a
steady load writes nothing, a fluctuating one at most twice a minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from graft.api.common import Condition
from graft.api.serving import Autoscaling, AutoscalingStatus
from graft.core import keys
from graft.core.conditions import find, set_condition
from graft.core.durations import format_duration, parse_duration
from graft.core.objects import Obj, is_ready, is_terminating
from graft.core.settings import MIN_SCALE_TO_ZERO_WINDOW_ENV
from graft.plan.autoscale import AutoscaleSpec, LoadHistory, recommend
from graft.plan.deployment import AUTOSCALING

DeploymentKey = tuple[str, str]
"""(namespace, name) of a Deployment: the gateway's `namespace` and `deployment` labels."""

IN_FLIGHT = "graft_gateway_in_flight"
"""Gauge: requests for a Deployment running on a replica or waiting for one (including those
held while it scales from zero), in one gateway."""
REQUESTS = "graft_gateway_deployment_requests_total"
"""Counter: requests for a Deployment that one gateway has received."""
GATEWAY_METRICS_PORT = "metrics"
"""The container port name of a gateway pod's metrics listener."""

STATUS_REFRESH_SECONDS = 30.0


class Reason:
    """status.autoscaling.reason and the Autoscaling condition's reason."""

    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    SCALED_TO_ZERO = "ScaledToZero"
    SCALED_FROM_ZERO = "ScaledFromZero"
    STABLE = "Stable"
    OUT_OF_BOUNDS = "OutOfBounds"
    PARTIAL_METRICS = "PartialMetrics"
    NO_METRICS = "NoMetrics"


# --- What the gateways say -------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One gateway's series of one Deployment."""

    in_flight: float = 0.0
    requests: float | None = None
    """The request counter; None when the gateway exports none for the Deployment."""


def parse_exposition(text: str) -> dict[DeploymentKey, Series]:
    """A gateway's series by Deployment, from its Prometheus text exposition. Other series are
    ignored, and so are samples without both labels or with a value that is not a number.
    ValueError when the text is not the exposition format."""
    found: dict[DeploymentKey, Series] = {}
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except Exception as exc:  # the parser raises whatever its split() met: say what it was
        raise ValueError(f"not the Prometheus text format: {exc}") from None
    for sample in samples:
        if sample.name not in (IN_FLIGHT, REQUESTS) or not math.isfinite(sample.value):
            continue
        namespace, name = sample.labels.get("namespace"), sample.labels.get("deployment")
        if not namespace or not name:
            continue
        key = (namespace, name)
        seen = found.get(key, Series())
        if sample.name == IN_FLIGHT:
            seen = Series(seen.in_flight + max(0.0, sample.value), seen.requests)
        else:
            seen = Series(seen.in_flight, (seen.requests or 0.0) + sample.value)
        found[key] = seen
    return found


@dataclass(frozen=True)
class Scrape:
    """What one pass learned from the gateways: the series of those that answered, by URL, and
    why the others did not."""

    answered: Mapping[str, Mapping[DeploymentKey, Series]] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    nobody: str = "no gateway to ask"
    """Why no gateway was asked, when none was."""

    @property
    def asked(self) -> int:
        return len(self.answered) + len(self.failed)

    def problem(self) -> str:
        """What is missing, for a person; "" when every gateway answered."""
        if not self.asked:
            return self.nobody
        if not self.failed:
            return ""
        url, why = sorted(self.failed.items())[0]
        return f"{len(self.failed)} of {self.asked} gateways did not answer ({url}: {why})"


def gateway_metrics_urls(pods: Iterable[Obj]) -> list[str]:
    """The metrics URLs of the Ready gateway pods: http://<pod IP>:<port named metrics>/metrics."""
    urls = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or not is_ready(pod) or is_terminating(pod):
            continue
        port = next(
            (
                p.get("containerPort")
                for c in (pod.get("spec") or {}).get("containers") or []
                for p in c.get("ports") or []
                if p.get("name") == GATEWAY_METRICS_PORT
            ),
            None,
        )
        if port:
            host = f"[{ip}]" if ":" in ip else ip
            urls.append(f"http://{host}:{port}/metrics")
    return sorted(urls)


def no_gateway(namespace: str) -> str:
    """Why discovery found nothing to scrape."""
    return (
        f"no gateway to ask: no Ready pod labelled {keys.COMPONENT}={keys.GATEWAY_COMPONENT} "
        f"with a container port named {GATEWAY_METRICS_PORT!r} in namespace {namespace} "
        "(or set GRAFT_GATEWAY_METRICS)"
    )


# --- A Deployment's spec ---------------------------------------------------------------------


@dataclass(frozen=True)
class Autoscaled:
    """spec.autoscaling as the recommender takes it, with the installation's floor applied."""

    spec: AutoscaleSpec
    zero_window: str
    """The scaleToZeroWindow in effect, as a duration string."""
    floor_note: str = ""
    """Why the window in effect is not the spec's; "" when it is."""


def autoscaled(autoscaling: Autoscaling, floor: float) -> Autoscaled:
    """The recommender's spec from a Deployment's spec.autoscaling; a scaleToZeroWindow below
    `floor` (GRAFT_MIN_SCALE_TO_ZERO_WINDOW) becomes the floor."""
    asked = parse_duration(autoscaling.scale_to_zero_window)
    zero = max(float(asked), floor)
    note = ""
    if zero > asked:
        note = (
            f"scaleToZeroWindow {autoscaling.scale_to_zero_window} is below this installation's "
            f"minimum ({MIN_SCALE_TO_ZERO_WINDOW_ENV}): {format_duration(zero)} is used"
        )
    spec = AutoscaleSpec(
        max_replicas=autoscaling.max_replicas,
        target_concurrency=autoscaling.target.concurrent_requests,
        min_replicas=autoscaling.min_replicas,
        scale_up_window=parse_duration(autoscaling.scale_up_window),
        scale_down_window=parse_duration(autoscaling.scale_down_window),
        scale_to_zero_window=zero,
        min_scale_to_zero_window=floor,
    )
    return Autoscaled(
        spec, format_duration(zero) if note else autoscaling.scale_to_zero_window, note
    )


# --- The leader's memory ---------------------------------------------------------------------


class Load:
    """What the autoscaler remembers of one Deployment: its load samples and when a request last
    arrived (monotonic seconds)."""

    def __init__(self, keep: float) -> None:
        self.history = LoadHistory(keep)
        self.last_request_at: float | None = None


@dataclass(frozen=True)
class Observation:
    """One pass's view of one Deployment's load."""

    in_flight: int | None
    """Summed over the gateways that answered; None when none did."""
    complete: bool
    """Every gateway asked answered."""
    problem: str = ""
    """What is missing, for a person."""


class LoadBook:
    """Every autoscaled Deployment's Load, and each gateway's request counters. Not thread-safe:
    the autoscaler's one thread owns it."""

    def __init__(self) -> None:
        self.loads: dict[DeploymentKey, Load] = {}
        self._counters: dict[tuple[str, DeploymentKey], float] = {}

    def observe(
        self, scrape: Scrape, now: float, keep: Mapping[DeploymentKey, float]
    ) -> dict[DeploymentKey, Observation]:
        """Record this pass for the Deployments in `keep` (each with how many seconds of history
        it needs); forget every other Deployment, and the counters of gateways not asked."""
        asked = set(scrape.answered) | set(scrape.failed)
        self.loads = {k: v for k, v in self.loads.items() if k in keep}
        self._counters = {
            (url, k): v for (url, k), v in self._counters.items() if url in asked and k in keep
        }
        problem = scrape.problem()
        out = {}
        for key, seconds in keep.items():
            load = self.loads.get(key)
            if load is None:
                load = self.loads[key] = Load(seconds)
            load.history.keep = seconds
            if not scrape.answered:
                out[key] = Observation(None, complete=False, problem=problem)
                continue
            total = 0.0
            arrived = False
            for url, series in scrape.answered.items():
                seen = series.get(key)
                if seen is None:
                    continue
                total += seen.in_flight
                if seen.requests is not None:
                    before = self._counters.get((url, key), 0.0)
                    # A counter below its last value restarted (a new gateway process).
                    arrived |= seen.requests > before or 0 < seen.requests < before
                    self._counters[(url, key)] = seen.requests
            in_flight = round(total)
            load.history.record(now, in_flight)
            if arrived:
                load.last_request_at = now
            out[key] = Observation(in_flight, complete=not scrape.failed, problem=problem)
        return out


# --- The decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    message: str
    acting: bool
    """The autoscaler acts on metrics (the Autoscaling condition's status)."""


def decide(
    autoscale: AutoscaleSpec, current: int, load: Load, seen: Observation, now: float
) -> Decision:
    """The replica count for a Deployment with `current` replicas (spec.replicas), and why."""
    low, high = autoscale.min_replicas, autoscale.max_replicas
    if not low <= current <= high:
        rec = recommend(autoscale, [], current, now)
        return Decision(rec.replicas, Reason.OUT_OF_BOUNDS, rec.reason, seen.in_flight is not None)
    if seen.in_flight is None:
        return Decision(
            current,
            Reason.NO_METRICS,
            f"{seen.problem}: keeping {current} replicas until a gateway says what the load is",
            acting=False,
        )
    rec = recommend(autoscale, load.history.samples(), current, now, load.last_request_at)
    if rec.replicas < current and not seen.complete:
        return Decision(
            current,
            Reason.PARTIAL_METRICS,
            f"{seen.problem}: not scaling down on part of the load (all of it would say: "
            f"{rec.reason})",
            acting=True,
        )
    message = rec.reason
    if rec.replicas == current == 0:
        # Still idle: say so, rather than a "Stable" that hides why there are no replicas.
        message = "no requests: idle at zero replicas; the next request brings one back"
    return Decision(rec.replicas, _reason(current, rec.replicas), message, acting=True)


def _reason(current: int, replicas: int) -> str:
    if replicas == current == 0:
        return Reason.SCALED_TO_ZERO  # and staying there
    if replicas == current:
        return Reason.STABLE
    if current == 0:
        return Reason.SCALED_FROM_ZERO
    if replicas == 0:
        return Reason.SCALED_TO_ZERO
    return Reason.SCALED_UP if replicas > current else Reason.SCALED_DOWN


def scale_event(current: int, decision: Decision) -> str:
    """The Event's message for a scale change."""
    return f"scaled from {current} to {decision.replicas} replicas: {decision.message}"


# --- Status ----------------------------------------------------------------------------------


def autoscaling_status(
    decision: Decision,
    seen: Observation,
    zero_window: str,
    previous: AutoscalingStatus | None,
    scaled_at: str | None = None,
) -> AutoscalingStatus:
    """status.autoscaling after a pass; `scaled_at` when it changed spec.replicas."""
    in_flight = seen.in_flight
    if in_flight is None and previous is not None:
        in_flight = previous.in_flight  # the last sample there was
    return AutoscalingStatus(
        desired_replicas=decision.replicas,
        in_flight=in_flight,
        reason=decision.reason,
        message=decision.message,
        last_scale_time=scaled_at or (previous.last_scale_time if previous else None),
        scale_to_zero_window=zero_window,
    )


def autoscaling_conditions(
    conditions: list[Condition],
    decision: Decision,
    floor_note: str,
    *,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """`conditions` with Autoscaling set from the decision (and the floor, when it applies)."""
    message = decision.message + (f"; {floor_note}" if floor_note else "")
    return set_condition(
        conditions,
        AUTOSCALING,
        decision.acting,
        decision.reason,
        message,
        generation=generation,
        now=now,
    )


VOLATILE = frozenset({"inFlight", "message"})
"""status.autoscaling fields that move with the load itself, refreshed at most every
STATUS_REFRESH_SECONDS on their own."""


def needs_write(
    before: Obj | None,
    after: Obj,
    before_conditions: list[Condition],
    after_conditions: list[Condition],
    *,
    last_write: float | None,
    now: float,
) -> bool:
    """Whether the status the autoscaler computed is worth a write: something changed, and it
    is more than the load's own numbers, or those were last written long enough ago."""
    old, new = find(before_conditions, AUTOSCALING), find(after_conditions, AUTOSCALING)
    if before == after and old == new:
        return False
    steady = (
        before is not None
        and {k: v for k, v in before.items() if k not in VOLATILE}
        == {k: v for k, v in after.items() if k not in VOLATILE}
        and old is not None
        and new is not None
        and old.model_dump(exclude={"message"}) == new.model_dump(exclude={"message"})
    )
    if not steady:
        return True
    return last_write is None or now - last_write >= STATUS_REFRESH_SECONDS
