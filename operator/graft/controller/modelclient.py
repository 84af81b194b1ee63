"""The operator's client of its model servers (OpenAI/vLLM API): what a replica serves, load and
unload addons.

The control plane never waits on the data plane. A model server is a tenant's workload: it may be
slow, hostile or gone, so every call here

- has a **total** deadline (not a per-read timeout: a server that drips one byte every few
  seconds is cut off at the deadline all the same), enforced by a watchdog that shuts the socket;
- reads at most `Limits.max_body` bytes of the answer;
- follows no redirects (http.client never does) and sends the Deployment's API key only to the
  pod it was made for;
- runs on this client's own bounded thread pool, never on kopf's reconcile workers: a reconcile
  waits at most `Limits.patience` for the answers of all replicas of a Deployment, which are asked
  concurrently. What takes longer goes on in the background (one GET per replica, one load per
  replica and addon at a time) and calls back when it ends, so the object is looked at again.

vLLM's "already loaded" (load) and "not found" (unload) answers count as success: the state the
operator wants is reached either way.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from graft.controller.metrics import CallOutcome, OperatorMetrics, ServerOperation

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_LOAD_TIMEOUT_SECONDS = 120.0
DEFAULT_CONCURRENCY = 16
DEFAULT_PATIENCE_SECONDS = 1.0
DEFAULT_FRESH_SECONDS = 3.0


class ModelServerError(Exception):
    """The server refused the request, or its answer was not one we accept."""


class ModelServerUnreachable(ModelServerError):
    """Nothing answered in time (yet): the server may still be starting, or is stuck."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    parent: str | None


@dataclass(frozen=True)
class Limits:
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    """Total deadline of a call."""
    load_timeout: float = DEFAULT_LOAD_TIMEOUT_SECONDS
    """Total deadline of one background load."""
    max_body: int = MAX_BODY_BYTES
    concurrency: int = DEFAULT_CONCURRENCY
    patience: float = DEFAULT_PATIENCE_SECONDS
    """The longest a reconcile waits for model servers; the calls go on after it."""
    fresh: float = DEFAULT_FRESH_SECONDS
    """How long an answer that came in after the reconcile moved on is kept for the next one."""


def request(
    url: str,
    body: dict[str, Any] | None,
    *,
    timeout: float,
    max_body: int = MAX_BODY_BYTES,
    api_key: str | None = None,
) -> tuple[int, Any]:
    """One HTTP call: (status, decoded JSON or text). Raises ModelServerUnreachable when the
    server does not answer completely within `timeout` seconds, ModelServerError when its answer
    is larger than `max_body` bytes."""
    status, raw = fetch(url, body, timeout=timeout, max_body=max_body, api_key=api_key)
    return status, _decode(raw)


def fetch(
    url: str,
    body: dict[str, Any] | None,
    *,
    timeout: float,
    max_body: int = MAX_BODY_BYTES,
    api_key: str | None = None,
    accept: str = "application/json",
) -> tuple[int, bytes]:
    """One HTTP call to a workload Graft does not trust (a model server, a gateway's metrics):
    (status, body bytes), with the total deadline, size cap and no redirects of `request`."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ModelServerError(f"{url}: only http://<pod IP>:<port> URLs are called")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    expired = threading.Event()
    sockets: list[socket.socket] = []

    def cut_off() -> None:
        expired.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(timeout, cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        headers = {"Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        conn.connect()
        # The response keeps reading from this socket after http.client lets go of it.
        if conn.sock is not None:
            sockets.append(conn.sock)
            if expired.is_set():
                cut_off()
        conn.request("GET" if data is None else "POST", path or "/", body=data, headers=headers)
        resp = conn.getresponse()
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_body:
            raise ModelServerError(f"{url}: answer of {declared} bytes, more than {max_body}")
        raw = resp.read(max_body + 1)
        if len(raw) > max_body:
            raise ModelServerError(f"{url}: answer larger than {max_body} bytes")
        if expired.is_set():
            raise ModelServerUnreachable(f"{url}: no complete answer within {timeout:g} s")
        return resp.status, raw
    except ModelServerError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise ModelServerUnreachable(f"{url}: no complete answer within {timeout:g} s") from exc
        raise ModelServerUnreachable(f"{url}: {exc}") from exc
    finally:
        watchdog.cancel()
        conn.close()


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def _message(status: int, body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"HTTP {status}: {str(err['message'])[:500]}"
        if body.get("message"):
            return f"HTTP {status}: {str(body['message'])[:500]}"
    return f"HTTP {status}: {str(body)[:500]}"


def served_models(
    base_url: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_body: int = MAX_BODY_BYTES,
    api_key: str | None = None,
) -> list[ServedModel]:
    """GET /v1/models: what the server really serves right now."""
    status, body = request(
        f"{base_url}/v1/models", None, timeout=timeout, max_body=max_body, api_key=api_key
    )
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ModelServerError(f"{base_url}/v1/models: {_message(status, body)}")
    out = []
    for m in body["data"]:
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            parent = m.get("parent")
            out.append(ServedModel(id=m["id"], parent=parent if isinstance(parent, str) else None))
    return out


def load_adapter(
    base_url: str,
    name: str,
    path: str,
    *,
    timeout: float = DEFAULT_LOAD_TIMEOUT_SECONDS,
    max_body: int = MAX_BODY_BYTES,
    api_key: str | None = None,
) -> None:
    """POST /v1/load_lora_adapter; an adapter that is already loaded counts as loaded."""
    status, body = request(
        f"{base_url}/v1/load_lora_adapter",
        {"lora_name": name, "lora_path": path},
        timeout=timeout,
        max_body=max_body,
        api_key=api_key,
    )
    if status == 200:
        return
    message = _message(status, body)
    if status == 400 and "already been loaded" in message:
        return
    raise ModelServerError(message)


def unload_adapter(
    base_url: str,
    name: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_body: int = MAX_BODY_BYTES,
    api_key: str | None = None,
) -> None:
    """POST /v1/unload_lora_adapter; an adapter that is not there counts as unloaded."""
    status, body = request(
        f"{base_url}/v1/unload_lora_adapter",
        {"lora_name": name},
        timeout=timeout,
        max_body=max_body,
        api_key=api_key,
    )
    if status == 200:
        return
    message = _message(status, body)
    if status == 404 or (
        status == 400 and ("cannot be found" in message or "not found" in message.lower())
    ):
        return
    raise ModelServerError(message)


Served = list[ServedModel] | ModelServerError
"""What one replica answered: its models, or why it did not say."""


P = ParamSpec("P")
T = TypeVar("T")


def call_outcome(exc: Exception) -> CallOutcome:
    """What a call's exception says about the server, for the metrics."""
    if isinstance(exc, ModelServerUnreachable):
        return CallOutcome.UNREACHABLE
    if isinstance(exc, ModelServerError):
        return CallOutcome.REFUSED
    return CallOutcome.ERROR


class ModelServers:
    """Calls to model servers on a bounded pool of this client's own threads.

    A reconcile waits at most `Limits.patience` for them. What has not answered by then goes on
    in the background until its own deadline; the reconcile gets the server's previous answer
    (or "no answer yet"), and the `then` it passed is called when the answer is in, so the object
    is reconciled again and finds the answer here (fresh for `Limits.fresh` seconds). One GET /v1/models per replica at
    a time, however many objects ask; at most one load per replica and addon. Every call is
    counted and timed in `metrics` when it ends, on the pool's thread (also after the reconcile
    that asked has moved on).
    """

    def __init__(
        self,
        limits: Limits | None = None,
        metrics: OperatorMetrics | None = None,
        pool: Executor | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.metrics = metrics or OperatorMetrics()
        self._pool = pool or ThreadPoolExecutor(
            max_workers=self.limits.concurrency, thread_name_prefix="model-servers"
        )
        self._loads: dict[tuple[str, str], Future[None]] = {}
        self._asks: dict[tuple[str, str | None], Future[list[ServedModel]]] = {}
        self._answers: dict[tuple[str, str | None], tuple[float, Served]] = {}
        self._guard = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(
        self, operation: ServerOperation, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """`call` on the pool, measured."""

        def measured() -> T:
            with self.metrics.server_call(operation, call_outcome):
                return call(*args, **kwargs)

        return self._pool.submit(measured)

    def served(
        self,
        urls: Iterable[str],
        api_key: str | None = None,
        then: Callable[[], None] | None = None,
    ) -> dict[str, Served]:
        """GET /v1/models of every URL at once; waits at most `limits.patience` in all."""
        lim = self.limits
        now = time.monotonic()
        out: dict[str, Served] = {}
        asked: dict[str, Future[list[ServedModel]]] = {}
        worth_waiting: list[Future[list[ServedModel]]] = []
        started: list[tuple[tuple[str, str | None], Future[list[ServedModel]]]] = []
        with self._guard:
            for url in urls:
                key = (url, api_key)
                cached = self._answers.get(key)
                if cached is not None and now - cached[0] < lim.fresh:
                    out[url] = cached[1]
                    continue
                future = self._asks.get(key)
                if future is None:
                    future = self._submit(
                        ServerOperation.MODELS,
                        served_models,
                        url,
                        timeout=lim.timeout,
                        max_body=lim.max_body,
                        api_key=api_key,
                    )
                    self._asks[key] = future
                    started.append((key, future))
                asked[url] = future
                # A server that did not answer in time last time is not waited for again: its
                # answer calls the reconcile back.
                if cached is None or not isinstance(cached[1], ModelServerUnreachable):
                    worth_waiting.append(future)
        # Outside the guard: a call that has ended already (a refused connection can end
        # before submit() returns) runs its callback right here, and the callback takes it.
        for key, future in started:
            future.add_done_callback(partial(self._answered, key))
        if worth_waiting:
            wait_all(worth_waiting, timeout=lim.patience)
        for url, future in asked.items():
            if future.done():
                out[url] = _outcome(url, future)
                continue
            if then is not None:
                future.add_done_callback(_call(then))
            # While asking again, what it said last time is the best we know (and keeps the
            # status from flapping between "asking" and the answer).
            with self._guard:
                last = self._answers.get((url, api_key))
            out[url] = (
                last[1]
                if last is not None
                else ModelServerUnreachable(f"{url}: no answer yet (asking)")
            )
        return out

    def _answered(self, key: tuple[str, str | None], future: Future[list[ServedModel]]) -> None:
        with self._guard:
            if self._asks.get(key) is future:
                del self._asks[key]
            if not future.cancelled():
                self._answers[key] = (time.monotonic(), _outcome(key[0], future))

    def _forget(self, url: str) -> None:
        """What `url` served is about to change: ask it again next time."""
        with self._guard:
            for key in [k for k in self._answers if k[0] == url]:
                del self._answers[key]

    def ensure_loaded(
        self,
        url: str,
        name: str,
        path: str,
        api_key: str | None = None,
        then: Callable[[], None] | None = None,
    ) -> Future[None]:
        """Start loading `name` into the server at `url` unless a load of it is under way;
        `then` is called (on this client's thread) when a load this call started succeeds."""
        key = (url, name)
        with self._guard:
            running = self._loads.get(key)
            if running is not None and not running.done():
                return running
            lim = self.limits
            future = self._submit(
                ServerOperation.LOAD,
                load_adapter,
                url,
                name,
                path,
                timeout=lim.load_timeout,
                max_body=lim.max_body,
                api_key=api_key,
            )
            self._loads[key] = future

        def ended(f: Future[None]) -> None:
            with self._guard:
                if self._loads.get(key) is f:
                    del self._loads[key]
            self._forget(url)
            # Only a success calls back: a failed load is retried at the next resync, not in a
            # tight loop against a server that refuses it.
            if then is not None and not f.cancelled() and f.exception() is None:
                _call(then)(f)

        future.add_done_callback(ended)
        return future

    def wait(self, futures: Iterable[Future[Any]]) -> None:
        """Wait for these calls for at most `limits.patience`."""
        pending = list(futures)
        if pending:
            wait_all(pending, timeout=self.limits.patience)

    def unload(self, urls: Iterable[str], name: str, api_key: str | None = None) -> dict[str, str]:
        """Unload `name` from every URL at once, waiting at most `limits.timeout`; {url: error}
        of those that failed or did not answer in time."""
        lim = self.limits
        futures = {
            url: self._submit(
                ServerOperation.UNLOAD,
                unload_adapter,
                url,
                name,
                timeout=lim.timeout,
                max_body=lim.max_body,
                api_key=api_key,
            )
            for url in urls
        }
        if futures:
            wait_all(list(futures.values()), timeout=lim.timeout + 0.5)
        out = {}
        for url, future in futures.items():
            self._forget(url)
            if not future.done():
                future.cancel()
                out[url] = f"no answer within {lim.timeout:g} s"
                continue
            outcome = _outcome(url, future)
            if isinstance(outcome, ModelServerError):
                out[url] = str(outcome)
        return out


def _outcome(url: str, future: Future[Any]) -> Any:
    """A finished call's result, or the ModelServerError it raised."""
    if future.cancelled():
        return ModelServerUnreachable(f"{url}: the call was cancelled")
    exc = future.exception()
    if exc is None:
        return future.result()
    if isinstance(exc, ModelServerError):
        return exc
    log.error("calling %s failed unexpectedly: %r", url, exc)
    return ModelServerUnreachable(f"{url}: {exc}")


def _call(then: Callable[[], None]) -> Callable[[Future[Any]], None]:
    def call(_: Future[Any]) -> None:
        try:
            then()
        except Exception:
            log.exception("follow-up of a model-server call failed")

    return call
