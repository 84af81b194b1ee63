"""Per-account rate limits: requests per minute, tokens per minute, concurrent requests.

Requests and tokens per minute are token buckets: a bucket holds at most one minute's allowance
(its capacity, so an idle account may burst that much) and refills continuously at
capacity / 60 per second. Concurrency is a plain counter of admitted requests not yet released.

Tokens are charged in two steps, because nobody knows how many a request uses until it ends:

1. `acquire(account, limits, tokens=estimate)` admits a request only when every bucket holds what
   it asks for (one request; `estimate` tokens, typically the prompt's length) and then takes it.
   A request asking for more tokens than the bucket can ever hold is asked for the full bucket
   instead, so it waits for a full bucket rather than being refused forever.
2. `release(ticket, used_tokens)` charges the difference between the actual usage and the
   estimate (or refunds it when the estimate was high). This may push the bucket below zero:
   the tokens were already spent, and refusing after the fact is impossible. A negative bucket
   refuses every token-charging request until it has refilled, so an account that overspends
   pays it back in waiting time, and over any long period the limit holds.

A refusal carries Retry-After in whole seconds, rounded up: the earliest moment at which the same
request would pass if nothing else happened. For a full concurrency limit that moment is unknown
(it depends on when a running request ends), so the answer is CONCURRENCY_RETRY_AFTER.

Nothing is taken when a request is refused: a request refused on tokens does not spend one of the
account's requests per minute. The limiter is thread-safe (one lock, held only for arithmetic) and
never blocks or sleeps; the clock is injected (monotonic seconds).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from graft.api.tenancy import RequestLimits

CONCURRENCY_RETRY_AFTER = 1
"""Seconds a request refused for concurrency is told to wait: a slot frees when some request
ends, which could be any moment; one second keeps clients from hammering without idling long."""

SECONDS_PER_MINUTE = 60.0


@dataclass(frozen=True)
class AccountLimits:
    """An account's data-plane limits; None means unlimited. An Account's spec.limits, read by
    `limits_of`."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "concurrent_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset for no limit), not {value}")


def limits_of(account_spec: Mapping[str, Any]) -> AccountLimits:
    """The limits in an Account's spec (as the API server returns it: `spec.limits` with
    requestsPerMinute, tokensPerMinute, concurrentRequests); unlimited where unset. Keys a newer
    CRD may add are ignored (this gateway does not enforce them); a value the CRD would refuse
    (0, a string) raises ValueError naming the field."""
    raw = account_spec.get("limits") or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"spec.limits must be an object, not {raw!r}")
    known = {f.alias for f in RequestLimits.model_fields.values()}
    spec = RequestLimits.model_validate({k: v for k, v in raw.items() if k in known})
    return AccountLimits(
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        concurrent_requests=spec.concurrent_requests,
    )


class LimitKind(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    CONCURRENCY = "concurrency"


@dataclass
class TokenBucket:
    """A bucket of `capacity` that refills at capacity per minute. `level` may go below zero."""

    capacity: float
    level: float
    updated: float  # the clock reading `level` was computed at

    @property
    def rate(self) -> float:
        return self.capacity / SECONDS_PER_MINUTE

    def refill(self, now: float) -> None:
        # A clock that went backwards (it should not: monotonic) refills nothing.
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, amount: float) -> float:
        """Seconds until `amount` (capped at capacity) is available; 0 when it is now."""
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def resize(self, capacity: float) -> None:
        """New limits: keep what was there, but never more than the new capacity."""
        self.capacity = capacity
        self.level = min(self.level, capacity)


@dataclass(frozen=True)
class Ticket:
    """An admitted request: hand it back to `release` exactly once when the request ends."""

    account: str
    tokens_charged: int
    serial: int


@dataclass(frozen=True)
class Refusal:
    kind: LimitKind
    retry_after: int  # whole seconds, >= 1
    message: str


@dataclass
class _AccountState:
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    in_flight: int = 0
    open_tickets: set[int] = field(default_factory=set)


def _bucket(current: TokenBucket | None, per_minute: int | None, now: float) -> TokenBucket | None:
    """The bucket for a limit as it is now: none when unlimited, a full new one when the limit
    was just set, the same one (refilled, resized) otherwise."""
    if per_minute is None:
        return None
    if current is None:
        return TokenBucket(capacity=float(per_minute), level=float(per_minute), updated=now)
    current.refill(now)
    if current.capacity != per_minute:
        current.resize(float(per_minute))
    return current


def _retry_after(seconds: float) -> int:
    # Rounded up, so a client that waits exactly this long is admitted; at least 1, since 0
    # means "now" and the request was just refused.
    return max(1, math.ceil(seconds - 1e-9))


class Limiter:
    """Every account's buckets and concurrency, in one gateway process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _AccountState] = {}
        self._serial = 0

    def acquire(self, account: str, limits: AccountLimits, tokens: int = 0) -> Ticket | Refusal:
        """Admit one request of `account` expected to use `tokens`, or say when to retry."""
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, not {tokens}")
        with self._lock:
            now = self._clock()
            state = self._accounts.setdefault(account, _AccountState())
            state.requests = _bucket(state.requests, limits.requests_per_minute, now)
            state.tokens = _bucket(state.tokens, limits.tokens_per_minute, now)

            if limits.concurrent_requests is not None and (
                state.in_flight >= limits.concurrent_requests
            ):
                return Refusal(
                    LimitKind.CONCURRENCY,
                    CONCURRENCY_RETRY_AFTER,
                    f"Too many concurrent requests for account {account}: limit "
                    f"{limits.concurrent_requests}, in flight {state.in_flight}.",
                )
            refusals = []
            if state.requests is not None and (wait := state.requests.wait(1)) > 0:
                refusals.append(
                    Refusal(
                        LimitKind.REQUESTS,
                        _retry_after(wait),
                        f"Rate limit reached for account {account} on requests per minute: "
                        f"limit {limits.requests_per_minute}.",
                    )
                )
            # A request that asks for no tokens still waits while the bucket is in debt (below
            # zero): the account has already used more than its allowance.
            if state.tokens is not None and (wait := state.tokens.wait(tokens)) > 0:
                refusals.append(
                    Refusal(
                        LimitKind.TOKENS,
                        _retry_after(wait),
                        f"Rate limit reached for account {account} on tokens per minute: "
                        f"limit {limits.tokens_per_minute}, requested {tokens}.",
                    )
                )
            if refusals:
                # The one that lasts longest: retrying earlier would only be refused again.
                return max(refusals, key=lambda r: r.retry_after)

            charged = tokens
            if state.tokens is not None:
                charged = min(tokens, int(state.tokens.capacity))
                state.tokens.level -= charged
            if state.requests is not None:
                state.requests.level -= 1
            state.in_flight += 1
            self._serial += 1
            state.open_tickets.add(self._serial)
            return Ticket(account=account, tokens_charged=charged, serial=self._serial)

    def release(self, ticket: Ticket, used_tokens: int | None = None) -> None:
        """End an admitted request. `used_tokens` (the response's usage) settles the token
        bucket against what acquire charged; None keeps the estimate (usage unknown, e.g. the
        client went away). Releasing a ticket twice is a no-op, so a finally block and an
        error path may both call it."""
        with self._lock:
            state = self._accounts.get(ticket.account)
            if state is None or ticket.serial not in state.open_tickets:
                return
            state.open_tickets.discard(ticket.serial)
            state.in_flight -= 1
            if used_tokens is not None and state.tokens is not None:
                state.tokens.refill(self._clock())
                # May go negative (see the module docstring), and a refund never overfills.
                state.tokens.level = min(
                    state.tokens.capacity,
                    state.tokens.level - (max(0, used_tokens) - ticket.tokens_charged),
                )

    def in_flight(self, account: str) -> int:
        with self._lock:
            state = self._accounts.get(account)
            return 0 if state is None else state.in_flight

    def tokens_available(self, account: str) -> float | None:
        """The account's token bucket level now (negative while in debt); None when unlimited
        or never seen. For metrics and tests."""
        with self._lock:
            state = self._accounts.get(account)
            if state is None or state.tokens is None:
                return None
            state.tokens.refill(self._clock())
            return state.tokens.level
