"""The Jobs Graft runs: manifests, operator settings, and reading back how their pods ended."""

from __future__ import annotations

from typing import Any

from graft.api.common import Condition
from graft.api.training import Hyperparameters
from graft.core.conditions import finished
from graft.core.objects import Owner
from graft.core.settings import Settings
from graft.plan.jobs import (
    BASE_MODEL_DIR,
    DatasetInput,
    Progress,
    inspector_job,
    job_name,
    lifecycle_conditions,
    observe_job,
    output_uri,
    source_digest,
    trainer_job,
    validator_job,
)

CONFIG = Settings(image="graft:test", trainer_image="graft-train:test")
DATASET_OWNER = Owner(name="chat", namespace="acme", uid="u-1", generation=1, kind="Dataset")
FTJ_OWNER = Owner(name="tune", namespace="acme", uid="u-2", generation=1, kind="FineTuningJob")


def test_job_names_are_never_truncated() -> None:
    assert job_name("chat", "validate") == "chat-validate"
    long = "a" * 60
    name = job_name(long, "validate")
    assert len(name) <= 63
    assert name.startswith("graft-")
    assert name.endswith("-validate")
    assert name == job_name(long, "validate")  # stable
    assert name != job_name("b" * 60, "validate")


# --- Validation Job -----------------------------------------------------------------------------


def containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}


def test_validator_job_for_a_uri() -> None:
    cfg = Settings(image="graft:test", trainer_image="x", pod_annotations={"a": "b"})
    job = validator_job(
        owner=DATASET_OWNER,
        source=DatasetInput(uri="https://example.com/d/train.jsonl"),
        format_="chat",
        filename="train.jsonl",
        settings=cfg,
    )
    assert job["metadata"]["name"] == "chat-validate"
    assert job["metadata"]["namespace"] == "acme"
    assert job["metadata"]["labels"]["graft.dev/dataset"] == "chat"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "dataset-validator"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Dataset",
        "chat",
        "u-1",
        True,
    )
    spec = job["spec"]
    assert spec["backoffLimit"] == 2
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1] == {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1, 2]}}
    template = spec["template"]
    assert template["metadata"]["annotations"] == {"a": "b"}
    assert template["metadata"]["labels"]["graft.dev/dataset"] == "chat"
    assert template["spec"]["restartPolicy"] == "Never"
    assert "volumes" not in template["spec"]
    c = containers(job)["validate"]
    assert c["image"] == "graft:test"
    assert c["command"] == ["graft"]
    assert c["args"] == [
        "dataset",
        "validate",
        "https://example.com/d/train.jsonl",
        "--format",
        "chat",
        "--filename",
        "train.jsonl",
        "--min-examples",
        "3",
        "--max-examples",
        "3000000",
        "--max-bytes",
        str(1 << 30),
    ]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["envFrom"] == [{"secretRef": {"name": "graft-storage", "optional": True}}]


def test_validator_job_mounts_a_configmap_key_and_a_claim() -> None:
    job = validator_job(
        owner=DATASET_OWNER,
        source=DatasetInput(config_map=("prompts", "train.jsonl")),
        format_="completion",
        filename="train.jsonl",
        settings=CONFIG,
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {
            "name": "configmap-0",
            "configMap": {
                "name": "prompts",
                "items": [{"key": "train.jsonl", "path": "train.jsonl"}],
            },
        }
    ]
    c = containers(job)["validate"]
    assert c["args"][2] == "/mnt/configmap/prompts/train.jsonl"
    assert c["volumeMounts"] == [
        {"name": "configmap-0", "mountPath": "/mnt/configmap/prompts", "readOnly": True}
    ]

    job = validator_job(
        owner=DATASET_OWNER,
        source=DatasetInput(uri="pvc://data/sets/a%20b.jsonl"),
        format_="chat",
        filename="a b.jsonl",
        settings=CONFIG,
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}
    ]
    c = containers(job)["validate"]
    assert c["args"][2] == "/mnt/pvc/data/sets/a b.jsonl"
    assert c["volumeMounts"] == [{"name": "pvc-0", "mountPath": "/mnt/pvc/data", "readOnly": True}]


# --- Trainer Job --------------------------------------------------------------------------------


def test_trainer_job_fetches_inputs_then_trains() -> None:
    hp = Hyperparameters(max_steps=5, target_modules=["q_proj", "v_proj"], learning_rate=2e-4)
    job = trainer_job(
        owner=FTJ_OWNER,
        base_model_uri="pvc://models/llama",
        dataset=DatasetInput(uri="https://example.com/train.jsonl"),
        dataset_sha256="ab" * 32,
        output="pvc://graft-artifacts/acme/models/out",
        hyperparameters=hp,
        resources={"limits": {"nvidia.com/gpu": "1"}},
        settings=CONFIG,
    )
    assert job["metadata"]["name"] == "tune-train"
    assert job["metadata"]["labels"]["graft.dev/finetuning-job"] == "tune"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert "activeDeadlineSeconds" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-base-model", "fetch-dataset"]
    assert pod["volumes"] == [
        {"name": "work", "emptyDir": {}},
        {
            "name": "pvc-0",
            "persistentVolumeClaim": {"claimName": "graft-artifacts", "readOnly": False},
        },
        {"name": "pvc-1", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
    ]
    by_name = containers(job)
    fetch_base = by_name["fetch-base-model"]
    assert fetch_base["args"] == ["fetch", "/mnt/pvc/models/llama", BASE_MODEL_DIR]
    # Fetchers see every claim read-only, even the one the trainer writes to.
    assert all(m["readOnly"] for m in fetch_base["volumeMounts"] if m["name"] != "work")
    assert by_name["fetch-dataset"]["args"] == [
        "fetch",
        "https://example.com/train.jsonl",
        "/mnt/graft/dataset",
        "--name",
        "data.jsonl",
        "--sha256",
        "ab" * 32,
    ]
    train = by_name["train"]
    assert train["image"] == "graft-train:test"
    assert train["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert train["args"] == [
        "train",
        "--base-model",
        "/mnt/graft/base-model",
        "--dataset",
        "/mnt/graft/dataset/data.jsonl",
        "--output",
        "/mnt/pvc/graft-artifacts/acme/models/out",
        "--epochs",
        "1",
        "--learning-rate",
        "0.0002",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--batch-size",
        "4",
        "--max-context-length",
        "2048",
        "--seed",
        "42",
        "--max-steps",
        "5",
        "--target-modules",
        "q_proj,v_proj",
    ]
    mounts = {m["mountPath"]: m["readOnly"] for m in train["volumeMounts"] if "readOnly" in m}
    assert mounts == {"/mnt/pvc/graft-artifacts": False, "/mnt/pvc/models": True}
    for c in by_name.values():
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_trainer_job_with_file_uris_needs_no_claims() -> None:
    job = trainer_job(
        owner=FTJ_OWNER,
        base_model_uri="file:///models/tiny",
        dataset=DatasetInput(config_map=("cm", "k.jsonl")),
        dataset_sha256="0" * 64,
        output="file:///srv/out/acme/models/x",
        hyperparameters=Hyperparameters(),
        resources={},
        settings=CONFIG,
    )
    pod = job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["work", "configmap-0"]
    by_name = containers(job)
    assert by_name["fetch-base-model"]["args"][1] == "/models/tiny"
    assert by_name["fetch-dataset"]["args"][1] == "/mnt/configmap/cm/k.jsonl"
    assert "/srv/out/acme/models/x" in by_name["train"]["args"]
    assert "resources" not in by_name["train"]


# --- Inspection Job -----------------------------------------------------------------------------

MODEL_OWNER = Owner(name="sql", namespace="acme", uid="u-3", generation=1, kind="Model")


def test_inspector_job_reads_the_adapter_in_the_models_namespace() -> None:
    job = inspector_job(owner=MODEL_OWNER, uri="pvc://graft-artifacts/acme/sql", settings=CONFIG)
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == ("sql-inspect", "acme")
    assert meta["labels"]["graft.dev/model"] == "sql"
    assert meta["labels"]["app.kubernetes.io/component"] == "model-inspector"
    assert meta["annotations"] == {
        "graft.dev/inspected-source": source_digest("pvc://graft-artifacts/acme/sql")
    }
    assert meta["ownerReferences"][0]["kind"] == "Model"
    assert job["spec"]["activeDeadlineSeconds"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["args"] == ["model", "inspect", "/mnt/pvc/graft-artifacts/acme/sql"]
    assert container["volumeMounts"] == [
        {"name": "pvc-0", "mountPath": "/mnt/pvc/graft-artifacts", "readOnly": True}
    ]
    assert pod["volumes"] == [
        {
            "name": "pvc-0",
            "persistentVolumeClaim": {"claimName": "graft-artifacts", "readOnly": True},
        }
    ]
    # A new source is a new digest: the reconciler replaces a Job that read another one.
    assert source_digest("pvc://graft-artifacts/acme/sql2") != source_digest(
        "pvc://graft-artifacts/acme/sql"
    )


def test_the_only_credentials_a_job_gets_are_its_own_accounts() -> None:
    """Jobs that fetch what a tenant names get no credentials of the operator's: only the
    account's own storage Secret, by name, in the Job's (the account's) namespace."""
    jobs = [
        inspector_job(owner=MODEL_OWNER, uri="s3://bucket/sql", settings=CONFIG),
        validator_job(
            owner=DATASET_OWNER,
            source=DatasetInput(uri="s3://bucket/train.jsonl"),
            format_="chat",
            filename="train.jsonl",
            settings=CONFIG,
        ),
        trainer_job(
            owner=FTJ_OWNER,
            base_model_uri="s3://bucket/base",
            dataset=DatasetInput(uri="s3://bucket/train.jsonl"),
            dataset_sha256="ab" * 32,
            output="s3://bucket/out",
            hyperparameters=Hyperparameters(),
            resources={},
            settings=CONFIG,
        ),
    ]
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod
        for container in containers(job).values():
            refs = [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ] + [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            assert set(refs) <= {"graft-storage"}, (container["name"], refs)
        assert not [v for v in pod.get("volumes", []) if "secret" in v or "projected" in v]


def test_output_uri() -> None:
    assert output_uri(CONFIG, "acme", "out") == "pvc://graft-artifacts/acme/models/out"


# --- Observing Jobs -----------------------------------------------------------------------------


def pod(
    name: str,
    phase: str,
    *,
    init: list[dict[str, Any]] | None = None,
    main: list[dict[str, Any]] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "containerStatuses": main or []}
    if init:
        status["initContainerStatuses"] = init
    if conditions:
        status["conditions"] = conditions
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def ended(
    name: str, code: int, message: str = "", at: str = "2026-01-01T00:01:00Z"
) -> dict[str, Any]:
    return {
        "name": name,
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": message,
                "finishedAt": at,
            }
        },
    }


def job(*conditions: tuple[str, str, str], failed: int = 0) -> dict[str, Any]:
    return {
        "status": {
            "startTime": "2026-01-01T00:00:00Z",
            "failed": failed,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ],
        }
    }


def test_a_complete_job_gives_the_main_containers_message() -> None:
    done = pod(
        "p1", "Succeeded", init=[ended("fetch", 0, "{}")], main=[ended("train", 0, '{"a":1}')]
    )
    complete = job(("Complete", "", ""))
    complete["status"]["completionTime"] = "2026-01-01T00:02:00+00:00"
    state = observe_job(complete, [done], "train")
    assert state.phase == "Succeeded"
    assert (state.start_time, state.completion_time) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:02:00Z",
    )
    assert state.result is not None
    assert (state.result.container, state.result.exit_code, state.result.message) == (
        "train",
        0,
        '{"a":1}',
    )


def test_a_failed_job_names_the_container_that_failed() -> None:
    first = pod(
        "p1",
        "Failed",
        init=[ended("fetch", 3, "timeout", "2026-01-01T00:01:00Z")],
        main=[{"name": "train", "state": {"waiting": {"reason": "PodInitializing"}}}],
    )
    last = pod(
        "p2",
        "Failed",
        init=[ended("fetch", 0, "", "2026-01-01T00:02:00Z")],
        main=[ended("train", 1, "cannot apply LoRA: no_such_proj", "2026-01-01T00:03:00Z")],
        created="2026-01-01T00:01:30Z",
    )
    state = observe_job(
        job(("Failed", "PodFailurePolicy", "Container train ... exit code 1"), failed=2),
        [last, first],
        "train",
    )
    assert state.phase == "Failed"
    assert state.result is not None
    assert (state.result.container, state.result.exit_code, state.result.init) == (
        "train",
        1,
        False,
    )
    assert state.result.message == "cannot apply LoRA: no_such_proj"
    assert "exit code 1" in state.detail


def test_a_running_job_says_what_its_pod_is_doing() -> None:
    running = pod("p1", "Running")
    assert observe_job(job(), [running], "train").phase == "Running"
    unschedulable = pod(
        "p1",
        "Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "message": "0/2 nodes: Insufficient gpu"}
        ],
    )
    state = observe_job(job(), [unschedulable], "train")
    assert state.phase == "Pending"
    assert "cannot be scheduled: 0/2 nodes: Insufficient gpu" in state.detail
    pulling = pod(
        "p1",
        "Pending",
        main=[{"name": "train", "state": {"waiting": {"reason": "ErrImagePull", "message": "no"}}}],
    )
    assert "container train: ErrImagePull: no" in observe_job(job(), [pulling], "train").detail
    assert "waiting for the Job's pod" in observe_job(job(), [], "train").detail


def test_a_retry_says_why_the_last_attempt_failed() -> None:
    failed = pod("p1", "Failed", main=[ended("train", 3, "out of memory")])
    again = pod("p2", "Running", created="2026-01-02T00:00:00Z")
    state = observe_job(job(failed=1), [failed, again], "train")
    assert state.phase == "Running"
    assert "attempt 2 of 3" in state.detail
    assert "train exited 3: out of memory" in state.detail


# --- Conditions ---------------------------------------------------------------------------------


def test_lifecycle_conditions() -> None:
    now = "2026-01-01T00:00:00Z"
    waiting, state = lifecycle_conditions(
        [],
        Progress.waiting("WaitingForDataset", "d"),
        generation=1,
        now=now,
        running_state="Running",
    )
    assert state == "Waiting"
    assert [(c.type, c.status, c.reason) for c in waiting] == [
        ("Ready", "False", "WaitingForDataset")
    ]
    assert not finished(waiting)
    running, state = lifecycle_conditions(
        waiting,
        Progress.running("Training", "t"),
        generation=1,
        now="later",
        running_state="Running",
    )
    assert state == "Running"
    # Ready stayed False: its transition time does not move.
    assert running[0].last_transition_time == now
    done, state = lifecycle_conditions(
        running,
        Progress.succeeded("Trained", "ok"),
        generation=1,
        now="end",
        running_state="Running",
        succeeded_state="Succeeded",
    )
    assert state == "Succeeded"
    assert [(c.type, c.status) for c in done] == [("Ready", "True"), ("Succeeded", "True")]
    assert done[0].last_transition_time == "end"
    assert finished(done)
    failed, state = lifecycle_conditions(
        waiting, Progress.failed("DatasetInvalid", "bad"), generation=1, now=now, running_state="R"
    )
    assert state == "Failed"
    assert [(c.type, c.status, c.reason) for c in failed] == [
        ("Ready", "False", "DatasetInvalid"),
        ("Failed", "True", "DatasetInvalid"),
    ]
    assert finished([Condition.model_validate(c.wire()) for c in failed])
