from __future__ import annotations

import pytest

from graft.gateway.routing import MAX_ATTEMPTS, Replica, after_failure, choose, serving

BASE = "accounts/acme/models/smollm2"
ADDON = "accounts/acme/models/pirate"


def replica(
    id_: str, outstanding: int = 0, models: tuple[str, ...] = (BASE,), ready: bool = True
) -> Replica:
    return Replica(
        id=id_,
        url=f"http://{id_}:8000",
        models=frozenset(models),
        outstanding=outstanding,
        ready=ready,
    )


def test_only_replicas_that_list_the_model_are_chosen() -> None:
    replicas = [replica("a", 0), replica("b", 5, (BASE, ADDON))]
    chosen = choose(replicas, ADDON)
    assert chosen is not None
    assert chosen.id == "b"  # busier, but the only one that serves the addon


def test_least_outstanding_wins() -> None:
    replicas = [replica("a", 3), replica("b", 1), replica("c", 2)]
    assert [r.id for r in serving(replicas, BASE)] == ["b", "c", "a"]
    chosen = choose(replicas, BASE)
    assert chosen is not None
    assert chosen.id == "b"


def test_ties_go_to_the_smallest_id_whatever_the_input_order() -> None:
    replicas = [replica("pod-c", 1), replica("pod-a", 1), replica("pod-b", 1)]
    for order in (replicas, replicas[::-1], replicas[1:] + replicas[:1]):
        chosen = choose(order, BASE)
        assert chosen is not None
        assert chosen.id == "pod-a"


def test_replicas_that_are_not_ready_are_skipped() -> None:
    replicas = [replica("a", 0, ready=False), replica("b", 9)]
    chosen = choose(replicas, BASE)
    assert chosen is not None
    assert chosen.id == "b"


def test_no_replica_serving_the_model_gives_none() -> None:
    assert choose([replica("a"), replica("b")], ADDON) is None
    assert choose([replica("a", models=(ADDON,), ready=False)], ADDON) is None
    assert choose([], BASE) is None


def test_model_names_match_exactly() -> None:
    assert choose([replica("a", models=("accounts/acme/models/pirate-v2",))], ADDON) is None
    assert choose([replica("a", models=(ADDON.upper(),))], ADDON) is None


def test_excluded_replicas_are_skipped() -> None:
    replicas = [replica("a", 0), replica("b", 1)]
    chosen = choose(replicas, BASE, exclude={"a"})
    assert chosen is not None
    assert chosen.id == "b"
    assert choose(replicas, BASE, exclude={"a", "b"}) is None


def test_retry_before_the_first_byte_goes_to_another_replica() -> None:
    replicas = [replica("a", 0), replica("b", 4), replica("c", 2)]
    decision = after_failure(replicas, BASE, {"a"}, first_byte_sent=False, upstream_status=None)
    assert decision.retry
    assert decision.replica is not None
    assert decision.replica.id == "c"


def test_no_retry_once_a_byte_reached_the_client() -> None:
    replicas = [replica("a"), replica("b")]
    decision = after_failure(replicas, BASE, {"a"}, first_byte_sent=True, upstream_status=None)
    assert not decision.retry
    assert decision.replica is None
    assert "already reached the client" in decision.reason


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (502, True),
        (503, True),
        (504, True),
        (None, True),
        (500, False),
        (400, False),
        (404, False),
        (429, False),
    ],
)
def test_only_failures_another_replica_might_not_have_are_retried(
    status: int | None, retry: bool
) -> None:
    replicas = [replica("a"), replica("b")]
    decision = after_failure(replicas, BASE, {"a"}, first_byte_sent=False, upstream_status=status)
    assert decision.retry is retry


def test_no_retry_when_no_other_replica_serves_the_model() -> None:
    replicas = [replica("a", models=(BASE, ADDON)), replica("b")]
    decision = after_failure(replicas, ADDON, {"a"}, first_byte_sent=False, upstream_status=None)
    assert not decision.retry
    assert ADDON in decision.reason


def test_attempts_are_bounded() -> None:
    replicas = [replica(str(i)) for i in range(10)]
    tried = {str(i) for i in range(MAX_ATTEMPTS)}
    decision = after_failure(replicas, BASE, tried, first_byte_sent=False, upstream_status=None)
    assert not decision.retry
    decision = after_failure(
        replicas, BASE, tried, first_byte_sent=False, upstream_status=None, max_attempts=5
    )
    assert decision.retry
