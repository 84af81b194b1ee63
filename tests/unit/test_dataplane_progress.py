"""`graft train`'s progress reporter (graft.dataplane.progress) against real HTTP servers on
loopback: a recording one the tests control, and the gateway itself (harness/replicas.py)."""

from __future__ import annotations

import itertools
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from graft.core.serverkeys import progress_token
from graft.dataplane.progress import ProgressReporter, loss_curve, report
from graft.gateway.catalog import build
from graft.gateway.progress import JobRecord, parse_report
from graft.gateway.server import Settings
from harness.replicas import Loop, RunningGateway, StaticView


def wait(what: str, probe: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Recorder:
    """An HTTP server that records every request and answers `status`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.status = 200
        self.location = ""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                recorder.requests.append((self.path, dict(self.headers.items()), body))
                self.send_response(recorder.status)
                if recorder.location:
                    self.send_header("Location", recorder.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/internal/progress/a/j"

    def steps(self) -> list[int]:
        return [body["step"] for _, _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def one(step: int) -> dict[str, Any]:
    return {"step": step, "totalSteps": 10, "epoch": 1, "totalEpochs": 1}


def test_the_latest_report_goes_with_the_token_and_the_last_one_at_the_end(
    recorder: Recorder,
) -> None:
    logs: list[str] = []
    reporter = ProgressReporter(recorder.url, "tok", logs.append, interval=3600)
    reporter.update(one(1))
    wait("the first report", lambda: len(recorder.requests) == 1)
    for step in (2, 3, 4):  # within the interval: only the latest is kept
        reporter.update(one(step))
    reporter.close(one(5))
    assert recorder.steps() == [1, 5]
    for path, headers, _ in recorder.requests:
        assert path == "/v1/internal/progress/a/j"
        assert headers["Authorization"] == "Bearer tok"
        assert headers["Content-Type"] == "application/json"
    assert reporter.sent == 2
    assert logs == []


@pytest.mark.parametrize("status", [503, 404])
def test_failures_are_logged_once_and_reports_go_on(recorder: Recorder, status: int) -> None:
    """503: the gateway cannot write now; 404: its cache has not seen the job yet."""
    recorder.status = status
    logs: list[str] = []
    reporter = ProgressReporter(recorder.url, "tok", logs.append, interval=0)
    for step in (1, 2, 3):
        reporter.update(one(step))
        wait(f"report {step}", lambda: len(recorder.requests) == step)  # noqa: B023
    recorder.status = 202
    reporter.close(one(4))
    assert recorder.steps() == [1, 2, 3, 4]
    assert reporter.sent == 1
    assert len(logs) == 1
    assert f"HTTP {status}" in logs[0]
    assert "logged once" in logs[0]


def test_a_401_does_not_stop_the_reports(recorder: Recorder) -> None:
    """The gateway answers 401 also for a job its cache does not hold yet: keep reporting."""
    recorder.status = 401
    logs: list[str] = []
    reporter = ProgressReporter(recorder.url, "tok", logs.append, interval=0)
    reporter.update(one(1))
    wait("the first report", lambda: len(recorder.requests) == 1)
    recorder.status = 200
    reporter.close(one(2))
    assert recorder.steps() == [1, 2]
    assert len(logs) == 1
    assert "HTTP 401" in logs[0]


@pytest.mark.parametrize("status", [403, 409])
def test_an_ended_job_or_a_refusal_stops_the_reports(recorder: Recorder, status: int) -> None:
    recorder.status = status
    logs: list[str] = []
    reporter = ProgressReporter(recorder.url, "tok", logs.append, interval=0)
    reporter.update(one(1))
    wait("the first report", lambda: len(recorder.requests) == 1)
    reporter.update(one(2))
    reporter.close(one(3))
    assert recorder.steps() == [1]
    assert len(logs) == 1
    assert f"HTTP {status}" in logs[0]


def test_redirects_are_not_followed(recorder: Recorder) -> None:
    recorder.status = 307
    recorder.location = recorder.url.replace("/a/j", "/elsewhere")
    logs: list[str] = []
    reporter = ProgressReporter(recorder.url, "tok", logs.append)
    reporter.close(one(1))
    assert [path for path, _, _ in recorder.requests] == ["/v1/internal/progress/a/j"]
    assert "HTTP 307" in logs[0]


def test_a_server_that_answers_a_byte_at_a_time_is_cut_at_the_total_deadline() -> None:
    """Each byte comes well within the socket timeout, so only the total deadline ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return
                stop.wait(0.05)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        logs: list[str] = []
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/p"
        reporter = ProgressReporter(url, "tok", logs.append, deadline=0.5)
        reporter.close(one(1))
        wait("the failure to be logged", lambda: bool(logs))
        assert "no answer within 0.5s" in logs[0]
        assert reporter.sent == 0
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_reports_only_where_the_operator_said() -> None:
    logs: list[str] = []
    assert ProgressReporter.from_env({}, logs.append) is None
    assert ProgressReporter.from_env({"GRAFT_PROGRESS_URL": "http://gw/p"}, logs.append) is None
    bad = {"GRAFT_PROGRESS_URL": "gw:8080/p", "GRAFT_PROGRESS_TOKEN": "t"}
    assert ProgressReporter.from_env(bad, logs.append) is None
    assert "GRAFT_PROGRESS_URL" in logs[0]


def test_eta_and_throughput_come_from_the_steps_done() -> None:
    body = report(
        step=5, total_steps=20, epoch=2, total_epochs=4, loss=1.5, examples=20, elapsed=10.0
    )
    assert body == {
        "step": 5,
        "totalSteps": 20,
        "epoch": 2,
        "totalEpochs": 4,
        "loss": 1.5,
        "examplesPerSecond": 2.0,
        "etaSeconds": 30,
    }
    start = report(
        step=0, total_steps=20, epoch=1, total_epochs=4, loss=math.nan, examples=0, elapsed=0.0
    )
    assert start == {"step": 0, "totalSteps": 20, "epoch": 1, "totalEpochs": 4}
    done = report(
        step=20, total_steps=20, epoch=4, total_epochs=4, loss=0.5, examples=80, elapsed=8
    )
    assert done["etaSeconds"] == 0


def test_the_loss_curve_keeps_every_step_while_short_then_samples_evenly() -> None:
    assert loss_curve([3.0, 2.5, math.nan, 2.0]) == [[1, 3.0], [2, 2.5], [4, 2.0]]
    assert loss_curve([]) == []
    long = [1000.0 / (i + 1) for i in range(10_000)]
    curve = loss_curve(long)
    assert len(curve) == 100
    assert curve[0] == [1, 1000.0]
    assert curve[-1] == [10_000, 0.1]
    steps = [p[0] for p in curve]
    assert steps == sorted(set(steps))
    gaps = {b - a for a, b in itertools.pairwise(steps)}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced
    body = report(
        step=10_000,
        total_steps=10_000,
        epoch=1,
        total_epochs=1,
        loss=0.1,
        examples=10_000,
        elapsed=100.0,
        losses=long,
    )
    raw = json.dumps(body).encode()
    assert len(raw) < 4096  # the gateway's limit on a report
    assert parse_report(raw, "2026-11-28T10:00:00Z")["lossCurve"] == curve


def test_the_gateway_takes_what_the_trainer_sends() -> None:
    """The two sides of the wire together: the reporter's reports, through a real Gateway,
    become the job's status.progress."""
    loop = Loop()
    view = StaticView(build(accounts=[], users=[], api_keys=[], models=[], deployments=[]), [], {})
    view.jobs["acme/tune"] = JobRecord("u1", "1", finished=False)
    gw = RunningGateway(loop, view, Settings())
    loop.run(gw.start())
    try:
        url = f"{gw.url}/v1/internal/progress/acme/tune"
        token = progress_token(view.seed, "acme", "tune", "u1")
        logs: list[str] = []
        reporter = ProgressReporter(url, token, logs.append)
        first = report(
            step=3, total_steps=9, epoch=1, total_epochs=3, loss=2.0, examples=12, elapsed=6
        )
        reporter.close(first)
        assert logs == []
        ((key, written),) = view.progress
        assert key == "acme/tune"
        assert written == parse_report(json.dumps(first).encode(), written["updatedAt"])
        assert written["etaSeconds"] == 12
    finally:
        loop.run(gw.stop())
        loop.close()
