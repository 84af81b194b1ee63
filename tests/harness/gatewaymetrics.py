"""What a gateway's metrics listener serves, made by prometheus_client itself (the library the
gateway exports with), so the autoscaler's tests parse the real exposition format, not a
hand-written imitation of it."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

Loads = Mapping[tuple[str, str], tuple[float, float]]
"""(namespace, deployment) -> (requests in flight, requests received so far)."""


def exposition(loads: Loads, *, noise: bool = True) -> bytes:
    """A gateway's /metrics body for these loads, as the gateway's contract names the series;
    with `noise`, other series a gateway would export too (which the autoscaler must skip)."""
    registry = CollectorRegistry()
    in_flight = Gauge(
        "graft_gateway_in_flight",
        "Requests for a Deployment running on a replica or waiting for one",
        ["namespace", "deployment"],
        registry=registry,
    )
    requests = Counter(
        "graft_gateway_deployment_requests",
        "Requests for a Deployment received",
        ["namespace", "deployment"],
        registry=registry,
    )
    for (namespace, deployment), (running, received) in loads.items():
        in_flight.labels(namespace=namespace, deployment=deployment).set(running)
        if received:
            requests.labels(namespace=namespace, deployment=deployment).inc(received)
    if noise:
        Gauge("graft_gateway_up", "Always 1", registry=registry).set(1)
        Counter("graft_gateway_requests", "Requests by status", ["code"], registry=registry).labels(
            code="200"
        ).inc(7)
    return generate_latest(registry)
