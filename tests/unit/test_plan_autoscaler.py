"""The autoscaler's decisions without I/O: the gateways' exposition, the leader's memory of the
load, the decision per pass on an injected clock, and when status is worth a write."""

from __future__ import annotations

from typing import Any

import pytest

from graft.api.common import Condition
from graft.api.serving import Autoscaling
from graft.plan.autoscaler import (
    STATUS_REFRESH_SECONDS,
    Decision,
    DeploymentKey,
    LoadBook,
    Observation,
    Reason,
    Scrape,
    Series,
    autoscaled,
    autoscaling_conditions,
    autoscaling_status,
    decide,
    gateway_metrics_urls,
    needs_write,
    parse_exposition,
)
from harness.gatewaymetrics import Loads, exposition

CHAT: DeploymentKey = ("acme", "chat")
CODE: DeploymentKey = ("acme", "code")
GW1, GW2 = "http://10.0.0.1:9100/metrics", "http://10.0.0.2:9100/metrics"
FLOOR = 300.0


def scrape(*answers: tuple[str, Loads], failed: dict[str, str] | None = None) -> Scrape:
    """A pass in which each gateway answered with the real exposition of its loads."""
    return Scrape(
        answered={url: parse_exposition(exposition(loads).decode()) for url, loads in answers},
        failed=failed or {},
    )


def spec(**autoscaling: Any) -> Any:
    return autoscaled(Autoscaling.model_validate({"maxReplicas": 10, **autoscaling}), FLOOR)


# --- The exposition --------------------------------------------------------------------------


def test_the_gateways_series_are_read_by_deployment() -> None:
    text = exposition({CHAT: (3, 10), CODE: (0, 2), ("other", "chat"): (1, 1)}).decode()
    assert parse_exposition(text) == {
        CHAT: Series(3.0, 10.0),
        CODE: Series(0.0, 2.0),
        ("other", "chat"): Series(1.0, 1.0),
    }


def test_a_deployment_without_requests_yet_has_no_counter() -> None:
    assert parse_exposition(exposition({CHAT: (0, 0)}).decode()) == {CHAT: Series(0.0, None)}


def test_samples_without_both_labels_or_a_number_are_skipped() -> None:
    text = (
        'graft_gateway_in_flight{namespace="acme"} 4\n'
        'graft_gateway_in_flight{namespace="acme",deployment="chat"} NaN\n'
        'graft_gateway_in_flight{namespace="acme",deployment="code"} -2\n'
    )
    assert parse_exposition(text) == {CODE: Series(0.0, None)}


@pytest.mark.parametrize(
    "text",
    ["<html><body>Login</body></html>\n", 'graft_gateway_in_flight{namespace="a"} many\n'],
)
def test_what_is_not_the_exposition_format_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not the Prometheus text format"):
        parse_exposition(text)


# --- Finding the gateways ------------------------------------------------------------------


def gateway_pod(ip: str, *, ready: bool = True, port: str = "metrics", **meta: Any) -> Any:
    return {
        "metadata": {"name": f"gw-{ip}", **meta},
        "spec": {
            "containers": [
                {
                    "name": "gateway",
                    "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": port, "containerPort": 9100},
                    ],
                }
            ]
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_ready_gateway_pods_are_scraped_on_their_metrics_port() -> None:
    pods = [
        gateway_pod("10.0.0.2"),
        gateway_pod("10.0.0.1"),
        gateway_pod("10.0.0.3", ready=False),
        gateway_pod("10.0.0.4", deletionTimestamp="2025-01-01T00:00:00Z"),
        gateway_pod("10.0.0.5", port="prom"),
        gateway_pod("fd00::7"),
        {"metadata": {"name": "pending"}, "status": {}},
    ]
    assert gateway_metrics_urls(pods) == [GW1, GW2, "http://[fd00::7]:9100/metrics"]


# --- The spec and the floor --------------------------------------------------------------------


def test_durations_become_seconds() -> None:
    s = spec(minReplicas=1, scaleUpWindow="1m30s", scaleDownWindow="5m", scaleToZeroWindow="2h")
    assert (s.spec.scale_up_window, s.spec.scale_down_window, s.spec.scale_to_zero_window) == (
        90,
        300,
        7200,
    )
    assert (s.spec.min_replicas, s.spec.max_replicas, s.spec.target_concurrency) == (1, 10, 4.0)
    assert (s.zero_window, s.floor_note) == ("2h", "")


def test_a_window_below_the_floor_uses_the_floor_and_says_so() -> None:
    s = spec(scaleToZeroWindow="1m")
    assert s.spec.scale_to_zero_window == FLOOR
    assert s.zero_window == "5m"
    assert "scaleToZeroWindow 1m is below this installation's minimum" in s.floor_note
    assert "GRAFT_MIN_SCALE_TO_ZERO_WINDOW" in s.floor_note
    # A lower floor (a test cluster) honours the spec's window.
    low = autoscaled(Autoscaling.model_validate({"maxReplicas": 2, "scaleToZeroWindow": "1m"}), 10)
    assert (low.spec.scale_to_zero_window, low.floor_note) == (60, "")


# --- The leader's memory -----------------------------------------------------------------------


def test_in_flight_is_summed_over_the_gateways() -> None:
    book = LoadBook()
    seen = book.observe(
        scrape((GW1, {CHAT: (3, 10)}), (GW2, {CHAT: (2, 4), CODE: (1, 1)})),
        now=100,
        keep={CHAT: 3600, CODE: 3600},
    )
    assert seen[CHAT] == Observation(5, complete=True)
    assert seen[CODE] == Observation(1, complete=True)
    assert [s.in_flight for s in book.loads[CHAT].history.samples()] == [5]


def test_a_request_between_two_passes_is_seen_by_its_counter() -> None:
    book = LoadBook()
    keep = {CHAT: 3600.0}
    book.observe(scrape((GW1, {CHAT: (0, 10)})), now=100, keep=keep)
    load = book.loads[CHAT]
    assert load.last_request_at == 100  # first sight of a counter above 0: requests came
    book.observe(scrape((GW1, {CHAT: (0, 10)})), now=105, keep=keep)
    assert load.last_request_at == 100
    book.observe(scrape((GW1, {CHAT: (0, 11)})), now=110, keep=keep)  # came and went
    assert load.last_request_at == 110
    book.observe(scrape((GW1, {CHAT: (0, 3)})), now=115, keep=keep)  # the gateway restarted
    assert load.last_request_at == 115
    book.observe(scrape((GW1, {CHAT: (0, 3)})), now=120, keep=keep)
    assert load.last_request_at == 115
    # Every sample was 0: only the counter knows.
    assert [s.in_flight for s in load.history.samples()] == [0]


def test_a_gateway_that_missed_a_pass_keeps_its_counter() -> None:
    book = LoadBook()
    keep = {CHAT: 3600.0}
    book.observe(scrape((GW1, {CHAT: (0, 10)}), (GW2, {CHAT: (0, 5)})), now=100, keep=keep)
    seen = book.observe(scrape((GW1, {CHAT: (0, 10)}), failed={GW2: "timeout"}), 105, keep)
    assert seen[CHAT] == Observation(
        0, complete=False, problem=f"1 of 2 gateways did not answer ({GW2}: timeout)"
    )
    book.observe(scrape((GW1, {CHAT: (0, 10)}), (GW2, {CHAT: (0, 5)})), now=110, keep=keep)
    assert book.loads[CHAT].last_request_at == 100  # nothing new arrived


def test_no_answer_records_nothing() -> None:
    book = LoadBook()
    keep = {CHAT: 3600.0}
    book.observe(scrape((GW1, {CHAT: (2, 2)})), now=100, keep=keep)
    seen = book.observe(Scrape(failed={GW1: "connection refused"}), now=105, keep=keep)
    assert seen[CHAT].in_flight is None
    assert [(s.at, s.in_flight) for s in book.loads[CHAT].history.samples()] == [(100, 2)]
    nobody = book.observe(Scrape(nobody="no gateway to ask"), now=110, keep=keep)
    assert nobody[CHAT] == Observation(None, complete=False, problem="no gateway to ask")


def test_deployments_no_longer_autoscaled_are_forgotten() -> None:
    book = LoadBook()
    book.observe(scrape((GW1, {CHAT: (1, 1), CODE: (1, 1)})), 100, {CHAT: 60.0, CODE: 60.0})
    book.observe(scrape((GW1, {CHAT: (1, 1), CODE: (1, 1)})), 105, {CHAT: 60.0})
    assert set(book.loads) == {CHAT}


# --- One pass after another, on an injected clock ---------------------------------------------


class Pass:
    """The autoscaler's loop without its I/O: a clock, the gateways' loads, spec.replicas."""

    def __init__(self, replicas: int, **autoscaling: Any) -> None:
        self.autoscaled = spec(**autoscaling)
        self.replicas = replicas
        self.book = LoadBook()
        self.now = 1000.0
        self.received = 0.0

    def run(self, in_flight: int, arrived: int = 0, *, seconds: float = 5.0) -> Decision:
        """Let `seconds` pass, then scrape one gateway and act on the decision."""
        self.now += seconds
        self.received += arrived
        s = scrape((GW1, {CHAT: (in_flight, self.received)}))
        keep = {CHAT: self.autoscaled.spec.longest_window}
        seen = self.book.observe(s, self.now, keep)[CHAT]
        decision = decide(
            self.autoscaled.spec, self.replicas, self.book.loads[CHAT], seen, self.now
        )
        self.replicas = decision.replicas
        return decision

    def hold(self, in_flight: int, seconds: float) -> Decision:
        decision = self.run(in_flight)
        while seconds > 5:
            seconds -= 5
            decision = self.run(in_flight)
        return decision


def test_sustained_load_scales_up_after_the_up_window() -> None:
    loop = Pass(1)
    assert loop.run(2, arrived=2).reason == Reason.STABLE
    first = loop.hold(12, 25)
    assert (first.replicas, first.reason) == (1, Reason.STABLE)  # 25 s of 30
    up = loop.hold(12, 10)
    assert (up.replicas, up.reason) == (3, Reason.SCALED_UP)
    assert "need 3 replicas at 4 each" in up.message


def test_idle_scales_down_then_to_zero_and_back_from_zero() -> None:
    loop = Pass(3, scaleDownWindow="1m", scaleToZeroWindow="5m")
    loop.run(12, arrived=12)  # the last request arrives at 1005
    down = loop.hold(0, 65)  # idle since 1010, for the whole down window at 1070
    assert (down.replicas, down.reason) == (1, Reason.SCALED_DOWN)
    assert "over the last 60s" in down.message
    stay = loop.hold(0, 235)  # 1305: 5 s short of five idle minutes
    assert (stay.replicas, stay.reason) == (1, Reason.STABLE)
    zero = loop.run(0)
    assert (zero.replicas, zero.reason) == (0, Reason.SCALED_TO_ZERO)
    idle = loop.hold(0, 600)
    # Staying at zero still says why there are no replicas (not a bare "Stable").
    assert (idle.replicas, idle.reason) == (0, Reason.SCALED_TO_ZERO)
    assert "idle at zero" in idle.message
    back = loop.run(1, arrived=1)
    assert (back.replicas, back.reason) == (1, Reason.SCALED_FROM_ZERO)


def test_a_request_that_came_and_went_between_passes_keeps_the_replica() -> None:
    loop = Pass(1, scaleToZeroWindow="5m")
    loop.run(0)
    loop.hold(0, 200)
    loop.run(0, arrived=1)  # in flight 0 at every pass, but the counter rose
    assert loop.hold(0, 200).replicas == 1
    assert loop.hold(0, 100).replicas == 0


def test_a_new_leader_waits_a_whole_window_before_scaling_to_zero() -> None:
    loop = Pass(1, scaleToZeroWindow="5m")
    assert loop.hold(0, 295).replicas == 1
    assert loop.hold(0, 10).replicas == 0


def test_without_metrics_nothing_scales_but_the_bounds() -> None:
    autoscale = spec(minReplicas=1, maxReplicas=4).spec
    book = LoadBook()
    keep = {CHAT: 3600.0}
    seen = book.observe(Scrape(failed={GW1: "no answer"}), now=10, keep=keep)[CHAT]
    hold = decide(autoscale, 2, book.loads[CHAT], seen, 10)
    assert (hold.replicas, hold.reason, hold.acting) == (2, Reason.NO_METRICS, False)
    assert hold.message.startswith(f"1 of 1 gateways did not answer ({GW1}: no answer)")
    bounds = decide(autoscale, 7, book.loads[CHAT], seen, 10)
    assert (bounds.replicas, bounds.reason, bounds.acting) == (4, Reason.OUT_OF_BOUNDS, False)
    assert "above maxReplicas 4" in bounds.message


def test_partial_metrics_scale_up_but_never_down() -> None:
    autoscale = spec(scaleUpWindow="0s", scaleDownWindow="0s").spec
    book = LoadBook()
    keep = {CHAT: autoscale.longest_window}
    partial = scrape((GW1, {CHAT: (0, 0)}), failed={GW2: "timeout"})
    seen = book.observe(partial, now=10, keep=keep)[CHAT]
    held = decide(autoscale, 3, book.loads[CHAT], seen, 10)
    assert (held.replicas, held.reason, held.acting) == (3, Reason.PARTIAL_METRICS, True)
    assert "not scaling down on part of the load" in held.message
    busy = scrape((GW1, {CHAT: (20, 20)}), failed={GW2: "timeout"})
    seen = book.observe(busy, now=15, keep=keep)[CHAT]
    up = decide(autoscale, 3, book.loads[CHAT], seen, 15)
    assert (up.replicas, up.reason) == (5, Reason.SCALED_UP)


# --- Status and when it is written -------------------------------------------------------------


def test_status_and_condition_of_a_decision() -> None:
    decision = Decision(3, Reason.SCALED_UP, "12 requests need 3 replicas", acting=True)
    status = autoscaling_status(decision, Observation(12, True), "5m", None, "2025-01-01T00:00:00Z")
    assert status.wire() == {
        "desiredReplicas": 3,
        "inFlight": 12,
        "reason": "ScaledUp",
        "message": "12 requests need 3 replicas",
        "lastScaleTime": "2025-01-01T00:00:00Z",
        "scaleToZeroWindow": "5m",
    }
    conditions = autoscaling_conditions([], decision, "the floor applies", generation=4, now="T")
    (c,) = conditions
    assert (c.type, c.status, c.reason, c.observed_generation) == (
        "Autoscaling",
        "True",
        "ScaledUp",
        4,
    )
    assert c.message == "12 requests need 3 replicas; the floor applies"
    # Without metrics the last sample and the last scale time stay.
    none = Decision(3, Reason.NO_METRICS, "no gateway", acting=False)
    later = autoscaling_status(none, Observation(None, False), "5m", status)
    assert (later.in_flight, later.last_scale_time) == (12, "2025-01-01T00:00:00Z")
    (c,) = autoscaling_conditions(conditions, none, "", generation=4, now="T2")
    assert (c.status, c.reason, c.last_transition_time) == ("False", "NoMetrics", "T2")


def written(in_flight: int, reason: str = Reason.STABLE) -> tuple[dict[str, Any], list[Condition]]:
    decision = Decision(2, reason, f"{in_flight} requests in flight", acting=True)
    status = autoscaling_status(decision, Observation(in_flight, True), "1h", None).wire()
    return status, autoscaling_conditions([], decision, "", generation=1, now="T")


def test_a_steady_load_writes_nothing() -> None:
    status, conditions = written(5)
    assert not needs_write(status, status, conditions, conditions, last_write=None, now=0)


def test_the_load_alone_is_refreshed_at_most_every_30_seconds() -> None:
    before, old = written(5)
    after, new = written(6)
    assert not needs_write(before, after, old, new, last_write=100, now=110)
    assert needs_write(before, after, old, new, last_write=100, now=100 + STATUS_REFRESH_SECONDS)
    assert needs_write(before, after, old, new, last_write=None, now=110)  # a new leader


def test_a_new_decision_is_written_at_once() -> None:
    before, old = written(5)
    after, new = written(6, Reason.SCALED_UP)
    assert needs_write(before, after, old, new, last_write=100, now=101)
    assert needs_write(None, after, [], new, last_write=100, now=101)
