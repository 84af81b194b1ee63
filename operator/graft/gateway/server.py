"""`graft gateway`: the OpenAI-compatible front door (aiohttp, one event loop).

A request goes through, in order: the API key (401), the body (400), the model's route (403,
404), the account's limits (429), a replica that serves the model (waiting for one, and asking
for one when its Deployment is scaled to zero; 503 with Retry-After at the deadline), then the
replica itself, with the Deployment's server key. Streaming answers are passed on event by event
as they arrive; a client that goes away cancels the request to the replica. Only the routes
below exist: vLLM's admin paths (load_lora_adapter, ...) are never reachable through here.

The gateway keeps no state that matters across restarts: routes, keys and limits come from the
cluster through `View` (the watch cache, graft.gateway.kube), what each replica serves from the
replica's own GET /v1/models, asked every few seconds (`Prober`). Several gateways can run behind
one Service; limits are then per gateway (see docs/gateway.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from graft.core.settings import DEFAULT_MAX_BYTES
from graft.gateway import apikeys, dashboard, errors, progress, routing, stores, uploads
from graft.gateway.bodies import read_at_most
from graft.gateway.catalog import Catalog, DeploymentEntry, Target
from graft.gateway.limits import Limiter, Refusal, Ticket

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
"""Largest request body accepted (prompts are text; 8 MiB is far above any context window)."""
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
"""Largest non-streamed answer read from a replica before giving up on it."""
PROBE_TIMEOUT = 3.0
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
"""A Kubernetes ServiceAccount token's shape (a JWS in compact form)."""
MAX_CONCURRENT_REVIEWS = 4
MAX_PROBE_BODY = 1024 * 1024
UPLOAD_ROLES = frozenset({"admin", "member"})


@dataclass(frozen=True)
class Pod:
    """A model-server pod of a Deployment, as the watch cache sees it."""

    uid: str
    name: str
    deployment: str  # the Deployment's full name
    ip: str | None
    port: int
    ready: bool

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


class View(Protocol):
    """The cluster as the gateway sees it (graft.gateway.kube.ClusterCache, or a test's)."""

    def catalog(self) -> Catalog: ...

    def pods(self) -> list[Pod]: ...

    def server_key(self, account: str, deployment: str) -> str | None: ...

    def synced(self) -> bool: ...

    def objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        """The cached objects of a watched Graft kind (its plural: deployments, datasets, ...)
        in one namespace, for the read-only dashboard; never modified by the reader."""
        ...

    async def review_token(self, token: str) -> str | None:
        """The account of a ServiceAccount token that may use it (TokenReview, then a
        SubjectAccessReview), or None: not a valid token, or no such right."""
        ...

    async def scale_from_zero(self, deployment: DeploymentEntry) -> bool:
        """Ask for one replica of a Deployment that has none; False when it was not at zero
        any more (someone else asked first) or the write was refused."""
        ...

    def finetuning_job(self, namespace: str, name: str) -> progress.JobRecord | None:
        """A FineTuningJob as the cache has it, or None when there is no such job."""
        ...

    def progress_token(self, namespace: str, job: str, uid: str) -> str | None:
        """The token the job's trainer presents (None until the key seed is loaded)."""
        ...

    async def patch_progress(
        self, namespace: str, name: str, resource_version: str, report: dict[str, Any]
    ) -> progress.Outcome:
        """Merge `report` into status.progress of that version of the job: WRITTEN, CONFLICT
        (the job changed since) or GONE."""
        ...


@dataclass(frozen=True)
class Settings:
    queue_timeout: float = 300.0
    """Longest a request waits for a replica that serves its model (a scale from zero, an addon
    being loaded, every replica restarting) before 503."""
    probe_interval: float = 2.0
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    """Longest silence from a replica in the middle of an answer."""
    retry_after: int = 5
    progress_interval: float = progress.WRITE_INTERVAL
    """Seconds between two writes of one FineTuningJob's status.progress, at least."""
    uploads_uri: str | None = None
    """Where dataset uploads go (file:// or s3://); None: the upload routes answer 501."""
    max_upload_bytes: int = DEFAULT_MAX_BYTES


class Changes:
    """Wakes the requests waiting for a replica when anything they depend on changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self) -> None:
        """Thread-safe: the watch threads call it."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "graft_gateway_requests",
            "Requests answered, by account, model and HTTP status.",
            ["account", "model", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "graft_gateway_in_flight",
            "Requests for a Deployment running on a replica or waiting for one (the "
            "autoscaler's load signal).",
            ["namespace", "deployment"],
            registry=r,
        )
        self.deployment_requests = Counter(
            "graft_gateway_deployment_requests",
            "Requests that arrived for a Deployment (the autoscaler's proof of activity).",
            ["namespace", "deployment"],
            registry=r,
        )
        self.account_in_flight = Gauge(
            "graft_gateway_account_in_flight",
            "Requests of an account in flight.",
            ["account"],
            registry=r,
        )
        self.ttft = Histogram(
            "graft_gateway_time_to_first_token_seconds",
            "From the request's arrival to the first byte of the answer's body.",
            ["account", "model"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.tokens = Counter(
            "graft_gateway_tokens",
            "Tokens used, by account, model and direction (in: prompt, out: completion).",
            ["account", "model", "direction"],
            registry=r,
        )
        self.errors = Counter(
            "graft_gateway_errors",
            "Requests that ended in an error, by account and reason.",
            ["account", "reason"],
            registry=r,
        )
        self.scale_requests = Counter(
            "graft_gateway_scale_from_zero",
            "Requests to scale a Deployment from zero, by outcome.",
            ["namespace", "deployment", "outcome"],
            registry=r,
        )


class Prober:
    """What each ready replica serves, from its own GET /v1/models, asked every few seconds and
    at once when a pod appears or when a request is waiting for a model nobody lists yet."""

    def __init__(
        self,
        view: View,
        session: aiohttp.ClientSession,
        changes: Changes,
        interval: float,
    ) -> None:
        self.view = view
        self.session = session
        self.changes = changes
        self.interval = interval
        self.models: dict[str, frozenset[str]] = {}  # pod uid -> served model names
        self._kick = asyncio.Event()

    def kick(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        while True:
            self._kick.clear()
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)

    async def probe_all(self) -> None:
        pods = [p for p in self.view.pods() if p.ready and p.ip]
        results = await asyncio.gather(*(self._probe(p) for p in pods))
        fresh = {p.uid: r for p, r in zip(pods, results, strict=True) if r is not None}
        if fresh != self.models:
            self.models = fresh
            self.changes.notify()

    async def _probe(self, pod: Pod) -> frozenset[str] | None:
        _, account, _, deployment = pod.deployment.split("/")
        key = self.view.server_key(account, deployment)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with self.session.get(
                    f"{pod.url}/v1/models", headers=headers, allow_redirects=False
                ) as resp:
                    if resp.status != 200:
                        return None
                    raw = await resp.content.read(MAX_PROBE_BODY + 1)
            if len(raw) > MAX_PROBE_BODY:
                return None
            data = json.loads(raw)
            return frozenset(str(m["id"]) for m in data.get("data", []) if "id" in m)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError, OSError):
            return None


@dataclass
class _Call:
    """One client request on its way through the gateway."""

    request: web.Request
    account: str
    target: Target
    payload: bytes  # the body sent to the replica
    stream: bool
    wants_usage: bool  # the client asked for the usage chunk
    started: float
    usage: _Usage


@dataclass
class _Attempt:
    replica: routing.Replica
    deployment: DeploymentEntry


class Gateway:
    def __init__(self, view: View, settings: Settings | None = None) -> None:
        self.view = view
        self.settings = settings or Settings()
        self.metrics = Metrics()
        self.limiter = Limiter()
        self.changes = Changes()
        self.outstanding: dict[str, int] = defaultdict(int)  # pod uid -> requests sent to it
        self._scaling: dict[str, float] = {}  # deployment full name -> when we last asked
        self.session: aiohttp.ClientSession | None = None
        self.prober: Prober | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reviews = asyncio.Semaphore(MAX_CONCURRENT_REVIEWS)
        self.pacer = progress.Pacer(self.settings.progress_interval)
        self.uploads: uploads.Uploads | None = None
        self._store_session: aiohttp.ClientSession | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        base = "/v1/accounts/{account}/uploads"
        app.router.add_post(base, self.upload_create)
        app.router.add_get(base + "/{upload}", self.upload_status)
        app.router.add_put(base + "/{upload}", self.upload_put)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_post("/v1/internal/progress/{namespace}/{name}", self.report_progress)
        dashboard.Dashboard(
            self.view, self._served, self._review, lambda t: JWT.fullmatch(t) is not None
        ).register(app.router)
        app.middlewares.append(_not_found_middleware)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()

        async def render(_: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", render)
        return app

    async def _start(self, _: web.Application) -> None:
        self.changes.bind(asyncio.get_running_loop())
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout
        )
        # No connection limit per host: a replica's own queue decides how much it takes.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        )
        self.prober = Prober(self.view, self.session, self.changes, self.settings.probe_interval)
        if self.settings.uploads_uri:
            # A session of its own: S3 calls carry their own total deadlines (graft.gateway.stores)
            # and must not share the replicas' unlimited pool.
            self._store_session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=self.settings.connect_timeout),
                connector=aiohttp.TCPConnector(limit=32),
                auto_decompress=False,
            )
            store = stores.open_store(self.settings.uploads_uri, os.environ, self._store_session)
            self.uploads = uploads.Uploads(store, self.settings.max_upload_bytes)
        self._tasks.append(asyncio.create_task(self.prober.run(), name="prober"))

    async def _stop(self, _: web.Application) -> None:
        await self.pacer.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()
        if self._store_session is not None:
            await self._store_session.close()

    # --- plain endpoints -----------------------------------------------------------------------

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _: web.Request) -> web.Response:
        if not self.view.synced():
            return web.json_response({"status": "waiting for the watch cache"}, status=503)
        return web.json_response({"status": "ok"})

    async def report_progress(self, request: web.Request) -> web.Response:
        """A trainer's progress report (graft.gateway.progress.receive says what each answer
        means): 200 written, 202 kept for the job's next write, an error otherwise."""
        result = await progress.receive(
            self.view,
            self.pacer,
            request.match_info["namespace"],
            request.match_info["name"],
            authorization=request.headers.get("Authorization"),
            read=lambda limit: read_at_most(request, limit),
        )
        if isinstance(result, errors.ApiError):
            return _error(result)
        status = 200 if result == progress.Outcome.WRITTEN else 202
        return web.json_response({"status": str(result)}, status=status)

    def _served(self) -> dict[str, frozenset[str]]:
        """What each ready pod serves (pod uid -> model names), as last probed."""
        return self.prober.models if self.prober else {}

    async def _review(self, token: str) -> str | None:
        async with self._reviews:
            return await self.view.review_token(token)

    async def _caller(self, request: web.Request, catalog: Catalog) -> str:
        """The account the request acts for: from a Graft API key, or from a Kubernetes
        ServiceAccount token (an in-cluster caller) that the API server vouches for.
        KeyRejected (401) otherwise."""
        token = apikeys.bearer_token(request.headers.get("Authorization"))
        if token is not None and JWT.fullmatch(token):
            # Only what looks like a ServiceAccount token costs the API server a TokenReview,
            # and only a few at a time: garbage in the header must not become load upstream.
            async with self._reviews:
                account = await self.view.review_token(token)
            if account is not None:
                return account
        return apikeys.authenticate(token, catalog.key, datetime.now(UTC)).account

    async def list_models(self, request: web.Request) -> web.Response:
        catalog = self.view.catalog()
        try:
            account = await self._caller(request, catalog)
        except apikeys.KeyRejected as exc:
            return _error(_key_error(exc))
        data = [
            {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}
            | ({"parent": m.parent} if m.parent else {})
            for m in catalog.visible(account)
        ]
        return web.json_response({"object": "list", "data": data})

    # --- dataset uploads (graft.gateway.uploads) -----------------------------------------------

    async def upload_create(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, "create")

    async def upload_status(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, "status")

    async def upload_put(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, "put")

    async def _upload(self, request: web.Request, what: str) -> web.StreamResponse:
        account = request.match_info["account"]
        refused = self._uploader(request, account)
        if refused is not None:
            log.info("%d %s %s: %s", refused.status, request.method, request.path, refused.message)
            return _error(refused)
        if self.uploads is None:
            return _error(
                errors.ApiError(
                    501,
                    "Dataset uploads are not configured on this gateway: start it with --uploads "
                    "file:///<dir> or s3://<bucket>/<prefix> (or GRAFT_UPLOADS_URI); a pvc:// "
                    "artifact store is not reachable from the gateway.",
                    "not_implemented_error",
                    code="uploads_not_configured",
                )
            )
        handler = {
            "create": self.uploads.create,
            "status": self.uploads.status,
            "put": self.uploads.put,
        }[what]
        return await handler(request, account)

    def _uploader(self, request: web.Request, account: str) -> errors.ApiError | None:
        """Why the caller may not upload into `account`, or None: an API key (not a
        ServiceAccount token) of that account, whose User is an admin or a member."""
        token = apikeys.bearer_token(request.headers.get("Authorization"))
        if token is not None and JWT.fullmatch(token):
            return errors.invalid_api_key(
                "Dataset uploads take a Graft API key ('Authorization: Bearer graft_...'), not a "
                "Kubernetes ServiceAccount token."
            )
        try:
            key = apikeys.authenticate(token, self.view.catalog().key, datetime.now(UTC))
        except apikeys.KeyRejected as exc:
            return _key_error(exc)
        if key.account != account:
            return errors.ApiError(
                403,
                f"An API key of account '{key.account}' cannot upload into account '{account}'.",
                errors.REQUEST_FORBIDDEN,
                code="account_not_permitted",
            )
        if key.role not in UPLOAD_ROLES:
            return errors.ApiError(
                403,
                f"Uploading datasets needs the role admin or member in account '{account}'; "
                f"this key's User has {key.role or 'no known role'}.",
                errors.REQUEST_FORBIDDEN,
                code="role_not_permitted",
            )
        return None

    # --- completions ---------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        catalog = self.view.catalog()
        try:
            account = await self._caller(request, catalog)
        except apikeys.KeyRejected as exc:
            log.info("401 %s %s: %s", request.method, request.path, exc.reason)
            return _error(_key_error(exc))
        body, problem = await _read_json(request)
        if problem is not None:
            return self._fail(account, "-", problem, "bad_request")
        requested = body.get("model")
        if not isinstance(requested, str) or not requested:
            error = errors.bad_request("The request must name a `model`.", param="model")
            return self._fail(account, "-", error, "bad_request")
        target = catalog.resolve(account, requested)
        if isinstance(target, errors.ApiError):
            # Not the requested name as a label: a caller could mint one time series per name.
            return self._fail(account, "-", target, f"status_{target.status}")
        admitted = self.limiter.acquire(account, catalog.limits_of(account), _estimate(body))
        if isinstance(admitted, Refusal):
            return self._fail(account, requested, errors.rate_limited(admitted), "rate_limited")
        stream = bool(body.get("stream"))
        upstream_body = dict(body, model=target.served_name)
        if stream:
            # Ask for the usage chunk to count tokens; it is dropped again unless asked for.
            upstream_body["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        call = _Call(
            request=request,
            account=account,
            target=target,
            payload=json.dumps(upstream_body).encode(),
            stream=stream,
            wants_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            started=started,
            usage=_Usage(),
        )
        self.metrics.account_in_flight.labels(account).inc()
        try:
            return await self._serve(call, admitted)
        finally:
            self.metrics.account_in_flight.labels(account).dec()

    def _fail(self, account: str, model: str, error: errors.ApiError, reason: str) -> web.Response:
        self.metrics.requests.labels(account, model, str(error.status)).inc()
        self.metrics.errors.labels(account, reason).inc()
        return _error(error)

    async def _serve(self, call: _Call, ticket: Ticket) -> web.StreamResponse:
        account, target, usage = call.account, call.target, call.usage
        first = target.deployments[0]
        charged = first  # the Deployment the request counts against while it waits
        self._enter(charged)
        tried: list[str] = []
        response: web.StreamResponse | None = None
        status = 0
        try:
            attempt = await self._wait_for_replica(target, ())
            if isinstance(attempt, errors.ApiError):
                status = attempt.status
                self.metrics.errors.labels(account, "no_replica").inc()
                return _error(attempt)
            if attempt.deployment.full_name != charged.full_name:
                self._leave(charged)
                charged = attempt.deployment
                self._enter(charged, arrived=False)
            while True:
                tried.append(attempt.replica.id)
                outcome = await self._attempt(call, attempt)
                if isinstance(outcome, web.StreamResponse):
                    response = outcome
                    status = outcome.status
                    return outcome
                upstream_status, why = outcome
                decision = routing.after_failure(
                    self._replicas(attempt.deployment),
                    target.served_name,
                    tried,
                    first_byte_sent=False,
                    upstream_status=upstream_status,
                )
                log.info(
                    "%s on %s failed (%s): %s",
                    target.requested,
                    attempt.replica.id,
                    why,
                    decision.reason,
                )
                if not decision.retry or decision.replica is None:
                    error = errors.unavailable(
                        target.requested, self.settings.retry_after, f"the replica failed ({why})"
                    )
                    status = 503
                    self.metrics.errors.labels(account, "upstream_failed").inc()
                    return _error(error)
                attempt = _Attempt(decision.replica, attempt.deployment)
        finally:
            self._leave(charged)
            used = usage.total if usage.known else None
            self.limiter.release(ticket, used)
            if usage.known:
                self.metrics.tokens.labels(account, target.requested, "in").inc(usage.prompt)
                self.metrics.tokens.labels(account, target.requested, "out").inc(usage.completion)
            code = str(status or (response.status if response else 499))
            self.metrics.requests.labels(account, target.requested, code).inc()

    def _enter(self, deployment: DeploymentEntry, arrived: bool = True) -> None:
        self.metrics.in_flight.labels(deployment.account, deployment.id).inc()
        if arrived:
            self.metrics.deployment_requests.labels(deployment.account, deployment.id).inc()

    def _leave(self, deployment: DeploymentEntry) -> None:
        self.metrics.in_flight.labels(deployment.account, deployment.id).dec()

    def _replicas(self, deployment: DeploymentEntry) -> list[routing.Replica]:
        models = self.prober.models if self.prober else {}
        return [
            routing.Replica(
                id=p.uid,
                url=p.url,
                models=models.get(p.uid, frozenset()),
                outstanding=self.outstanding.get(p.uid, 0),
                ready=p.ready and p.ip is not None,
            )
            for p in self.view.pods()
            if p.deployment == deployment.full_name
        ]

    async def _wait_for_replica(
        self, target: Target, tried: tuple[str, ...]
    ) -> _Attempt | errors.ApiError:
        deadline = time.monotonic() + self.settings.queue_timeout
        asked = False
        while True:
            catalog = self.view.catalog()
            for dep in target.deployments:
                current = catalog.deployments.get(dep.full_name, dep)
                replica = routing.choose(self._replicas(current), target.served_name, tried)
                if replica is not None:
                    return _Attempt(replica, current)
            current_deps = [catalog.deployments.get(d.full_name, d) for d in target.deployments]
            if all(d.replicas == 0 and d.autoscaling is None for d in current_deps):
                return errors.unavailable(
                    target.requested,
                    self.settings.retry_after,
                    "its Deployment has 0 replicas and no autoscaling",
                )
            for dep in current_deps:
                if dep.replicas == 0 and dep.autoscaling is not None:
                    await self._ask_for_replica(dep)
            if not asked and self.prober is not None:
                # A replica may already serve it (an addon loaded a moment ago): ask them now.
                self.prober.kick()
                asked = True
            left = deadline - time.monotonic()
            if left <= 0:
                scaled = any(d.replicas == 0 for d in current_deps)
                why = (
                    f"its Deployment is scaling up from zero and had no ready replica within "
                    f"{self.settings.queue_timeout:g}s"
                    if scaled
                    else f"no ready replica served it within {self.settings.queue_timeout:g}s"
                )
                return errors.unavailable(target.requested, self.settings.retry_after, why)
            await self.changes.wait(min(left, 1.0))

    async def _ask_for_replica(self, dep: DeploymentEntry) -> None:
        now = time.monotonic()
        if now - self._scaling.get(dep.full_name, -math.inf) < 5.0:
            return
        self._scaling[dep.full_name] = now
        try:
            done = await self.view.scale_from_zero(dep)
        except Exception:
            log.exception("could not scale %s from zero", dep.full_name)
            self.metrics.scale_requests.labels(dep.account, dep.id, "error").inc()
            return
        outcome = "scaled" if done else "not_needed"
        self.metrics.scale_requests.labels(dep.account, dep.id, outcome).inc()
        if done:
            log.info("asked for 1 replica of %s (scaled to zero, a request waits)", dep.full_name)

    async def _attempt(
        self, call: _Call, attempt: _Attempt
    ) -> web.StreamResponse | tuple[int | None, str]:
        """One try on one replica: the response sent to the client, or (status, why) when it
        failed before anything reached the client."""
        assert self.session is not None
        request, stream, usage, started = call.request, call.stream, call.usage, call.started
        account, target = call.account, call.target
        replica, dep = attempt.replica, attempt.deployment
        key = self.view.server_key(dep.account, dep.id)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.outstanding[replica.id] += 1
        try:
            async with self.session.post(
                f"{replica.url}{request.path}",
                data=call.payload,
                headers=headers,
                allow_redirects=False,
            ) as up:
                if up.status in routing.RETRYABLE_STATUSES:
                    return up.status, f"HTTP {up.status}"
                content_type = up.headers.get("Content-Type", "application/json")
                if not (stream and up.status == 200):
                    raw = await up.content.read(MAX_UPSTREAM_BODY + 1)
                    if len(raw) > MAX_UPSTREAM_BODY:
                        return None, "answer too large"
                    self.metrics.ttft.labels(account, target.requested).observe(
                        time.monotonic() - started
                    )
                    usage.read_body(raw)
                    return web.Response(
                        body=raw, status=up.status, headers={"Content-Type": content_type}
                    )
                response = web.StreamResponse(
                    status=up.status,
                    headers={"Content-Type": content_type, "Cache-Control": "no-cache"},
                )
                first = True
                async for event in _events(up.content):
                    if first:
                        self.metrics.ttft.labels(account, target.requested).observe(
                            time.monotonic() - started
                        )
                        await response.prepare(request)
                        first = False
                    if usage.read_event(event) and not call.wants_usage:
                        continue  # the usage chunk the gateway asked for, not the client
                    await response.write(event)
                if first:
                    await response.prepare(request)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise  # the client went away: nothing to retry for
            return None, type(exc).__name__
        finally:
            self.outstanding[replica.id] -= 1
            if self.outstanding[replica.id] <= 0:
                del self.outstanding[replica.id]


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0
    known: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def _take(self, usage: Any) -> bool:
        if not isinstance(usage, dict):
            return False
        self.prompt = int(usage.get("prompt_tokens") or 0)
        self.completion = int(usage.get("completion_tokens") or 0)
        self.known = True
        return True

    def read_body(self, raw: bytes) -> None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            self._take(json.loads(raw).get("usage"))

    def read_event(self, event: bytes) -> bool:
        """Count a usage chunk; True when the event is nothing but that chunk."""
        if b'"usage"' not in event:
            return False
        text = event.decode("utf-8", "replace").strip()
        if not text.startswith("data:"):
            return False
        try:
            data = json.loads(text[5:].strip())
        except ValueError:
            return False
        if not isinstance(data, dict) or not self._take(data.get("usage")):
            return False
        return not data.get("choices")


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Server-sent events as they arrive, each with its blank-line terminator; whatever
    trails without one at the end is passed on as it is."""
    pending = b""
    async for chunk in content.iter_any():
        pending += chunk
        while True:
            cut = pending.find(b"\n\n")
            if cut < 0:
                break
            yield pending[: cut + 2]
            pending = pending[cut + 2 :]
    if pending:
        yield pending


async def _read_json(request: web.Request) -> tuple[dict[str, Any], errors.ApiError | None]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return {}, errors.bad_request(f"The request body is larger than {MAX_BODY} bytes.")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return {}, errors.bad_request(f"The request body is not valid JSON: {exc}.")
    if not isinstance(body, dict):
        return {}, errors.bad_request("The request body must be a JSON object.")
    return body, None


def _estimate(body: dict[str, Any]) -> int:
    """Prompt tokens, roughly (4 characters a token), charged up front; the real usage replaces
    it when the answer ends."""
    prompt = body.get("messages", body.get("prompt", ""))
    return max(1, len(json.dumps(prompt)) // 4)


def _key_error(exc: apikeys.KeyRejected) -> errors.ApiError:
    if exc.reason == apikeys.Rejection.EXPIRED:
        return errors.expired_api_key(exc.message)
    return errors.invalid_api_key(exc.message)


def _error(error: errors.ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers())


@web.middleware
async def _not_found_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        error = errors.ApiError(
            404, f"Unknown path {request.path}.", errors.INVALID_REQUEST, code="unknown_url"
        )
        return _error(error)
    except web.HTTPMethodNotAllowed:
        error = errors.ApiError(
            405, f"{request.method} is not allowed on {request.path}.", errors.INVALID_REQUEST
        )
        return _error(error)


async def serve(
    gateway: Gateway, host: str, port: int, metrics: tuple[str, int] | None
) -> tuple[web.AppRunner, list[web.AppRunner]]:
    """Start the gateway (and its metrics listener); the caller runs the loop and cleans up."""
    runner = web.AppRunner(gateway.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    extra: list[web.AppRunner] = []
    if metrics is not None:
        m = web.AppRunner(gateway.metrics_app(), access_log=None)
        await m.setup()
        await web.TCPSite(m, metrics[0], metrics[1]).start()
        extra.append(m)
    return runner, extra
