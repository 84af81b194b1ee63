"""The small facts about Kubernetes objects that every layer needs, each written once (pure).

Objects are plain dicts as the API server returns them (`Obj`). A Graft object that creates
children is their `Owner`: it puts its ownerReference on them (so the garbage collector removes
them with it) and the same recommended labels (`labels()`), so that `kubectl get -l` and the
operator's own watches find them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graft.core import keys

Obj = dict[str, Any]
"""A Kubernetes object as JSON: what the API server returns and what Graft sends it."""


@dataclass(frozen=True)
class Owner:
    """A Graft object that owns (or made) other objects: an Account, a User, an ApiKey, a
    Deployment, a Dataset or a FineTuningJob. `namespace` is "" for cluster-scoped Accounts."""

    kind: str
    name: str
    uid: str
    namespace: str = ""
    generation: int = 0

    @classmethod
    def of(cls, obj: Obj) -> Owner:
        meta = obj["metadata"]
        return cls(
            kind=obj["kind"],
            name=meta["name"],
            uid=meta["uid"],
            namespace=meta.get("namespace") or "",
            generation=meta.get("generation") or 0,
        )

    def reference(self, *, controller: bool = True) -> Obj:
        """The ownerReference of a child: the controller (unless `controller` is False: an
        ApiKey belongs to its User, but the User's reconciler does not manage it), and its
        deletion waits for the child when the owner is deleted in the foreground."""
        return {
            "apiVersion": keys.API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": True,
        }

    @property
    def label(self) -> str:
        """The label that names this owner on what it made, e.g. graft.dev/deployment."""
        return keys.OWNER_LABELS[self.kind]


def labels(component: str, owner: Owner, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels of everything Graft creates for an owner: Kubernetes' recommended labels
    (managed-by, part-of, name, component, instance) plus the owner's own label, then `extra`."""
    return {
        keys.MANAGED_BY: keys.MANAGED_BY_VALUE,
        keys.PART_OF: keys.PART_OF_VALUE,
        keys.NAME: keys.NAME_VALUE,
        keys.COMPONENT: component,
        keys.INSTANCE: owner.name,
        owner.label: owner.name,
        **(extra or {}),
    }


INSTALLED_LABELS = {keys.PART_OF: keys.PART_OF_VALUE}
"""The label of what installing Graft creates (CRDs, RBAC): no owner, no component."""


def owned_by(obj: Obj, uid: str) -> bool:
    """Whether `obj` has an ownerReference to the object with this uid."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def labels_of(obj: Obj) -> dict[str, str]:
    found: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return found


def is_terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def condition(obj: Obj | None, type_: str) -> Obj | None:
    """The condition of this type in the object's status, as the API server returns it."""
    if not obj:
        return None
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def condition_true(obj: Obj | None, type_: str) -> bool:
    """The object's condition of this type is True (core.conditions.is_true is the same for
    typed conditions)."""
    return (condition(obj, type_) or {}).get("status") == "True"


def is_ready(obj: Obj | None) -> bool:
    """Ready=True: a Pod that passes its readiness probe, a Node, or a Graft object."""
    return condition_true(obj, "Ready")


def is_finished(obj: Obj | None) -> bool:
    """A Dataset or FineTuningJob that has ended (Succeeded or Failed), for good."""
    return condition_true(obj, "Succeeded") or condition_true(obj, "Failed")
