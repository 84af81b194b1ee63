"""Publishing what a reconcile found: the object's status, and an Event when Ready moves.

Every reconciler ends here. Status is written once per reconcile and only when it changed, so a
reconcile that finds nothing new writes nothing and the object's resourceVersion stays put. An
Event is recorded when the Ready condition changes its status or its reason: the transitions a
person follows with `kubectl describe` (a message that only updates a count is not one).
"""

from __future__ import annotations

from collections.abc import Collection

from graft.api.common import StatusBase
from graft.controller.kube import Api
from graft.core.objects import Obj, condition


def publish(
    api: Api,
    obj: Obj,
    plural: str,
    status: StatusBase | Obj,
    *,
    warning: bool,
    quiet: Collection[str] = (),
) -> None:
    """Write `status` (keys the object has and `status` lacks are removed) if it differs from
    the object's, and record an Event (Warning when `warning`, else Normal) named after Ready's
    new reason when Ready's status or reason changed, unless that reason is in `quiet`."""
    previous: Obj = obj.get("status") or {}
    new = status.wire() if isinstance(status, StatusBase) else status
    if new != previous:
        patch: Obj = {k: None for k in previous if k not in new}
        patch.update(new)
        meta = obj["metadata"]
        api.patch_graft_status(plural, meta.get("namespace") or "", meta["name"], patch)
    before, after = condition(obj, "Ready"), condition({"status": new}, "Ready")
    if after is None or after.get("reason") in quiet:
        return
    if before is not None and (before.get("status"), before.get("reason")) == (
        after.get("status"),
        after.get("reason"),
    ):
        return
    api.event(obj, "Warning" if warning else "Normal", after["reason"], after.get("message", ""))
