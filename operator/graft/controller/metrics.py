"""The operator's own Prometheus metrics (`graft run --metrics`), in a registry of their own.

One `OperatorMetrics` per process, made by `run()` and handed to what it measures: the reconcile
wrapper (graft.controller.main), the model-server client (graft.controller.modelclient), the
leader election (graft.controller.leader) and the autoscaler (graft.controller.autoscaler). This module knows neither kopf nor the kubernetes
client: whoever measures a call says which outcome an exception means.

Every label is bounded by the code, never by the cluster: kinds, outcomes and operations are
fixed sets, and no object's name or namespace becomes a label value (one series per object would
grow with the tenants). Every series of those sets exists from the start, at 0, so `rate()` and
alerts see a kind that has not been reconciled yet.

The server is started before the process waits for the leader Lease, so a standby is scraped
too (`graft_operator_leader` 0) and an alert on `sum(graft_operator_leader) != 1` works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from graft import __version__
from graft.api.kinds import ALL_KINDS
from graft.core import endpoints
from graft.core.endpoints import Endpoint

log = logging.getLogger(__name__)

# No `*_created` series: they only say when the process started (process_start_time_seconds).
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "graft_operator"
DEFAULT_URL = "http://0.0.0.0:9090/metrics"
OFF = endpoints.OFF
"""`--metrics` values that turn the server off."""

KIND_OF_PLURAL = {str(k.plural): k.kind for k in ALL_KINDS}


class Outcome(StrEnum):
    """How one reconcile ended."""

    OK = "ok"
    RETRY = "retry"
    """It raised what waiting fixes (kopf.TemporaryError, a conflict, an API server that is
    busy or unreachable); kopf or the next event tries again."""
    ERROR = "error"
    """It raised anything else: a bug, or a request the API server refuses."""


class CallOutcome(StrEnum):
    """How one call to a model server ended."""

    OK = "ok"
    REFUSED = "refused"
    """The server answered, but not with what the operator wanted (or too much of it)."""
    UNREACHABLE = "unreachable"
    """No complete answer within the deadline, or no connection."""
    ERROR = "error"
    """The client itself failed unexpectedly."""


class ServerOperation(StrEnum):
    MODELS = "models"
    """GET /v1/models"""
    LOAD = "load"
    """POST /v1/load_lora_adapter"""
    UNLOAD = "unload"
    """POST /v1/unload_lora_adapter"""


RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Seconds; a reconcile that waits on an API timeout (30 s by default) lands in the tail."""
SERVER_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Seconds; a call ends by its deadline: 5 s, or 120 s for a load, by default."""
SCRAPE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5)
"""Seconds; a scrape of a gateway ends by its deadline (3 s)."""

SCALING_REASONS = ("ScaledUp", "ScaledDown", "ScaledToZero", "ScaledFromZero", "OutOfBounds")
"""Why the autoscaler changed a Deployment's replicas (graft.plan.autoscaler.Reason)."""


class OperatorMetrics:
    """The metrics of one operator process. Every method is safe to call from any thread."""

    def __init__(self, workers: int = 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Always 1; the version of graft", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.workers = Gauge(
            f"{PREFIX}_reconcile_workers",
            "Reconciles that may run at once (GRAFT_WORKERS)",
            registry=r,
        )
        self.workers.set(workers)
        self.leader = Gauge(
            f"{PREFIX}_leader",
            "1 while this process holds the leader Lease (and acts), 0 while it waits",
            registry=r,
        )
        self.lease_errors = Counter(
            f"{PREFIX}_lease_errors",
            "Reads or writes of the leader Lease that failed (waiting or renewing)",
            registry=r,
        )
        self.reconciles = Counter(
            f"{PREFIX}_reconciles",
            "Reconciles that ended, by kind and outcome (ok, retry, error)",
            ["kind", "outcome"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "How long a reconcile took, by kind (not counting the wait for another reconcile "
            "of the same object)",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_reconcile_queue_depth",
            "Objects waiting for a reconcile worker now (events for one object merge into one)",
            registry=r,
        )
        self.reconciles_in_flight = Gauge(
            f"{PREFIX}_reconciles_in_flight",
            "Reconciles running now, by kind",
            ["kind"],
            registry=r,
        )
        self.server_calls = Counter(
            f"{PREFIX}_model_server_requests",
            "Calls to model servers that ended, by operation (models, load, unload) and outcome "
            "(ok, refused, unreachable, error)",
            ["operation", "outcome"],
            registry=r,
        )
        self.server_call_seconds = Histogram(
            f"{PREFIX}_model_server_request_duration_seconds",
            "How long a call to a model server took, by operation",
            ["operation"],
            buckets=SERVER_CALL_BUCKETS,
            registry=r,
        )
        self.autoscaler_scrapes = Counter(
            f"{PREFIX}_autoscaler_scrapes",
            "Scrapes of the gateways' metrics by the autoscaler that ended, by outcome (ok; "
            "refused: an answer that is not the metrics, or too large; unreachable: no complete "
            "answer within the deadline; error)",
            ["outcome"],
            registry=r,
        )
        self.autoscaler_scrape_seconds = Histogram(
            f"{PREFIX}_autoscaler_scrape_duration_seconds",
            "How long a scrape of one gateway's metrics took",
            buckets=SCRAPE_BUCKETS,
            registry=r,
        )
        self.autoscaler_gateways = Gauge(
            f"{PREFIX}_autoscaler_gateways",
            "Gateways the autoscaler asked in its latest pass",
            registry=r,
        )
        self.autoscaler_gateways_answered = Gauge(
            f"{PREFIX}_autoscaler_gateways_answered",
            "Gateways that answered the autoscaler's latest pass",
            registry=r,
        )
        self.autoscaler_deployments = Gauge(
            f"{PREFIX}_autoscaler_deployments",
            "Deployments with spec.autoscaling that the autoscaler sizes",
            registry=r,
        )
        self.autoscaler_scalings = Counter(
            f"{PREFIX}_autoscaler_scalings",
            "Changes of a Deployment's replicas by the autoscaler, by reason",
            ["reason"],
            registry=r,
        )
        for call_outcome in CallOutcome:
            self.autoscaler_scrapes.labels(outcome=call_outcome)
        for reason in SCALING_REASONS:
            self.autoscaler_scalings.labels(reason=reason)
        for kind in KIND_OF_PLURAL.values():
            self.reconcile_seconds.labels(kind=kind)
            self.reconciles_in_flight.labels(kind=kind)
            for outcome in Outcome:
                self.reconciles.labels(kind=kind, outcome=outcome)
        for operation in ServerOperation:
            self.server_call_seconds.labels(operation=operation)
            for call_outcome in CallOutcome:
                self.server_calls.labels(operation=operation, outcome=call_outcome)

    @contextmanager
    def reconcile(self, plural: str, outcome_of: Callable[[Exception], Outcome]) -> Iterator[None]:
        """Measure the reconcile in the `with` block; `outcome_of` judges what it raised."""
        kind = KIND_OF_PLURAL.get(plural, "Other")
        in_flight = self.reconciles_in_flight.labels(kind=kind)
        in_flight.inc()
        start = time.perf_counter()
        outcome = Outcome.OK
        try:
            yield
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            in_flight.dec()
            self.reconcile_seconds.labels(kind=kind).observe(time.perf_counter() - start)
            self.reconciles.labels(kind=kind, outcome=outcome).inc()

    @contextmanager
    def server_call(
        self, operation: ServerOperation, outcome_of: Callable[[Exception], CallOutcome]
    ) -> Iterator[None]:
        """Measure the call to a model server in the `with` block."""
        start = time.perf_counter()
        outcome = CallOutcome.OK
        try:
            yield
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            self.server_call_seconds.labels(operation=operation).observe(
                time.perf_counter() - start
            )
            self.server_calls.labels(operation=operation, outcome=outcome).inc()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape's Accept header: the Prometheus
        text format, or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def parse_endpoint(url: str) -> Endpoint | None:
    """`--metrics`: http://<host>:<port><path>, or None when it is "" or "none" (no server).
    ValueError says what is wrong with it."""
    return endpoints.parse_endpoint(url, flag="--metrics", example=DEFAULT_URL)


class MetricsServer:
    """Serves `metrics` on one path of one address, on threads of its own (never kopf's)."""

    def __init__(self, metrics: OperatorMetrics, endpoint: Endpoint) -> None:
        path = endpoint.path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urlsplit(self.path).path != path:
                    body, content_type = f"metrics are at {path}\n".encode(), "text/plain"
                    self.send_response(404)
                else:
                    body, content_type = metrics.render(self.headers.get("Accept") or "")
                    self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        # Binding here, not in the thread: a port in use fails `graft run` at once, by name.
        self._httpd = ThreadingHTTPServer((endpoint.host, endpoint.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one the system chose for 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def serving(metrics: OperatorMetrics, url: str) -> Iterator[MetricsServer | None]:
    """Serve the metrics at `url` for the `with` block (nothing when it is off). Raises
    ValueError for a bad URL, OSError when the address cannot be bound."""
    endpoint = parse_endpoint(url)
    if endpoint is None:
        yield None
        return
    server = MetricsServer(metrics, endpoint)
    server.start()
    log.info("serving metrics on http://%s:%d%s", endpoint.host, server.port, endpoint.path)
    try:
        yield server
    finally:
        server.stop()
