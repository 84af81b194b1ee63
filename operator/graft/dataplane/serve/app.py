"""The HTTP API of `graft serve` (FastAPI): OpenAI endpoints and vLLM's LoRA endpoints."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from graft.dataplane.serve import protocol
from graft.dataplane.serve.engine import (
    Adapter,
    Delta,
    Engine,
    Finished,
    SamplingParams,
    local_path,
    lora_rank,
    read_adapter_config,
)
from graft.dataplane.serve.metrics import Metrics

logger = logging.getLogger("graft.dataplane.serve")


@dataclass
class ServerSettings:
    served_model_names: list[str]
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    api_key: str | None = None
    """When set, every /v1/ request must carry `Authorization: Bearer <key>` (as vLLM's
    --api-key): the operator and the gateway hold it, other tenants do not."""


@dataclass
class Models:
    """What this server serves: the base model under its names, and the loaded adapters."""

    settings: ServerSettings
    engine: Engine
    metrics: Metrics
    adapters: dict[str, Adapter] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def base_name(self) -> str:
        return self.settings.served_model_names[0]

    def resolve(self, name: str | None) -> Adapter | None:
        """The adapter a request names, None for the base model; 404 for anything else."""
        if not name or name in self.settings.served_model_names:
            return None
        adapter = self.adapters.get(name)
        if adapter is None:
            raise protocol.model_not_found(name)
        return adapter

    def cards(self) -> list[protocol.ModelCard]:
        cards = [
            protocol.ModelCard(
                id=name,
                root=self.engine.model_dir,
                parent=None,
                max_model_len=self.engine.max_model_len,
                created=self.created,
            )
            for name in self.settings.served_model_names
        ]
        cards += [
            protocol.ModelCard(
                id=a.name, root=a.path, parent=a.parent, max_model_len=None, created=a.created
            )
            for a in self.adapters.values()
        ]
        return cards

    async def load(self, name: str, path: str, base_model_name: str | None = None) -> Adapter:
        """vLLM's checks and messages, plus --max-loras and --max-lora-rank refusals."""
        if not self.settings.enable_lora:
            raise protocol.APIError(
                "LoRA is not enabled on this server; start graft serve with --enable-lora"
            )
        if not name or not path:
            raise protocol.APIError(
                "Both 'lora_name' and 'lora_path' must be provided.", err_type="InvalidUserInput"
            )
        async with self.lock:
            if name in self.adapters:
                raise protocol.lora_already_loaded(name)
            if name in self.settings.served_model_names:
                raise protocol.APIError(
                    f"'{name}' is the name of the base model", err_type="InvalidUserInput"
                )
            directory = local_path(path)
            config = read_adapter_config(directory)
            if config is None:
                raise protocol.lora_path_not_found(name, path)
            if str(config.get("peft_type", "LORA")).upper() != "LORA":
                raise protocol.APIError(
                    f"Loading lora {name} failed: {path} holds a {config.get('peft_type')} "
                    "adapter, not LoRA"
                )
            rank = lora_rank(config)
            if rank > self.settings.max_lora_rank:
                raise protocol.lora_rank_too_high(rank, self.settings.max_lora_rank)
            if len(self.adapters) >= self.settings.max_loras:
                raise protocol.too_many_loras(name, len(self.adapters), self.settings.max_loras)
            parent = (
                base_model_name
                if base_model_name in self.settings.served_model_names
                else self.base_name
            )
            started = time.monotonic()
            try:
                adapter = await self.engine.load_adapter(name, directory, parent)
            except Exception as exc:
                self.metrics.adapter_loads.labels(result="error").inc()
                raise protocol.APIError(f"Loading lora {name} failed: {exc}") from exc
            adapter.path = path
            self.adapters[name] = adapter
            self.metrics.adapter_load_seconds.observe(time.monotonic() - started)
            self.metrics.adapter_loads.labels(result="ok").inc()
            self.metrics.loaded_adapters.set(len(self.adapters))
            return adapter

    async def unload(self, name: str) -> None:
        if not name:
            raise protocol.APIError(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                err_type="InvalidUserInput",
            )
        async with self.lock:
            adapter = self.adapters.pop(name, None)
            if adapter is None:
                raise protocol.lora_not_found(name)
            self.metrics.loaded_adapters.set(len(self.adapters))
        # New requests get a 404 from here on; the engine frees the weights once the requests
        # already using them finish (outside the lock: other loads need not wait for that).
        await self.engine.unload_adapter(adapter)


def create_app(models: Models) -> FastAPI:
    app = FastAPI(title="graft serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = models.metrics
    engine = models.engine

    @app.exception_handler(protocol.APIError)
    async def api_error(_: Request, exc: protocol.APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=int(exc.status))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        body = protocol.error_body(
            f"{type(exc).__name__}: {exc}", "InternalServerError", HTTPStatus(500)
        )
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # vLLM answers malformed requests with 400, not FastAPI's 422.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()
        )
        body = protocol.error_body(
            problems or "invalid request", "BadRequestError", HTTPStatus(400)
        )
        return JSONResponse(body, status_code=400)

    @app.middleware("http")
    async def require_api_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        key = models.settings.api_key
        if key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                body = protocol.error_body(
                    "missing or wrong API key", "AuthenticationError", HTTPStatus(401)
                )
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            metrics.requests.labels(
                endpoint=request.url.path, status=str(response.status_code)
            ).inc()
        return response

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            return {"version": dist_version("graft-operator")}
        except PackageNotFoundError:
            return {"version": "unknown"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return protocol.model_list(models.cards())

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: protocol.LoadLoRAAdapterRequest) -> Response:
        if request.load_inplace and request.lora_name in models.adapters:
            await models.unload(request.lora_name)
        await models.load(request.lora_name, request.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{request.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: protocol.UnloadLoRAAdapterRequest) -> Response:
        await models.unload(request.lora_name)
        return PlainTextResponse(
            f"Success: LoRA adapter '{request.lora_name}' removed successfully."
        )

    async def generate(
        request: protocol.ChatCompletionRequest | protocol.CompletionRequest,
        adapter: Adapter | None,
        prompt_ids: list[int],
        *,
        id_prefix: str,
        stream: Callable[[str, str, AsyncIterator[Delta | Finished]], AsyncIterator[str]],
        body: Callable[[str, str, str, Finished], dict[str, Any]],
    ) -> Response:
        """What both completion endpoints do once the prompt is known: generate, then stream
        the chunks or answer with `body(request_id, model, text, finished)`."""
        params = _sampling(request, len(prompt_ids), request.requested_max_tokens(), engine)
        name = adapter.name if adapter else models.base_name
        request_id = protocol.new_id(id_prefix)
        events = engine.generate(prompt_ids, adapter, params, stream=request.stream)
        if request.stream:
            return _stream(stream(request_id, name, events))
        text, done = await _collect(events)
        metrics.count_tokens(name, done)
        return JSONResponse(body(request_id, name, text, done))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: protocol.ChatCompletionRequest) -> Response:
        adapter = models.resolve(request.model)
        _refuse_unsupported(request)
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        return await generate(
            request,
            adapter,
            engine.chat_prompt(messages, request.add_generation_prompt),
            id_prefix="chatcmpl",
            stream=lambda rid, name, events: _chat_stream(request, rid, name, events, metrics),
            body=lambda rid, name, text, done: protocol.chat_completion(
                rid,
                name,
                text,
                finish=done.finish_reason,
                prompt=done.prompt_tokens,
                completion=done.completion_tokens,
            ),
        )

    @app.post("/v1/completions")
    async def completions(request: protocol.CompletionRequest) -> Response:
        adapter = models.resolve(request.model)
        _refuse_unsupported(request)
        return await generate(
            request,
            adapter,
            engine.text_prompt(request.prompt),
            id_prefix="cmpl",
            stream=lambda rid, name, events: _completion_stream(
                request, rid, name, events, metrics
            ),
            body=lambda rid, name, text, done: protocol.completion(
                rid,
                name,
                text,
                finish=done.finish_reason,
                prompt=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
            ),
        )

    return app


def _refuse_unsupported(request: protocol.SamplingRequest) -> None:
    problem = protocol.unsupported(request)
    if problem is not None:
        raise problem


def _sampling(
    request: protocol.SamplingRequest, prompt_tokens: int, max_tokens: int | None, engine: Engine
) -> SamplingParams:
    limit = engine.max_model_len
    if prompt_tokens >= limit:
        raise protocol.context_too_long(limit, prompt_tokens, max_tokens or 0)
    if max_tokens is None:
        max_tokens = limit - prompt_tokens
    elif prompt_tokens + max_tokens > limit:
        raise protocol.context_too_long(limit, prompt_tokens, max_tokens)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=max(0, request.top_k or 0),
        stop=tuple(request.stop_strings()),
        seed=request.seed,
        ignore_eos=request.ignore_eos,
    )


async def _collect(events: AsyncIterator[Delta | Finished]) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in events:
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise RuntimeError("generation ended without finishing")


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream")


async def _chat_stream(
    request: protocol.ChatCompletionRequest,
    request_id: str,
    name: str,
    events: AsyncIterator[Delta | Finished],
    metrics: Metrics,
) -> AsyncIterator[str]:
    created = int(time.time())
    yield protocol.sse(
        protocol.chat_chunk(request_id, name, created, {"role": "assistant", "content": ""})
    )
    try:
        async for event in events:
            if isinstance(event, Delta):
                if event.text:
                    chunk = protocol.chat_chunk(request_id, name, created, {"content": event.text})
                    yield protocol.sse(chunk)
                continue
            metrics.count_tokens(name, event)
            yield protocol.sse(
                protocol.chat_chunk(request_id, name, created, {}, event.finish_reason)
            )
            if request.include_usage():
                yield protocol.sse(
                    protocol.usage_chunk(
                        request_id,
                        name,
                        created,
                        obj="chat.completion.chunk",
                        prompt=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                    )
                )
    except Exception as exc:
        yield protocol.sse(_stream_error(exc))
    yield protocol.sse("[DONE]")


async def _completion_stream(
    request: protocol.CompletionRequest,
    request_id: str,
    name: str,
    events: AsyncIterator[Delta | Finished],
    metrics: Metrics,
) -> AsyncIterator[str]:
    created = int(time.time())
    try:
        async for event in events:
            if isinstance(event, Delta):
                if event.text:
                    yield protocol.sse(
                        protocol.completion_chunk(request_id, name, created, event.text)
                    )
                continue
            metrics.count_tokens(name, event)
            yield protocol.sse(
                protocol.completion_chunk(request_id, name, created, "", event.finish_reason)
            )
            if request.include_usage():
                yield protocol.sse(
                    protocol.usage_chunk(
                        request_id,
                        name,
                        created,
                        obj="text_completion",
                        prompt=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                    )
                )
    except Exception as exc:
        yield protocol.sse(_stream_error(exc))
    yield protocol.sse("[DONE]")


def _stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, protocol.APIError):
        return exc.body()
    return protocol.error_body(
        f"{type(exc).__name__}: {exc}", "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR
    )
