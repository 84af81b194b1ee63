"""Stub model-server replicas and a gateway on a loop of their own, for tests and benchmarks of
the gateway without a cluster: real HTTP on loopback, real aiohttp, the gateway's production
code; only the cluster (`View`) is a plain object the test fills in.

A StubReplica speaks the part of vLLM's API the gateway uses: GET /v1/models (its models),
POST /v1/chat/completions and /v1/completions, streamed as server-sent events or not, requiring
its server key. It records what it was sent, and a test can make it fail, stall or pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from graft.core.serverkeys import progress_token
from graft.gateway.apikeys import NewKey
from graft.gateway.catalog import Catalog, DeploymentEntry
from graft.gateway.progress import JobRecord, Outcome
from graft.gateway.server import Gateway, Pod, Settings, serve

T = TypeVar("T")


def meta(name: str, ns: str | None = None, uid: str = "") -> dict[str, Any]:
    """An object's metadata as the gateway's catalog reads it."""
    m: dict[str, Any] = {"name": name, "creationTimestamp": "2026-11-28T10:00:00Z"}
    if ns:
        m["namespace"] = ns
    if uid:
        m["uid"] = uid
    return m


def api_key_object(ns: str, user: str, key: NewKey) -> dict[str, Any]:
    """The ApiKey `<user>-key` of `user` in account `ns`, as the operator leaves it: the key's
    id and hash in status."""
    return {
        "metadata": meta(f"{user}-key", ns),
        "spec": {"user": user},
        "status": {"keyId": key.key_id, "keyHash": key.key_hash},
    }


class Loop:
    """An asyncio loop on a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@dataclass
class StubReplica:
    """One replica. `models` is what GET /v1/models lists; `behave` can be set to "ok",
    "503", "400", "drop" (close the connection before answering). A streamed answer has
    `chunks` events (then the usage event when asked for, then [DONE]). `record=False` keeps no
    copy of the requests (`received`, `headers`), for benchmarks that send a great many."""

    name: str
    models: set[str]
    key: str
    behave: str = "ok"
    chunks: int = 3
    hold: asyncio.Event | None = None  # streaming: pause after the first chunk until set
    record: bool = True
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0
    finished: int = 0
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/load_lora_adapter", self._complete)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        data = [{"id": m, "object": "model", "owned_by": "graft"} for m in sorted(self.models)]
        return web.json_response({"object": "list", "data": data})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        hold = self.hold  # as the request arrived: a test may change it for later requests
        body = await request.json()
        if self.record:
            self.received.append(body)
            self.headers.append(dict(request.headers))
        if self.behave == "503":
            return web.json_response({"error": {"message": "busy"}}, status=503)
        if self.behave == "400":
            error = {"message": "bad max_tokens", "type": "BadRequestError", "code": 400}
            return web.json_response({"error": error}, status=400)
        if self.behave == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        model = body["model"]
        text = f"{self.name} serves {model}"
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": self.chunks,
            "total_tokens": 5 + self.chunks,
        }
        chat = request.path.endswith("/chat/completions")
        if not body.get("stream"):
            choice: dict[str, Any] = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            self.finished += 1
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(self.chunks):
                piece = f"{text} [{i}] "
                delta = (
                    {"index": 0, "delta": {"content": piece}}
                    if chat
                    else {"index": 0, "text": piece}
                )
                chunk = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [delta],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if i == 0 and hold is not None:
                    await hold.wait()
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.finished += 1
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return response


class StaticView:
    """The cluster as a test sets it: a catalog, pods and server keys; scale_from_zero calls a
    hook the test provides. FineTuningJobs are JobRecords the test sets; progress writes are
    recorded (and bump the job's resourceVersion, as the API server would), unless the
    precondition fails or `on_patch` answers something else."""

    def __init__(self, catalog: Catalog, pods: list[Pod], keys: dict[str, str]) -> None:
        self.cat = catalog
        self.pod_list = pods
        self.keys = keys  # "account/deployment" -> key
        self.on_scale: Callable[[DeploymentEntry], bool] = lambda _: False
        self.scaled: list[str] = []
        self.tokens: dict[str, str] = {}  # ServiceAccount token -> account
        self.gateway: Gateway | None = None
        self.seed = b"test-seed"
        self.jobs: dict[str, JobRecord] = {}  # "namespace/name" -> the job
        self.progress: list[tuple[str, dict[str, Any]]] = []  # ("namespace/name", report)
        self.on_patch: Callable[[str], Outcome | None] = lambda _: None
        self.objs: dict[str, list[dict[str, Any]]] = {}  # plural -> raw objects (the dashboard)

    def catalog(self) -> Catalog:
        return self.cat

    def pods(self) -> list[Pod]:
        return list(self.pod_list)

    def server_key(self, account: str, deployment: str) -> str | None:
        return self.keys.get(f"{account}/{deployment}")

    def synced(self) -> bool:
        return True

    def objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objs.get(kind, [])
            if o.get("metadata", {}).get("namespace") == namespace
        ]

    async def review_token(self, token: str) -> str | None:
        return self.tokens.get(token)

    async def scale_from_zero(self, deployment: DeploymentEntry) -> bool:
        self.scaled.append(deployment.full_name)
        return self.on_scale(deployment)

    def finetuning_job(self, namespace: str, name: str) -> JobRecord | None:
        return self.jobs.get(f"{namespace}/{name}")

    def progress_token(self, namespace: str, job: str, uid: str) -> str | None:
        return progress_token(self.seed, namespace, job, uid)

    async def patch_progress(
        self, namespace: str, name: str, resource_version: str, report: dict[str, Any]
    ) -> Outcome:
        key = f"{namespace}/{name}"
        forced = self.on_patch(key)
        if forced is not None:
            return forced
        job = self.jobs.get(key)
        if job is None:
            return Outcome.GONE
        if job.resource_version != resource_version:
            return Outcome.CONFLICT
        self.progress.append((key, report))
        version = str(int(job.resource_version) + 1)
        self.jobs[key] = JobRecord(job.uid, version, job.finished)
        return Outcome.WRITTEN

    def changed(self) -> None:
        """Tell the gateway that the catalog or the pods changed (the watch cache does)."""
        if self.gateway is not None:
            self.gateway.changes.notify()
            if self.gateway.prober is not None:
                loop = self.gateway.changes._loop
                assert loop is not None
                loop.call_soon_threadsafe(self.gateway.prober.kick)


class RunningGateway:
    """A Gateway serving `view` on loopback; start and stop it on `loop` (or, with loop=None, on
    the running loop of a process of its own, as bench/gateway.py does)."""

    def __init__(self, loop: Loop | None, view: StaticView, settings: Settings) -> None:
        self.loop = loop
        self.gateway = Gateway(view, settings)
        view.gateway = self.gateway
        self.runners: list[web.AppRunner] = []
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        runner, extra = await serve(self.gateway, "127.0.0.1", 0, ("127.0.0.1", 0))
        self.runners = [runner, *extra]
        self.port = _port(runner)
        self.metrics_port = _port(extra[0])
        assert self.gateway.prober is not None
        await self.gateway.prober.probe_all()

    async def stop(self) -> None:
        for r in self.runners:
            with contextlib.suppress(Exception):
                await r.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])
