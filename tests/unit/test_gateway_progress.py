"""Trainers' progress reports through the gateway: the body's rules, the per-job token, and the
route on a real Gateway on loopback (tests/harness/replicas.py) with a StaticView whose
FineTuningJobs the tests set and whose status writes they read back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from graft.core.serverkeys import progress_token, server_key
from graft.gateway.catalog import build
from graft.gateway.progress import (
    MAX_REPORT_BYTES,
    JobRecord,
    Outcome,
    Pacer,
    ReportRejected,
    job_record,
    parse_report,
    token_matches,
)
from graft.gateway.server import Settings
from harness.replicas import Loop, RunningGateway, StaticView

NOW = "2026-11-28T10:00:00.000000Z"
REPORT: dict[str, Any] = {
    "step": 3,
    "totalSteps": 30,
    "epoch": 1,
    "totalEpochs": 2,
    "loss": 2.5,
    "examplesPerSecond": 8,
    "etaSeconds": 27,
}


# --- The body ----------------------------------------------------------------------------------


def test_a_report_becomes_status_progress_stamped_by_the_gateway() -> None:
    raw = json.dumps({**REPORT, "updatedAt": "1999-01-01T00:00:00Z"}).encode()
    assert parse_report(raw, NOW) == {**REPORT, "updatedAt": NOW}
    minimal = {"step": 0, "totalSteps": 1, "epoch": 0, "totalEpochs": 1}
    assert parse_report(json.dumps(minimal).encode(), NOW) == {**minimal, "updatedAt": NOW}
    curved = {**REPORT, "lossCurve": [[1, 3.0], [2, 2.75], [3, 2.5]]}
    assert parse_report(json.dumps(curved).encode(), NOW) == {**curved, "updatedAt": NOW}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({**REPORT, "step": "3"}).encode(), "step must be a number"),
        (json.dumps({**REPORT, "step": True}).encode(), "step must be a number"),
        (json.dumps({**REPORT, "step": 2.5}).encode(), "step"),
        (json.dumps({**REPORT, "loss": -1}).encode(), "loss"),
        (json.dumps({**REPORT, "etaSeconds": 1 << 50}).encode(), "etaSeconds"),
        (json.dumps({**REPORT, "step": 31}).encode(), "beyond totalSteps 30"),
        (json.dumps({**REPORT, "epoch": 3}).encode(), "beyond totalEpochs 2"),
        (json.dumps({**REPORT, "status": 1}).encode(), "status"),
        (json.dumps({k: v for k, v in REPORT.items() if k != "totalSteps"}).encode(), "total"),
        (b" " * (MAX_REPORT_BYTES + 1), f"at most {MAX_REPORT_BYTES} bytes"),
        (json.dumps({**REPORT, "lossCurve": [[2, 1.0], [1, 0.5]]}).encode(), "ascending"),
        (json.dumps({**REPORT, "lossCurve": [[1, 1.0], [1, 0.5]]}).encode(), "ascending"),
        (json.dumps({**REPORT, "lossCurve": [[1.5, 1.0]]}).encode(), "whole numbers"),
        (
            b'{"step": 3, "totalSteps": 30, "epoch": 1, "totalEpochs": 2, "lossCurve": [[1, NaN]]}',
            "lossCurve",
        ),
        (json.dumps({**REPORT, "lossCurve": [[1, 1.0, 2]]}).encode(), "lossCurve"),
        (json.dumps({**REPORT, "lossCurve": [[1, "1.0"]]}).encode(), "lossCurve"),
        (json.dumps({**REPORT, "lossCurve": [[i, 1.0] for i in range(101)]}).encode(), "lossCurve"),
    ],
)
def test_what_is_not_a_report_is_refused_with_the_reason(body: bytes, why: str) -> None:
    with pytest.raises(ReportRejected, match=why):
        parse_report(body, NOW)


def test_tokens_are_compared_whole() -> None:
    token = progress_token(b"seed", "acme", "tune", "u1")
    assert token_matches(token, token)
    assert not token_matches(token[:-1], token)
    assert not token_matches(None, token)
    assert not token_matches(token, None)
    assert not token_matches("", "")
    assert not token_matches(server_key(b"seed", "acme", "tune"), token)


def test_a_job_has_ended_once_it_succeeded_failed_or_is_going() -> None:
    def obj(*conditions: tuple[str, str], **meta: Any) -> dict[str, Any]:
        return {
            "metadata": {"uid": "u1", "resourceVersion": "7", **meta},
            "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]},
        }

    assert job_record(obj(("Ready", "False"))) == JobRecord("u1", "7", finished=False)
    assert job_record(obj(("Succeeded", "False"))).finished is False
    assert job_record(obj(("Ready", "True"), ("Succeeded", "True"))).finished
    assert job_record(obj(("Failed", "True"))).finished
    assert job_record(obj(deletionTimestamp="2026-11-28T10:00:00Z")).finished
    assert job_record({"metadata": {"uid": "u2"}}) == JobRecord("u2", "", finished=False)


# --- The route ---------------------------------------------------------------------------------


class Trainer:
    """A gateway with one running FineTuningJob acme/tune, and the trainer's side of it."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        empty = build(accounts=[], users=[], api_keys=[], models=[], deployments=[])
        self.view = StaticView(empty, [], {})
        self.view.jobs["acme/tune"] = JobRecord("u1", "100", finished=False)
        self.gw = RunningGateway(loop, self.view, Settings(progress_interval=0.5))
        # Time stands still for the pacer: every report after the first is within the interval
        # however slow the machine, and a kept one is written when its (real) wait is over.
        self.gw.gateway.pacer = Pacer(0.5, clock=lambda: 0.0)
        loop.run(self.gw.start())
        self.token = progress_token(self.view.seed, "acme", "tune", "u1")
        self.http = httpx.Client(base_url=self.gw.url, timeout=10)

    def post(
        self, body: Any = None, *, token: str | None = None, path: str = "acme/tune"
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else json.dumps(REPORT if body is None else body)
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.http.post(f"/v1/internal/progress/{path}", content=raw, headers=headers)

    def wait(self, what: str, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not probe():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def close(self) -> None:
        self.http.close()
        self.loop.run(self.gw.stop())


@pytest.fixture
def trainer() -> Iterator[Trainer]:
    loop = Loop()
    t = Trainer(loop)
    yield t
    t.close()
    loop.close()


def test_the_jobs_own_token_writes_its_progress(trainer: Trainer) -> None:
    answer = trainer.post()
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "written"}
    ((key, written),) = trainer.view.progress
    assert key == "acme/tune"
    updated = written.pop("updatedAt")
    assert written == REPORT
    assert updated.endswith("Z")


def test_anything_but_the_jobs_token_is_refused(trainer: Trainer) -> None:
    other_job = progress_token(trainer.view.seed, "acme", "tune", "u-earlier")
    for token in (
        other_job,
        trainer.token[:-1] + "0",
        server_key(trainer.view.seed, "acme", "tune"),
    ):
        answer = trainer.post(token=token)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "invalid_api_key"
    bare = trainer.http.post("/v1/internal/progress/acme/tune", json=REPORT)
    assert bare.status_code == 401
    assert trainer.view.progress == []


def test_unknown_jobs_ended_jobs_and_bad_bodies_write_nothing(trainer: Trainer) -> None:
    # An unknown job answers like a wrong token: the port does not tell which jobs exist.
    for path in ("acme/other", "other/tune"):
        unknown = trainer.post(path=path)
        assert unknown.status_code == 401, unknown.text
        assert unknown.json()["error"]["message"] == "Not this FineTuningJob's progress token."
    bad = trainer.post({**REPORT, "step": 99})
    assert bad.status_code == 400
    assert "beyond totalSteps" in bad.json()["error"]["message"]
    assert trainer.post(b"x" * (MAX_REPORT_BYTES * 4)).status_code == 400

    trainer.view.jobs["acme/tune"] = JobRecord("u1", "100", finished=True)
    ended = trainer.post()
    assert ended.status_code == 409
    assert "has ended" in ended.json()["error"]["message"]
    assert trainer.view.progress == []


def test_reports_within_the_interval_are_coalesced_into_one_later_write(trainer: Trainer) -> None:
    assert trainer.post({**REPORT, "step": 1}).status_code == 200
    for step in (2, 3, 4):
        answer = trainer.post({**REPORT, "step": step})
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"status": "queued"}
    trainer.wait("the kept report's write", lambda: len(trainer.view.progress) == 2)
    trainer.wait("the pacer to be idle", lambda: trainer.gw.gateway.pacer.waiting() == 0)
    assert [p["step"] for _, p in trainer.view.progress] == [1, 4]


def test_a_kept_report_is_dropped_when_the_job_ends_meanwhile(trainer: Trainer) -> None:
    assert trainer.post({**REPORT, "step": 1}).status_code == 200
    assert trainer.post({**REPORT, "step": 2}).status_code == 202
    trainer.view.jobs["acme/tune"] = JobRecord("u1", "101", finished=True)
    trainer.wait("the pacer to be idle", lambda: trainer.gw.gateway.pacer.waiting() == 0)
    assert [p["step"] for _, p in trainer.view.progress] == [1]


def test_a_write_refused_by_the_precondition_is_tried_again_at_the_new_version(
    trainer: Trainer,
) -> None:
    """The operator wrote the job's status since the cache's last look (graft.gateway.kube
    writes at the cached resourceVersion): once the cache has caught up, the report goes in."""
    refusals = iter([Outcome.CONFLICT])

    def operator_wrote(_: str) -> Outcome | None:
        outcome = next(refusals, None)
        if outcome is not None:  # the cache sees the operator's write
            trainer.view.jobs["acme/tune"] = JobRecord("u1", "200", finished=False)
        return outcome

    trainer.view.on_patch = operator_wrote
    assert trainer.post().status_code == 200
    assert [p["step"] for _, p in trainer.view.progress] == [REPORT["step"]]


def test_a_job_that_ended_or_went_between_look_and_write_is_not_written(trainer: Trainer) -> None:
    # The operator marked it Succeeded: the write is refused, and the cache then says it ended.
    def ended(_: str) -> Outcome:
        trainer.view.jobs["acme/tune"] = JobRecord("u1", "201", finished=True)
        return Outcome.CONFLICT

    trainer.view.on_patch = ended
    answer = trainer.post()
    assert answer.status_code == 409
    assert "has ended" in answer.json()["error"]["message"]

    # Changing under every write: 503, the next report tries again.
    trainer.gw.gateway.pacer = Pacer(0.5, clock=lambda: 0.0)  # a fresh interval
    trainer.view.jobs["acme/tune"] = JobRecord("u1", "300", finished=False)
    trainer.view.on_patch = lambda _: Outcome.CONFLICT
    busy = trainer.post()
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "2"

    # Deleted between the token check and the write: 404 (the caller proved it knew the job).
    trainer.gw.gateway.pacer = Pacer(0.5, clock=lambda: 0.0)
    trainer.view.on_patch = lambda _: Outcome.GONE
    assert trainer.post().status_code == 404
    assert trainer.view.progress == []


def test_nothing_is_judged_before_the_cache_is_synced(trainer: Trainer) -> None:
    trainer.view.synced = lambda: False  # type: ignore[method-assign]
    answer = trainer.post(path="acme/unknown-yet")
    assert answer.status_code == 503
    assert trainer.view.progress == []
