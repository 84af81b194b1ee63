"""Live training progress on the operator's side: the trainer's token, the env that tells the
trainer where to report, and status.progress carried over by reconciles and finished at the end."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from graft.api.reports import TrainerSummary
from graft.api.training import FineTuningJobStatus, Hyperparameters, TrainingProgress
from graft.core.objects import Owner
from graft.core.serverkeys import progress_token, server_key
from graft.core.settings import ConfigError, Settings
from graft.plan.finetuning import (
    TrainingOutcome,
    finetuning_status,
    progress_channel,
    progress_of,
)
from graft.plan.jobs import DatasetInput, JobState, Progress, trainer_job

SEED = b"s" * 32
OWNER = Owner(name="tune", namespace="acme", uid="u-2", generation=1, kind="FineTuningJob")
START, END, NOW = "2026-11-28T10:00:00Z", "2026-11-28T10:05:00Z", "2026-11-28T10:06:00Z"
LIVE: dict[str, Any] = {
    "step": 7,
    "totalSteps": 30,
    "epoch": 2,
    "totalEpochs": 4,
    "loss": 1.25,
    "examplesPerSecond": 12.5,
    "etaSeconds": 40,
    "updatedAt": "2026-11-28T10:03:00Z",
}


# --- The token ------------------------------------------------------------------------------------


def test_progress_tokens_are_per_job_and_never_a_server_key() -> None:
    token = progress_token(SEED, "acme", "tune", "u-2")
    assert token == progress_token(SEED, "acme", "tune", "u-2")  # derived, not stored
    others = {
        progress_token(SEED, "acme", "tune", "u-3"),  # the same name, created again
        progress_token(SEED, "acme", "tune2", "u-2"),
        progress_token(SEED, "acme2", "tune", "u-2"),
        progress_token(b"t" * 32, "acme", "tune", "u-2"),
    }
    assert token not in others
    assert len(others) == 4
    assert token.startswith("graft-progress-")
    # The same names never give a model server's key (another domain, another prefix).
    keys = {server_key(SEED, "acme", "tune"), server_key(SEED, "acme", "tune/u-2")}
    assert token not in keys
    assert token.removeprefix("graft-progress-") not in {k.removeprefix("graft-") for k in keys}


# --- Where the trainer reports --------------------------------------------------------------------


def train_container(progress_url: str) -> dict[str, Any]:
    settings = Settings(image="graft:test", gateway_url=progress_url)
    job = trainer_job(
        owner=OWNER,
        base_model_uri="file:///models/tiny",
        dataset=DatasetInput(uri="file:///d.jsonl"),
        dataset_sha256="0" * 64,
        output="file:///out",
        hyperparameters=Hyperparameters(),
        resources={},
        settings=settings,
        progress=progress_channel(settings.gateway_url, SEED, "acme", "tune", "u-2"),
    )
    pod = job["spec"]["template"]["spec"]
    for init in pod["initContainers"]:
        assert not any(e["name"].startswith("GRAFT_PROGRESS") for e in init.get("env") or [])
    (train,) = pod["containers"]
    return dict(train)


def test_the_trainer_learns_where_to_report_only_when_the_operator_knows_the_gateway() -> None:
    train = train_container("http://graft-gateway.graft-system.svc:8080")
    env = {e["name"]: e["value"] for e in train["env"]}
    assert env["GRAFT_PROGRESS_URL"] == (
        "http://graft-gateway.graft-system.svc:8080/v1/internal/progress/acme/tune"
    )
    assert env["GRAFT_PROGRESS_TOKEN"] == progress_token(SEED, "acme", "tune", "u-2")

    quiet = train_container("")
    assert [e["name"] for e in quiet["env"]] == ["TOKENIZERS_PARALLELISM"]


def test_the_gateway_url_setting_is_checked() -> None:
    assert Settings.from_env({}).gateway_url == ""
    url = Settings.from_env({"GRAFT_GATEWAY_URL": "http://gw.graft-system.svc:8080/"}).gateway_url
    assert url == "http://gw.graft-system.svc:8080"
    for bad in ("gw:8080", "ftp://gw", "http://", "http://gw:x", "http://gw/?a=b"):
        with pytest.raises(ConfigError, match="GRAFT_GATEWAY_URL"):
            Settings.from_env({"GRAFT_GATEWAY_URL": bad})


# --- status.progress ------------------------------------------------------------------------------


def status(outcome: TrainingOutcome, live: dict[str, Any] | None) -> FineTuningJobStatus:
    return finetuning_status(
        generation=1,
        full_name="accounts/acme/finetuningjobs/tune",
        outcome=outcome,
        previous=[],
        now=NOW,
        progress=progress_of({"progress": live} if live is not None else {}),
    )


RUNNING = TrainingOutcome(
    Progress.running("Training", "Job tune-train: pod p is running"),
    job_name="tune-train",
    job=JobState("Running", start_time=START),
)


def test_a_running_jobs_progress_is_carried_over_as_the_gateway_wrote_it() -> None:
    assert status(RUNNING, LIVE).wire()["progress"] == LIVE
    assert "progress" not in status(RUNNING, None).wire()
    # Something the object holds that is not today's shape is left for the gateway to rewrite.
    assert "progress" not in status(RUNNING, {"step": "many"}).wire()


def test_a_progress_only_change_makes_no_status_of_its_own() -> None:
    """What publish() compares: the reconcile's status equals the object's whatever the
    progress, so a write by the gateway is never followed by one of the operator's."""
    first = status(RUNNING, None).wire()
    later = status(RUNNING, {**LIVE, "step": 8}).wire()
    assert later == {**first, "progress": {**LIVE, "step": 8}}


def test_a_succeeded_job_keeps_the_trainers_final_figures() -> None:
    summary = TrainerSummary(0.5, 30, "/o", {"epochs": 4})
    done = TrainingOutcome(
        Progress.succeeded("Trained", "trained"),
        job_name="tune-train",
        summary=summary,
        job=JobState("Succeeded", start_time=START, completion_time=END),
    )
    assert status(done, LIVE).wire()["progress"] == {
        "step": 30,
        "totalSteps": 30,
        "epoch": 4,
        "totalEpochs": 4,
        "loss": 0.5,
        "examplesPerSecond": 12.5,
        "etaSeconds": 0,
        "updatedAt": END,
    }
    curve = [[1.0, 2.0], [29.0, 0.6]]
    with_curve = status(done, {**LIVE, "lossCurve": curve}).wire()["progress"]
    assert with_curve["lossCurve"] == curve  # the last report's curve stays to be plotted
    assert with_curve["step"] == 30
    # No live report ever arrived (no gateway): the summary alone.
    assert status(done, None).wire()["progress"] == {
        "step": 30,
        "totalSteps": 30,
        "epoch": 4,
        "totalEpochs": 4,
        "loss": 0.5,
        "etaSeconds": 0,
        "updatedAt": END,
    }


def test_a_failed_job_keeps_its_last_report_without_an_eta() -> None:
    failed = TrainingOutcome(
        Progress.failed("TrainingFailed", "training failed (exit code 3): boom"),
        job=JobState("Failed", start_time=START, completion_time=END),
    )
    progress = status(failed, LIVE).wire()["progress"]
    assert progress == {k: v for k, v in LIVE.items() if k != "etaSeconds"}
    curve = [[1.0, 2.0], [2.0, 1.5]]
    assert status(failed, {**LIVE, "lossCurve": curve}).wire()["progress"]["lossCurve"] == curve
    assert "progress" not in status(failed, None).wire()


def test_progress_bounds() -> None:
    TrainingProgress.model_validate(LIVE)
    for bad in ({"loss": -1}, {"step": -1}, {"updatedAt": "yesterday"}, {"extra": 1}):
        with pytest.raises(ValidationError, match="TrainingProgress"):
            TrainingProgress.model_validate({**LIVE, **bad})
