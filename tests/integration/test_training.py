"""Datasets and FineTuningJobs on a real API server; their Job pods run for real on this machine.

The session's operator (tests/integration/conftest.py) runs as in production, with two settings
a cluster admin would also use: GRAFT_JOB_POD_ANNOTATIONS (here: the kwok annotation that keeps
kwok from ending Job pods by itself) and GRAFT_ARTIFACTS_URI (here: a file:// directory, where
trainers write adapters). tests/harness/kubelet.py stands in for the kubelet of the Job pods: it runs
`graft dataset validate`, `graft fetch` and `graft train` as local processes and reports their
exit codes and termination messages in the pods' status, as the kubelet would.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.dump import dump
from harness.kube import Cluster, GatewayProcess, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn

GROUP = "graft.dev/v1alpha1"
POD_ANNOTATIONS = {"kwok.graft.dev/run-duration": "1h"}  # what the session operator sets
T = TypeVar("T")


# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft.dataplane.smallmodels import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@dataclass
class Env:
    """What a test needs at hand: the cluster, its namespace, the operator and the kubelet."""

    op: OperatorProcess
    ns: str
    kubelet: KubeletStandIn
    data: Path

    @property
    def cluster(self) -> Cluster:
        return self.op.cluster

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
        try:
            return wait_for(what, probe, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\n--- test kubelet:\n{self.kubelet.describe()}\n"
                f"--- operator log:\n{self.op.tail(60)}"
            ) from None

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.cluster.get(kind, name, self.ns)

    def with_reason(self, kind: str, name: str, type_: str, reason: str) -> dict[str, Any] | None:
        obj = self.get(kind, name)
        c = condition(obj, type_)
        return obj if c and c.get("reason") == reason else None

    def finished(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(kind, name)
        return obj if (condition(obj, type_) or {}).get("status") == "True" else None

    def jobs(self) -> list[dict[str, Any]]:
        return self.cluster.list("jobs.batch", self.ns)

    def job_pods(self, job: str) -> list[dict[str, Any]]:
        return self.cluster.list("pods", self.ns, f"batch.kubernetes.io/job-name={job}")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            e for e in self.cluster.list("events", self.ns) if e["involvedObject"]["name"] == name
        ]


@pytest.fixture
def env(operator: OperatorProcess, namespace: str, kubelet: KubeletStandIn, tmp_path: Path) -> Env:
    data = tmp_path / "data"
    data.mkdir()
    return Env(operator, namespace, kubelet, data)


# --- Manifests and data ---------------------------------------------------------------------------


def manifest(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def dataset(name: str, ns: str, source: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return manifest("Dataset", name, ns, {"source": source, **spec})


def chat_lines(n: int, answer: str = "alpha alpha") -> list[str]:
    return [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"What is {i} plus {i + 1}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        for i in range(n)
    ]


def completion_lines(n: int) -> list[str]:
    return [json.dumps({"prompt": f"{i} + {i} =", "completion": f" {2 * i}"}) for i in range(n)]


def write(path: Path, lines: list[str]) -> bytes:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


def versions(env: Env, kinds_names: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for kind, name in kinds_names:
        obj = env.get(kind, name)
        assert obj is not None, f"{kind}/{name} is gone"
        out[f"{kind}/{name}"] = obj["metadata"]["resourceVersion"]
    return out


def terminated(pod: dict[str, Any], container: str) -> dict[str, Any]:
    statuses = (pod["status"].get("initContainerStatuses") or []) + pod["status"][
        "containerStatuses"
    ]
    state = next(s for s in statuses if s["name"] == container)["state"]
    assert "terminated" in state, state
    out: dict[str, Any] = state["terminated"]
    return out


def ready_inputs(env: Env, tiny_model: Path, *, model: str = "tiny", data: str = "train") -> None:
    """A validated chat Dataset and a Ready Base model built in code."""
    write(env.data / f"{data}.jsonl", chat_lines(8))
    env.cluster.apply(
        [
            dataset(data, env.ns, {"uri": f"file://{env.data}/{data}.jsonl"}),
            manifest(
                "Model", model, env.ns, {"kind": "Base", "source": {"uri": f"file://{tiny_model}"}}
            ),
        ]
    )
    env.wait(f"Dataset {data} validated", lambda: env.finished("datasets.graft.dev", data, "Ready"))
    # The Model reconciler marks a Base model with a readable file:// source Ready.
    env.wait(f"Model {model} Ready", lambda: env.finished("models.graft.dev", model, "Ready"))


# --- Datasets -------------------------------------------------------------------------------------


def test_valid_datasets_report_their_signature_once(env: Env) -> None:
    cluster, ns = env.cluster, env.ns
    chat = write(env.data / "chat.jsonl", chat_lines(5))
    chat_sha = hashlib.sha256(chat).hexdigest()
    completions = ("\n".join(completion_lines(4)) + "\n").encode()
    manifests = [
        dataset("chat", ns, {"uri": f"file://{env.data}/chat.jsonl"}),
        # The same data under another file name: another signature.
        dataset(
            "chat-renamed",
            ns,
            {"uri": f"file://{env.data}/chat.jsonl"},
            filename="My data (v2).jsonl",
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prompts", "namespace": ns},
            "data": {"completions.jsonl": completions.decode()},
        },
        dataset(
            "completions",
            ns,
            {"configMap": {"name": "prompts", "key": "completions.jsonl"}},
            format="completion",
        ),
    ]
    cluster.apply(manifests)
    cluster.kubectl(
        "wait", "datasets.graft.dev", "--all", "-n", ns, "--for=condition=Ready", "--timeout=60s"
    )

    ds = env.get("datasets.graft.dev", "chat")
    assert ds is not None
    dump(ds, "validated")
    st = ds["status"]
    assert (st["sha256"], st["sizeBytes"], st["exampleCount"], st["filename"]) == (
        chat_sha,
        len(chat),
        5,
        "chat.jsonl",
    )
    assert st["state"] == "Ready"
    assert st["name"] == f"accounts/{ns}/datasets/chat"
    assert condition(ds, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert condition(ds, "Ready")["reason"] == "Validated"  # type: ignore[index]
    assert ds["metadata"]["labels"] == {
        "graft.dev/sha256-prefix": chat_sha[:63],
        "graft.dev/filename": "chat.jsonl",
    }
    renamed = env.get("datasets.graft.dev", "chat-renamed")
    assert renamed is not None
    assert renamed["status"]["sha256"] == chat_sha
    assert renamed["status"]["filename"] == "My data (v2).jsonl"
    assert renamed["metadata"]["labels"]["graft.dev/filename"] == (
        "sha256-" + hashlib.sha256(b"My data (v2).jsonl").hexdigest()[:56]
    )
    # A client finds the Dataset with the same data and file name by label.
    found = cluster.list(
        "datasets.graft.dev",
        ns,
        f"graft.dev/sha256-prefix={chat_sha[:63]},graft.dev/filename=chat.jsonl",
    )
    assert [d["metadata"]["name"] for d in found] == ["chat"]

    comp = env.get("datasets.graft.dev", "completions")
    assert comp is not None
    assert comp["status"]["exampleCount"] == 4
    assert comp["status"]["sha256"] == hashlib.sha256(completions).hexdigest()
    assert comp["status"]["filename"] == "completions.jsonl"

    # Validation ran in a Job owned by the Dataset; its pod's termination message carries the
    # validator's own result, which the status repeats.
    job = cluster.get("jobs.batch", st["jobName"], ns)
    assert job is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == ds["metadata"]["uid"]
    assert job["spec"]["template"]["metadata"]["annotations"] == POD_ANNOTATIONS
    (pod,) = env.job_pods(st["jobName"])
    result = json.loads(terminated(pod, "validate")["message"])
    assert (result["status"], result["sha256"], result["exampleCount"]) == ("valid", chat_sha, 5)
    argv = env.kubelet.runs[pod["metadata"]["name"]].containers[0].argv
    assert argv[1:4] == ["dataset", "validate", f"{env.data}/chat.jsonl"]
    assert "--format" in argv
    assert argv[argv.index("--format") + 1] == "chat"

    # Re-applying changes nothing, even after several resyncs: no new validation, no writes.
    names = [("datasets.graft.dev", n) for n in ("chat", "chat-renamed", "completions")]
    names += [("jobs.batch", j["metadata"]["name"]) for j in env.jobs()]
    before = versions(env, names)
    out = cluster.apply(manifests)
    assert out.count("unchanged") == len(manifests), out
    time.sleep(3 * env.op.settle_seconds + 2)
    assert versions(env, names) == before
    assert len(env.jobs()) == 3
    assert [
        e["reason"] for e in env.events("chat") if e["involvedObject"]["kind"] == "Dataset"
    ].count("Validated") == 1


def test_invalid_datasets_fail_with_line_numbered_errors(env: Env) -> None:
    cluster, ns = env.cluster, env.ns
    good = chat_lines(3)
    write(
        env.data / "bad.jsonl",
        [
            good[0],
            '{"messages": [',
            json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),
            good[1],
            json.dumps({"prompt": "p", "completion": "c"}),
        ],
    )
    write(env.data / "few.jsonl", good[:2])
    cluster.apply(
        [
            dataset("bad", ns, {"uri": f"file://{env.data}/bad.jsonl"}),
            dataset("few", ns, {"uri": f"file://{env.data}/few.jsonl"}),
            dataset("missing", ns, {"uri": f"file://{env.data}/nowhere.jsonl"}),
        ]
    )
    bad = env.wait("bad to fail", lambda: env.finished("datasets.graft.dev", "bad", "Failed"))
    dump(bad, "invalid-dataset")
    ready = condition(bad, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "InvalidDataset")
    assert condition(bad, "Failed")["reason"] == "InvalidDataset"  # type: ignore[index]
    assert bad["status"]["state"] == "Failed"
    assert "3 problems in bad.jsonl" in ready["message"]
    assert "line 2: malformed JSON" in ready["message"]
    assert 'line 3: messages[0] has unknown role "robot"' in ready["message"]
    assert "line 5: completion example in a chat dataset" in ready["message"]
    assert len(bad["status"]["errors"]) == 3
    assert bad["status"]["exampleCount"] == 2
    assert "graft.dev/sha256-prefix" not in (bad["metadata"].get("labels") or {})
    # The validator's exit code 1 fails the Job at once (podFailurePolicy): one pod, no retry.
    job = cluster.get("jobs.batch", bad["status"]["jobName"], ns)
    assert job is not None
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert len(env.job_pods(job["metadata"]["name"])) == 1
    assert "InvalidDataset" in {e["reason"] for e in env.events("bad") if e["type"] == "Warning"}

    few = env.wait("few to fail", lambda: env.finished("datasets.graft.dev", "few", "Failed"))
    assert condition(few, "Ready")["reason"] == "InvalidDataset"  # type: ignore[index]
    assert "too few examples: 2; at least 3 are needed" in condition(few, "Ready")["message"]  # type: ignore[index]

    missing = env.wait(
        "missing to fail", lambda: env.finished("datasets.graft.dev", "missing", "Failed")
    )
    dump(missing, "source-unreadable")
    assert condition(missing, "Ready")["reason"] == "SourceUnreadable"  # type: ignore[index]
    assert f"{env.data}/nowhere.jsonl: no such file" in condition(missing, "Ready")["message"]  # type: ignore[index]


def test_datasets_wait_for_their_configmap_or_claim(env: Env) -> None:
    cluster, ns = env.cluster, env.ns
    cluster.apply(
        [
            dataset("later", ns, {"configMap": {"name": "later", "key": "data.jsonl"}}),
            dataset("on-claim", ns, {"uri": "pvc://data/sets/train.jsonl"}),
        ]
    )
    waiting = env.wait(
        "WaitingForConfigMap",
        lambda: env.with_reason("datasets.graft.dev", "later", "Ready", "WaitingForConfigMap"),
    )
    dump(waiting, "waiting-for-configmap")
    assert waiting["status"]["state"] == "Waiting"
    assert "ConfigMap later does not exist (yet)" in condition(waiting, "Ready")["message"]  # type: ignore[index]
    on_claim = env.wait(
        "WaitingForVolume",
        lambda: env.with_reason("datasets.graft.dev", "on-claim", "Ready", "WaitingForVolume"),
    )
    dump(on_claim, "waiting-for-volume")
    assert (
        "PersistentVolumeClaim data does not exist (yet)" in condition(on_claim, "Ready")["message"]
    )  # type: ignore[index]
    assert env.jobs() == []

    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "later", "namespace": ns},
            "data": {"data.jsonl": "\n".join(chat_lines(3))},
        }
    )
    ready = env.wait(
        "the Dataset to be validated", lambda: env.finished("datasets.graft.dev", "later", "Ready")
    )
    assert ready["status"]["exampleCount"] == 3
    assert ready["status"]["filename"] == "data.jsonl"

    # A claim, bound to a volume: the validation pod mounts it (the test kubelet stands in for
    # the volume with a directory of its own).
    data = env.kubelet.claim_dir("data") / "sets"
    data.mkdir(parents=True)
    write(data / "train.jsonl", chat_lines(4))
    pv = f"{ns}-data"
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{pv}"},
                    "claimRef": {"namespace": ns, "name": "data"},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "namespace": ns},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": pv,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
    )
    try:
        ready = env.wait(
            "the Dataset on the claim to be validated",
            lambda: env.finished("datasets.graft.dev", "on-claim", "Ready"),
        )
    finally:
        cluster.kubectl("delete", "persistentvolume", pv, "--wait=false")
    assert (ready["status"]["exampleCount"], ready["status"]["filename"]) == (4, "train.jsonl")
    job = cluster.get("jobs.batch", "on-claim-validate", ns)
    assert job is not None
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert volumes == [
        {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}
    ]


# --- FineTuningJobs -------------------------------------------------------------------------------

HYPERPARAMETERS = {
    "maxSteps": 2,
    "batchSize": 4,
    "learningRate": 0.01,
    "loraRank": 4,
    "loraAlpha": 8,
    "maxContextLength": 128,
    "seed": 3,
}


def test_finetuning_job_waits_then_trains_and_publishes_the_addon(
    env: Env, tiny_model: Path, artifacts_root: Path
) -> None:
    cluster, ns = env.cluster, env.ns
    job = manifest(
        "FineTuningJob",
        "tune",
        ns,
        {
            "baseModel": "tiny",
            "dataset": "train",
            "outputModel": "tiny-alpha",
            "hyperparameters": HYPERPARAMETERS,
            "deployment": "chat",
        },
    )
    cluster.apply(job)
    waiting = env.wait(
        "WaitingForDataset",
        lambda: env.with_reason("finetuningjobs.graft.dev", "tune", "Ready", "WaitingForDataset"),
    )
    dump(waiting, "waiting-for-dataset")
    assert waiting["status"]["state"] == "Waiting"
    assert (
        f"dataset accounts/{ns}/datasets/train does not exist (yet)"
        in condition(waiting, "Ready")["message"]  # type: ignore[index]
    )

    write(env.data / "train.jsonl", chat_lines(8))
    cluster.apply(dataset("train", ns, {"uri": f"file://{env.data}/train.jsonl"}))
    dump(
        env.wait(
            "WaitingForBaseModel",
            lambda: env.with_reason(
                "finetuningjobs.graft.dev", "tune", "Ready", "WaitingForBaseModel"
            ),
        ),
        "waiting-for-base-model",
    )
    assert [j["metadata"]["name"] for j in env.jobs()] == ["train-validate"]

    cluster.apply(
        manifest("Model", "tiny", ns, {"kind": "Base", "source": {"uri": f"file://{tiny_model}"}})
    )
    done = env.wait(
        "the job to succeed",
        lambda: env.finished("finetuningjobs.graft.dev", "tune", "Succeeded"),
        timeout=240,
    )
    dump(done, "succeeded")
    st = done["status"]
    output = artifacts_root / ns / "models" / "tiny-alpha"
    assert st["state"] == "Succeeded"
    assert condition(done, "Ready")["status"] == "True"  # type: ignore[index]
    assert st["steps"] == 2
    assert isinstance(st["finalLoss"], float)
    assert st["finalLoss"] > 0
    assert st["outputUri"] == f"file://{output}"
    assert st["outputModel"] == f"accounts/{ns}/models/tiny-alpha"
    assert st["deployedModel"] == f"accounts/{ns}/deployedmodels/tiny-alpha"
    assert st["jobName"] == "tune-train"
    assert st["startTime"]
    assert st["completionTime"]
    assert sorted(p.name for p in output.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4

    # The trainer really ran: fetch the base model and dataset, then graft train; the final loss
    # in status is the one in its termination message.
    (pod,) = env.job_pods("tune-train")
    ran = env.kubelet.runs[pod["metadata"]["name"]]
    assert [c.name for c in ran.containers] == ["fetch-base-model", "fetch-dataset", "train"]
    summary = json.loads(terminated(pod, "train")["message"])
    assert (summary["status"], summary["steps"], summary["final_loss"]) == (
        "succeeded",
        2,
        st["finalLoss"],
    )
    fetched = json.loads(terminated(pod, "fetch-dataset")["message"])
    dataset_sha = env.get("datasets.graft.dev", "train")["status"]["sha256"]  # type: ignore[index]
    assert fetched["sha256"] == dataset_sha
    trainer = cluster.get("jobs.batch", "tune-train", ns)
    assert trainer is not None
    assert trainer["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]

    # The addon Model: a PeftAddon on the job's base model, at the output location, not owned by
    # the job; and the DeployedModel that loads it into the deployment.
    model = env.get("models.graft.dev", "tiny-alpha")
    assert model is not None
    assert model["spec"]["kind"] == "PeftAddon"
    assert model["spec"]["baseModel"] == "tiny"
    assert model["spec"]["source"]["uri"] == st["outputUri"]
    assert model["metadata"]["labels"]["graft.dev/finetuning-job"] == "tune"
    assert not model["metadata"].get("ownerReferences")
    dm = env.get("deployedmodels.graft.dev", "tiny-alpha")
    assert dm is not None
    assert dm["spec"] == {"model": "tiny-alpha", "deployment": "chat"}
    assert dm["metadata"]["labels"]["graft.dev/finetuning-job"] == "tune"
    reasons = {
        e["reason"] for e in env.events("tune") if e["involvedObject"]["kind"] == "FineTuningJob"
    }
    assert {"WaitingForDataset", "WaitingForBaseModel", "Training", "Trained"} <= reasons

    # Re-applying the finished job changes nothing: no new Job, no writes.
    names = [("finetuningjobs.graft.dev", "tune"), ("jobs.batch", "tune-train")]
    before = versions(env, names)
    assert "unchanged" in cluster.apply(job)
    time.sleep(3 * env.op.settle_seconds + 2)
    assert versions(env, names) == before
    # The published addon was inspected like any other (its Job reads the adapter just written).
    assert sorted(j["metadata"]["name"] for j in env.jobs()) == [
        "tiny-alpha-inspect",
        "train-validate",
        "tune-train",
    ]

    # Deleting the job deletes its trainer Job, not the model it published.
    cluster.kubectl("delete", "finetuningjobs.graft.dev/tune", "-n", ns, "--timeout=60s")
    env.wait("the trainer Job to go", lambda: cluster.get("jobs.batch", "tune-train", ns) is None)
    assert env.get("models.graft.dev", "tiny-alpha") is not None


def test_progress_appears_in_status_while_the_trainer_runs(
    env: Env, tiny_model: Path, gateway: GatewayProcess
) -> None:
    """Issue 12, live progress: the real `graft train` (through the kubelet stand-in) reports to
    the session's gateway, which writes status.progress while the job runs; the operator's
    reconciles (every GRAFT_RESYNC_SECONDS) keep it and add no Event for it; the job's end
    leaves the trainer's final figures, and nothing writes progress after that."""
    cluster, ns = env.cluster, env.ns
    ready_inputs(env, tiny_model)
    # Long enough to be seen mid-run: the tiny model trains some 20-50 steps a second, reports
    # go every 2 s at most, and the gateway writes one every 2 s at most.
    steps = 1500
    hyperparameters = {**HYPERPARAMETERS, "maxSteps": steps, "batchSize": 2}
    cluster.apply(
        manifest(
            "FineTuningJob",
            "live",
            ns,
            {
                "baseModel": "tiny",
                "dataset": "train",
                "outputModel": "tiny-live",
                "hyperparameters": hyperparameters,
            },
        )
    )
    trainer = env.wait(
        "the trainer Job",
        lambda: cluster.get("jobs.batch", "live-train", ns),
        timeout=60,
    )
    train = trainer["spec"]["template"]["spec"]["containers"][0]
    job_env = {e["name"]: e.get("value") for e in train.get("env") or []}
    assert job_env["GRAFT_PROGRESS_URL"] == f"{gateway.url}/v1/internal/progress/{ns}/live"
    assert job_env["GRAFT_PROGRESS_TOKEN"].startswith("graft-progress-")

    seen: list[dict[str, Any]] = []  # every progress status showed while polling

    def mid_run() -> dict[str, Any] | None:
        obj = env.get("finetuningjobs.graft.dev", "live")
        progress = ((obj or {}).get("status") or {}).get("progress")
        if not obj or not progress:
            return None
        seen.append(progress)
        running = obj["status"].get("state") == "Running"
        return obj if running and 0 < progress["step"] < progress["totalSteps"] else None

    running = wait_for("progress in status while Running", mid_run, timeout=300, interval=0.2)
    progress = running["status"]["progress"]
    assert progress["totalSteps"] == steps
    assert 1 <= progress["epoch"] <= progress["totalEpochs"]
    assert progress["loss"] > 0
    assert progress["examplesPerSecond"] > 0
    assert progress["etaSeconds"] >= 0
    assert progress["updatedAt"]
    # Whatever status showed while the operator reconciled (resync every 2 s) was a report in
    # range, never something the operator made up.
    observed = {p["step"] for p in seen}
    assert all(0 <= step <= steps for step in observed), observed

    done = env.wait(
        "the job to succeed",
        lambda: env.finished("finetuningjobs.graft.dev", "live", "Succeeded"),
        timeout=600,
    )
    st = done["status"]
    final = st["progress"]
    assert final["step"] == final["totalSteps"] == st["steps"] == steps
    assert final["etaSeconds"] == 0
    assert final["loss"] == st["finalLoss"]
    assert final["epoch"] == final["totalEpochs"]

    # Progress writes stop when the job ends: the trainer's last reports, and any the gateway
    # kept for its next write, find the job ended (409) and change nothing.
    before = done["metadata"]["resourceVersion"]
    time.sleep(max(6.0, 3 * env.op.settle_seconds))
    after = env.get("finetuningjobs.graft.dev", "live")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before
    assert after["status"]["progress"] == final

    # Progress is no Ready transition: one Training Event however many reports were written.
    training = [
        e
        for e in env.events("live")
        if e["involvedObject"]["kind"] == "FineTuningJob" and e["reason"] == "Training"
    ]
    assert sum(int(e.get("count") or 1) for e in training) == 1, training


def test_trainer_failure_is_reported_with_the_trainers_own_message(
    env: Env, tiny_model: Path
) -> None:
    cluster, ns = env.cluster, env.ns
    ready_inputs(env, tiny_model)
    cluster.apply(
        manifest(
            "FineTuningJob",
            "broken",
            ns,
            {
                "baseModel": "tiny",
                "dataset": "train",
                "outputModel": "broken-addon",
                "hyperparameters": {**HYPERPARAMETERS, "targetModules": ["no_such_proj"]},
            },
        )
    )
    failed = env.wait(
        "the job to fail",
        lambda: env.finished("finetuningjobs.graft.dev", "broken", "Failed"),
        timeout=180,
    )
    dump(failed, "training-failed")
    ready = condition(failed, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "TrainingFailed")
    assert failed["status"]["state"] == "Failed"
    (pod,) = env.job_pods("broken-train")  # exit code 1: failed at once, no retry
    own = terminated(pod, "train")
    assert own["exitCode"] == 1
    assert "no_such_proj" in own["message"]
    assert ready["message"] == f"training failed (exit code 1): {own['message'].strip()}"
    assert env.get("models.graft.dev", "broken-addon") is None
    assert "TrainingFailed" in {e["reason"] for e in env.events("broken") if e["type"] == "Warning"}


def test_jobs_fail_without_training_when_the_output_is_taken_or_the_dataset_invalid(
    env: Env, tiny_model: Path
) -> None:
    cluster, ns = env.cluster, env.ns
    ready_inputs(env, tiny_model)
    write(env.data / "bad.jsonl", ["{", *chat_lines(3)])
    cluster.apply(
        [
            dataset("bad", ns, {"uri": f"file://{env.data}/bad.jsonl"}),
            manifest(
                "FineTuningJob",
                "taken",
                ns,
                {"baseModel": "tiny", "dataset": "train", "outputModel": "tiny"},
            ),
            manifest(
                "FineTuningJob",
                "on-bad-data",
                ns,
                {"baseModel": "tiny", "dataset": "bad", "outputModel": "out"},
            ),
        ]
    )
    taken = env.wait(
        "OutputModelExists", lambda: env.finished("finetuningjobs.graft.dev", "taken", "Failed")
    )
    dump(taken, "output-model-exists")
    ready = condition(taken, "Ready")
    assert ready is not None
    assert ready["reason"] == "OutputModelExists"
    assert f"Model accounts/{ns}/models/tiny already exists" in ready["message"]
    bad = env.wait(
        "DatasetInvalid", lambda: env.finished("finetuningjobs.graft.dev", "on-bad-data", "Failed")
    )
    dump(bad, "dataset-invalid")
    ready = condition(bad, "Ready")
    assert ready is not None
    assert ready["reason"] == "DatasetInvalid"
    assert "line 1: malformed JSON" in ready["message"]
    assert not [j for j in env.jobs() if j["metadata"]["name"].endswith("-train")]
