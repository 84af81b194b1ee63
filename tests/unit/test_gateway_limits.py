from __future__ import annotations

import threading

import pytest

from graft.gateway.limits import (
    CONCURRENCY_RETRY_AFTER,
    AccountLimits,
    Limiter,
    LimitKind,
    Refusal,
    Ticket,
    limits_of,
)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admitted(result: Ticket | Refusal) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def refused(result: Ticket | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def test_unlimited_account_is_always_admitted() -> None:
    limiter = Limiter(Clock())
    for _ in range(1000):
        admitted(limiter.acquire("acme", AccountLimits(), tokens=10**6))
    assert limiter.in_flight("acme") == 1000
    assert limiter.tokens_available("acme") is None


def test_requests_per_minute_allow_a_burst_then_refuse_with_retry_after() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(requests_per_minute=6)  # one every 10 s
    for _ in range(6):
        limiter.release(admitted(limiter.acquire("acme", limits)))
    refusal = refused(limiter.acquire("acme", limits))
    assert refusal.kind == LimitKind.REQUESTS
    assert refusal.retry_after == 10
    assert "requests per minute" in refusal.message


def test_retry_after_is_exact_waiting_that_long_is_enough_and_less_is_not() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(requests_per_minute=6)
    for _ in range(6):
        admitted(limiter.acquire("acme", limits))
    retry_after = refused(limiter.acquire("acme", limits)).retry_after
    clock.advance(retry_after - 0.5)
    assert refused(limiter.acquire("acme", limits)).retry_after == 1  # 0.5 s left, rounded up
    clock.advance(0.5)
    admitted(limiter.acquire("acme", limits))


def test_bucket_refills_over_time_but_never_above_one_minute() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(requests_per_minute=60)
    for _ in range(60):
        admitted(limiter.acquire("acme", limits))
    refused(limiter.acquire("acme", limits))
    clock.advance(3)  # three requests' worth
    for _ in range(3):
        admitted(limiter.acquire("acme", limits))
    refused(limiter.acquire("acme", limits))
    clock.advance(3600)  # an hour idle: still only a minute's burst
    for _ in range(60):
        admitted(limiter.acquire("acme", limits))
    refused(limiter.acquire("acme", limits))


def test_accounts_have_separate_buckets() -> None:
    limiter = Limiter(Clock())
    limits = AccountLimits(requests_per_minute=1)
    admitted(limiter.acquire("acme", limits))
    refused(limiter.acquire("acme", limits))
    admitted(limiter.acquire("globex", limits))


def test_tokens_per_minute_charge_the_estimate_and_settle_the_actual_usage() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(tokens_per_minute=600)  # 10 per second
    ticket = admitted(limiter.acquire("acme", limits, tokens=100))
    assert limiter.tokens_available("acme") == 500
    limiter.release(ticket, used_tokens=250)
    assert limiter.tokens_available("acme") == 350
    ticket = admitted(limiter.acquire("acme", limits, tokens=300))
    limiter.release(ticket, used_tokens=100)  # the estimate was high: refunded
    assert limiter.tokens_available("acme") == 250


def test_actual_usage_may_push_the_bucket_negative_and_the_debt_is_waited_off() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(tokens_per_minute=600)  # 10 per second
    ticket = admitted(limiter.acquire("acme", limits, tokens=100))
    limiter.release(ticket, used_tokens=1000)
    assert limiter.tokens_available("acme") == -400
    # Even a request that asks for no tokens waits until the debt is paid.
    refusal = refused(limiter.acquire("acme", limits, tokens=0))
    assert refusal.kind == LimitKind.TOKENS
    assert refusal.retry_after == 40
    clock.advance(40)
    admitted(limiter.acquire("acme", limits, tokens=0))


def test_retry_after_for_tokens_counts_what_the_request_needs() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(tokens_per_minute=600)
    admitted(limiter.acquire("acme", limits, tokens=600))
    refusal = refused(limiter.acquire("acme", limits, tokens=25))
    assert refusal.retry_after == 3  # 25 tokens at 10/s: 2.5 s, rounded up
    clock.advance(2.5)
    admitted(limiter.acquire("acme", limits, tokens=25))


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_instead_of_never_passing() -> (
    None
):
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(tokens_per_minute=600)
    admitted(limiter.acquire("acme", limits, tokens=1))
    assert refused(limiter.acquire("acme", limits, tokens=5000)).retry_after == 1
    clock.advance(0.1)
    ticket = admitted(limiter.acquire("acme", limits, tokens=5000))
    assert ticket.tokens_charged == 600
    limiter.release(ticket, used_tokens=5000)
    assert limiter.tokens_available("acme") == pytest.approx(-4400)


def test_a_refused_request_takes_nothing() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(requests_per_minute=2, tokens_per_minute=600)
    admitted(limiter.acquire("acme", limits, tokens=600))
    # Refused on tokens: the second request per minute is not spent.
    assert refused(limiter.acquire("acme", limits, tokens=100)).kind == LimitKind.TOKENS
    clock.advance(10)
    admitted(limiter.acquire("acme", limits, tokens=100))
    assert limiter.in_flight("acme") == 2


def test_the_longest_wait_is_reported_when_several_limits_refuse() -> None:
    clock = Clock()
    limiter = Limiter(clock)
    limits = AccountLimits(requests_per_minute=1, tokens_per_minute=60)  # 1 token/s
    admitted(limiter.acquire("acme", limits, tokens=60))
    refusal = refused(limiter.acquire("acme", limits, tokens=60))
    assert refusal.retry_after == 60
    refusal = refused(limiter.acquire("acme", limits, tokens=1))
    assert refusal.kind == LimitKind.REQUESTS  # 60 s for a request beats 1 s for a token


def test_concurrency_limit_and_release() -> None:
    limiter = Limiter(Clock())
    limits = AccountLimits(concurrent_requests=2)
    first = admitted(limiter.acquire("acme", limits))
    admitted(limiter.acquire("acme", limits))
    refusal = refused(limiter.acquire("acme", limits))
    assert refusal.kind == LimitKind.CONCURRENCY
    assert refusal.retry_after == CONCURRENCY_RETRY_AFTER
    limiter.release(first)
    admitted(limiter.acquire("acme", limits))
    assert limiter.in_flight("acme") == 2


def test_releasing_twice_frees_one_slot_only() -> None:
    limiter = Limiter(Clock())
    limits = AccountLimits(concurrent_requests=2, tokens_per_minute=600)
    first = admitted(limiter.acquire("acme", limits, tokens=10))
    admitted(limiter.acquire("acme", limits, tokens=10))
    limiter.release(first, used_tokens=100)
    limiter.release(first, used_tokens=100)
    assert limiter.in_flight("acme") == 1
    assert limiter.tokens_available("acme") == 490
    admitted(limiter.acquire("acme", limits))
    refused(limiter.acquire("acme", limits))


def test_changed_limits_apply_at_once_without_refilling() -> None:
    limiter = Limiter(Clock())
    admitted(limiter.acquire("acme", AccountLimits(tokens_per_minute=1000), tokens=100))
    admitted(limiter.acquire("acme", AccountLimits(tokens_per_minute=500), tokens=0))
    assert limiter.tokens_available("acme") == 500  # cut to the new capacity
    admitted(limiter.acquire("acme", AccountLimits(tokens_per_minute=2000), tokens=0))
    assert limiter.tokens_available("acme") == 500  # a raise does not hand out a free burst
    admitted(limiter.acquire("acme", AccountLimits(), tokens=0))
    assert limiter.tokens_available("acme") is None


@pytest.mark.parametrize(
    "field", ["requests_per_minute", "tokens_per_minute", "concurrent_requests"]
)
def test_limits_below_one_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AccountLimits(**{field: 0})


def test_negative_token_estimates_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Limiter(Clock()).acquire("acme", AccountLimits(), tokens=-1)


def test_concurrent_acquires_never_exceed_the_limits() -> None:
    limiter = Limiter(Clock())
    limits = AccountLimits(requests_per_minute=50, concurrent_requests=1000)
    tickets: list[Ticket] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(100):
            result = limiter.acquire("acme", limits)
            if isinstance(result, Ticket):
                tickets.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tickets) == 50
    assert len({t.serial for t in tickets}) == 50
    assert limiter.in_flight("acme") == 50


# --- Account spec.limits -------------------------------------------------------------------------


def test_limits_of_an_account_spec() -> None:
    spec = {
        "quota": {"gpus": 2},
        "limits": {"requestsPerMinute": 60, "tokensPerMinute": 10_000, "concurrentRequests": 4},
    }
    assert limits_of(spec) == AccountLimits(
        requests_per_minute=60, tokens_per_minute=10_000, concurrent_requests=4
    )
    assert limits_of({"limits": {"tokensPerMinute": 500}}) == AccountLimits(tokens_per_minute=500)


def test_an_account_without_limits_is_unlimited() -> None:
    assert limits_of({}) == AccountLimits()
    assert limits_of({"limits": None}) == AccountLimits()
    assert limits_of({"limits": {}}) == AccountLimits()


def test_limits_a_newer_crd_adds_are_ignored() -> None:
    spec = {"limits": {"requestsPerMinute": 5, "imagesPerMinute": 3}}
    assert limits_of(spec) == AccountLimits(requests_per_minute=5)


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"requestsPerMinute": 0}, "requestsPerMinute"),
        ({"concurrentRequests": -1}, "concurrentRequests"),
        ({"tokensPerMinute": "many"}, "tokensPerMinute"),
        ("60", "spec.limits must be an object"),
    ],
)
def test_limits_the_crd_would_refuse_raise_value_error(limits: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        limits_of({"limits": limits})
