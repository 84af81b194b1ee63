"""Dataset reconciler: validate the data once, in a Job, and report its signature.

Every trigger (create, resume, resync, events of the validation Job) calls `reconcile()`, which
reads the Dataset and its Job afresh. A Dataset whose validation has ended (Succeeded or Failed)
is final: its spec is immutable, so it is never validated again; only its signature labels are
restored if someone removed them.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from graft.api.kinds import Plural
from graft.api.training import DatasetSpec
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.lookup import missing_claim
from graft.controller.rechecks import UNWATCHED, look_again
from graft.controller.status import publish
from graft.core.conditions import conditions_of, finished, is_true, now_rfc3339
from graft.core.names import full_name
from graft.core.objects import Obj, Owner, is_terminating, labels_of, owned_by
from graft.core.settings import Settings
from graft.core.signatures import signature_labels
from graft.plan.dataset import (
    DatasetOutcome,
    dataset_status,
    default_filename,
    validation_outcome,
)
from graft.plan.jobs import (
    VALIDATOR_CONTAINER,
    DatasetInput,
    Progress,
    job_name,
    observe_job,
    validator_job,
)

log = logging.getLogger(__name__)

PLURAL = Plural.DATASETS


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return  # the validation Job goes with it (garbage collection)
    meta = obj["metadata"]
    previous_status = obj.get("status") or {}
    previous = conditions_of(obj)
    if finished(previous):
        if previous_status.get("sha256") and is_true(previous, "Succeeded"):
            ensure_labels(
                api,
                obj,
                signature_labels(previous_status["sha256"], previous_status.get("filename") or ""),
            )
        return
    spec = DatasetSpec.model_validate(obj.get("spec") or {})
    outcome = evaluate(api, obj, spec, ctx.settings)
    if outcome.labels:
        ensure_labels(api, obj, outcome.labels)  # before status: Ready means findable
    status = dataset_status(
        generation=meta.get("generation", 0),
        full_name=full_name(namespace, PLURAL, name),
        outcome=outcome,
        previous=previous,
        now=now_rfc3339(),
    )
    publish(api, obj, PLURAL, status, warning=outcome.progress.kind == "failed")
    if outcome.progress.reason in UNWATCHED:
        look_again(ctx, PLURAL, namespace, name, previous)


def evaluate(api: Api, obj: Obj, spec: DatasetSpec, settings: Settings) -> DatasetOutcome:
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
        manifest = validator_job(
            owner=Owner.of(obj),
            source=source,
            format_=str(spec.format),
            filename=default_filename(spec),
            settings=settings,
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
    if (missing := missing_claim(api, namespace, source.uri or "")) is not None:
        return Progress.waiting("WaitingForVolume", missing)
    return None


def ensure_labels(api: Api, obj: Obj, wanted: dict[str, str]) -> None:
    meta = obj["metadata"]
    found = labels_of(obj)
    if any(found.get(k) != v for k, v in wanted.items()):
        api.patch_graft_labels(PLURAL, meta["namespace"], meta["name"], wanted)
