"""Reconciles a reconcile asks for at a later time (`ctx.recheck`).

An ApiKey asks for its next look just after its key expires (else after the resync interval;
ApiKeys have no resync of their own). An object waiting for something the operator does not
watch (a user's ConfigMap or PersistentVolumeClaim) asks to be looked at again, less often the
longer it waits (`look_again`). One thread keeps these times for every object; each object has
one pending time, the one its latest reconcile asked for, and hands the object to the work queue
when it is due. They live in memory only: after a restart every object is reconciled once (its
first event), and those reconciles ask again.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from graft.api.common import Condition
from graft.core.conditions import find

if TYPE_CHECKING:
    from graft.controller.context import Context

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""(plural, namespace, name)"""


WAITING_FIRST_SECONDS = 2.0


def waiting_delay(waited: float, cap: float) -> float:
    """When to look again for something the operator cannot watch (a user's ConfigMap or
    PersistentVolumeClaim that does not exist yet), having waited `waited` seconds so far: soon
    at first, then a quarter of the time waited, at most `cap` (the resync interval). Watching
    every ConfigMap of the cluster for the few a Dataset waits for would cost more."""
    return min(cap, max(WAITING_FIRST_SECONDS, waited / 4))


class Rechecks:
    """`schedule(plural, namespace, name, delay)` calls `fire(plural, namespace, name)` once, on
    this object's thread, `delay` seconds from now, unless the object is scheduled again before
    then (the later request replaces the earlier one). `fire` must return at once: it hands the
    reconcile to a worker."""

    def __init__(
        self,
        fire: Callable[[str, str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def schedule(self, plural: str, namespace: str, name: str, delay: float) -> None:
        key = (plural, namespace, name)
        with self._wake:
            when = self._clock() + max(0.0, delay)
            self._due[key] = when
            heapq.heappush(self._heap, (when, key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rechecks", daemon=True)
                self._thread.start()
            self._wake.notify()

    def pending(self) -> dict[Key, float]:
        """Seconds until each pending re-check."""
        with self._wake:
            now = self._clock()
            return {key: when - now for key, when in self._due.items()}

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _next(self) -> Key | None:
        """The next object that is due, waiting for it; None once stopped."""
        with self._wake:
            while not self._stopped:
                now = self._clock()
                if self._heap and self._heap[0][0] <= now:
                    when, key = heapq.heappop(self._heap)
                    if self._due.get(key) != when:
                        continue  # replaced by a later request
                    del self._due[key]
                    return key
                self._wake.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._fire(*key)
            except Exception:
                log.exception("re-checking %s %s/%s failed", *key)


UNWATCHED = frozenset({"WaitingForConfigMap", "WaitingForVolume"})
"""Waiting reasons whose cause the operator does not watch (a user's ConfigMap or claim)."""


def look_again(
    ctx: Context, plural: str, namespace: str, name: str, previous: list[Condition]
) -> None:
    """Ask for the next look at an object that waits for something unwatched, by how long it has
    waited: since its Ready condition last changed (`waiting_delay`)."""
    ready = find(previous, "Ready")
    since = _parse_time(ready.last_transition_time) if ready is not None else None
    waited = (datetime.now(UTC) - since).total_seconds() if since else 0.0
    ctx.recheck(plural, namespace, name, waiting_delay(waited, ctx.settings.resync_seconds))


def _parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
