"""The operator's in-memory copy of Graft's own objects, fed by the watches kopf already runs.

Reconciles read the objects they depend on (the Model a Deployment serves, the DeployedModels of
a Deployment, a User's ApiKeys, the FineTuningJobs waiting for a Dataset, what uses a Model) from
here instead of asking the API server each time; they write to the API server. The watch events
bring their own writes back within milliseconds.

How it stays true:
- `prime()` lists every kind once when the operator starts, before kopf starts its watches (kopf
  runs startup handlers first), so a reconcile never sees an empty cache for a kind it depends
  on; every watch event after that is newer than the listing.
- `put()`/`remove()` run on every watch event of the kind (graft.controller.main `observe`), in
  the watch's own order for each object.
- A kind (or, for `graft run --namespace`, a namespace) that was not primed is not covered:
  `Api.cached_graft`/`cached_list` read it from the API server instead.

What stays a fresh read, because acting on a stale copy would be wrong: the object a reconcile
is about (it writes that object's status, and a stale spec would be published as observed), a
Deployment's pods (a stale list would create a second pod), and everything not of a Graft kind.

Objects are stored without `metadata.managedFields` (most of an object's bytes, never read) and
handed out as deep copies: a caller that changes what it got cannot change the cache.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable

from graft.core.objects import Obj


def _slim(obj: Obj) -> Obj:
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return dict(obj)
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


Indexer = Callable[[Obj], Iterable[str]]
"""The index values of an object (e.g. the full names of the Models it uses)."""


class Store:
    """Objects by kind, namespace ("" for cluster-scoped kinds) and name, with indices: a lookup
    such as "the DeployedModels of this Deployment" is a dictionary read, not a scan."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {}
        self._covered: dict[str, frozenset[str] | None] = {}  # None: every namespace
        self._indexers: dict[str, dict[str, Indexer]] = {}
        # kind -> index -> value -> {(namespace, name)}
        self._index: dict[str, dict[str, dict[str, set[tuple[str, str]]]]] = {}
        self._values: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
        self._guard = threading.Lock()

    def add_index(self, plural: str, index: str, values: Indexer) -> None:
        """Keep `index` of `plural`: `by_index(plural, index, v)` finds the objects whose
        `values(obj)` include v. Add indices before priming."""
        with self._guard:
            self._indexers.setdefault(plural, {})[index] = values
            self._index.setdefault(plural, {})[index] = {}

    def by_index(self, plural: str, index: str, value: str) -> list[Obj]:
        """The objects of `plural` whose `index` values include `value`, by namespace and name."""
        with self._guard:
            where = sorted(self._index[plural][index].get(value, ()))
            by_ns = self._objects.get(plural, {})
            found = [by_ns[ns][name] for ns, name in where if name in by_ns.get(ns, {})]
        return copy.deepcopy(found)

    def _unindex(self, plural: str, namespace: str, name: str) -> None:
        for index in self._indexers.get(plural, {}):
            for value in self._values.pop((plural, index, namespace, name), ()):
                holders = self._index[plural][index].get(value)
                if holders is not None:
                    holders.discard((namespace, name))
                    if not holders:
                        del self._index[plural][index][value]

    def _reindex(self, plural: str, namespace: str, name: str, obj: Obj) -> None:
        self._unindex(plural, namespace, name)
        for index, values in self._indexers.get(plural, {}).items():
            found = tuple(sorted(set(values(obj))))
            if found:
                self._values[(plural, index, namespace, name)] = found
            for value in found:
                self._index[plural][index].setdefault(value, set()).add((namespace, name))

    def prime(self, plural: str, items: Iterable[Obj], namespaces: Iterable[str] | None) -> None:
        """Fill a kind from a full listing of `namespaces` (None: of the whole cluster)."""
        with self._guard:
            for ns, names in self._objects.get(plural, {}).items():
                for name in names:
                    self._unindex(plural, ns, name)
            by_ns: dict[str, dict[str, Obj]] = {}
            for obj in items:
                meta = obj["metadata"]
                ns = meta.get("namespace") or ""
                by_ns.setdefault(ns, {})[meta["name"]] = slim = _slim(obj)
                self._reindex(plural, ns, meta["name"], slim)
            self._objects[plural] = by_ns
            self._covered[plural] = None if namespaces is None else frozenset(namespaces)

    def covers(self, plural: str, namespace: str) -> bool:
        """Whether the cache holds every object of this kind in this namespace."""
        with self._guard:
            if plural not in self._covered:
                return False
            scope = self._covered[plural]
            return scope is None or namespace in scope

    def covers_all(self, plural: str) -> bool:
        """Whether the cache holds every object of this kind in the cluster."""
        with self._guard:
            return plural in self._covered and self._covered[plural] is None

    def put(self, plural: str, obj: Obj) -> None:
        meta = obj["metadata"]
        with self._guard:
            if plural in self._objects:
                ns = meta.get("namespace") or ""
                self._objects[plural].setdefault(ns, {})[meta["name"]] = slim = _slim(obj)
                self._reindex(plural, ns, meta["name"], slim)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        with self._guard:
            in_ns = self._objects.get(plural, {}).get(namespace)
            if in_ns is not None:
                in_ns.pop(name, None)
                self._unindex(plural, namespace, name)
                if not in_ns:
                    del self._objects[plural][namespace]

    def has(self, plural: str, namespace: str, name: str) -> bool:
        with self._guard:
            return name in self._objects.get(plural, {}).get(namespace, {})

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._guard:
            obj = self._objects.get(plural, {}).get(namespace, {}).get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None) -> list[Obj]:
        """Every object of a kind in a namespace (None: in every namespace), by name."""
        with self._guard:
            by_ns = self._objects.get(plural, {})
            spaces = list(by_ns.values()) if namespace is None else [by_ns.get(namespace, {})]
            found = [obj for space in spaces for obj in space.values()]
        found.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return copy.deepcopy(found)

    def count(self) -> int:
        with self._guard:
            return sum(len(s) for by_ns in self._objects.values() for s in by_ns.values())
