"""The autoscaler loop: scrape the gateways, decide per Deployment, scale through /scale, write
status.autoscaling. The decisions are graft.plan.autoscaler's; this module is their I/O.

It runs in the leader only: `graft run` starts it after taking the Lease, next to kopf, on a
thread of its own (never on kopf's reconcile workers), every GRAFT_AUTOSCALER_INTERVAL seconds.
The Deployments it sizes come from kopf's watch (`observe`, an event handler), not from a list
per pass: in a steady state a pass costs the gateways' scrapes and no API call at all.

Gateways are a workload like any other to the operator: they are scraped concurrently on this
loop's own small pool, each with a total deadline and a 1 MiB cap, and no redirects (the
model-server client's `fetch`). Their addresses are GRAFT_GATEWAY_METRICS, or the Ready pods
labelled app.kubernetes.io/component=gateway in the operator's namespace, on the container port
named "metrics".

Two writers share a Deployment's status: its reconcile (everything else) and this loop
(status.autoscaling and the Autoscaling condition). Status is merge-patched and the conditions
list is replaced whole, so this loop writes under the reconcile's per-object lock, from a fresh
read, and the reconcile carries the autoscaler's fields over (graft.plan.deployment).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from graft.api.common import Condition, ConditionStatus
from graft.api.kinds import Plural
from graft.api.serving import AutoscalingStatus, DeploymentSpec
from graft.controller.kube import Api
from graft.controller.metrics import CallOutcome, OperatorMetrics
from graft.controller.modelclient import (
    MAX_BODY_BYTES,
    ModelServerError,
    ModelServerUnreachable,
    fetch,
)
from graft.core import keys
from graft.core.conditions import conditions_of, find, now_rfc3339
from graft.core.objects import Obj, is_terminating
from graft.core.settings import Settings
from graft.plan.autoscaler import (
    Autoscaled,
    Decision,
    DeploymentKey,
    LoadBook,
    Observation,
    Scrape,
    Series,
    autoscaled,
    autoscaling_conditions,
    autoscaling_status,
    decide,
    gateway_metrics_urls,
    needs_write,
    no_gateway,
    parse_exposition,
    scale_event,
)
from graft.plan.deployment import AUTOSCALING, autoscaling_of

log = logging.getLogger(__name__)

PLURAL = Plural.DEPLOYMENTS
SCRAPE_TIMEOUT_SECONDS = 3.0
SCRAPE_CONCURRENCY = 8
ACCEPT = "text/plain;version=0.0.4"
"""The Prometheus text format, which prometheus_client's parser reads (not OpenMetrics)."""
GATEWAY_SELECTOR = f"{keys.COMPONENT}={keys.GATEWAY_COMPONENT}"
KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp")

Exclusive = Callable[[str, str, str], AbstractContextManager[Any]]
"""exclusive(plural, namespace, name): hold the object's reconcile lock (Operator.exclusive)."""


def _no_lock(plural: str, namespace: str, name: str) -> AbstractContextManager[Any]:
    return nullcontext()


class GatewayError(Exception):
    """A gateway's answer was not its metrics."""


@dataclass(frozen=True)
class Target:
    """A Deployment the autoscaler sizes this pass."""

    obj: Obj
    spec: DeploymentSpec
    autoscaled: Autoscaled


@dataclass(frozen=True)
class Verdict:
    """What one pass decided for one Deployment, and on what."""

    decision: Decision
    seen: Observation
    scaled_at: str | None
    """When it changed spec.replicas (RFC 3339); None when it did not."""


class Autoscaler:
    def __init__(
        self,
        api: Api,
        settings: Settings,
        metrics: OperatorMetrics | None = None,
        *,
        exclusive: Exclusive = _no_lock,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = now_rfc3339,
        scrape_timeout: float = SCRAPE_TIMEOUT_SECONDS,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()
        self.exclusive = exclusive
        self.clock = clock
        self.wall = wall
        self.scrape_timeout = scrape_timeout
        self.max_body = max_body
        self.book = LoadBook()
        self._watched: dict[DeploymentKey, Obj] = {}
        self._watched_guard = threading.Lock()
        self._written: dict[DeploymentKey, float] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=SCRAPE_CONCURRENCY, thread_name_prefix="gateway-metrics"
        )
        self._stop = threading.Event()

    # --- What to size: kopf's watch of Deployments ------------------------------------------------

    async def observe(self, type: str | None, body: Mapping[str, Any], **_: Any) -> None:
        """kopf event handler of Deployments: keep those with spec.autoscaling. Async, so it
        runs on kopf's event loop and never waits behind reconciles for a worker."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        wanted = type != "DELETED" and bool((body.get("spec") or {}).get("autoscaling"))
        if wanted:
            # What a pass reads, and no more (managedFields and annotations can be large).
            obj = copy.deepcopy(
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
                    "spec": body.get("spec"),
                    "status": body.get("status"),
                }
            )
        with self._watched_guard:
            if wanted:
                self._watched[key] = obj
            else:
                self._watched.pop(key, None)

    def watched(self) -> dict[DeploymentKey, Obj]:
        with self._watched_guard:
            return dict(self._watched)

    # --- The loop ------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Run a pass every GRAFT_AUTOSCALER_INTERVAL seconds until `stop()`."""
        interval = self.settings.autoscaler_interval

        def loop() -> None:
            due = time.monotonic()
            while not self._stop.is_set():
                try:
                    self.run_pass()
                except Exception:
                    log.exception("autoscaler pass failed; the next one is in %g s", interval)
                due = max(due + interval, time.monotonic())
                self._stop.wait(due - time.monotonic())

        thread = threading.Thread(target=loop, name="autoscaler", daemon=True)
        thread.start()
        log.info("autoscaler: a pass every %g s", interval)
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_pass(self) -> None:
        """One pass over every Deployment with spec.autoscaling."""
        now = self.clock()
        targets = self.targets()
        self.metrics.autoscaler_deployments.set(len(targets))
        self._written = {k: v for k, v in self._written.items() if k in targets}
        if not targets:
            self.book.observe(Scrape(), now, {})  # forget what was; scrape nobody for nothing
            return
        scrape = self.scrape_gateways()
        keep = {key: t.autoscaled.spec.longest_window for key, t in targets.items()}
        seen = self.book.observe(scrape, now, keep)
        for key, target in targets.items():
            try:
                self.act(key, target, seen[key], now)
            except Exception:
                log.exception("autoscaling deployment %s/%s failed; next pass in a moment", *key)

    def targets(self) -> dict[DeploymentKey, Target]:
        """The watched Deployments the autoscaler can read; one it cannot is its reconcile's to
        report (InvalidSpec)."""
        out = {}
        for key, obj in self.watched().items():
            if is_terminating(obj):
                continue
            try:
                spec = DeploymentSpec.model_validate(obj.get("spec") or {})
            except ValidationError:
                continue
            if spec.autoscaling is None:
                continue
            out[key] = Target(
                obj, spec, autoscaled(spec.autoscaling, self.settings.min_scale_to_zero_window)
            )
        return out

    # --- The gateways --------------------------------------------------------------------------

    def gateway_urls(self) -> tuple[list[str], str]:
        """Where to scrape, and why that is nowhere when it is."""
        if self.settings.gateway_metrics:
            return list(self.settings.gateway_metrics), "GRAFT_GATEWAY_METRICS names no gateway"
        namespace = self.settings.operator_namespace
        try:
            pods = self.api.list_pods(namespace, GATEWAY_SELECTOR)
        except Exception as exc:
            return [], f"cannot list the gateway pods in namespace {namespace}: {exc}"
        return gateway_metrics_urls(pods), no_gateway(namespace)

    def scrape_gateways(self) -> Scrape:
        """Every gateway's series, asked all at once; what did not answer in time is a failure."""
        urls, nobody = self.gateway_urls()
        futures = {url: self._pool.submit(self.scrape_one, url) for url in urls}
        if futures:
            wait_all(list(futures.values()), timeout=self.scrape_timeout + 0.5)
        answered: dict[str, Mapping[DeploymentKey, Series]] = {}
        failed: dict[str, str] = {}
        for url, future in futures.items():
            if not future.done():
                future.cancel()
                failed[url] = f"no answer within {self.scrape_timeout:g} s"
                continue
            exc = future.exception()
            if exc is None:
                answered[url] = future.result()
            else:
                failed[url] = str(exc).removeprefix(f"{url}: ")
        self.metrics.autoscaler_gateways.set(len(urls))
        self.metrics.autoscaler_gateways_answered.set(len(answered))
        if failed:
            log.warning(
                "autoscaler: %d of %d gateways did not answer: %s",
                len(failed),
                len(urls),
                "; ".join(f"{u}: {why}" for u, why in sorted(failed.items())),
            )
        return Scrape(answered=answered, failed=failed, nobody=nobody)

    def scrape_one(self, url: str) -> dict[DeploymentKey, Series]:
        """GET one gateway's metrics: total deadline, 1 MiB, no redirects."""
        started = time.perf_counter()
        outcome = CallOutcome.OK
        try:
            status, raw = fetch(
                url, None, timeout=self.scrape_timeout, max_body=self.max_body, accept=ACCEPT
            )
            if status != 200:
                raise GatewayError(f"HTTP {status}")
            try:
                return parse_exposition(raw.decode())
            except ValueError as exc:  # UnicodeDecodeError too
                raise GatewayError(str(exc)) from None
        except ModelServerUnreachable:
            outcome = CallOutcome.UNREACHABLE
            raise
        except (ModelServerError, GatewayError):
            outcome = CallOutcome.REFUSED  # not metrics, or more than max_body of them
            raise
        except Exception:
            outcome = CallOutcome.ERROR
            raise
        finally:
            self.metrics.autoscaler_scrape_seconds.observe(time.perf_counter() - started)
            self.metrics.autoscaler_scrapes.labels(outcome=outcome).inc()

    # --- One Deployment ------------------------------------------------------------------------

    def act(self, key: DeploymentKey, target: Target, seen: Observation, now: float) -> None:
        """Decide, scale when the decision says so, and publish it."""
        namespace, name = key
        current = target.spec.replicas
        decision = decide(target.autoscaled.spec, current, self.book.loads[key], seen, now)
        scaled_at = None
        if decision.replicas != current:
            version = target.obj["metadata"].get("resourceVersion") or ""
            if not self.api.scale_graft(PLURAL, namespace, name, decision.replicas, version):
                log.debug("deployment %s/%s changed meanwhile; next pass decides again", *key)
                return
            scaled_at = self.wall()
            message = scale_event(current, decision)
            log.info("deployment %s/%s %s", namespace, name, message)
            self.metrics.autoscaler_scalings.labels(reason=decision.reason).inc()
            self.api.event(target.obj, "Normal", decision.reason, message)
        self.publish(key, target, Verdict(decision, seen, scaled_at), now)

    def publish(self, key: DeploymentKey, target: Target, verdict: Verdict, now: float) -> None:
        """Write status.autoscaling and the Autoscaling condition if `needs_write` says they are
        worth it: judged on the watched object (no API call), written from a fresh read under
        the Deployment's reconcile lock."""
        if not self._worth_writing(key, target, verdict, now):
            return
        namespace, name = key
        with self.exclusive(PLURAL, namespace, name):
            fresh = self.api.get_graft(PLURAL, namespace, name)
            if (
                fresh is None
                or is_terminating(fresh)
                or fresh["metadata"].get("uid") != target.obj["metadata"].get("uid")
                or not (fresh.get("spec") or {}).get("autoscaling")
            ):
                return
            new, conditions = self._status(target.autoscaled, verdict, fresh)
            status = fresh.get("status") or {}
            patch = {"autoscaling": new.wire(), "conditions": [c.wire() for c in conditions]}
            if {k: status.get(k) for k in patch} != patch:
                self.api.patch_graft_status(PLURAL, namespace, name, patch)
            self._written[key] = now
            before = find(conditions_of(fresh), AUTOSCALING)
            decision = verdict.decision
            if not decision.acting and (before is None or before.status == ConditionStatus.TRUE):
                # Losing the metrics is a transition a person wants to see; scale changes have
                # their own Events.
                self.api.event(fresh, "Warning", decision.reason, decision.message)

    def _worth_writing(
        self, key: DeploymentKey, target: Target, verdict: Verdict, now: float
    ) -> bool:
        obj = target.obj
        new, conditions = self._status(target.autoscaled, verdict, obj)
        return needs_write(
            (obj.get("status") or {}).get("autoscaling"),
            new.wire(),
            conditions_of(obj),
            conditions,
            last_write=self._written.get(key),
            now=now,
        )

    def _status(
        self, a: Autoscaled, verdict: Verdict, obj: Obj
    ) -> tuple[AutoscalingStatus, list[Condition]]:
        """status.autoscaling and the conditions after `verdict`, over what `obj` has."""
        status = obj.get("status") or {}
        new = autoscaling_status(
            verdict.decision, verdict.seen, a.zero_window, autoscaling_of(status), verdict.scaled_at
        )
        conditions = autoscaling_conditions(
            conditions_of(obj),
            verdict.decision,
            a.floor_note,
            generation=obj["metadata"].get("generation"),
            now=self.wall(),
        )
        return new, conditions
