from __future__ import annotations

import pytest

from graft.plan.autoscale import (
    AutoscaleSpec,
    LoadHistory,
    LoadSample,
    desired,
    in_window,
    recommend,
)

# Target 4 concurrent requests per replica; the default windows: up 30 s, down 10 min, zero 1 h.
SPEC = AutoscaleSpec(min_replicas=0, max_replicas=10, target_concurrency=4)
T0 = 10_000.0


def series(*points: tuple[float, int]) -> list[LoadSample]:
    """Samples at T0 + offset."""
    return [LoadSample(T0 + at, n) for at, n in points]


def every_second(start: float, end: float, in_flight: int) -> list[tuple[float, int]]:
    return [(float(t), in_flight) for t in range(int(start), int(end))]


def test_desired_replicas_round_up() -> None:
    assert [desired(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_a_spike_shorter_than_the_up_window_adds_no_replica() -> None:
    samples = series(*every_second(0, 100, 4), *every_second(100, 120, 40))
    rec = recommend(SPEC, samples, current=1, now=T0 + 119)
    assert rec.replicas == 1


def test_load_sustained_for_the_up_window_scales_up_to_its_lowest_level() -> None:
    # 40 in flight for the whole window, 24 at its lowest: 24 / 4 = 6 replicas.
    samples = series(*every_second(0, 100, 4), (100, 40), (110, 24), (120, 40))
    assert recommend(SPEC, samples, current=1, now=T0 + 129).replicas == 1  # 29 s sustained
    rec = recommend(SPEC, samples, current=1, now=T0 + 130)
    assert rec.replicas == 6
    assert "30s" in rec.reason


def test_the_value_in_effect_when_the_window_opens_counts() -> None:
    # One sample at 100 (40 in flight) and no other: it held for the whole window.
    samples = series((0, 4), (100, 40))
    assert recommend(SPEC, samples, current=1, now=T0 + 130).replicas == 10
    assert in_window(samples, T0 + 100, T0 + 130) == [40]
    assert in_window(samples, T0 + 99, T0 + 130) == [4, 40]


def test_scale_up_stops_at_max_replicas() -> None:
    samples = series((0, 400))
    rec = recommend(SPEC, samples, current=2, now=T0 + 60)
    assert rec.replicas == 10
    assert "maxReplicas 10" in rec.reason


def test_a_zero_up_window_reacts_at_once() -> None:
    spec = AutoscaleSpec(max_replicas=10, target_concurrency=4, scale_up_window=0)
    samples = series(*every_second(0, 100, 4), (100, 20))
    assert recommend(spec, samples, current=1, now=T0 + 100).replicas == 5


def test_scale_down_waits_for_the_peak_to_leave_the_down_window() -> None:
    # A peak of 20 (5 replicas) at t=0..60, then 4 (1 replica) for the rest.
    samples = series(*every_second(0, 60, 20), (60, 4))
    assert recommend(SPEC, samples, current=5, now=T0 + 600).replicas == 5  # peak at 59 s
    assert recommend(SPEC, samples, current=5, now=T0 + 659).replicas == 5
    rec = recommend(SPEC, samples, current=5, now=T0 + 660)
    assert rec.replicas == 1
    assert "600s" in rec.reason


def test_scale_down_goes_to_the_highest_level_of_the_window() -> None:
    samples = series((0, 20), (300, 12), (500, 4))
    assert recommend(SPEC, samples, current=5, now=T0 + 700).replicas == 5
    assert recommend(SPEC, samples, current=5, now=T0 + 900).replicas == 3  # 12 since 300
    assert recommend(SPEC, samples, current=5, now=T0 + 1100).replicas == 1


def test_the_down_path_never_reaches_zero_on_its_own() -> None:
    samples = series((0, 0))
    rec = recommend(SPEC, samples, current=3, now=T0 + 1200)  # idle 20 min: down, not zero
    assert rec.replicas == 1


def test_scale_to_zero_after_the_whole_window_without_requests() -> None:
    samples = series((0, 4), (100, 0))
    assert recommend(SPEC, samples, current=1, now=T0 + 100 + 3599).replicas == 1
    rec = recommend(SPEC, samples, current=1, now=T0 + 100 + 3600)
    assert rec.replicas == 0
    assert "3600s" in rec.reason


def test_a_request_between_two_samples_keeps_a_replica() -> None:
    samples = series((0, 0), (3600, 0))
    assert recommend(SPEC, samples, current=1, now=T0 + 3600).replicas == 0
    rec = recommend(SPEC, samples, current=1, now=T0 + 3600, last_request_at=T0 + 1800)
    assert rec.replicas == 1


def test_no_scale_to_zero_without_history_covering_the_window() -> None:
    samples = series((0, 0))  # the gateway started 30 minutes ago
    assert recommend(SPEC, samples, current=1, now=T0 + 1800).replicas == 1


def test_no_scale_to_zero_when_min_replicas_is_above_zero() -> None:
    spec = AutoscaleSpec(min_replicas=2, max_replicas=10, target_concurrency=4)
    samples = series((0, 0))
    assert recommend(spec, samples, current=3, now=T0 + 10 * 3600).replicas == 2


def test_from_zero_any_pending_request_gets_one_replica_at_once() -> None:
    samples = series((0, 0), (5000, 1))
    rec = recommend(SPEC, samples, current=0, now=T0 + 5000)
    assert rec.replicas == 1
    assert "from zero" in rec.reason
    # Many pending requests still start with one; the up window decides on more.
    samples = series((0, 0), (5000, 40))
    assert recommend(SPEC, samples, current=0, now=T0 + 5000).replicas == 1
    assert recommend(SPEC, samples, current=1, now=T0 + 5030).replicas == 10


def test_zero_stays_zero_without_requests() -> None:
    rec = recommend(SPEC, series((0, 0)), current=0, now=T0 + 10)
    assert rec.replicas == 0


def test_current_counts_outside_the_bounds_move_to_them_at_once() -> None:
    spec = AutoscaleSpec(min_replicas=2, max_replicas=4, target_concurrency=4)
    assert recommend(spec, series((0, 0)), current=0, now=T0).replicas == 2
    assert recommend(spec, series((0, 0)), current=9, now=T0).replicas == 4
    assert recommend(spec, [], current=1, now=T0).replicas == 2


def test_without_samples_the_current_count_stays() -> None:
    rec = recommend(SPEC, [], current=3, now=T0)
    assert rec.replicas == 3
    assert "no load" in rec.reason


def test_samples_after_now_and_out_of_order_are_handled() -> None:
    samples = [LoadSample(T0 + 100, 40), LoadSample(T0, 4), LoadSample(T0 + 10_000, 400)]
    assert recommend(SPEC, samples, current=1, now=T0 + 130).replicas == 10


def test_steady_load_keeps_the_count() -> None:
    samples = series(*every_second(0, 700, 8))
    rec = recommend(SPEC, samples, current=2, now=T0 + 699)
    assert rec.replicas == 2
    assert "8 requests in flight" in rec.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": -1}, "minReplicas"),
        ({"max_replicas": 0}, "maxReplicas"),
        ({"min_replicas": 5, "max_replicas": 4}, "maxReplicas"),
        ({"target_concurrency": 0}, "target"),
        ({"scale_up_window": -1}, "scaleUpWindow"),
        ({"scale_to_zero_window": 299}, "at least 300s"),
        ({"scale_to_zero_window": 59, "min_scale_to_zero_window": 60}, "at least 60s"),
        ({"min_scale_to_zero_window": -1}, "floor must not be negative"),
    ],
)
def test_invalid_specs_are_refused(kwargs: dict[str, float], message: str) -> None:
    values: dict[str, float] = {"max_replicas": 10, "target_concurrency": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        AutoscaleSpec(**values)  # type: ignore[arg-type]


def test_history_keeps_the_window_and_the_sample_in_effect_when_it_opens() -> None:
    history = LoadHistory(keep=60)
    for t in range(0, 200, 10):
        history.record(T0 + t, t)
    kept = history.samples()
    assert kept[0].at == T0 + 130  # in effect at 190 - 60 = 130
    assert kept[-1].at == T0 + 190
    assert len(kept) == 7


def test_the_floor_of_the_zero_window_is_a_parameter() -> None:
    # An installation with a 30 s floor (an integration test) may scale to zero after 30 s.
    spec = AutoscaleSpec(
        max_replicas=10,
        target_concurrency=4,
        scale_to_zero_window=30,
        min_scale_to_zero_window=30,
    )
    samples = series((0, 2), (10, 0))
    assert recommend(spec, samples, current=1, now=T0 + 39).replicas == 1
    rec = recommend(spec, samples, current=1, now=T0 + 40)
    assert rec.replicas == 0
    assert "30s" in rec.reason


def test_history_keeps_only_changes() -> None:
    history = LoadHistory(keep=SPEC.longest_window)
    for t in range(0, 7200, 5):
        history.record(T0 + t, 3 if 100 <= t < 200 else 0)
    # 0 from the start, 3 at 100, 0 again at 200: the sample in effect when the hour opened (0
    # since 200) and nothing else.
    assert history.samples() == [LoadSample(T0 + 200, 0)]
    history.record(T0 + 7200, 1)
    assert history.samples() == [LoadSample(T0 + 200, 0), LoadSample(T0 + 7200, 1)]
    # The same decisions as with every sample kept: idle for the whole hour before 7200.
    assert recommend(SPEC, history.samples(), current=1, now=T0 + 7195).replicas == 0


def test_history_refuses_samples_out_of_order() -> None:
    history = LoadHistory(keep=60)
    history.record(T0 + 10, 1)
    with pytest.raises(ValueError, match="time order"):
        history.record(T0, 1)


def test_history_feeds_the_recommender_across_the_longest_window() -> None:
    history = LoadHistory(keep=SPEC.longest_window)
    for t in range(0, 2 * 3600, 15):
        history.record(T0 + t, 0)
    assert recommend(SPEC, history.samples(), current=1, now=T0 + 2 * 3600 - 15).replicas == 0
