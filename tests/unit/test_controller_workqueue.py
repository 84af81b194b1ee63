"""The operator's work queue (graft.controller.workqueue): merged events, one reconcile per object
at a time, backoff that frees the worker, per-kind limits, delayed adds.

Workers are real threads; each test controls when a reconcile may end with an Event, so what is
asserted is an order of events, never a duration."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from graft.controller.workqueue import Backoff, Key, WorkQueue

D1: Key = ("deployments", "acme", "d1")
D2: Key = ("deployments", "acme", "d2")
M1: Key = ("models", "acme", "m1")


def wait_until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Recorder:
    """A `process` that records what it was given and, for keys in `hold`, waits until the test
    lets it go."""

    def __init__(self) -> None:
        self.seen: list[Key] = []
        self.running: set[Key] = set()
        self.most_at_once: dict[str, int] = {}
        self.hold: set[Key] = set()
        self.release = threading.Event()
        self.fail: dict[Key, int] = {}  # fail this many more times
        self._guard = threading.Lock()

    def __call__(self, key: Key) -> None:
        with self._guard:
            assert key not in self.running, f"{key} reconciled twice at once"
            self.running.add(key)
            self.seen.append(key)
            kind_now = sum(1 for k in self.running if k[0] == key[0])
            self.most_at_once[key[0]] = max(self.most_at_once.get(key[0], 0), kind_now)
        try:
            if key in self.hold or key[0] in {k[0] for k in self.hold if k[1] == "*"}:
                assert self.release.wait(5), "never released"
            with self._guard:
                if self.fail.get(key, 0) > 0:
                    self.fail[key] -= 1
                    raise RuntimeError(f"{key[2]} failed")
        finally:
            with self._guard:
                self.running.discard(key)

    def count(self, key: Key) -> int:
        with self._guard:
            return self.seen.count(key)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make(recorder: Recorder) -> Iterator[Callable[..., WorkQueue]]:
    queues: list[WorkQueue] = []

    def make(**kwargs: object) -> WorkQueue:
        q = WorkQueue(recorder, **{"workers": 2, **kwargs})  # type: ignore[arg-type]
        queues.append(q)
        return q

    yield make
    for q in queues:
        q.stop()


def test_events_for_a_waiting_object_merge_into_one_reconcile(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make()
    for _ in range(10):
        q.add(D1)
    q.add(D2)
    assert q.depth() == 2
    q.start()
    wait_until(q.idle)
    assert sorted(recorder.seen) == [D1, D2]
    assert q.processed == 2


def test_an_object_added_while_it_runs_runs_once_more_after_never_twice_at_once(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make(workers=4)
    recorder.hold.add(D1)
    q.start()
    q.add(D1)
    wait_until(lambda: D1 in recorder.running)
    for _ in range(5):
        q.add(D1)  # the running pass may have read the state before these changes
    assert q.depth() == 0  # not handed to another worker while it runs
    recorder.hold.clear()
    recorder.release.set()
    wait_until(lambda: q.idle() and recorder.count(D1) == 2)
    assert recorder.count(D1) == 2


def test_a_failure_backs_off_without_holding_the_worker(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make(workers=1, backoff=Backoff(first=30, cap=60, jitter=0))
    recorder.fail[D1] = 1
    q.start()
    q.add(D1)
    wait_until(lambda: q.failures(D1) == 1)
    # The only worker is free: another object goes through while D1 waits for its retry.
    q.add(D2)
    wait_until(lambda: recorder.count(D2) == 1)
    assert recorder.count(D1) == 1
    delay = q.delayed()[D1]
    assert 25 < delay <= 30


def test_backoff_doubles_up_to_its_cap_and_a_success_forgets_it(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    backoff = Backoff(first=0.01, cap=0.04, jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 10)] == [0.01, 0.02, 0.04, 0.04, 0.04]
    jittered = Backoff(first=10, cap=100, jitter=0.1)
    assert jittered.delay(1, rand=lambda: 1.0) == pytest.approx(9.0)
    assert jittered.delay(1, rand=lambda: 0.0) == 10.0
    q = make(workers=1, backoff=backoff)
    recorder.fail[D1] = 3
    q.start()
    q.add(D1)
    wait_until(lambda: recorder.count(D1) == 4 and q.idle())
    assert q.failures(D1) == 0  # the fourth pass succeeded
    assert q.delayed() == {}


def test_one_kind_cannot_take_every_worker(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make(workers=4, per_kind=3)
    recorder.hold.add(("models", "*", "*"))
    for i in range(20):
        q.add(("models", "acme", f"m{i}"))
    q.add(D1)
    q.start()
    # Three Models hold three workers; the fourth takes the Deployment, though it was queued
    # after twenty Models.
    wait_until(lambda: recorder.count(D1) == 1)
    assert recorder.most_at_once["models"] == 3
    recorder.release.set()
    wait_until(q.idle)
    assert len(recorder.seen) == 21
    assert recorder.most_at_once["models"] == 3


def test_kinds_take_turns(make: Callable[..., WorkQueue], recorder: Recorder) -> None:
    q = make(workers=1)
    for i in range(3):
        q.add(("models", "acme", f"m{i}"))
    for i in range(3):
        q.add(("deployments", "acme", f"d{i}"))
    q.start()
    wait_until(q.idle)
    assert [k[0][0] for k in recorder.seen] == ["m", "d", "m", "d", "m", "d"]


def test_a_delayed_add_keeps_the_earliest_time(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make()
    q.add_after(D1, 60)
    q.add_after(D1, 0.05)  # a retry soon is not pushed back by a resync later
    q.add_after(D1, 120)
    assert 0 < q.delayed()[D1] <= 0.05
    q.start()
    wait_until(lambda: recorder.count(D1) == 1)
    assert q.delayed() == {}
    time.sleep(0.1)
    assert recorder.count(D1) == 1


def test_a_forgotten_object_is_not_added_by_its_delay(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make()
    q.add_after(D1, 0.05)
    q.add_after(D2, 0.05)
    q.forget(D1)
    q.start()
    wait_until(lambda: recorder.count(D2) == 1)
    time.sleep(0.1)
    assert recorder.seen == [D2]


def test_after_success_runs_only_after_a_success(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    succeeded: list[Key] = []
    q = make(workers=1, backoff=Backoff(first=60), after_success=succeeded.append)
    recorder.fail[D1] = 1
    q.start()
    q.add(D1)
    q.add(D2)
    wait_until(lambda: q.idle() and len(recorder.seen) == 2)
    assert succeeded == [D2]


def test_a_stopped_queue_takes_no_more_work(
    make: Callable[..., WorkQueue], recorder: Recorder
) -> None:
    q = make()
    q.start()
    q.stop()
    q.add(D1)
    q.add_after(D2, 0)
    time.sleep(0.05)
    assert recorder.seen == []
    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue(recorder, workers=0)
