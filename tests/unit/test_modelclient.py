"""The operator's model-server client against real (misbehaving) HTTP servers on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

import pytest

from graft.controller.modelclient import (
    Limits,
    ModelServerError,
    ModelServers,
    ModelServerUnreachable,
    load_adapter,
    served_models,
)
from harness.httpfake import Behave, serving

T = TypeVar("T")

MODELS = json.dumps({"object": "list", "data": [{"id": "base", "parent": None}]}).encode()


def server(behave: Behave) -> AbstractContextManager[str]:
    return serving(behave)


def answer(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[BaseHTTPRequestHandler], None]:
    def behave(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return behave


def drip(h: BaseHTTPRequestHandler) -> None:
    """Headers at once, then one byte of a never-ending body every half second."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    try:
        for _ in range(120):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.5)
    except OSError:
        pass


def drip_headers(h: BaseHTTPRequestHandler) -> None:
    """The status line and headers, one byte every half second."""
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.5)
    except OSError:
        pass


def huge(h: BaseHTTPRequestHandler) -> None:
    """100 MB of JSON-ish body without a Content-Length (chunks until the client goes)."""
    h.send_response(200)
    h.end_headers()
    chunk = b"x" * (1 << 20)
    try:
        for _ in range(100):
            h.wfile.write(chunk)
    except OSError:
        pass


def test_answers_are_decoded() -> None:
    with server(answer(MODELS)) as url:
        assert [m.id for m in served_models(url)] == ["base"]


@pytest.mark.parametrize("behave", [drip, drip_headers], ids=["body", "headers"])
def test_a_dripping_server_is_cut_off_at_the_total_deadline(
    behave: Callable[[BaseHTTPRequestHandler], None],
) -> None:
    with server(behave) as url:
        started = time.monotonic()
        with pytest.raises(ModelServerUnreachable, match=r"within 1\.5 s"):
            served_models(url, timeout=1.5)
        took = time.monotonic() - started
    # Each byte arrives well within any per-read timeout; only a total deadline stops it.
    assert took < 4, took


def test_an_oversized_answer_is_refused_without_reading_it_all() -> None:
    with server(huge) as url, pytest.raises(ModelServerError, match="larger than 1048576"):
        served_models(url, timeout=30)
    declared = answer(b"{}", headers={"Content-Length": str(100 << 20)})
    with server(declared) as url, pytest.raises(ModelServerError, match="more than"):
        served_models(url, timeout=30)


def test_redirects_are_not_followed() -> None:
    with server(answer(MODELS)) as target:
        redirect = answer(b"", status=307, headers={"Location": f"{target}/v1/models"})
        with server(redirect) as url, pytest.raises(ModelServerError, match="HTTP 307"):
            served_models(url)


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    seen: list[str | None] = []

    def behave(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Authorization"))
        answer(MODELS)(h)

    with server(behave) as url:
        served_models(url, api_key="s3cret")
        served_models(url)
    assert seen == ["Bearer s3cret", None]


def test_refusals_carry_the_servers_message() -> None:
    body = json.dumps({"error": {"message": "rank 64 is above --max-lora-rank 16"}}).encode()
    with server(answer(body, status=400)) as url, pytest.raises(ModelServerError, match="rank 64"):
        load_adapter(url, "a", "/x")


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelServerUnreachable):
        served_models(f"http://127.0.0.1:{port}", timeout=2)


def test_replicas_are_asked_at_once_and_the_caller_waits_one_deadline() -> None:
    servers = ModelServers(Limits(timeout=1.0, patience=3.0, concurrency=8))
    try:
        with server(drip) as slow, server(huge) as big, server(answer(MODELS)) as good:
            started = time.monotonic()
            got = servers.served([slow, big, good, f"{slow}/again", f"{slow}/more"])
            took = time.monotonic() - started
        assert isinstance(got[slow], ModelServerUnreachable)
        assert isinstance(got[big], ModelServerError)
        assert [m.id for m in got[good]] == ["base"]  # type: ignore[union-attr]
        # Three dripping servers asked one after the other would take 3 s.
        assert took < 2.5, took
    finally:
        servers.close()


def test_a_slow_load_goes_on_in_the_background_and_calls_back() -> None:
    gate = threading.Event()

    def slow_load(h: BaseHTTPRequestHandler) -> None:
        gate.wait(10)
        answer(b"{}")(h)

    servers = ModelServers(Limits(timeout=0.5, load_timeout=20))
    called = threading.Event()
    try:
        with server(slow_load) as url:
            first = servers.ensure_loaded(url, "a", "/x", then=called.set)
            servers.wait([first])
            assert not first.done()  # the reconcile moved on after 0.5 s
            # Asking again while it runs does not start a second load.
            assert servers.ensure_loaded(url, "a", "/x") is first
            gate.set()
            assert called.wait(10)
            assert first.exception() is None
    finally:
        servers.close()


def test_the_caller_waits_its_patience_then_is_called_back_with_the_answer_kept() -> None:
    servers = ModelServers(Limits(timeout=2.0, patience=0.3, fresh=30))
    called = threading.Event()
    try:
        with server(drip) as slow:
            started = time.monotonic()
            first = servers.served([slow], then=called.set)
            assert time.monotonic() - started < 1.5
            assert "no answer yet" in str(first[slow])
            # Another object asking meanwhile shares the call in flight.
            assert "no answer yet" in str(servers.served([slow])[slow])
            assert called.wait(5)
            # The answer that came in is what the next reconcile sees, without asking again.
            started = time.monotonic()
            again = servers.served([slow])
            assert time.monotonic() - started < 0.2
            assert "within 2 s" in str(again[slow])
    finally:
        servers.close()


def test_while_asking_again_the_last_answer_stands() -> None:
    servers = ModelServers(Limits(timeout=1.0, patience=0.2, fresh=0.0))
    try:
        with server(drip) as slow:
            servers.served([slow], then=lambda: None)
            time.sleep(1.8)  # the first call ran into its deadline; that answer is kept
            second = servers.served([slow])
            assert "within 1 s" in str(second[slow]), second
    finally:
        servers.close()


class Immediate(Executor):
    """Runs each call before submit() returns: the future is done when the caller gets it, as
    with a server that refuses the connection before the submitting thread runs again."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def test_a_call_that_ends_before_submit_returns_does_not_deadlock() -> None:
    """Regression: the answer's callback ran on the caller's thread while it still held the
    client's lock, and every later reconcile that asked a model server hung on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}"
    servers = ModelServers(Limits(timeout=1.0, patience=0.5), pool=Immediate())
    outcome: dict[str, Any] = {}

    def ask() -> None:
        with server(answer(MODELS)) as good:
            outcome["first"] = servers.served([refused, good])
            outcome["again"] = servers.served([refused, good])

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout=10)
    assert not asker.is_alive(), "served() deadlocked on its own lock"
    first = outcome["first"]
    assert isinstance(first[refused], ModelServerUnreachable)
    assert len(first) == 2
    assert [m.id for m in outcome["again"][next(u for u in first if u != refused)]] == ["base"]
