"""Which events of an object its dependents act on: pure, so that the operator's event handlers
can drop the rest. A Model is written for many reasons (its status, kopf's progress annotations,
its finalizers); the Deployments and DeployedModels that use it care only about its spec
(generation), whether it is Ready (and why not), which generation that status is of, and whether
it is being deleted. `Relevance` remembers that much per object and says whether an event
changed it, so a Model's status or annotation write no longer reconciles every Deployment of its
account. The resync stays the safety net for anything this misses."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from typing import Any

Key = tuple[str, str]  # namespace, name


def model_facts(body: Mapping[str, Any]) -> Hashable:
    """What of a Model its users act on."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ready = next(
        (
            c
            for c in status.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") == "Ready"
        ),
        {},
    )
    return (
        meta.get("uid"),
        meta.get("generation"),
        status.get("observedGeneration"),
        ready.get("status"),
        ready.get("reason"),
        bool(meta.get("deletionTimestamp")),
    )


class Relevance:
    """The facts last seen per object; `changed` is True on the first event of an object, on
    its deletion, and whenever its facts differ from the last event's. Thread-safe: kopf runs
    sync handlers on a pool."""

    def __init__(self) -> None:
        self._seen: dict[Key, Hashable] = {}
        self._lock = threading.Lock()

    def changed(self, namespace: str, name: str, facts: Hashable, *, deleted: bool = False) -> bool:
        key = (namespace, name)
        with self._lock:
            if deleted:
                self._seen.pop(key, None)
                return True
            if key in self._seen and self._seen[key] == facts:
                return False
            self._seen[key] = facts
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
