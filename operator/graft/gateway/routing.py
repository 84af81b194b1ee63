"""Which model-server replica gets a request, and whether a failed attempt may go elsewhere.

A request names its model (a base model or an addon, by full name) and goes only to a replica
that is ready and whose own `GET /v1/models` lists that name: what the operator asked a replica
to load is not proof that it serves it. Among those, the replica with the fewest outstanding
requests wins (load follows the real queue lengths, so a slow replica gets less); ties go to the
smallest replica ID, so the choice is deterministic and testable. The caller counts a request as
outstanding on its replica from the moment it is chosen, so a burst spreads over tied replicas.

A failed attempt is retried only while nothing has reached the client: once the first byte of
the response is sent (a status line, a streamed chunk), a retry would duplicate or splice output.
Retries go to a replica not tried yet for this request, and only for failures another replica
might not have: no connection, a reset before the answer, 502/503/504. A 4xx or a 500 is the
answer to this request and is passed on as it is.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

MAX_ATTEMPTS = 3
"""Attempts per request (the first one included): enough to step around a replica that just
died, few enough that a request nobody can serve fails fast."""

RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Replica:
    id: str  # the pod's name: unique within a Deployment, stable while it lives
    url: str  # base URL of its OpenAI-compatible API
    models: frozenset[str]  # what its GET /v1/models lists
    outstanding: int  # requests sent to it and not finished
    ready: bool


def serving(replicas: Iterable[Replica], model: str) -> list[Replica]:
    """The ready replicas that serve `model`, best first (fewest outstanding, then ID)."""
    found = [r for r in replicas if r.ready and model in r.models]
    return sorted(found, key=lambda r: (r.outstanding, r.id))


def choose(
    replicas: Iterable[Replica], model: str, exclude: Collection[str] = ()
) -> Replica | None:
    """The replica for a request for `model`, skipping the IDs in `exclude` (tried already);
    None when no ready replica serves it (the caller answers 503, or waits for a scale-up)."""
    return next((r for r in serving(replicas, model) if r.id not in exclude), None)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    replica: Replica | None  # where to send the next attempt, when retry
    reason: str


def after_failure(
    replicas: Iterable[Replica],
    model: str,
    tried: Collection[str],
    *,
    first_byte_sent: bool,
    upstream_status: int | None,
    max_attempts: int = MAX_ATTEMPTS,
) -> RetryDecision:
    """Whether a failed attempt may be retried, and on which replica.

    `tried` holds the IDs of every replica this request was sent to (the failed one included);
    `upstream_status` is the failed replica's HTTP status, None when there was no response at all
    (refused or reset connection, timeout before headers).
    """
    if first_byte_sent:
        return RetryDecision(False, None, "part of the response already reached the client")
    if upstream_status is not None and upstream_status not in RETRYABLE_STATUSES:
        return RetryDecision(
            False, None, f"the replica answered {upstream_status}, which is the request's answer"
        )
    if len(tried) >= max_attempts:
        return RetryDecision(False, None, f"already tried {len(tried)} of {max_attempts} attempts")
    replica = choose(replicas, model, exclude=tried)
    if replica is None:
        return RetryDecision(False, None, f"no other ready replica serves {model}")
    return RetryDecision(True, replica, f"retrying on {replica.id}")
