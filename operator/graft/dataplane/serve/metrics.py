"""Prometheus metrics of `graft serve`, in a registry of their own (one per server)."""

from __future__ import annotations

from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

# No `*_created` series: they only say when the server started.
disable_created_metrics()  # type: ignore[no-untyped-call]


class TokenCounts(Protocol):
    prompt_tokens: int
    completion_tokens: int


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_loras: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "graft_requests", "HTTP requests to /v1 endpoints", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "graft_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "graft_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.loaded_adapters = Gauge(
            "graft_loaded_adapters", "LoRA adapters currently loaded", registry=r
        )
        self.max_loras = Gauge("graft_max_loras", "The --max-loras limit", registry=r)
        self.max_loras.set(max_loras)
        self.adapter_loads = Counter(
            "graft_adapter_loads", "LoRA adapter loads by result", ["result"], registry=r
        )
        self.adapter_load_seconds = Histogram(
            "graft_adapter_load_seconds",
            "Time to load a LoRA adapter",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )

    def count_tokens(self, model: str, counts: TokenCounts) -> None:
        self.prompt_tokens.labels(model=model).inc(counts.prompt_tokens)
        self.generation_tokens.labels(model=model).inc(counts.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
