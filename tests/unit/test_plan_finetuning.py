"""FineTuningJob decisions: the gates before training, the trainer's report, what is published."""

from __future__ import annotations

import json
from typing import Any

from graft.api.dataformat import DatasetError, parse_jsonl
from graft.api.reports import TERMINATION_MESSAGE_LIMIT, TrainerSummary
from graft.core.names import Ref
from graft.plan.finetuning import (
    ReadyDataset,
    TrainingOutcome,
    base_model_gate,
    dataset_gate,
    deployed_model,
    finetuning_status,
    made_by,
    output_model,
    output_taken,
    training_progress,
)
from graft.plan.jobs import DatasetInput, JobState, Progress, Terminated

DS = Ref(account="acme", id="train", plural="datasets")
BASE = Ref(account="acme", id="llama", plural="models")


def cond(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def dataset_obj(
    *conditions: dict[str, Any], sha: str | None = None, **source: Any
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if sha:
        status["sha256"] = sha
    return {"spec": {"source": source or {"uri": "file:///d.jsonl"}}, "status": status}


def model_obj(
    kind: str = "Base", ready: bool = True, uri: str = "file:///m", public: bool = False
) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "source": {"uri": uri}}
    if kind == "PeftAddon":
        spec["baseModel"] = "other"
    if public:
        spec["public"] = True
    return {
        "spec": spec,
        "status": {"conditions": [cond("Ready", "True" if ready else "False", "NotYet", "soon")]},
    }


def test_dataset_gate() -> None:
    missing = dataset_gate(None, DS)
    assert isinstance(missing, Progress)
    assert (missing.kind, missing.reason) == ("waiting", "WaitingForDataset")
    assert "accounts/acme/datasets/train does not exist (yet)" in missing.message

    validating = dataset_gate(dataset_obj(cond("Ready", "False", "Validating", "pod running")), DS)
    assert isinstance(validating, Progress)
    assert validating.kind == "waiting"
    assert "Validating: pod running" in validating.message

    invalid = dataset_gate(
        dataset_obj(
            cond("Ready", "False", "InvalidDataset", "line 2: bad"), cond("Failed", "True")
        ),
        DS,
    )
    assert isinstance(invalid, Progress)
    assert (invalid.kind, invalid.reason) == ("failed", "DatasetInvalid")
    assert "line 2: bad" in invalid.message

    ready = dataset_gate(
        dataset_obj(cond("Ready", "True"), sha="ab" * 32, uri="pvc://c/d.jsonl"), DS
    )
    assert ready == ReadyDataset(
        DatasetInput(uri="pvc://c/d.jsonl"), "ab" * 32, "accounts/acme/datasets/train"
    )
    from_cm = dataset_gate(
        dataset_obj(cond("Ready", "True"), sha="cd" * 32, configMap={"name": "cm", "key": "k"}), DS
    )
    assert isinstance(from_cm, ReadyDataset)
    assert from_cm.input == DatasetInput(config_map=("cm", "k"))


def test_base_model_gate() -> None:
    assert base_model_gate(model_obj(uri="file:///tiny"), BASE, "acme") == "file:///tiny"
    for obj, kind, reason in [
        (None, "waiting", "WaitingForBaseModel"),
        (model_obj(ready=False), "waiting", "WaitingForBaseModel"),
        (model_obj(kind="PeftAddon"), "failed", "BaseModelNotBase"),
    ]:
        got = base_model_gate(obj, BASE, "acme")
        assert isinstance(got, Progress)
        assert (got.kind, got.reason) == (kind, reason)
    not_ready = base_model_gate(model_obj(ready=False), BASE, "acme")
    assert isinstance(not_ready, Progress)
    assert "is not Ready (NotYet: soon)" in not_ready.message

    other = Ref(account="shared", id="llama", plural="models")
    private = base_model_gate(model_obj(), other, "acme")
    assert isinstance(private, Progress)
    assert private.reason == "BaseModelNotShared"
    assert base_model_gate(model_obj(public=True, uri="hf://o/n"), other, "acme") == "hf://o/n"
    on_claim = base_model_gate(model_obj(public=True, uri="pvc://m/llama"), other, "acme")
    assert isinstance(on_claim, Progress)
    assert on_claim.reason == "BaseModelNotReachable"


def test_published_objects_and_who_made_them() -> None:
    model = output_model(
        name="out",
        namespace="acme",
        base_model="llama",
        uri="pvc://graft-artifacts/acme/models/out",
        job="tune",
        job_uid="u-1",
        dataset="accounts/acme/datasets/train",
    )
    assert model["spec"]["kind"] == "PeftAddon"
    assert model["spec"]["baseModel"] == "llama"
    assert model["spec"]["source"] == {"uri": "pvc://graft-artifacts/acme/models/out"}
    assert "ownerReferences" not in model["metadata"]
    assert made_by(model, "tune", "u-1")
    assert not made_by(model, "tune", "u-2")  # a later job of the same name
    assert output_taken(model, "Model", "accounts/acme/models/out", "tune", "u-1") is None
    taken = output_taken(model, "Model", "accounts/acme/models/out", "other", "u-9")
    assert taken is not None
    assert (taken.kind, taken.reason) == ("failed", "OutputModelExists")
    assert "Model accounts/acme/models/out already exists" in taken.message
    assert output_taken(None, "Model", "x", "tune", "u-1") is None
    dm = deployed_model(name="out", namespace="acme", deployment="chat", job="tune", job_uid="u-1")
    assert dm["kind"] == "DeployedModel"
    assert dm["spec"] == {"model": "out", "deployment": "chat"}
    dm_taken = output_taken(dm, "DeployedModel", "accounts/acme/deployedmodels/out", "x", "u")
    assert dm_taken is not None
    assert dm_taken.reason == "DeployedModelExists"


SUMMARY = {"status": "succeeded", "final_loss": 1.25, "steps": 7, "output": "/mnt/out", "x": 1}


def test_trainer_summary() -> None:
    assert TrainerSummary.from_message(json.dumps(SUMMARY)) == TrainerSummary(1.25, 7, "/mnt/out")
    assert TrainerSummary.from_message("training failed") is None
    assert TrainerSummary.from_message('{"status": "failed"}') is None


def test_training_progress() -> None:
    running = training_progress("t-train", JobState("Running", detail="pod p is running"), "train")
    assert running == Progress.running("Training", "Job t-train: pod p is running")
    own = Terminated("train", 1, "Error", "cannot apply LoRA: Target modules {'x'} not found\n")
    failed = training_progress("t-train", JobState("Failed", result=own), "train")
    assert failed == Progress.failed(
        "TrainingFailed",
        "training failed (exit code 1): cannot apply LoRA: Target modules {'x'} not found",
    )
    fetch = Terminated("fetch-dataset", 1, "Error", "cannot fetch x: HTTP 404", init=True)
    failed = training_progress("t-train", JobState("Failed", result=fetch), "train")
    assert isinstance(failed, Progress)
    assert failed.message.startswith(
        "init container fetch-dataset failed (exit code 1): cannot fetch"
    )
    ok = Terminated("train", 0, "Completed", json.dumps(SUMMARY))
    assert training_progress(
        "t-train", JobState("Succeeded", result=ok), "train"
    ) == TrainerSummary(1.25, 7, "/mnt/out")
    silent = training_progress(
        "t-train", JobState("Succeeded", result=Terminated("train", 0, "", "")), "train"
    )
    assert isinstance(silent, Progress)
    assert silent.reason == "TrainerResultMissing"


GOOD = b'{"prompt": "q", "completion": "a"}\n'


def trainer_failure(data: bytes) -> Terminated:
    """The train container as `graft train` leaves it on a malformed dataset."""
    error = DatasetError(parse_jsonl(data), "/mnt/graft/dataset/data.jsonl")
    return Terminated("train", 1, "Error", error.describe(TERMINATION_MESSAGE_LIMIT) + "\n")


def test_every_dataset_problem_the_trainer_found_is_in_the_failed_condition() -> None:
    data = GOOD + GOOD + b"{not json\n" + GOOD + b'{"prompt": "q"}\n' + GOOD + b"[1]\n"
    failed = training_progress("t-train", JobState("Failed", result=trainer_failure(data)), "train")
    assert isinstance(failed, Progress)
    st = finetuning_status(
        generation=1,
        full_name="accounts/a/finetuningjobs/t",
        outcome=TrainingOutcome(failed, job_name="t-train", job=JobState("Failed")),
        previous=[],
        now="n",
    ).wire()
    assert st["state"] == "Failed"
    condition = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "TrainingFailed"
    assert condition["message"].splitlines() == [
        "training failed (exit code 1): invalid dataset: 3 problems in "
        "/mnt/graft/dataset/data.jsonl:",
        "line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        'line 5: missing field "completion" (completion format has "prompt" and "completion")',
        "line 7: expected a JSON object, got a list",
    ]


def test_many_long_dataset_problems_reach_the_condition_whole() -> None:
    bad = b'{"' + b"k" * 1000 + b'": 1}\n'
    trainer = trainer_failure(bad * 40)
    assert len(trainer.message.encode()) <= TERMINATION_MESSAGE_LIMIT
    failed = training_progress("t-train", JobState("Failed", result=trainer), "train")
    assert isinstance(failed, Progress)
    lines = failed.message.splitlines()
    listed = lines[1:-1]
    assert 10 < len(listed) < 20
    assert [line.split(":")[0] for line in listed] == [f"line {n + 1}" for n in range(len(listed))]
    assert all(line.endswith("...") and len(line) == 300 for line in listed)
    assert lines[-1] == f"... and {40 - len(listed)} more"


START, END, NOW = "2026-11-28T10:00:00Z", "2026-11-28T10:05:00Z", "2026-11-28T10:06:00Z"


def test_status() -> None:
    outcome = TrainingOutcome(
        Progress.succeeded("Trained", "trained"),
        job_name="t-train",
        output_uri="file:///o",
        output_model="accounts/a/models/o",
        summary=TrainerSummary(0.5, 3, "/o"),
        job=JobState("Succeeded", start_time=START, completion_time=END),
    )
    st = finetuning_status(
        generation=1, full_name="accounts/a/finetuningjobs/t", outcome=outcome, previous=[], now=NOW
    ).wire()
    assert st["state"] == "Succeeded"
    assert (st["finalLoss"], st["steps"], st["startTime"], st["completionTime"]) == (
        0.5,
        3,
        START,
        END,
    )
    assert (st["outputUri"], st["outputModel"], st["jobName"]) == (
        "file:///o",
        "accounts/a/models/o",
        "t-train",
    )
    assert "deployedModel" not in st
    running = finetuning_status(
        generation=1,
        full_name="x",
        outcome=TrainingOutcome(
            Progress.running("Training", "m"),
            job=JobState("Running", start_time="s", completion_time="e"),
        ),
        previous=[],
        now="n",
    ).wire()
    assert running["state"] == "Running"
    assert running["startTime"] == "s"
    assert "completionTime" not in running
