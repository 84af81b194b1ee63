"""The operator's Prometheus metrics, scraped over HTTP from the real metrics server on a free
loopback port, after real reconciles (through the operator's wrapper), real calls to model
servers on loopback, and a real leader election against a Lease API on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

import graft
from graft import cli
from graft.api.kinds import ALL_KINDS, Plural
from graft.controller import leader
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.leader import LeaseElector
from graft.controller.main import Operator, run
from graft.controller.metrics import (
    DEFAULT_URL,
    OperatorMetrics,
    ServerOperation,
    parse_endpoint,
    serving,
)
from graft.controller.modelclient import Limits, ModelServers
from graft.core.settings import Settings
from harness.httpfake import serving as http_serving

MODELS = json.dumps({"object": "list", "data": [{"id": "base", "parent": None}]}).encode()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, accept: str | None = None) -> tuple[Samples, str]:
    """GET the metrics like Prometheus does: the samples by (name, labels), and the type."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
        content_type = resp.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no {name}{labels} in {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


@dataclass
class Scraped:
    metrics: OperatorMetrics
    url: str

    def samples(self) -> Samples:
        return scrape(self.url)[0]


@pytest.fixture
def scraped() -> Iterator[Scraped]:
    metrics = OperatorMetrics(workers=3)
    with serving(metrics, "http://127.0.0.1:0/metrics") as server:
        assert server is not None
        yield Scraped(metrics, f"http://127.0.0.1:{server.port}/metrics")


# --- the server ----------------------------------------------------------------------------------


def test_every_series_is_there_from_the_start(scraped: Scraped) -> None:
    samples, content_type = scrape(scraped.url)
    assert content_type.startswith("text/plain")
    assert value(samples, "graft_operator_build_info", version=graft.__version__) == 1
    assert value(samples, "graft_operator_reconcile_workers") == 3
    assert value(samples, "graft_operator_reconcile_queue_depth") == 0
    assert value(samples, "graft_operator_leader") == 0
    assert value(samples, "graft_operator_lease_errors_total") == 0
    for kind in (k.kind for k in ALL_KINDS):
        for outcome in ("ok", "retry", "error"):
            assert (
                value(samples, "graft_operator_reconciles_total", kind=kind, outcome=outcome) == 0
            )
        assert value(samples, "graft_operator_reconciles_in_flight", kind=kind) == 0
        assert value(samples, "graft_operator_reconcile_duration_seconds_count", kind=kind) == 0
    for op in ("models", "load", "unload"):
        for outcome in ("ok", "refused", "unreachable", "error"):
            name = "graft_operator_model_server_requests_total"
            assert value(samples, name, operation=op, outcome=outcome) == 0
    for outcome in ("ok", "refused", "unreachable", "error"):
        assert value(samples, "graft_operator_autoscaler_scrapes_total", outcome=outcome) == 0
    for reason in ("ScaledUp", "ScaledDown", "ScaledToZero", "ScaledFromZero", "OutOfBounds"):
        assert value(samples, "graft_operator_autoscaler_scalings_total", reason=reason) == 0
    assert value(samples, "graft_operator_autoscaler_deployments") == 0
    assert value(samples, "graft_operator_autoscaler_gateways") == 0
    assert not any(name.endswith("_created") for name, _ in samples)
    # Only kinds, outcomes, operations and autoscaling reasons are label values: never an
    # object's name.
    labels = {k for _, pairs in samples for k, _ in pairs}
    assert labels <= {"kind", "outcome", "operation", "reason", "le", "version", "implementation",
                      "major", "minor", "patchlevel"}  # fmt: skip


def test_only_the_path_of_the_url_serves_metrics(scraped: Scraped) -> None:
    other = scraped.url.replace("/metrics", "/other")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(other, timeout=5)
    assert caught.value.code == 404
    # Prometheus asks for OpenMetrics first; that is what it gets.
    _, content_type = scrape(scraped.url, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")


@pytest.mark.parametrize("url", ["", "none", "NONE", " none "])
def test_metrics_can_be_turned_off(url: str) -> None:
    assert parse_endpoint(url) is None
    with serving(OperatorMetrics(), url) as server:
        assert server is None


@pytest.mark.parametrize(
    "url", ["https://0.0.0.0:9090/metrics", "0.0.0.0:9090", "http://host/metrics", "http://:9090/"]
)
def test_a_bad_url_is_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="--metrics"):
        parse_endpoint(url)


def test_graft_run_serves_metrics_by_default() -> None:
    ns = cli._parser().parse_args(["run"])
    assert ns.metrics == DEFAULT_URL
    assert parse_endpoint(DEFAULT_URL) is not None


@pytest.fixture
def root_logging() -> Iterator[None]:
    """run() configures the root logger; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_graft_run_stops_at_once_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        assert run(metrics_url=f"http://127.0.0.1:{port}/metrics") == 2
        assert time.monotonic() - started < 5
    assert run(metrics_url="ftp://somewhere") == 2


# --- reconciles ----------------------------------------------------------------------------------


def operator(metrics: OperatorMetrics, reconcile: Callable[..., None]) -> Operator:
    """An operator whose Deployment reconciler is `reconcile`, registered as `graft run` does."""
    ctx = Context(api=Api.__new__(Api), settings=Settings(), servers=ModelServers(metrics=metrics))
    op = Operator(ctx, metrics)
    op.level_triggered(kopf.OperatorRegistry(), Plural.DEPLOYMENTS, reconcile)
    return op


def test_reconciles_are_counted_by_kind_and_outcome(scraped: Scraped) -> None:
    raised: list[Exception | None] = [
        None,
        None,
        kopf.TemporaryError("not yet", delay=1),
        ApiException(status=409, reason="Conflict"),
        ApiException(status=503, reason="Service Unavailable"),
        ApiException(status=403, reason="Forbidden"),
        KeyError("bug"),
    ]

    def reconcile(ctx: Context, namespace: str, name: str) -> None:
        exc = raised.pop(0)
        if exc is not None:
            raise exc

    op = operator(scraped.metrics, reconcile)
    for _ in range(7):
        # kopf would retry what is raised; here only the count matters.
        with contextlib.suppress(Exception):
            op.reconcile(Plural.DEPLOYMENTS, "acme", "chat")
    samples = scraped.samples()
    count = "graft_operator_reconciles_total"
    assert value(samples, count, kind="Deployment", outcome="ok") == 2
    assert value(samples, count, kind="Deployment", outcome="retry") == 3
    assert value(samples, count, kind="Deployment", outcome="error") == 2
    assert value(samples, count, kind="Model", outcome="ok") == 0
    duration = "graft_operator_reconcile_duration_seconds"
    assert value(samples, f"{duration}_count", kind="Deployment") == 7
    assert value(samples, f"{duration}_count", kind="Model") == 0


def test_the_exception_still_reaches_kopf(scraped: Scraped) -> None:
    def reconcile(ctx: Context, namespace: str, name: str) -> None:
        raise kopf.TemporaryError("not yet", delay=1)

    with pytest.raises(kopf.TemporaryError):
        operator(scraped.metrics, reconcile).reconcile(Plural.DEPLOYMENTS, "acme", "chat")


def test_a_running_reconcile_is_in_flight_and_timed(scraped: Scraped) -> None:
    entered, release = threading.Event(), threading.Event()

    def reconcile(ctx: Context, namespace: str, name: str) -> None:
        entered.set()
        release.wait(10)

    op = operator(scraped.metrics, reconcile)
    threads = [
        threading.Thread(target=op.reconcile, args=(Plural.DEPLOYMENTS, "acme", name))
        for name in ("a", "b")
    ]
    for t in threads:
        t.start()
    try:
        assert entered.wait(5)
        deadline = time.monotonic() + 5
        while (
            value(scraped.samples(), "graft_operator_reconciles_in_flight", kind="Deployment") < 2
        ):
            assert time.monotonic() < deadline, "two reconciles never showed as in flight"
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    samples = scraped.samples()
    assert value(samples, "graft_operator_reconciles_in_flight", kind="Deployment") == 0
    duration = "graft_operator_reconcile_duration_seconds"
    assert value(samples, f"{duration}_count", kind="Deployment") == 2
    assert value(samples, f"{duration}_sum", kind="Deployment") >= 0.6
    assert value(samples, f"{duration}_bucket", kind="Deployment", le="0.1") == 0


# --- model servers -------------------------------------------------------------------------------


def answer(body: bytes, status: int = 200) -> Callable[[BaseHTTPRequestHandler], None]:
    def behave(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return behave


def nothing_listening() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_model_server_calls_are_counted_by_operation_and_outcome(scraped: Scraped) -> None:
    servers = ModelServers(Limits(timeout=2.0, patience=3.0, fresh=0.0), scraped.metrics)
    refusal = json.dumps({"error": {"message": "rank 64 is above 16"}}).encode()
    try:
        with (
            http_serving(answer(MODELS)) as good,
            http_serving(answer(refusal, status=400)) as refusing,
        ):
            gone = nothing_listening()
            got = servers.served([good, refusing, gone])
            assert len(got) == 3
            assert servers.ensure_loaded(good, "a", "/x").exception(10) is None
            load = servers.ensure_loaded(refusing, "a", "/x")
            assert load.exception(10) is not None
            assert servers.unload([good], "a") == {}
    finally:
        servers.close()
    samples = scraped.samples()
    count = "graft_operator_model_server_requests_total"
    assert value(samples, count, operation="models", outcome="ok") == 1
    assert value(samples, count, operation="models", outcome="refused") == 1
    assert value(samples, count, operation="models", outcome="unreachable") == 1
    assert value(samples, count, operation="load", outcome="ok") == 1
    assert value(samples, count, operation="load", outcome="refused") == 1
    assert value(samples, count, operation="unload", outcome="ok") == 1
    assert value(samples, count, operation="unload", outcome="error") == 0
    duration = "graft_operator_model_server_request_duration_seconds_count"
    assert value(samples, duration, operation=ServerOperation.MODELS) == 3
    assert value(samples, duration, operation=ServerOperation.LOAD) == 2
    assert value(samples, duration, operation=ServerOperation.UNLOAD) == 1


# --- leadership ----------------------------------------------------------------------------------


class LeaseApi:
    """The Lease part of the API server on loopback: GET, POST and PUT of one Lease."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.failures = 0
        """Answer the next GETs with 500."""
        self.guard = threading.Lock()

    def hold(self, holder: str | None) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.guard:
            self.lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": leader.LEASE_NAME, "namespace": "graft-system"},
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": 3600,
                    "acquireTime": now,
                    "renewTime": now,
                },
            }

    def holder(self) -> str | None:
        with self.guard:
            return None if self.lease is None else self.lease["spec"].get("holderIdentity")

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with api.guard:
                    if api.failures:
                        api.failures -= 1
                        self.reply(500, {"kind": "Status", "code": 500})
                    elif api.lease is None:
                        self.reply(404, {"kind": "Status", "code": 404})
                    else:
                        self.reply(200, api.lease)

            def do_POST(self) -> None:
                self.do_PUT()

            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api.guard:
                    api.lease = body
                self.reply(200, body)

            def log_message(self, *_: object) -> None:
                pass

        return Handler


@contextmanager
def lease_api() -> Iterator[tuple[LeaseApi, client.ApiClient]]:
    api = LeaseApi()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield api, client.ApiClient(config)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_leader_gauge_follows_the_lease_and_a_standby_is_scraped(
    scraped: Scraped, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leader, "RETRY_SECONDS", 0.05)
    with lease_api() as (api, api_client):
        api.hold("other")
        api.failures = 2
        elector = LeaseElector(
            api_client, "graft-system", holder="me", renew_seconds=0.05, metrics=scraped.metrics
        )
        waiting = threading.Thread(target=elector.acquire, daemon=True)
        waiting.start()
        # A standby: metrics are served, it does not lead, and failed reads are counted.
        time.sleep(0.5)
        assert waiting.is_alive()
        samples = scraped.samples()
        assert value(samples, "graft_operator_leader") == 0
        assert value(samples, "graft_operator_lease_errors_total") == 2

        api.hold(None)  # the leader let go
        waiting.join(10)
        assert not waiting.is_alive()
        assert api.holder() == "me"
        assert value(scraped.samples(), "graft_operator_leader") == 1

        lost = threading.Event()
        elector.keep(on_lost=lost.set)
        time.sleep(0.2)
        assert not lost.is_set()
        api.hold("other")  # taken over
        assert lost.wait(5)
        assert value(scraped.samples(), "graft_operator_leader") == 0


def test_the_queue_depth_counts_objects_not_events(scraped: Scraped) -> None:
    op = Operator(
        Context(
            api=Api.__new__(Api), settings=Settings(), servers=ModelServers(metrics=scraped.metrics)
        ),
        scraped.metrics,
    )
    for _ in range(3):
        op.enqueue(Plural.DEPLOYMENTS, "acme", "chat")
    op.enqueue(Plural.MODELS, "acme", "llama")
    assert value(scraped.samples(), "graft_operator_reconcile_queue_depth") == 2
