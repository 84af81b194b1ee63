"""Re-checks at a later time (an ApiKey's expiry), without kopf timers and their finalizer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import kopf
import pytest

from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.main import Operator
from graft.controller.rechecks import Rechecks
from graft.core.settings import Settings

Fired = list[tuple[str, str, str]]


@pytest.fixture
def fired() -> Fired:
    return []


@pytest.fixture
def rechecks(fired: Fired) -> Iterator[Rechecks]:
    lock = threading.Lock()

    def fire(plural: str, namespace: str, name: str) -> None:
        with lock:
            fired.append((plural, namespace, name))

    r = Rechecks(fire)
    yield r
    r.stop()


def wait_until(check: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_object_is_reconciled_once_after_its_delay(rechecks: Rechecks, fired: Fired) -> None:
    start = time.monotonic()
    rechecks.schedule("apikeys", "acme", "ci", 0.2)
    assert fired == []
    wait_until(lambda: fired)
    assert time.monotonic() - start >= 0.2
    time.sleep(0.3)
    assert fired == [("apikeys", "acme", "ci")]
    assert rechecks.pending() == {}


def test_the_latest_request_replaces_the_earlier_one(rechecks: Rechecks, fired: Fired) -> None:
    rechecks.schedule("apikeys", "acme", "ci", 0.1)
    rechecks.schedule("apikeys", "acme", "ci", 0.6)
    time.sleep(0.3)
    assert fired == []
    assert 0 < rechecks.pending()[("apikeys", "acme", "ci")] <= 0.6
    wait_until(lambda: fired)
    assert fired == [("apikeys", "acme", "ci")]


def test_objects_fire_in_the_order_they_are_due(rechecks: Rechecks, fired: Fired) -> None:
    rechecks.schedule("apikeys", "acme", "late", 0.4)
    rechecks.schedule("apikeys", "acme", "soon", 0.1)
    rechecks.schedule("apikeys", "other", "now", 0)
    wait_until(lambda: len(fired) == 3)
    assert [name for _, _, name in fired] == ["now", "soon", "late"]


def test_a_failing_recheck_does_not_stop_the_others(fired: Fired) -> None:
    def fire(plural: str, namespace: str, name: str) -> None:
        if name == "bad":
            raise RuntimeError("boom")
        fired.append((plural, namespace, name))

    r = Rechecks(fire)
    try:
        r.schedule("apikeys", "acme", "bad", 0)
        r.schedule("apikeys", "acme", "good", 0.1)
        wait_until(lambda: fired)
        assert fired == [("apikeys", "acme", "good")]
    finally:
        r.stop()


def test_the_operator_hands_reconcilers_its_rechecks() -> None:
    op = Operator(Context(api=Api.__new__(Api), settings=Settings()))
    assert op.ctx.recheck == op.rechecks.schedule
    registry = kopf.OperatorRegistry()
    op.register(registry)
    # No kopf timers nor create/update/resume handlers: kopf would put its finalizer on every
    # object (a User's ApiKeys must go with the User even while the operator is down) and write
    # its progress annotations. Only a DeployedModel's deletion waits for the operator (it
    # unloads the addon from the model servers).
    # (kopf's registry lists its handlers only through these private members.)
    timers = {str(h.id) for h in registry._spawning.get_all_handlers()}
    changes = {str(h.id) for h in registry._changing.get_all_handlers()}
    assert timers == set()
    assert changes == {"Operator.deployed_model_deleted"}


def test_a_failed_recheck_is_retried_with_backoff_without_holding_a_worker() -> None:
    """A reconcile asks for its next re-check only when it succeeds; a failed one goes back into
    the work queue with backoff (capped at the resync interval), or the ApiKey would never be
    looked at again (it has no resync), and the one worker stays free for other objects."""
    settings = replace(Settings(), resync_seconds=0.2, workers=1)
    op = Operator(Context(api=Api.__new__(Api), settings=settings))
    calls: list[float] = []
    others: list[str] = []

    def failing(ctx: Context, namespace: str, name: str) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("API server unreachable")

    op._reconcilers["apikeys"] = failing
    op._reconcilers["users"] = lambda ctx, namespace, name: others.append(name)
    op.queue.start()
    try:
        op.rechecks.schedule("apikeys", "acme", "ci", 0)
        wait_until(lambda: len(calls) >= 2)
        op.enqueue("users", "acme", "alice")
        wait_until(lambda: others == ["alice"])
        wait_until(lambda: len(calls) >= 4)
        assert op.queue.failures(("apikeys", "acme", "ci")) >= 4
        assert calls[3] - calls[2] >= 0.2 * 0.9  # the cap, less at most 10% jitter
    finally:
        op.queue.stop()
        op.rechecks.stop()


def test_waiting_for_what_is_not_watched_looks_again_soon_then_less_often() -> None:
    """A Dataset waiting for a ConfigMap or claim (not watched) looks again after 2 s, then a
    quarter of the time it has waited, at most the resync interval."""
    from graft.controller.rechecks import waiting_delay

    assert waiting_delay(0, 300) == 2.0
    assert waiting_delay(4, 300) == 2.0
    assert waiting_delay(60, 300) == 15.0
    assert waiting_delay(3600, 300) == 300
    assert waiting_delay(60, 10) == 10
