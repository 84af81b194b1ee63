"""FineTuningJobs: what must hold before training, what the trainer reported, what gets
published, and the status (pure).

A FineTuningJob waits (Ready=False, reason Waiting...) until its Dataset and base Model are Ready;
it fails for good when they never can be (the dataset failed validation, the base model is not a
Base model or not shared, the output model ID belongs to another Model). Its trainer Job's
result comes back in the `train` container's termination message: `graft train`'s JSON summary
on success, its own reason on failure, which the Failed condition shows as it is: one line, or
for a malformed dataset every problem with its line number, one a line, as a Dataset lists them
(the trainer fits them in the termination message's 4096 bytes, far below a condition message's
limit). On success the addon Model is created (not owned by the FineTuningJob: deleting the job
keeps the model), and a DeployedModel when spec.deployment is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from pydantic import ValidationError

from graft.api.common import Condition
from graft.api.models import ModelKind, ModelSpec
from graft.api.reports import TrainerSummary
from graft.api.training import MAX_LOSS, DatasetSpec, FineTuningJobStatus, TrainingProgress
from graft.core import keys
from graft.core.names import Ref
from graft.core.objects import (
    Obj,
    Owner,
    condition,
    condition_true,
    is_ready,
    labels,
    labels_of,
)
from graft.core.serverkeys import progress_token
from graft.plan.jobs import DatasetInput, JobState, Progress, ProgressChannel, lifecycle_conditions

PROGRESS_PATH = "/v1/internal/progress"
"""The gateway's route for trainers' progress: POST <gateway>/v1/internal/progress/<ns>/<job>."""


def _says(cond: Obj | None) -> str:
    if not cond:
        return "no status yet"
    return f"{cond.get('reason')}: {cond.get('message')}".rstrip(": ")


# --- What must hold before training -------------------------------------------------------------


@dataclass(frozen=True)
class ReadyDataset:
    """A validated Dataset: where its data is and the digest the trainer must find."""

    input: DatasetInput
    sha256: str
    full_name: str


def dataset_gate(obj: Obj | None, ref: Ref, role: str = "dataset") -> Progress | ReadyDataset:
    """A Dataset the job can train on, or why it must wait or fail."""
    if obj is None:
        return Progress.waiting("WaitingForDataset", f"{role} {ref.full_name} does not exist (yet)")
    if condition_true(obj, "Failed"):
        return Progress.failed(
            "DatasetInvalid",
            f"{role} {ref.full_name} failed validation; fix the data and create a new Dataset. "
            f"{_says(condition(obj, 'Ready'))}",
        )
    status = obj.get("status") or {}
    if not is_ready(obj) or not status.get("sha256"):
        return Progress.waiting(
            "WaitingForDataset",
            f"{role} {ref.full_name} is not validated yet ({_says(condition(obj, 'Ready'))})",
        )
    spec = DatasetSpec.model_validate(obj.get("spec") or {})
    source = spec.source
    data = (
        DatasetInput(config_map=(source.config_map.name, source.config_map.key))
        if source.config_map is not None
        else DatasetInput(uri=source.uri)
    )
    return ReadyDataset(input=data, sha256=status["sha256"], full_name=ref.full_name)


def base_model_gate(obj: Obj | None, ref: Ref, namespace: str) -> Progress | str:
    """The base model's source URI when the job can train on it, or why it must wait or fail."""
    if obj is None:
        return Progress.waiting(
            "WaitingForBaseModel", f"base model {ref.full_name} does not exist (yet)"
        )
    try:
        spec = ModelSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return Progress.waiting(
            "WaitingForBaseModel", f"base model {ref.full_name} has an invalid spec: {exc}"
        )
    if spec.kind != ModelKind.BASE:
        return Progress.failed(
            "BaseModelNotBase",
            f"{ref.full_name} is a {spec.kind} model; a FineTuningJob trains on a Base model",
        )
    if ref.account != namespace:
        if not spec.public:
            return Progress.failed(
                "BaseModelNotShared",
                f"{ref.full_name} belongs to account {ref.account} and is not public",
            )
        if urlparse(spec.source.uri).scheme == "pvc":
            return Progress.failed(
                "BaseModelNotReachable",
                f"{ref.full_name} is on a PersistentVolumeClaim of account {ref.account}, which "
                f"a trainer in account {namespace} cannot mount",
            )
    if not is_ready(obj):
        return Progress.waiting(
            "WaitingForBaseModel",
            f"base model {ref.full_name} is not Ready ({_says(condition(obj, 'Ready'))})",
        )
    return spec.source.uri


def made_by(obj: Obj, job_name: str, job_uid: str) -> bool:
    """Whether this FineTuningJob (this very object, by uid) created `obj`."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return (
        labels_of(obj).get(keys.FINETUNING_JOB) == job_name
        and annotations.get(keys.FINETUNING_JOB_UID) == job_uid
    )


def output_taken(existing: Obj | None, what: str, full: str, job: str, uid: str) -> Progress | None:
    """A Model (or DeployedModel) of the output's name that this job did not create: a failure."""
    if existing is None or made_by(existing, job, uid):
        return None
    return Progress.failed(
        "OutputModelExists" if what == "Model" else "DeployedModelExists",
        f"{what} {full} already exists and was not created by this FineTuningJob; choose "
        "another outputModel",
    )


# --- Live progress ----------------------------------------------------------------------------


def progress_channel(
    gateway_url: str, seed: bytes, namespace: str, job: str, uid: str
) -> ProgressChannel | None:
    """Where the trainer of this job reports progress, and its token; None when the operator
    knows no gateway (GRAFT_GATEWAY_URL unset): the trainer then reports nothing."""
    if not gateway_url:
        return None
    url = f"{gateway_url.rstrip('/')}{PROGRESS_PATH}/{quote(namespace)}/{quote(job)}"
    return ProgressChannel(url=url, token=progress_token(seed, namespace, job, uid))


def progress_of(status: Obj | None) -> TrainingProgress | None:
    """status.progress as the object has it (the gateway writes it between reconciles); None
    when absent or not in today's shape."""
    raw = (status or {}).get("progress")
    if not isinstance(raw, dict):
        return None
    try:
        return TrainingProgress.model_validate(raw)
    except ValueError:
        return None


def final_progress(
    live: TrainingProgress | None, outcome: TrainingOutcome, now: str
) -> TrainingProgress | None:
    """status.progress as it stays once the job has ended.

    Succeeded: the trainer's own summary (steps, epochs, final loss) with nothing left to do,
    whatever the last live report said (the gateway may have dropped the last one), and the last
    report's loss curve. Failed: the
    last report as it was, without an ETA. Before the end: the live report, as it is."""
    summary = outcome.summary
    if outcome.progress.kind == "failed":
        return live.model_copy(update={"eta_seconds": None}) if live else None
    if outcome.progress.kind != "succeeded" or summary is None or summary.steps is None:
        return live
    epochs = summary.details.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        epochs = live.total_epochs if live else 1
    job = outcome.job
    loss = summary.final_loss
    if loss is None or not math.isfinite(loss) or not 0 <= loss <= MAX_LOSS:
        loss = live.loss if live else None
    return TrainingProgress(
        step=summary.steps,
        total_steps=summary.steps,
        epoch=epochs,
        total_epochs=epochs,
        loss=loss,
        examples_per_second=live.examples_per_second if live else None,
        eta_seconds=0,
        loss_curve=live.loss_curve if live else None,  # the dashboard plots it after the end too
        updated_at=(job.completion_time if job and job.completion_time else None) or now,
    )


# --- What the trainer reported -------------------------------------------------------------------


def training_progress(job_name: str, job: JobState, container: str) -> Progress | TrainerSummary:
    """Running, failed (with the failing container's own message, all its lines) or the
    trainer's summary."""
    if job.phase in ("Pending", "Running"):
        return Progress.running("Training", f"Job {job_name}: {job.detail}")
    term = job.result
    if job.phase == "Failed":
        if term is None:
            return Progress.failed("TrainingFailed", f"trainer Job {job_name} failed: {job.detail}")
        what = "training" if term.container == container else f"init container {term.container}"
        message = term.message.strip() or term.reason or "no message"
        return Progress.failed(
            "TrainingFailed",
            f"{what} failed (exit code {term.exit_code}): {message}",
        )
    summary = TrainerSummary.from_message(term.message) if term else None
    if summary is None:
        return Progress.failed(
            "TrainerResultMissing",
            f"trainer Job {job_name} succeeded but its {container} container left no summary in "
            "its termination message; does its image run `graft train`?",
        )
    return summary


# --- What gets published --------------------------------------------------------------------------


def _published_meta(name: str, namespace: str, job: str, uid: str) -> Obj:
    """Labelled with the job's name and annotated with its uid (see `made_by`), but not owned
    by it: the published objects outlive the job."""
    maker = Owner(kind="FineTuningJob", name=job, uid=uid, namespace=namespace)
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(keys.FINETUNING_OUTPUT, maker),
        "annotations": {keys.FINETUNING_JOB_UID: uid},
    }


def output_model(
    *,
    name: str,
    namespace: str,
    base_model: str,
    uri: str,
    job: str,
    job_uid: str,
    dataset: str,
) -> Obj:
    """The addon Model a successful job publishes. No ownerReference: it outlives the job."""
    return {
        "apiVersion": keys.API_VERSION,
        "kind": "Model",
        "metadata": _published_meta(name, namespace, job, job_uid),
        "spec": {
            "kind": ModelKind.PEFT_ADDON.value,
            "baseModel": base_model,
            "source": {"uri": uri},
            "description": (
                f"LoRA addon trained by FineTuningJob accounts/{namespace}/finetuningjobs/{job} "
                f"on {dataset}"
            ),
        },
    }


def deployed_model(*, name: str, namespace: str, deployment: str, job: str, job_uid: str) -> Obj:
    """The DeployedModel that loads the published addon into spec.deployment."""
    return {
        "apiVersion": keys.API_VERSION,
        "kind": "DeployedModel",
        "metadata": _published_meta(name, namespace, job, job_uid),
        "spec": {"model": name, "deployment": deployment},
    }


# --- Status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOutcome:
    progress: Progress
    job_name: str | None = None
    output_uri: str | None = None
    output_model: str | None = None
    deployed_model: str | None = None
    summary: TrainerSummary | None = None
    job: JobState | None = None


def finetuning_status(
    *,
    generation: int,
    full_name: str,
    outcome: TrainingOutcome,
    previous: list[Condition],
    now: str,
    progress: TrainingProgress | None = None,
) -> FineTuningJobStatus:
    """The whole status. `progress` is status.progress as the object has it: the gateway writes
    it while the trainer runs, and publish() writes the whole status and removes what it lacks,
    so it is carried over as it is; when the job ends it becomes `final_progress()`."""
    conditions, state = lifecycle_conditions(
        previous,
        outcome.progress,
        generation=generation,
        now=now,
        running_state="Running",
        succeeded_state="Succeeded",
    )
    job, summary = outcome.job, outcome.summary
    return FineTuningJobStatus(
        observed_generation=generation,
        name=full_name,
        state=state,
        conditions=conditions,
        job_name=outcome.job_name,
        output_model=outcome.output_model,
        output_uri=outcome.output_uri,
        deployed_model=outcome.deployed_model,
        final_loss=summary.final_loss if summary else None,
        steps=summary.steps if summary else None,
        start_time=job.start_time if job else None,
        completion_time=job.completion_time
        if job and job.phase in ("Succeeded", "Failed")
        else None,
        progress=final_progress(progress, outcome, now),
    )
