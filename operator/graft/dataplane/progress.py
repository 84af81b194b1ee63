"""Live progress of `graft train`, sent to the Graft gateway while it trains.

The operator gives the trainer container GRAFT_PROGRESS_URL (the gateway's route for this
FineTuningJob) and GRAFT_PROGRESS_TOKEN (a token good for this one job) when it knows where the
gateway is; the gateway writes what arrives into the job's status.progress. Without them the
trainer reports nothing and trains as before.

Training never waits on a report: `update()` only keeps the latest one, and a thread of its own
sends it, at most once every `interval` seconds. Each POST has a total deadline (the socket is
shut from outside when it passes, so a server that answers a byte at a time cannot hold it
longer), follows no redirect (http.client never does) and reads at most a few KiB of the answer.
A failure is logged once; training goes on without the reports. The gateway answering 403 or
409 (the job has ended) stops the reports for good; a 401 does not, since the gateway also
answers it for a job its watch cache does not hold yet.

Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from graft.api.training import MAX_CURVE_POINTS
from graft.core.settings import PROGRESS_TOKEN_ENV, PROGRESS_URL_ENV

INTERVAL = 2.0
"""Seconds between two reports, at least (the gateway writes a job's status at most as often)."""
DEADLINE = 5.0
"""Total deadline of one POST, connection included."""
MAX_ANSWER = 4096
PERMANENT = (403, 409)
"""Answers after which reporting stops. Not 401: the gateway answers it also for a job its
watch cache does not hold yet, which a moment later it may."""
"""Answers after which no report can succeed (not this job's token, the job has ended): the
reporter stops. Anything else (404 from a gateway whose cache has not seen the job yet, 503)
may pass: the next report tries again."""


class ProgressReporter:
    """Sends the latest report to `url` with `token`, from a thread of its own."""

    def __init__(
        self,
        url: str,
        token: str,
        log: Callable[[str], None],
        *,
        interval: float = INTERVAL,
        deadline: float = DEADLINE,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{PROGRESS_URL_ENV}={url!r} is not an http(s) URL")
        self.url = url
        self._parts = parts
        self._token = token
        self._log = log
        self.interval = interval
        self.deadline = deadline
        self._lock = threading.Condition()
        self._latest: dict[str, Any] | None = None
        self._closing = False
        self._stopped = False
        self._failed_once = False
        self.sent = 0
        """Reports the gateway accepted (200 or 202)."""
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], log: Callable[[str], None]
    ) -> ProgressReporter | None:
        """A reporter when the operator asked for reports (both variables set), else None; a
        URL that is not one is logged and ignored (training does not depend on it)."""
        url, token = env.get(PROGRESS_URL_ENV, ""), env.get(PROGRESS_TOKEN_ENV, "")
        if not url or not token:
            return None
        try:
            return cls(url, token, log)
        except ValueError as exc:
            log(f"not reporting progress: {exc}")
            return None

    def update(self, report: Mapping[str, Any]) -> None:
        """Keep `report` as the latest; it is sent when the interval allows. Never blocks on
        the network."""
        with self._lock:
            self._latest = dict(report)
            self._lock.notify()

    def close(self, final: Mapping[str, Any] | None = None) -> None:
        """Send `final` (or the latest kept report) now, wait for that one POST at most its
        deadline, and stop."""
        with self._lock:
            if final is not None:
                self._latest = dict(final)
            self._closing = True
            self._lock.notify()
        self._thread.join(self.deadline + 1.0)

    # --- the sending thread -------------------------------------------------------------------

    def _run(self) -> None:
        last = -self.interval
        while True:
            with self._lock:
                while not self._closing and (
                    self._latest is None or time.monotonic() < last + self.interval
                ):
                    timeout = (
                        None if self._latest is None else last + self.interval - time.monotonic()
                    )
                    self._lock.wait(timeout)
                report, self._latest = self._latest, None
                closing = self._closing
            if report is not None and not self._stopped:
                last = time.monotonic()
                self._send(report)
            if closing:
                return

    def _send(self, report: dict[str, Any]) -> None:
        try:
            status, answer = self._post(json.dumps(report).encode())
        except (OSError, http.client.HTTPException) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if status in (200, 202):
            self.sent += 1
            return
        if status in PERMANENT:
            self._stopped = True
        self._failed(f"HTTP {status}: {answer[:300]}")

    def _failed(self, why: str) -> None:
        if self._failed_once:
            return
        self._failed_once = True
        self._log(
            f"progress report to {self.url} failed ({why}); training goes on, and this is "
            "logged once"
        )

    def _post(self, body: bytes) -> tuple[int, str]:
        parts = self._parts
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname or "", parts.port, timeout=self.deadline)
        expired = threading.Event()

        def cut() -> None:
            # Past the deadline: shut the socket, which wakes a blocked connect, send or recv.
            expired.set()
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.deadline, cut)
        timer.daemon = True
        timer.start()
        try:
            connection.connect()  # bounded by the socket timeout (the deadline) by itself
            if expired.is_set():
                raise TimeoutError(f"no answer within {self.deadline:g}s")
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(
                "POST",
                path or "/",
                body=body,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                },
            )
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER).decode("utf-8", "replace")
            if expired.is_set():
                raise TimeoutError(f"no answer within {self.deadline:g}s")
            return response.status, answer
        except OSError:
            if expired.is_set():
                raise TimeoutError(f"no answer within {self.deadline:g}s") from None
            raise
        finally:
            timer.cancel()
            connection.close()


def report(
    *,
    step: int,
    total_steps: int,
    epoch: int,
    total_epochs: int,
    loss: float | None,
    examples: int,
    elapsed: float,
    losses: Sequence[float] = (),
) -> dict[str, Any]:
    """One report as the gateway takes it (status.progress without updatedAt, which the
    gateway stamps). ETA: the steps left at the speed measured so far; examples per second: the
    examples of the steps done (batch sizes) over the time they took. Neither before the first
    step, nor a loss that is not a finite number."""
    body: dict[str, Any] = {
        "step": step,
        "totalSteps": total_steps,
        "epoch": epoch,
        "totalEpochs": total_epochs,
    }
    if loss is not None and math.isfinite(loss) and loss >= 0:
        body["loss"] = round(loss, 6)
    if step > 0 and elapsed > 0:
        body["examplesPerSecond"] = round(examples / elapsed, 3)
        body["etaSeconds"] = max(0, round((total_steps - step) * elapsed / step))
    curve = loss_curve(losses)
    if curve:
        body["lossCurve"] = curve
    return body


def loss_curve(losses: Sequence[float], points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """The losses of steps 1, 2, ... as at most `points` [step, loss] pairs for the dashboard's
    plot: every step while there are few, else evenly spaced steps that keep the first and the
    last (a report must stay small however long the run). Losses that are not finite numbers are
    left out; a loss is rounded to 4 decimals (a plot needs no more)."""
    n = len(losses)
    picked: Sequence[int]
    if n <= points:
        picked = range(n)
    else:
        picked = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    return [
        [i + 1, round(losses[i], 4)] for i in picked if math.isfinite(losses[i]) and losses[i] >= 0
    ]


def from_environment(log: Callable[[str], None]) -> ProgressReporter | None:
    """`ProgressReporter.from_env` on this process's environment."""
    return ProgressReporter.from_env(os.environ, log)
