"""Dataset reconciler: validate the data once, in a Job, and report its signature.

Every trigger (create, resume, resync, events of the validation Job) calls `reconcile()`, which
reads the Dataset and its Job afresh. A Dataset whose validation has ended (Succeeded or Failed)
is final: its spec is immutable, so it is never validated again; only its signature labels are
restored if someone removed them.
"""

from __future__ import annotations

import functools
import logging
import os
from urllib.parse import urlparse

from graft.api.common import Condition
from graft.api.training import DatasetSpec
from graft.controller.kube import Api, Obj
from graft.controller.status import write_status
from graft.core.conditions import find, is_true, now_rfc3339
from graft.core.names import full_name
from graft.plan.dataset import (
    DatasetOutcome,
    dataset_status,
    default_filename,
    signature_labels,
    validation_outcome,
)
from graft.plan.deployment import Owner
from graft.plan.jobs import (
    VALIDATOR_CONTAINER,
    DatasetInput,
    JobsConfig,
    Progress,
    finished,
    job_name,
    observe_job,
    validator_job,
)

log = logging.getLogger(__name__)

PLURAL = "datasets"


@functools.cache
def config() -> JobsConfig:
    """The operator's Job settings, read once from its environment (see JobsConfig.from_env)."""
    return JobsConfig.from_env(os.environ)


def owned_by(obj: Obj, uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


def reconcile(api: Api, namespace: str, name: str) -> None:
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return  # the validation Job goes with it (garbage collection)
    meta = obj["metadata"]
    previous_status = obj.get("status") or {}
    previous = [Condition.model_validate(c) for c in previous_status.get("conditions") or []]
    if finished(previous):
        if previous_status.get("sha256") and is_true(previous, "Succeeded"):
            ensure_labels(
                api,
                obj,
                signature_labels(previous_status["sha256"], previous_status.get("filename") or ""),
            )
        return
    spec = DatasetSpec.model_validate(obj.get("spec") or {})
    outcome = evaluate(api, obj, spec, config())
    if outcome.labels:
        ensure_labels(api, obj, outcome.labels)  # before status: Ready means findable
    status = dataset_status(
        generation=meta.get("generation", 0),
        full_name=full_name(namespace, PLURAL, name),
        outcome=outcome,
        previous=previous,
        now=now_rfc3339(),
    )
    write_status(api, obj, previous_status, status.wire(), PLURAL)
    record_event(api, obj, previous, outcome.progress)


def evaluate(api: Api, obj: Obj, spec: DatasetSpec, cfg: JobsConfig) -> DatasetOutcome:
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    jname = job_name(name, "validate")
    job = api.get_job(namespace, jname)
    if job is not None and not owned_by(job, uid):
        return DatasetOutcome(
            Progress.waiting(
                "WaitingForOldJob",
                f"Job {jname} of an earlier Dataset named {name} still exists; waiting for the "
                "garbage collector to delete it",
            ),
            job_name=jname,
        )
    if job is None:
        blocked = source_problem(api, namespace, spec)
        if blocked is not None:
            return DatasetOutcome(blocked)
        source = (
            DatasetInput(config_map=(spec.source.config_map.name, spec.source.config_map.key))
            if spec.source.config_map is not None
            else DatasetInput(uri=spec.source.uri)
        )
        owner = Owner(
            name=name,
            namespace=namespace,
            uid=uid,
            generation=meta.get("generation", 0),
            kind="Dataset",
        )
        manifest = validator_job(
            owner=owner,
            source=source,
            format_=str(spec.format),
            filename=default_filename(spec),
            config=cfg,
        )
        job = api.create_job(manifest) or api.get_job(namespace, jname)
        if job is None:
            return DatasetOutcome(
                Progress.running("Validating", f"creating validation Job {jname}"), job_name=jname
            )
        log.info("created validation Job %s/%s", namespace, jname)
    pods = api.job_pods(namespace, job["metadata"]["uid"])
    return validation_outcome(
        jname, observe_job(job, pods, VALIDATOR_CONTAINER), VALIDATOR_CONTAINER
    )


def source_problem(api: Api, namespace: str, spec: DatasetSpec) -> Progress | None:
    """Why a validation Job for this source cannot run (yet), or None."""
    source = spec.source
    if source.config_map is not None:
        cm = api.get_config_map(namespace, source.config_map.name)
        if cm is None:
            return Progress.waiting(
                "WaitingForConfigMap",
                f"ConfigMap {source.config_map.name} does not exist (yet) in namespace {namespace}",
            )
        if source.config_map.key not in {**(cm.get("data") or {}), **(cm.get("binaryData") or {})}:
            return Progress.waiting(
                "WaitingForConfigMap",
                f"ConfigMap {source.config_map.name} has no key {source.config_map.key!r}",
            )
        return None
    parsed = urlparse(source.uri or "")
    if parsed.scheme == "hf":
        return Progress.failed(
            "UnsupportedSource",
            f"{source.uri} names a whole Hugging Face repository; a Dataset is one file: use the "
            "file's https://huggingface.co/datasets/<org>/<name>/resolve/<revision>/<path> URL",
        )
    if parsed.scheme == "pvc" and api.get_pvc(namespace, parsed.netloc) is None:
        return Progress.waiting(
            "WaitingForVolume",
            f"PersistentVolumeClaim {parsed.netloc} does not exist (yet) in namespace {namespace}",
        )
    return None


def ensure_labels(api: Api, obj: Obj, wanted: dict[str, str]) -> None:
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        api.patch_graft_labels(PLURAL, meta["namespace"], meta["name"], wanted)


def record_event(api: Api, obj: Obj, previous: list[Condition], progress: Progress) -> None:
    """An Event when the Ready condition's reason changes: the transitions a person follows."""
    old = find(previous, "Ready")
    if old is not None and old.reason == progress.reason:
        return
    kind = "Warning" if progress.kind == "failed" else "Normal"
    api.event(obj, kind, progress.reason, progress.message)
