"""The autoscaler loop against real HTTP servers on loopback serving prometheus_client's own
exposition (fast, slow, oversize, wrong), with an in-memory API in place of the API server and
an injected clock."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from graft.controller.autoscaler import Autoscaler
from graft.controller.metrics import OperatorMetrics
from graft.core.settings import Settings
from graft.plan.autoscaler import Scrape, Series
from harness.gatewaymetrics import exposition
from harness.httpfake import serving

CHAT = ("acme", "chat")


class Gateway:
    """A gateway's metrics listener whose loads (or misbehaviour) the test sets."""

    def __init__(self) -> None:
        self.loads: dict[tuple[str, str], tuple[float, float]] = {}
        self.behave: Callable[[BaseHTTPRequestHandler], None] | None = None
        self.scrapes = 0

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        self.scrapes += 1
        if self.behave is not None:
            self.behave(h)
            return
        assert h.path == "/metrics"
        assert "text/plain" in (h.headers.get("Accept") or "")
        body = exposition(self.loads)
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; version=0.0.4")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@contextmanager
def gateways(count: int) -> Iterator[tuple[list[Gateway], list[str]]]:
    with ExitStack() as stack:
        gws = [Gateway() for _ in range(count)]
        urls = [stack.enter_context(serving(gw)) + "/metrics" for gw in gws]
        yield gws, urls


def slow(h: BaseHTTPRequestHandler) -> None:
    time.sleep(3)
    h.send_response(200)
    h.end_headers()


def oversize(h: BaseHTTPRequestHandler) -> None:
    """1.5 MiB of valid-looking exposition, streamed without a Content-Length."""
    h.send_response(200)
    h.end_headers()
    line = b'graft_gateway_in_flight{namespace="acme",deployment="chat"} 1\n'
    for _ in range((3 << 19) // len(line)):
        h.wfile.write(line)


def not_metrics(h: BaseHTTPRequestHandler) -> None:
    body = b"<html><body>Sign in</body></html>"
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def redirect(h: BaseHTTPRequestHandler) -> None:
    h.send_response(302)
    h.send_header("Location", "http://169.254.169.254/latest/meta-data/")
    h.send_header("Content-Length", "0")
    h.end_headers()


class FakeApi:
    """The part of kube.Api the autoscaler uses, over one in-memory Deployment store that
    behaves as the API server does: resourceVersion preconditions on /scale, merge-patched
    status, generation bumped by spec changes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.status_writes = 0
        self.scales: list[int] = []
        self.pods: list[dict[str, Any]] = []
        self.version = 0

    def add(self, name: str, replicas: int, **autoscaling: Any) -> dict[str, Any]:
        self.version += 1
        obj = {
            "apiVersion": "graft.dev/v1alpha1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": "acme",
                "uid": f"uid-{name}",
                "generation": 1,
                "resourceVersion": str(self.version),
            },
            "spec": {
                "baseModel": "llama",
                "replicas": replicas,
                "autoscaling": {"maxReplicas": 10, **autoscaling},
            },
            "status": {},
        }
        self.objects[("acme", name)] = obj
        return obj

    def _bump(self, obj: dict[str, Any], spec: bool) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        if spec:
            obj["metadata"]["generation"] += 1

    def get_graft(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def scale_graft(
        self, plural: str, namespace: str, name: str, replicas: int, resource_version: str
    ) -> bool:
        obj = self.objects.get((namespace, name))
        if obj is None or obj["metadata"]["resourceVersion"] != resource_version:
            return False
        obj["spec"]["replicas"] = replicas
        self.scales.append(replicas)
        self._bump(obj, spec=True)
        return True

    def patch_graft_status(self, plural: str, namespace: str, name: str, status: Any) -> None:
        obj = self.objects[(namespace, name)]
        obj["status"] = {**(obj.get("status") or {}), **copy.deepcopy(status)}
        self.status_writes += 1
        self._bump(obj, spec=False)

    def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        assert (namespace, selector) == ("graft-system", "app.kubernetes.io/component=gateway")
        return self.pods


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """An autoscaler on a FakeApi and an injected clock, fed by the watch as kopf would."""

    def __init__(self, urls: list[str], **settings: Any) -> None:
        self.api = FakeApi()
        self.clock = Clock()
        self.metrics = OperatorMetrics()
        self.locked: list[tuple[str, str, str]] = []
        base = replace(Settings(), gateway_metrics=tuple(urls), min_scale_to_zero_window=60)
        self.autoscaler = Autoscaler(
            self.api,  # type: ignore[arg-type]
            replace(base, **settings),
            self.metrics,
            exclusive=self.exclusive,
            clock=self.clock,
            wall=lambda: f"T{self.clock.now:g}",
            scrape_timeout=0.5,
        )

    @contextmanager
    def exclusive(self, plural: str, namespace: str, name: str) -> Iterator[None]:
        self.locked.append((plural, namespace, name))
        yield

    def watch(self) -> None:
        """Deliver every object as a watch event."""
        for obj in self.api.objects.values():
            asyncio.run(self.autoscaler.observe(type="MODIFIED", body=copy.deepcopy(obj)))

    def run(self, seconds: float = 5.0) -> dict[str, Any]:
        self.clock.now += seconds
        self.watch()
        self.autoscaler.run_pass()
        return self.api.objects[CHAT]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value


# --- Scraping ----------------------------------------------------------------------------------


def test_gateways_are_scraped_concurrently_and_summed() -> None:
    with gateways(2) as (gws, urls):
        gws[0].loads = {CHAT: (3, 10), ("acme", "code"): (1, 1)}
        gws[1].loads = {CHAT: (2, 4)}
        loop = Loop(urls)
        scrape = loop.autoscaler.scrape_gateways()
    assert scrape.failed == {}
    assert scrape.answered == {
        urls[0]: {CHAT: Series(3.0, 10.0), ("acme", "code"): Series(1.0, 1.0)},
        urls[1]: {CHAT: Series(2.0, 4.0)},
    }
    assert loop.metric("graft_operator_autoscaler_scrapes_total", outcome="ok") == 2
    assert loop.metric("graft_operator_autoscaler_gateways_answered") == 2


def test_a_slow_gateway_is_cut_off_at_the_deadline_and_the_others_still_count() -> None:
    with gateways(3) as (gws, urls):
        gws[0].loads = {CHAT: (4, 4)}
        gws[1].behave = slow
        gws[2].behave = slow
        loop = Loop(urls)
        started = time.monotonic()
        scrape = loop.autoscaler.scrape_gateways()
        took = time.monotonic() - started
    assert took < 1.5  # one deadline (0.5 s) for all, not one after another
    assert list(scrape.answered) == [urls[0]]
    assert set(scrape.failed) == {urls[1], urls[2]}
    assert "within 0.5 s" in scrape.failed[urls[1]]
    assert not scrape.failed[urls[1]].startswith("http://")
    assert loop.metric("graft_operator_autoscaler_scrapes_total", outcome="unreachable") == 2


@pytest.mark.parametrize(
    ("behave", "why"),
    [
        (oversize, "larger than 1048576 bytes"),
        (not_metrics, "not the Prometheus text format"),
        (redirect, "HTTP 302"),
    ],
)
def test_what_is_not_a_gateways_metrics_is_refused(
    behave: Callable[[BaseHTTPRequestHandler], None], why: str
) -> None:
    with gateways(1) as (gws, urls):
        gws[0].behave = behave
        loop = Loop(urls)
        scrape = loop.autoscaler.scrape_gateways()
    assert scrape.answered == {}
    assert why in scrape.failed[urls[0]]
    assert loop.metric("graft_operator_autoscaler_scrapes_total", outcome="refused") == 1


def test_gateway_pods_are_found_in_the_operators_namespace() -> None:
    with gateways(1) as (gws, urls):
        gws[0].loads = {CHAT: (1, 1)}
        port = int(urls[0].rsplit(":", 1)[1].split("/")[0])
        loop = Loop([])
        loop.api.pods = [
            {
                "metadata": {"name": "gateway-1"},
                "spec": {"containers": [{"ports": [{"name": "metrics", "containerPort": port}]}]},
                "status": {
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        ]
        scrape = loop.autoscaler.scrape_gateways()
    assert scrape.answered == {f"http://127.0.0.1:{port}/metrics": {CHAT: Series(1.0, 1.0)}}


def test_without_gateways_the_pass_says_why() -> None:
    scrape = Loop([]).autoscaler.scrape_gateways()
    assert scrape == Scrape(nobody=scrape.nobody)
    assert "no Ready pod labelled app.kubernetes.io/component=gateway" in scrape.problem()
    assert "graft-system" in scrape.problem()


# --- Passes ------------------------------------------------------------------------------------


def test_load_scales_up_through_scale_with_an_event_and_one_status_write() -> None:
    with gateways(2) as (gws, urls):
        loop = Loop(urls)
        loop.api.add("chat", 1, scaleUpWindow="10s")
        gws[0].loads = {CHAT: (1, 1)}
        gws[1].loads = {CHAT: (2, 2)}
        obj = loop.run()
        assert obj["status"]["autoscaling"]["reason"] == "Stable"
        assert obj["status"]["autoscaling"]["inFlight"] == 3
        writes = loop.api.status_writes
        loop.run()
        assert loop.api.status_writes == writes  # steady: nothing to write
        gws[0].loads = {CHAT: (6, 7)}
        gws[1].loads = {CHAT: (6, 8)}
        obj = loop.run()  # 12 in flight, but not for 10 s yet
        assert obj["spec"]["replicas"] == 1
        obj = loop.run()
        assert obj["spec"]["replicas"] == 1
        obj = loop.run()  # 10 s of 12 in flight: 3 replicas at 4 each
    assert loop.api.scales == [3]
    assert obj["spec"]["replicas"] == 3
    status = obj["status"]["autoscaling"]
    assert status["desiredReplicas"] == 3
    assert status["reason"] == "ScaledUp"
    assert status["lastScaleTime"] == "T1025"
    assert status["scaleToZeroWindow"] == "1h"
    (condition,) = obj["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Autoscaling",
        "True",
        "ScaledUp",
    )
    assert condition["observedGeneration"] == 2  # the /scale write is a spec change
    assert loop.api.events[-1][:2] == ("Normal", "ScaledUp")
    assert loop.api.events[-1][2].startswith("scaled from 1 to 3 replicas")
    assert loop.locked[-1] == ("deployments", "acme", "chat")
    assert loop.metric("graft_operator_autoscaler_scalings_total", reason="ScaledUp") == 1


def test_a_deployment_changed_meanwhile_is_not_scaled_over() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls)
        loop.api.add("chat", 1, scaleUpWindow="0s")
        gws[0].loads = {CHAT: (40, 40)}
        loop.clock.now += 5
        loop.watch()
        loop.api.objects[CHAT]["metadata"]["resourceVersion"] = "someone-else"
        loop.autoscaler.run_pass()
    assert loop.api.scales == []
    assert loop.api.status_writes == 0
    assert loop.api.events == []


def test_idle_scales_to_zero_after_the_window_and_a_request_brings_one_back() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls, min_scale_to_zero_window=30)
        loop.api.add("chat", 1, scaleToZeroWindow="30s")
        gws[0].loads = {CHAT: (0, 0)}
        for _ in range(6):
            obj = loop.run()
        assert obj["spec"]["replicas"] == 1
        obj = loop.run()  # 30 s since the first sample without a request
        assert obj["spec"]["replicas"] == 0
        assert obj["status"]["autoscaling"]["reason"] == "ScaledToZero"
        gws[0].loads = {CHAT: (1, 1)}  # held by the gateway while nothing serves
        obj = loop.run()
    assert obj["spec"]["replicas"] == 1
    assert obj["status"]["autoscaling"]["reason"] == "ScaledFromZero"
    assert [e[1] for e in loop.api.events] == ["ScaledToZero", "ScaledFromZero"]


def test_a_window_below_the_floor_uses_the_floor_and_the_status_says_so() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls, min_scale_to_zero_window=300)
        loop.api.add("chat", 1, scaleToZeroWindow="30s")
        gws[0].loads = {CHAT: (0, 0)}
        for _ in range(12):
            obj = loop.run()
    assert obj["spec"]["replicas"] == 1  # a minute idle is not the floor's five
    assert obj["status"]["autoscaling"]["scaleToZeroWindow"] == "5m"
    (condition,) = obj["status"]["conditions"]
    assert "scaleToZeroWindow 30s is below this installation's minimum" in condition["message"]


def test_no_metrics_holds_the_replicas_and_says_so_once() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls)
        loop.api.add("chat", 2)
        gws[0].loads = {CHAT: (8, 8)}
        loop.run()
        gws[0].behave = not_metrics
        obj = loop.run()
        obj = loop.run()
    assert obj["spec"]["replicas"] == 2
    status = obj["status"]["autoscaling"]
    assert (status["reason"], status["desiredReplicas"], status["inFlight"]) == ("NoMetrics", 2, 8)
    (condition,) = obj["status"]["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "NoMetrics")
    assert "1 of 1 gateways did not answer" in condition["message"]
    assert [e[:2] for e in loop.api.events] == [("Warning", "NoMetrics")]


def test_a_deployment_without_autoscaling_is_left_alone() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls)
        obj = loop.api.add("chat", 2)
        del obj["spec"]["autoscaling"]
        gws[0].loads = {CHAT: (100, 100)}
        loop.run(60)
        loop.run(60)
        assert gws[0].scrapes == 0  # nothing autoscaled: nothing to scrape
    assert loop.api.scales == []
    assert loop.api.status_writes == 0
    assert loop.autoscaler.watched() == {}


def test_a_deleted_deployment_is_forgotten() -> None:
    loop = Loop([])
    obj = loop.api.add("chat", 2)
    loop.watch()
    assert list(loop.autoscaler.watched()) == [CHAT]
    asyncio.run(loop.autoscaler.observe(type="DELETED", body=obj))
    assert loop.autoscaler.watched() == {}


def test_the_loop_thread_runs_passes_until_stopped() -> None:
    with gateways(1) as (gws, urls):
        loop = Loop(urls, autoscaler_interval=0.05)
        loop.api.add("chat", 1)
        loop.watch()
        thread = loop.autoscaler.start()
        deadline = time.monotonic() + 5
        while gws[0].scrapes < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        loop.autoscaler.stop()
        thread.join(timeout=5)
    assert gws[0].scrapes >= 3
    assert not thread.is_alive()
