"""The operator's work queue: which object to reconcile next, on which worker, and when to retry.

kopf's handlers only say "this object may need a look" (`add`); reconciles run on the queue's
own workers. What it guarantees:

- **Events merge.** An object that is already waiting is not queued twice: ten pod events of one
  Deployment while it waits make one reconcile, not ten in a row.
- **One reconcile per object at a time.** An object added while it is being reconciled is
  reconciled once more after (the running pass may have read the state before the change).
- **A failure backs off without holding a worker.** The object goes back into the queue after
  `backoff(failures)` seconds (exponential, capped), and the worker takes the next object. A
  success forgets the count.
- **One kind cannot take every worker.** At most `per_kind` reconciles of one kind run at once,
  and kinds take turns: 5,000 Models queued by a restart do not hold back a Deployment.
- **Delays merge too.** `add_after` keeps the earliest time asked for: a retry in 1 s is not
  pushed back by a resync due in 5 minutes.

Keys are (plural, namespace, name). Nothing here knows Kubernetes; graft.controller.main feeds it.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""(plural, namespace, name); namespace is "" for cluster-scoped kinds."""


@dataclass(frozen=True)
class Backoff:
    """`first * 2**(failures-1)` seconds, at most `cap`, each up to `jitter` shorter (so objects
    that failed together do not all come back in the same instant)."""

    first: float = 1.0
    cap: float = 300.0
    jitter: float = 0.1

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.cap, self.first * 2.0 ** max(0, failures - 1))
        return base * (1.0 - self.jitter * rand())


class WorkQueue:
    """Reconciles keys on `workers` threads with `process(key)`; see the module's docstring.

    `process` raising is a failure (logged, backed off); returning is a success, after which
    `after_success(key)` runs (the operator schedules the key's resync there)."""

    def __init__(
        self,
        process: Callable[[Key], None],
        *,
        workers: int,
        per_kind: int | None = None,
        backoff: Backoff = Backoff(),
        after_success: Callable[[Key], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("a work queue needs at least one worker")
        self._process = process
        self._workers = workers
        self._per_kind = max(1, min(per_kind or workers, workers))
        self._backoff = backoff
        self._after_success = after_success
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: dict[str, deque[Key]] = {}  # by kind, FIFO
        self._turns: deque[str] = deque()  # kinds in the order they take turns
        self._queued: set[Key] = set()  # waiting, not running
        self._running: set[Key] = set()
        self._again: set[Key] = set()  # added while running: once more after
        self._in_flight: dict[str, int] = {}
        self._failures: dict[Key, int] = {}
        self._due: dict[Key, float] = {}  # add_after: the earliest time asked for
        self._heap: list[tuple[float, Key]] = []
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._started = False
        self.processed = 0
        """Reconciles run so far (for tests and benchmarks)."""

    # --- adding --------------------------------------------------------------------------------

    def add(self, key: Key) -> None:
        """Reconcile `key` soon, once, however often it is added before a worker takes it."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: Key) -> None:
        if self._stopped or key in self._queued:
            return
        if key in self._running:
            self._again.add(key)
            return
        self._queued.add(key)
        kind = key[0]
        if kind not in self._waiting:
            self._waiting[kind] = deque()
            self._turns.append(kind)
        self._waiting[kind].append(key)
        self._cond.notify_all()

    def add_after(self, key: Key, delay: float) -> None:
        """`add(key)` in `delay` seconds, unless it is due earlier already."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._stopped:
                return
            when = self._clock() + delay
            if key in self._due and self._due[key] <= when:
                return
            self._due[key] = when
            heapq.heappush(self._heap, (when, key))
            self._cond.notify_all()

    def forget(self, key: Key) -> None:
        """The object is gone: drop its failure count and any pending delayed add."""
        with self._cond:
            self._failures.pop(key, None)
            self._due.pop(key, None)

    # --- looking -------------------------------------------------------------------------------

    def depth(self) -> int:
        """Objects waiting for a worker now (not the delayed ones)."""
        with self._cond:
            return len(self._queued)

    def waiting(self) -> set[Key]:
        """The keys waiting for a worker now."""
        with self._cond:
            return set(self._queued)

    def delayed(self) -> dict[Key, float]:
        """Seconds until each delayed add."""
        with self._cond:
            now = self._clock()
            return {key: when - now for key, when in self._due.items()}

    def failures(self, key: Key) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def idle(self) -> bool:
        """Nothing waiting and nothing running (delayed adds may be pending)."""
        with self._cond:
            return not self._queued and not self._running

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._started:
                return
            self._started = True
        for i in range(self._workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._timer, name="reconcile-delays", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking work; wait up to `timeout` s for running reconciles to end."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> Key | None:
        """The next key whose kind may run another reconcile, kinds taking turns; None when
        stopped. Waits (under the condition) until there is one."""
        while not self._stopped:
            for _ in range(len(self._turns)):
                kind = self._turns[0]
                self._turns.rotate(-1)
                waiting = self._waiting[kind]
                if waiting and self._in_flight.get(kind, 0) < self._per_kind:
                    key = waiting.popleft()
                    self._queued.discard(key)
                    self._running.add(key)
                    self._in_flight[kind] = self._in_flight.get(kind, 0) + 1
                    return key
            self._cond.wait()
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                key = self._take()
            if key is None:
                return
            ok, delay = self._run(key)
            with self._cond:
                self.processed += 1
                self._running.discard(key)
                self._in_flight[key[0]] -= 1
                if ok:
                    self._failures.pop(key, None)
                if key in self._again:
                    self._again.discard(key)
                    self._add_locked(key)
                self._cond.notify_all()
            if delay is not None:
                self.add_after(key, delay)
            if ok and self._after_success is not None:
                try:
                    self._after_success(key)
                except Exception:
                    log.exception("after reconciling %s %s/%s", *key)

    def _run(self, key: Key) -> tuple[bool, float | None]:
        """Process one key: (succeeded, seconds until it is added again or None)."""
        try:
            self._process(key)
        except Exception:
            with self._cond:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
            delay = self._backoff.delay(failures)
            log.exception(
                "reconciling %s %s/%s failed (%d in a row); retrying in %.1f s",
                *key,
                failures,
                delay,
            )
            return False, delay
        return True, None

    def _timer(self) -> None:
        """Moves delayed adds into the queue when they are due."""
        with self._cond:
            while not self._stopped:
                now = self._clock()
                if self._heap and self._heap[0][0] <= now:
                    when, key = heapq.heappop(self._heap)
                    if self._due.get(key) == when:
                        del self._due[key]
                        self._add_locked(key)
                    continue
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
