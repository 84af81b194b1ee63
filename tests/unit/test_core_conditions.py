from __future__ import annotations

from graft.api.common import ConditionStatus
from graft.core.conditions import find, is_true, set_condition


def test_transition_time_moves_only_when_status_changes() -> None:
    c = set_condition([], "Ready", False, "Waiting", "m1", generation=1, now="T1")
    c = set_condition(c, "Ready", False, "StillWaiting", "m2", generation=2, now="T2")
    ready = find(c, "Ready")
    assert ready is not None
    assert ready.last_transition_time == "T1"
    assert (ready.reason, ready.message, ready.observed_generation) == ("StillWaiting", "m2", 2)
    c = set_condition(c, "Ready", True, "Done", "", generation=2, now="T3")
    ready = find(c, "Ready")
    assert ready is not None
    assert ready.last_transition_time == "T3"
    assert ready.status == ConditionStatus.TRUE
    assert is_true(c, "Ready")


def test_other_conditions_keep_order_and_values() -> None:
    c = set_condition([], "Ready", True, "A", "", generation=1, now="T1")
    c = set_condition(c, "Progressing", True, "B", "", generation=1, now="T1")
    c = set_condition(c, "Ready", False, "C", "", generation=1, now="T2")
    assert [x.type for x in c] == ["Ready", "Progressing"]
    progressing = find(c, "Progressing")
    assert progressing is not None
    assert progressing.last_transition_time == "T1"
    assert not is_true(c, "Ready")
    assert not is_true(c, "Missing")


def test_same_inputs_give_identical_wire_form() -> None:
    a = set_condition([], "Ready", True, "R", "m", generation=3, now="T1")
    b = set_condition(a, "Ready", True, "R", "m", generation=3, now="T9")
    assert [x.wire() for x in a] == [x.wire() for x in b]


def test_overlong_messages_are_cut_to_the_schema() -> None:
    from graft.api.common import CONDITION_MESSAGE_MAX
    from graft.core.conditions import set_condition

    long = "users: " + ", ".join(f"accounts/a/deployments/d{i}" for i in range(5000))
    (cond,) = set_condition([], "Ready", False, "InUse", long, generation=1, now="t")
    assert len(cond.message) == CONDITION_MESSAGE_MAX
    assert cond.message.endswith("...")
    assert cond.message.startswith("users: accounts/a/deployments/d0, ")
