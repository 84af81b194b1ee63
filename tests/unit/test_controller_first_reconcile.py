"""A reconciler that adds its finalizer goes on in the same pass: the finalizer's event is
metadata only, which no handler runs on, so stopping there left every new Model and Account to
the next resync (a minute, seen in `make demo`; the tests' operator resyncs every 2 s, which hid
it). Against a fake API that keeps objects and applies the finalizer patches as the server would.
The Account's reconciler had the same early return and has the same fix; `make demo`'s Account
stage shows it (61 s before, seconds after)."""

from __future__ import annotations

import copy
from typing import Any

from graft.controller import model
from graft.controller.context import Context
from graft.core import keys
from graft.core.settings import Settings

Obj = dict[str, Any]


class FakeApi:
    """Just what a first reconcile of a Base Model calls; anything else fails
    the test with AttributeError, naming it."""

    def __init__(
        self, objects: dict[tuple[str, str, str], Obj], users: list[Obj] | None = None
    ) -> None:
        self.objects = objects
        self.users = users or []  # the Deployments using every Model
        self.calls: list[str] = []
        self.statuses: list[Obj] = []

    def _get(self, plural: str, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def get_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        self.calls.append(f"get {plural}")
        return self._get(plural, namespace, name)

    def get_graft_cluster(self, plural: str, name: str) -> Obj | None:
        self.calls.append(f"get {plural}")
        return self._get(plural, "", name)

    def _add(self, plural: str, obj: Obj, finalizer: str) -> None:
        meta = obj["metadata"]
        stored = self.objects[(plural, meta.get("namespace", ""), meta["name"])]
        stored["metadata"].setdefault("finalizers", []).append(finalizer)

    def add_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        self.calls.append(f"add finalizer {plural}")
        self._add(plural, obj, finalizer)

    def remove_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        self.calls.append(f"remove finalizer {plural}")
        meta = obj["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])]["metadata"]["finalizers"].remove(
            finalizer
        )

    def add_cluster_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        self.calls.append(f"add finalizer {plural}")
        self._add(plural, obj, finalizer)

    def list_graft(self, plural: str, namespace: str) -> list[Obj]:
        return []

    def list_graft_everywhere(self, plural: str) -> list[Obj]:
        return []

    def cached_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self.get_graft(plural, namespace, name)

    def cached_index(self, plural: str, index: str, value: str, namespace: str | None) -> list[Obj]:
        return copy.deepcopy(self.users) if plural == "deployments" else []

    def patch_graft_status(self, plural: str, namespace: str, name: str, patch: Obj) -> None:
        self.calls.append(f"status {plural}")
        self.statuses.append(patch)

    def event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        pass


BASE: Obj = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "base", "namespace": "acme", "uid": "u1", "generation": 1},
    "spec": {"kind": "Base", "source": {"uri": "file:///models/tiny"}},
}
CHAT: Obj = {
    "metadata": {"name": "chat", "namespace": "acme", "uid": "u2"},
    "spec": {"baseModel": "base"},
}


def test_an_unused_model_is_ready_without_a_finalizer() -> None:
    """Deleting a Model nothing uses does not wait for the operator."""
    api = FakeApi({("models", "acme", "base"): copy.deepcopy(BASE)})
    ctx = Context(api=api, settings=Settings())  # type: ignore[arg-type]
    model.reconcile(ctx, "acme", "base")
    assert api.calls == ["get models", "status models"]
    assert "finalizers" not in api.objects[("models", "acme", "base")]["metadata"]


def test_a_used_model_is_ready_in_the_pass_that_adds_its_finalizer() -> None:
    api = FakeApi({("models", "acme", "base"): copy.deepcopy(BASE)}, users=[CHAT])
    ctx = Context(api=api, settings=Settings())  # type: ignore[arg-type]
    model.reconcile(ctx, "acme", "base")
    assert api.calls[:3] == ["get models", "add finalizer models", "get models"]
    assert api.calls[-1] == "status models"
    (status,) = api.statuses
    ready = [c["status"] for c in status["conditions"] if c["type"] == "Ready"]
    assert ready == ["True"], status
    assert (
        keys.IN_USE_FINALIZER in api.objects[("models", "acme", "base")]["metadata"]["finalizers"]
    )


def test_a_model_no_longer_used_loses_its_finalizer() -> None:
    protected = copy.deepcopy(BASE)
    protected["metadata"]["finalizers"] = [keys.IN_USE_FINALIZER]
    api = FakeApi({("models", "acme", "base"): protected})
    ctx = Context(api=api, settings=Settings())  # type: ignore[arg-type]
    model.reconcile(ctx, "acme", "base")
    assert api.calls == ["get models", "remove finalizer models", "get models", "status models"]
    assert api.objects[("models", "acme", "base")]["metadata"]["finalizers"] == []
