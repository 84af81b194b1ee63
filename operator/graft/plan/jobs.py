"""The batch/v1 Jobs Graft runs, and what their pods say when they end (pure).

Three Jobs, all running Graft's own image and entrypoints:

- dataset validation: `graft dataset validate <source>` in the Dataset's namespace (so it can
  mount the account's PVCs and ConfigMaps and read its storage credentials);
- addon inspection: `graft model inspect <source>` in the Model's namespace reads the addon's
  adapter_config.json (its LoRA rank), so the operator never fetches what a tenant names;
- training: init containers `graft fetch` the base model and the dataset into an emptyDir, then
  `graft train` writes the adapter to the output location.

Each container reports through its termination message (terminationMessagePath
/dev/termination-log, policy FallbackToLogsOnError: a crash leaves the end of its log instead),
which `observe_job()` reads back from the pods. Exit code 1 (the input is wrong) and 2 (bad
command line) fail the Job at once through its podFailurePolicy; any other failure is retried up to
backoffLimit times; a pod evicted or preempted (DisruptionTarget) does not count.

Where things are inside the pods: the scratch emptyDir at /mnt/graft, PVC `<claim>` at
/mnt/pvc/<claim> (a pvc://<claim>/<path> URI becomes the path /mnt/pvc/<claim>/<path>), the
ConfigMap `<name>` at /mnt/configmap/<name>. Images, annotations and limits come from the
operator's `Settings` (graft.core.settings).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlparse

from graft.api.common import Condition
from graft.api.training import Hyperparameters
from graft.core import keys
from graft.core.conditions import set_condition
from graft.core.objects import Obj, Owner, labels
from graft.core.settings import PROGRESS_TOKEN_ENV, PROGRESS_URL_ENV, Settings
from graft.plan.podsecurity import restricted

WORK_ROOT = "/mnt/graft"
PVC_ROOT = "/mnt/pvc"
CONFIGMAP_ROOT = "/mnt/configmap"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

VALIDATOR_CONTAINER = "validate"
INSPECTOR_CONTAINER = "inspect"
TRAINER_CONTAINER = "train"
FETCH_BASE_MODEL = "fetch-base-model"
FETCH_DATASET = "fetch-dataset"
BASE_MODEL_DIR = f"{WORK_ROOT}/base-model"
DATASET_DIR = f"{WORK_ROOT}/dataset"
DATASET_FILE = "data.jsonl"

BACKOFF_LIMIT = 2
VALIDATION_DEADLINE_SECONDS = 3600
INSPECTION_DEADLINE_SECONDS = 600
PERMANENT_EXIT_CODES = (1, 2)  # graft's entrypoints: 1 = the input is wrong, 2 = usage


def job_name(owner: str, suffix: str) -> str:
    """`<owner>-<suffix>`, or a stable hashed name when that is over 63 characters (the Job
    controller copies the name into a label value). Reported in status.jobName."""
    name = f"{owner}-{suffix}"
    if len(name) <= 63:
        return name
    return f"graft-{hashlib.sha256(owner.encode()).hexdigest()[:16]}-{suffix}"


# --- Volumes ----------------------------------------------------------------------------------


@dataclass
class Mounts:
    """The volumes a Job pod needs for its sources and outputs, one per claim or ConfigMap."""

    claims: dict[str, bool] = field(default_factory=dict)  # claim -> mounted writable
    config_maps: dict[str, set[str]] = field(default_factory=dict)  # name -> keys
    scratch: bool = False

    def uri_path(self, uri: str, *, writable: bool = False) -> str:
        """The path a container reads (or writes) `uri` at: pvc:// claims are mounted, file://
        is used as is, anything else is returned unchanged (fetched over the network)."""
        parsed = urlparse(uri)
        if parsed.scheme == "pvc":
            self.claims[parsed.netloc] = self.claims.get(parsed.netloc, False) or writable
            sub = unquote(parsed.path).strip("/")
            base = f"{PVC_ROOT}/{parsed.netloc}"
            return f"{base}/{sub}" if sub else base
        if parsed.scheme == "file":
            return unquote(parsed.path)
        return uri

    def config_map_path(self, name: str, key: str) -> str:
        self.config_maps.setdefault(name, set()).add(key)
        return f"{CONFIGMAP_ROOT}/{name}/{key}"

    def volumes(self) -> list[Obj]:
        out: list[Obj] = []
        if self.scratch:
            out.append({"name": "work", "emptyDir": {}})
        for i, (claim, writable) in enumerate(sorted(self.claims.items())):
            out.append(
                {
                    "name": f"pvc-{i}",
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable},
                }
            )
        for i, (name, keys_) in enumerate(sorted(self.config_maps.items())):
            items = [{"key": k, "path": k} for k in sorted(keys_)]
            out.append({"name": f"configmap-{i}", "configMap": {"name": name, "items": items}})
        return out

    def mounts(self, *, read_only: bool = False) -> list[Obj]:
        """volumeMounts for a container; `read_only` mounts every claim read-only for it."""
        out: list[Obj] = []
        if self.scratch:
            out.append({"name": "work", "mountPath": WORK_ROOT})
        for i, (claim, writable) in enumerate(sorted(self.claims.items())):
            out.append(
                {
                    "name": f"pvc-{i}",
                    "mountPath": f"{PVC_ROOT}/{claim}",
                    "readOnly": read_only or not writable,
                }
            )
        for i, name in enumerate(sorted(self.config_maps)):
            out.append(
                {
                    "name": f"configmap-{i}",
                    "mountPath": f"{CONFIGMAP_ROOT}/{name}",
                    "readOnly": True,
                }
            )
        return out


# --- Job manifests ----------------------------------------------------------------------------


def _container(name: str, image: str, args: list[str], mounts: list[Obj]) -> Obj:
    container: Obj = {
        "name": name,
        "image": image,
        "command": ["graft"],
        "args": args,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _storage_env(settings: Settings) -> list[Obj]:
    return [{"secretRef": {"name": settings.storage_secret, "optional": True}}]


def _job(
    *,
    name: str,
    owner: Owner,
    job_labels: dict[str, str],
    pod: Obj,
    settings: Settings,
    deadline: int | None,
) -> Obj:
    template_meta: Obj = {"labels": job_labels}
    if settings.pod_annotations:
        template_meta["annotations"] = dict(settings.pod_annotations)
    spec: Obj = {
        "backoffLimit": BACKOFF_LIMIT,
        "podFailurePolicy": {
            "rules": [
                # Evicted or preempted: not the pod's fault, not counted.
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                # The input is wrong: retrying cannot help.
                {
                    "action": "FailJob",
                    "onExitCodes": {"operator": "In", "values": list(PERMANENT_EXIT_CODES)},
                },
            ]
        },
        "template": {
            "metadata": template_meta,
            "spec": restricted(
                {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    **pod,
                }
            ),
        },
    }
    if deadline:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": job_labels,
            "ownerReferences": [owner.reference()],
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class DatasetInput:
    """Where a dataset's JSONL is: a URI, or a key of a ConfigMap in the same namespace."""

    uri: str | None = None
    config_map: tuple[str, str] | None = None  # (name, key)

    def path(self, mounts: Mounts) -> str:
        if self.config_map is not None:
            return mounts.config_map_path(*self.config_map)
        assert self.uri is not None
        return mounts.uri_path(self.uri)


def validator_job(
    *,
    owner: Owner,
    source: DatasetInput,
    format_: str,
    filename: str,
    settings: Settings,
) -> Obj:
    """The Job that runs `graft dataset validate` on a Dataset's data."""
    mounts = Mounts()
    path = source.path(mounts)
    args = [
        "dataset",
        "validate",
        path,
        "--format",
        format_,
        "--filename",
        filename,
        "--min-examples",
        str(settings.dataset_min_examples),
        "--max-examples",
        str(settings.dataset_max_examples),
        "--max-bytes",
        str(settings.dataset_max_bytes),
    ]
    container = _container(VALIDATOR_CONTAINER, settings.image, args, mounts.mounts())
    container["envFrom"] = _storage_env(settings)
    container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    pod: Obj = {"containers": [container]}
    if volumes := mounts.volumes():
        pod["volumes"] = volumes
    return _job(
        name=job_name(owner.name, "validate"),
        owner=owner,
        job_labels=labels(keys.DATASET_VALIDATOR, owner),
        pod=pod,
        settings=settings,
        deadline=VALIDATION_DEADLINE_SECONDS,
    )


def source_digest(uri: str) -> str:
    """The value of an inspection Job's graft.dev/inspected-source annotation for `uri`."""
    return hashlib.sha256(uri.encode()).hexdigest()[:32]


def inspector_job(*, owner: Owner, uri: str, settings: Settings) -> Obj:
    """The Job that runs `graft model inspect` on an addon Model's source, in the Model's
    namespace, with the account's own storage credentials (if it has any)."""
    mounts = Mounts()
    path = mounts.uri_path(uri)
    container = _container(
        INSPECTOR_CONTAINER, settings.image, ["model", "inspect", path], mounts.mounts()
    )
    container["envFrom"] = _storage_env(settings)
    container["resources"] = {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    pod: Obj = {"containers": [container]}
    if volumes := mounts.volumes():
        pod["volumes"] = volumes
    job = _job(
        name=job_name(owner.name, "inspect"),
        owner=owner,
        job_labels=labels(keys.MODEL_INSPECTOR, owner),
        pod=pod,
        settings=settings,
        deadline=INSPECTION_DEADLINE_SECONDS,
    )
    job["metadata"]["annotations"] = {keys.INSPECTED_SOURCE: source_digest(uri)}
    return job


def output_uri(settings: Settings, account: str, output_model: str) -> str:
    """Where a FineTuningJob's adapter goes: <artifacts root>/<account>/models/<output model>."""
    return f"{settings.artifacts_uri}/{account}/models/{output_model}"


def trainer_args(hp: Hyperparameters) -> list[str]:
    args = [
        "--epochs",
        str(hp.epochs),
        "--learning-rate",
        repr(hp.learning_rate),
        "--lora-rank",
        str(hp.lora_rank),
        "--lora-alpha",
        str(hp.lora_alpha),
        "--batch-size",
        str(hp.batch_size),
        "--max-context-length",
        str(hp.max_context_length),
        "--seed",
        str(hp.seed),
    ]
    if hp.max_steps is not None:
        args += ["--max-steps", str(hp.max_steps)]
    if hp.target_modules:
        args += ["--target-modules", ",".join(hp.target_modules)]
    return args


@dataclass(frozen=True)
class ProgressChannel:
    """Where a trainer reports its progress (the gateway's URL for this job) and the token it
    presents there (graft.core.serverkeys.progress_token)."""

    url: str
    token: str


def trainer_job(
    *,
    owner: Owner,
    base_model_uri: str,
    dataset: DatasetInput,
    dataset_sha256: str,
    output: str,
    hyperparameters: Hyperparameters,
    resources: Obj,
    settings: Settings,
    progress: ProgressChannel | None = None,
) -> Obj:
    """The Job that fetches the inputs and runs `graft train` for a FineTuningJob; with
    `progress`, the trainer (and only it) gets where and how to report its progress."""
    mounts = Mounts(scratch=True)
    base_src = mounts.uri_path(base_model_uri)
    dataset_src = dataset.path(mounts)
    output_path = mounts.uri_path(output, writable=True)
    fetch_mounts = mounts.mounts(read_only=True)
    fetch_base = _container(
        FETCH_BASE_MODEL, settings.image, ["fetch", base_src, BASE_MODEL_DIR], fetch_mounts
    )
    fetch_data = _container(
        FETCH_DATASET,
        settings.image,
        ["fetch", dataset_src, DATASET_DIR, "--name", DATASET_FILE, "--sha256", dataset_sha256],
        fetch_mounts,
    )
    for init in (fetch_base, fetch_data):
        init["envFrom"] = _storage_env(settings)
    train = _container(
        TRAINER_CONTAINER,
        settings.trainer_image,
        [
            "train",
            "--base-model",
            BASE_MODEL_DIR,
            "--dataset",
            f"{DATASET_DIR}/{DATASET_FILE}",
            "--output",
            output_path,
            *trainer_args(hyperparameters),
        ],
        mounts.mounts(),
    )
    train["env"] = [{"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    if progress is not None:
        train["env"] += [
            {"name": PROGRESS_URL_ENV, "value": progress.url},
            {"name": PROGRESS_TOKEN_ENV, "value": progress.token},
        ]
    if resources:
        train["resources"] = resources
    pod: Obj = {
        "initContainers": [fetch_base, fetch_data],
        "containers": [train],
        "volumes": mounts.volumes(),
    }
    return _job(
        name=job_name(owner.name, "train"),
        owner=owner,
        job_labels=labels(keys.TRAINER, owner),
        pod=pod,
        settings=settings,
        deadline=None,
    )


# --- Observing a Job --------------------------------------------------------------------------


@dataclass(frozen=True)
class Terminated:
    """A container that ended, with what it wrote to its termination message."""

    container: str
    exit_code: int
    reason: str
    message: str
    init: bool = False


Phase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobState:
    """A Job as Graft reports it: where it stands, in words, and how its pod ended."""

    phase: Phase
    detail: str = ""
    result: Terminated | None = None  # Succeeded: the main container; Failed: what failed
    start_time: str | None = None
    completion_time: str | None = None
    failed_pods: int = 0


def _terminated(status: Obj, init: bool) -> Terminated | None:
    term = (status.get("state") or {}).get("terminated")
    if not term:
        return None
    return Terminated(
        container=status.get("name", ""),
        exit_code=int(term.get("exitCode", 0)),
        reason=term.get("reason") or "",
        message=term.get("message") or "",
        init=init,
    )


def _statuses(pod: Obj) -> list[tuple[Obj, bool]]:
    status = pod.get("status") or {}
    return [(s, True) for s in status.get("initContainerStatuses") or []] + [
        (s, False) for s in status.get("containerStatuses") or []
    ]


def _finished_at(pod: Obj) -> str:
    times = [
        ((s.get("state") or {}).get("terminated") or {}).get("finishedAt") or ""
        for s, _ in _statuses(pod)
    ]
    return max([*times, pod["metadata"].get("creationTimestamp") or ""])


def failure_of(pod: Obj) -> Terminated | None:
    """The container whose exit failed the pod (init containers first), if any did."""
    for status, init in _statuses(pod):
        term = _terminated(status, init)
        if term is not None and term.exit_code != 0:
            return term
    return None


def pod_problem(pod: Obj) -> str:
    """Why a pod that should run is not running, in words ("" when nothing is wrong)."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message') or cond.get('reason')}"
    for s, _ in _statuses(pod):
        waiting = (s.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in ("ContainerCreating", "PodInitializing"):
            message = waiting.get("message") or ""
            return f"container {s.get('name')}: {reason}" + (f": {message}" if message else "")
    return ""


def _rfc3339(value: object) -> str | None:
    """A timestamp as the API server writes it (the client library renders UTC as +00:00)."""
    if not value:
        return None
    text = str(value)
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def observe_job(job: Obj, pods: list[Obj], main_container: str) -> JobState:
    """The Job's state from its conditions and its pods' statuses (pods of this Job only)."""
    status = job.get("status") or {}
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    start, end = _rfc3339(status.get("startTime")), _rfc3339(status.get("completionTime"))
    failed_count = int(status.get("failed") or 0)
    ordered = sorted(pods, key=_finished_at)
    if "Complete" in true:
        done = [p for p in ordered if (p.get("status") or {}).get("phase") == "Succeeded"]
        result = None
        if done:
            for s, init in _statuses(done[-1]):
                if not init and s.get("name") == main_container:
                    result = _terminated(s, init)
        return JobState("Succeeded", "", result, start, end, failed_count)
    if "Failed" in true:
        cond = true["Failed"]
        failed = [p for p in ordered if (p.get("status") or {}).get("phase") == "Failed"]
        culprit = failure_of(failed[-1]) if failed else None
        detail = cond.get("message") or cond.get("reason") or "the Job failed"
        if culprit is None and failed:
            pod_status = failed[-1].get("status") or {}
            if pod_status.get("message"):
                detail = f"{detail}; pod {failed[-1]['metadata']['name']}: {pod_status['message']}"
        end = end or _rfc3339(cond.get("lastTransitionTime"))
        return JobState("Failed", detail, culprit, start, end, failed_count)
    live = [
        p for p in ordered if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    retry = ""
    if failed_count:
        previous = [p for p in ordered if (p.get("status") or {}).get("phase") == "Failed"]
        culprit = failure_of(previous[-1]) if previous else None
        why = (
            f": {culprit.container} exited {culprit.exit_code}: {culprit.message.strip()[:300]}"
            if culprit
            else ""
        )
        retry = f" (attempt {failed_count + 1} of {BACKOFF_LIMIT + 1}; the last one failed{why})"
    if not live:
        return JobState(
            "Pending",
            "waiting for the Job's pod to be created" + retry,
            None,
            start,
            None,
            failed_count,
        )
    pod = live[-1]
    problem = pod_problem(pod)
    phase = (pod.get("status") or {}).get("phase")
    if problem:
        return JobState("Pending", problem + retry, None, start, None, failed_count)
    if phase == "Running":
        return JobState(
            "Running",
            f"pod {pod['metadata']['name']} is running" + retry,
            None,
            start,
            None,
            failed_count,
        )
    return JobState(
        "Pending",
        f"pod {pod['metadata']['name']} is starting" + retry,
        None,
        start,
        None,
        failed_count,
    )


# --- Conditions of kinds that end -----------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a Dataset or FineTuningJob stands: one of four kinds, with a reason and message."""

    kind: Literal["waiting", "running", "succeeded", "failed"]
    reason: str
    message: str

    @classmethod
    def waiting(cls, reason: str, message: str) -> Progress:
        return cls("waiting", reason, message)

    @classmethod
    def running(cls, reason: str, message: str) -> Progress:
        return cls("running", reason, message)

    @classmethod
    def succeeded(cls, reason: str, message: str) -> Progress:
        return cls("succeeded", reason, message)

    @classmethod
    def failed(cls, reason: str, message: str) -> Progress:
        return cls("failed", reason, message)

    @property
    def finished(self) -> bool:
        return self.kind in ("succeeded", "failed")


def lifecycle_conditions(
    previous: list[Condition],
    progress: Progress,
    *,
    generation: int,
    now: str,
    running_state: str,
    succeeded_state: str = "Ready",
) -> tuple[list[Condition], str]:
    """Ready always; Succeeded or Failed (True) once the thing has ended, which is final.

    Returns the conditions and the short state for the printer column.
    """

    def cond(conds: list[Condition], type_: str, ok: bool) -> list[Condition]:
        return set_condition(
            conds, type_, ok, progress.reason, progress.message, generation=generation, now=now
        )

    conditions = cond(list(previous), "Ready", progress.kind == "succeeded")
    if progress.kind == "succeeded":
        return cond(conditions, "Succeeded", True), succeeded_state
    if progress.kind == "failed":
        return cond(conditions, "Failed", True), "Failed"
    return conditions, "Waiting" if progress.kind == "waiting" else running_state
