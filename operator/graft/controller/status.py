"""Writing a Graft object's status: once per reconcile, and only when it changed."""

from __future__ import annotations

from graft.controller.kube import Api, Obj


def write_status(api: Api, obj: Obj, previous: Obj, new: Obj, plural: str) -> None:
    """Merge-patch status when it differs from what the object has; vanished keys are removed."""
    if previous == new:
        return
    patch: Obj = {k: None for k in previous if k not in new}
    patch.update(new)
    meta = obj["metadata"]
    api.patch_graft_status(plural, meta.get("namespace") or "", meta["name"], patch)
