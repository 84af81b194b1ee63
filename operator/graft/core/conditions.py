"""Kubernetes-style conditions (pure).

`lastTransitionTime` moves only when a condition's status changes, so a reconcile that finds the
same state writes the same status and the object's resourceVersion stays put.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from graft.api.common import CONDITION_MESSAGE_MAX, Condition, ConditionStatus


def rfc3339(moment: datetime) -> str:
    """A timezone-aware moment as Kubernetes writes times: UTC, whole seconds, e.g.
    2026-03-02T09:14:05Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return conditions with `type_` set; other conditions keep their order and values. A
    message longer than the schema admits is cut, ending in "...", rather than refused (a
    refused status write would be retried forever)."""
    if len(message) > CONDITION_MESSAGE_MAX:
        message = message[: CONDITION_MESSAGE_MAX - 3] + "..."
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = find(conditions, type_)
    moved = previous is None or previous.status != status
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if moved or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type_ else c for c in conditions]


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    c = find(conditions, type_)
    return c is not None and c.status == ConditionStatus.TRUE


def finished(conditions: list[Condition]) -> bool:
    """Succeeded or Failed is True: the object has ended and is never worked on again."""
    return any(c.type in ("Succeeded", "Failed") and c.status == "True" for c in conditions)


def conditions_of(obj: dict[str, Any]) -> list[Condition]:
    """The conditions in an object's status, typed: what a reconcile starts from."""
    return [Condition.model_validate(c) for c in (obj.get("status") or {}).get("conditions") or []]
