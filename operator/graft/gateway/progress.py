"""Trainers' progress reports: what a body may hold, whose token it carries, how often a job's
status is written, and what each request is answered (`receive`; the server only routes to it).

`graft train` POSTs its progress to /v1/internal/progress/<namespace>/<job> with the token the
operator gave it (graft.core.serverkeys.progress_token, derived from the installation's seed and
the job's uid); the gateway writes it to the FineTuningJob's status.progress. Tenants need no
right of their own for it, and a token only ever speaks for its one job. What a report can do
is bounded here: a small JSON object of numbers in range (TrainingProgress), at most one status
write per job per `interval` (later reports in between are coalesced: the last one is written
when the interval is over), and nothing once the job has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ValidationError

from graft.api.training import TrainingProgress
from graft.gateway import errors
from graft.gateway.apikeys import bearer_token

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 4096
"""Largest report body accepted (a report is a few hundred bytes, its loss curve of at most 100
points about 2 KiB more)."""
CURVE_FIELD = "lossCurve"
WRITE_INTERVAL = 2.0
"""Seconds between two status writes of one job, at least."""
CONFLICT_PAUSE = 0.5
"""Seconds to let the watch cache catch up with another writer before writing again."""
MAX_TRACKED_JOBS = 10_000
"""Jobs whose last write time is remembered before the old entries are forgotten."""


class ReportRejected(ValueError):
    """The body is not a progress report; the message says what is wrong (400)."""


@dataclass(frozen=True)
class JobRecord:
    """A FineTuningJob as the gateway needs it: which object (uid), which version of it, and
    whether it has ended (Succeeded or Failed), after which nothing is written."""

    uid: str
    resource_version: str
    finished: bool


def job_record(obj: dict[str, Any]) -> JobRecord:
    """A FineTuningJob object (as the watch cache holds it) as a JobRecord."""
    meta = obj.get("metadata") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    finished = any(
        isinstance(c, dict)
        and c.get("type") in ("Succeeded", "Failed")
        and c.get("status") == "True"
        for c in conditions
    )
    return JobRecord(
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        finished=finished or bool(meta.get("deletionTimestamp")),
    )


def token_matches(presented: str | None, expected: str | None) -> bool:
    """Whether the presented token is the job's, compared in constant time."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def parse_report(raw: bytes, now: str) -> dict[str, Any]:
    """The report in a request body as status.progress (camelCase), stamped with `now` (RFC
    3339): the time the gateway received it, whatever clock the trainer's node has.

    ReportRejected when it is not a JSON object of TrainingProgress's fields with numbers in
    range (integers where integers belong), or says more steps (epochs) were done than there
    are."""
    if len(raw) > MAX_REPORT_BYTES:
        raise ReportRejected(f"a progress report is at most {MAX_REPORT_BYTES} bytes")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ReportRejected(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReportRejected("the body must be a JSON object")
    body.pop("updatedAt", None)  # the gateway's receipt time is what status shows
    for field, value in body.items():
        if field == CURVE_FIELD:
            continue  # a list of [step, loss] pairs: TrainingProgress checks it, strictly
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ReportRejected(f"{field} must be a number")
    try:
        # strict: no strings for numbers, no 2.5 steps; a float field takes an integer too.
        report = TrainingProgress.model_validate({**body, "updatedAt": now}, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ReportRejected(f"not a progress report: {problems}") from None
    if report.step > report.total_steps:
        raise ReportRejected(f"step {report.step} is beyond totalSteps {report.total_steps}")
    if report.epoch > report.total_epochs:
        raise ReportRejected(f"epoch {report.epoch} is beyond totalEpochs {report.total_epochs}")
    return report.wire()


class Outcome(StrEnum):
    """What became of one report."""

    WRITTEN = "written"
    """status.progress holds it now."""
    QUEUED = "queued"
    """Kept, to be written when the job's interval is over (unless a later report replaces it)."""
    FINISHED = "finished"
    """The job has ended: nothing is written any more."""
    CONFLICT = "conflict"
    """The job changed since the gateway last saw it (its version), again after a pause; this
    report is dropped, the next one tries again."""
    GONE = "gone"
    """The job no longer exists."""


Write = Callable[[dict[str, Any]], Awaitable[Outcome]]


class Pacer:
    """At most one write per job per `interval` seconds. A report within the interval is kept
    (replacing any kept earlier) and written when the interval is over, by a task of the job's
    own; only a job's last report matters, so nothing queues up behind a slow API server."""

    def __init__(
        self, interval: float = WRITE_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}  # job key -> when its last write started
        self._pending: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(self, key: str, report: dict[str, Any], write: Write) -> Outcome:
        if key in self._tasks:
            self._pending[key] = report
            return Outcome.QUEUED
        now = self.clock()
        wait = self._last.get(key, -self.interval) + self.interval - now
        if wait <= 0:
            self._remember(key, now)
            return await write(report)
        self._pending[key] = report
        self._tasks[key] = asyncio.create_task(
            self._later(key, wait, write), name=f"progress {key}"
        )
        return Outcome.QUEUED

    async def _later(self, key: str, wait: float, write: Write) -> None:
        await asyncio.sleep(wait)
        # Off the table before writing: a report that arrives meanwhile waits a full interval.
        del self._tasks[key]
        report = self._pending.pop(key)
        self._remember(key, self.clock())
        try:
            outcome = await write(report)
        except Exception as exc:  # the API server is down: the next report tries again
            log.warning("progress of %s not written: %s", key, exc)
            return
        if outcome not in (Outcome.WRITTEN, Outcome.QUEUED):
            log.info("progress of %s not written: %s", key, outcome)

    def _remember(self, key: str, when: float) -> None:
        if len(self._last) >= MAX_TRACKED_JOBS:
            self._last = {k: t for k, t in self._last.items() if t + self.interval > when}
        self._last[key] = when

    def waiting(self) -> int:
        """Jobs with a report kept for a later write."""
        return len(self._tasks)

    async def close(self) -> None:
        """Drop what is kept and stop the waiting tasks (the gateway stops)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._pending.clear()


class JobsView(Protocol):
    """What `receive` needs of the cluster (graft.gateway.server.View has it all)."""

    def synced(self) -> bool: ...

    def finetuning_job(self, namespace: str, name: str) -> JobRecord | None: ...

    def progress_token(self, namespace: str, job: str, uid: str) -> str | None: ...

    async def patch_progress(
        self, namespace: str, name: str, resource_version: str, report: dict[str, Any]
    ) -> Outcome: ...


def _unavailable(message: str, retry_after: int) -> errors.ApiError:
    return errors.ApiError(503, message, errors.SERVICE_UNAVAILABLE, retry_after=retry_after)


NO_SUCH_JOB = errors.ApiError(404, "No such FineTuningJob.", errors.INVALID_REQUEST)
JOB_ENDED = errors.ApiError(409, "The FineTuningJob has ended.", errors.INVALID_REQUEST)


async def receive(
    view: JobsView,
    pacer: Pacer,
    namespace: str,
    name: str,
    *,
    authorization: str | None,
    read: Callable[[int], Awaitable[bytes]],
) -> Outcome | errors.ApiError:
    """One POST /v1/internal/progress/<namespace>/<name>: WRITTEN (200) or QUEUED (202), else
    the error to answer: 400 not a report, 401 not the job's token (or no such job: the same
    answer), 404 the job went away after the token was checked, 409 the
    job has ended, 503 not now (the cache or the key seed not loaded yet, the API server
    failing, the job changing under every write), after which the next report tries again.
    `read(limit)` reads at most `limit` bytes of the body; it is read only once the token is
    the job's."""
    if not view.synced():
        return _unavailable("The gateway is starting (its watch cache is not synced yet).", 5)
    job = view.finetuning_job(namespace, name)
    # A job the cache does not hold answers exactly like a wrong token: this port is reachable
    # from every pod, and must not tell anyone which namespaces and jobs exist.
    expected = None if job is None else view.progress_token(namespace, name, job.uid)
    if job is not None and expected is None:
        return _unavailable("The gateway is starting (no key seed yet).", 5)
    if job is None or expected is None or not token_matches(bearer_token(authorization), expected):
        return errors.invalid_api_key("Not this FineTuningJob's progress token.")
    if job.finished:
        return JOB_ENDED
    try:
        report = parse_report(await read(MAX_REPORT_BYTES + 1), _now())
    except ReportRejected as exc:
        return errors.bad_request(f"{exc}.")

    async def write(report: dict[str, Any]) -> Outcome:
        # Written at the version the cache holds; someone else's write since (the operator's
        # status) refuses it: once the cache has caught up, try again.
        for pause in (CONFLICT_PAUSE, 0.0):
            current = view.finetuning_job(namespace, name)
            if current is None or current.uid != job.uid:
                return Outcome.GONE
            if current.finished:
                return Outcome.FINISHED
            outcome = await view.patch_progress(namespace, name, current.resource_version, report)
            if outcome != Outcome.CONFLICT or not pause:
                return outcome
            await asyncio.sleep(pause)
        return Outcome.CONFLICT

    try:
        outcome = await pacer.submit(f"{namespace}/{name}", report, write)
    except Exception as exc:
        log.warning("progress of %s/%s not written: %s", namespace, name, exc)
        return _unavailable("The progress could not be written; the next report tries again.", 2)
    if outcome == Outcome.GONE:
        return NO_SUCH_JOB
    if outcome == Outcome.FINISHED:
        return JOB_ENDED
    if outcome == Outcome.CONFLICT:
        return _unavailable("The FineTuningJob keeps changing; the next report tries again.", 2)
    return outcome


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
