"""Table tests for the model-server pod plan."""

from __future__ import annotations

import pytest

from graft.plan.deployment import ObservedPod, pod_plan

H = "current"


def pod(
    name: str, hash_: str = H, ready: bool = True, created: str = "2026-01-01T00:00:00Z", **kw: bool
) -> ObservedPod:
    return ObservedPod(name=name, spec_hash=hash_, ready=ready, created=created, **kw)


@pytest.mark.parametrize(
    ("desired", "pods", "create", "delete"),
    [
        pytest.param(2, [], 2, [], id="from-nothing"),
        pytest.param(3, [pod("a"), pod("b")], 1, [], id="scale-up"),
        pytest.param(2, [pod("a"), pod("b")], 0, [], id="converged"),
        pytest.param(0, [pod("a"), pod("b")], 0, ["a", "b"], id="scale-to-zero"),
        pytest.param(
            1,
            [
                pod("old", created="2026-01-01T00:00:00Z"),
                pod("new", created="2026-01-02T00:00:00Z"),
                pod("mid", created="2026-01-01T12:00:00Z"),
            ],
            0,
            ["new", "mid"],
            id="scale-down-removes-newest-first",
        ),
        pytest.param(
            1,
            [pod("ready"), pod("unready", ready=False, created="2025-01-01T00:00:00Z")],
            0,
            ["unready"],
            id="scale-down-removes-unready-first",
        ),
        pytest.param(
            2, [pod("a"), pod("gone", terminating=True)], 1, [], id="terminating-pods-do-not-count"
        ),
        pytest.param(1, [pod("dead", finished=True)], 1, ["dead"], id="finished-pods-are-replaced"),
        pytest.param(
            2, [pod("o1", "old"), pod("o2", "old")], 1, [], id="rollout-surges-one-before-deleting"
        ),
        pytest.param(
            2,
            [pod("o1", "old"), pod("o2", "old"), pod("n1", ready=False), pod("n2", ready=False)],
            0,
            [],
            id="rollout-waits-for-ready",
        ),
        pytest.param(
            2,
            [pod("o1", "old"), pod("o2", "old"), pod("n1"), pod("n2", ready=False)],
            0,
            ["o1"],
            id="rollout-one-at-a-time",
        ),
        pytest.param(
            2,
            [pod("o1", "old"), pod("o2", "old"), pod("n1"), pod("n2")],
            0,
            ["o1", "o2"],
            id="rollout-finishes",
        ),
        pytest.param(
            2,
            [pod("o1", "old", ready=False), pod("o2", "old")],
            2,
            ["o1"],
            id="unready-outdated-go-at-once",
        ),
        pytest.param(1, [pod("x", None)], 1, [], id="pod-without-hash-label-is-outdated"),
    ],
)
def test_pod_plan(desired: int, pods: list[ObservedPod], create: int, delete: list[str]) -> None:
    plan = pod_plan(desired, H, pods)
    assert plan.create == create
    assert list(plan.delete) == delete


def test_plan_is_idempotent_once_converged() -> None:
    pods = [pod("a"), pod("b")]
    assert pod_plan(2, H, pods).empty


@pytest.mark.parametrize(
    ("desired", "pods", "reason"),
    [(2, [], "ScalingUp"), (0, [pod("a")], "ScalingDown"), (1, [pod("o", "old")], "RollingUpdate")],
)
def test_plan_reasons(desired: int, pods: list[ObservedPod], reason: str) -> None:
    assert reason in pod_plan(desired, H, pods).reasons


def test_rollout_within_surge_and_unavailability() -> None:
    old = [
        pod("o1", "old", created="1"),
        pod("o2", "old", created="2"),
        pod("o3", "old", created="3"),
    ]
    # maxSurge 2: two new pods at once, nothing deleted before they are ready.
    plan = pod_plan(3, H, old, max_surge=2)
    assert (plan.create, plan.delete) == (2, ())
    # maxUnavailable 1, maxSurge 0: the oldest goes first, its replacement follows.
    plan = pod_plan(3, H, old, max_surge=0, max_unavailable=1)
    assert (plan.create, plan.delete) == (1, ("o1",))
    # Never more than one away at a time.
    waiting = [pod("o2", "old"), pod("o3", "old"), pod("n1", ready=False)]
    plan = pod_plan(3, H, waiting, max_surge=0, max_unavailable=1)
    assert (plan.create, plan.delete) == (0, ())


def test_a_refused_surge_replaces_one_pod_at_a_time() -> None:
    # An exact quota (2 GPUs, 2 replicas): the surge pod is refused.
    old = [pod("o1", "old", created="1"), pod("o2", "old", created="2")]
    plan = pod_plan(2, H, old, surge_refused=True)
    assert (plan.create, plan.delete) == (1, ("o1",))
    # The replacement is not ready yet: the other old pod stays.
    halfway = [pod("o2", "old"), pod("n1", ready=False)]
    plan = pod_plan(2, H, halfway, surge_refused=True)
    assert (plan.create, plan.delete) == (0, ())
    # Ready: the last old pod goes, and its replacement comes.
    plan = pod_plan(2, H, [pod("o2", "old"), pod("n1")], surge_refused=True)
    assert (plan.create, plan.delete) == (1, ("o2",))
    # Without outdated pods there is nothing to replace: a refusal then only waits.
    assert pod_plan(3, H, [pod("a"), pod("b")], surge_refused=True).create == 1
