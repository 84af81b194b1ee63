"""FineTuningJob reconciler: wait for the inputs, run the trainer Job, publish the addon.

Every trigger (create, resume, resync, events of its trainer Job, of Datasets and of Models)
calls `reconcile()`, which reads the job and everything it depends on afresh. A FineTuningJob that
has ended (Succeeded or Failed) is final: its spec is immutable, so re-applying it, or any later
event, changes nothing.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from graft.api.kinds import Plural
from graft.api.training import DatasetSpec, FineTuningJobSpec
from graft.controller.context import Context
from graft.controller.dataset import source_problem
from graft.controller.kube import Api
from graft.controller.lookup import missing_claim
from graft.controller.rechecks import UNWATCHED, look_again
from graft.controller.status import publish
from graft.core.conditions import conditions_of, finished, now_rfc3339
from graft.core.names import InvalidReference, Ref, full_name, parse_ref
from graft.core.objects import Obj, Owner, is_terminating, owned_by
from graft.core.settings import Settings
from graft.plan.deployment import resource_requirements
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
    progress_channel,
    progress_of,
    training_progress,
)
from graft.plan.jobs import (
    TRAINER_CONTAINER,
    Progress,
    job_name,
    observe_job,
    output_uri,
    trainer_job,
)

log = logging.getLogger(__name__)

PLURAL = Plural.FINE_TUNING_JOBS


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return  # its trainer Job goes with it; the published Model stays
    previous = conditions_of(obj)
    if finished(previous):
        return
    spec = FineTuningJobSpec.model_validate(obj.get("spec") or {})
    outcome = evaluate(api, obj, spec, ctx.settings, ctx.server_key_seed)
    status = finetuning_status(
        generation=obj["metadata"].get("generation", 0),
        full_name=full_name(namespace, PLURAL, name),
        outcome=outcome,
        previous=previous,
        now=now_rfc3339(),
        progress=progress_of(obj.get("status")),
    )
    publish(api, obj, PLURAL, status, warning=outcome.progress.kind == "failed")
    if outcome.progress.reason in UNWATCHED:
        look_again(ctx, PLURAL, namespace, name, previous)


def references(spec: FineTuningJobSpec, namespace: str) -> dict[str, Ref] | Progress:
    try:
        refs = {
            "base": parse_ref(spec.base_model, Plural.MODELS, account=namespace),
            "dataset": parse_ref(spec.dataset, Plural.DATASETS, account=namespace),
        }
        if spec.evaluation_dataset:
            refs["evaluation"] = parse_ref(
                spec.evaluation_dataset, Plural.DATASETS, account=namespace
            )
        if spec.deployment:
            refs["deployment"] = parse_ref(spec.deployment, Plural.DEPLOYMENTS, account=namespace)
    except InvalidReference as exc:
        return Progress.failed("InvalidReference", str(exc))
    for role in ("dataset", "evaluation"):
        ref = refs.get(role)
        if ref is not None and ref.account != namespace:
            return Progress.failed(
                "DatasetNotInAccount",
                f"{ref.full_name} belongs to account {ref.account}: a FineTuningJob trains on "
                "Datasets of its own account",
            )
    return refs


def evaluate(
    api: Api, obj: Obj, spec: FineTuningJobSpec, settings: Settings, seed: bytes = b""
) -> TrainingOutcome:
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    refs = references(spec, namespace)
    if isinstance(refs, Progress):
        return TrainingOutcome(refs)
    jname = job_name(name, "train")
    out_uri = output_uri(settings, namespace, spec.output_model)
    out_full = full_name(namespace, Plural.MODELS, spec.output_model)
    job = api.get_job(namespace, jname)
    if job is not None and not owned_by(job, uid):
        return TrainingOutcome(
            Progress.waiting(
                "WaitingForOldJob",
                f"Job {jname} of an earlier FineTuningJob named {name} still exists; waiting for "
                "the garbage collector to delete it",
            ),
            job_name=jname,
        )
    if job is None:
        ready = inputs_ready(api, obj, spec, refs, settings)
        if isinstance(ready, Progress):
            return TrainingOutcome(ready, output_uri=out_uri)
        dataset, base_uri = ready
        res = spec.resources
        manifest = trainer_job(
            owner=Owner.of(obj),
            base_model_uri=base_uri,
            dataset=dataset.input,
            dataset_sha256=dataset.sha256,
            output=out_uri,
            hyperparameters=spec.hyperparameters,
            resources=resource_requirements(res.gpus, res.gpu_resource, res.cpu, res.memory),
            settings=settings,
            progress=progress_channel(settings.gateway_url, seed, namespace, name, uid),
        )
        job = api.create_job(manifest) or api.get_job(namespace, jname)
        if job is None:
            return TrainingOutcome(
                Progress.running("Training", f"creating trainer Job {jname}"),
                job_name=jname,
                output_uri=out_uri,
            )
        log.info("created trainer Job %s/%s", namespace, jname)
    state = observe_job(job, api.job_pods(namespace, job["metadata"]["uid"]), TRAINER_CONTAINER)
    result = training_progress(jname, state, TRAINER_CONTAINER)
    if isinstance(result, Progress):
        return TrainingOutcome(result, job_name=jname, output_uri=out_uri, job=state)

    # Trained: publish the addon Model, then the DeployedModel when asked.
    model = output_model(
        name=spec.output_model,
        namespace=namespace,
        base_model=spec.base_model,
        uri=out_uri,
        job=name,
        job_uid=uid,
        dataset=refs["dataset"].full_name,
    )
    if api.create_graft(Plural.MODELS, model) is None:
        taken = output_taken(
            api.get_graft(Plural.MODELS, namespace, spec.output_model),
            "Model",
            out_full,
            name,
            uid,
        )
        if taken is not None:
            return TrainingOutcome(
                Progress.failed(
                    taken.reason,
                    f"the adapter was trained to {out_uri}, but {taken.message}",
                ),
                job_name=jname,
                output_uri=out_uri,
                summary=result,
                job=state,
            )
    message = f"trained {out_full}"
    if result.steps is not None:
        message += f" in {result.steps} steps"
    if result.final_loss is not None:
        message += f" (final loss {result.final_loss:.4g})"
    dm_full: str | None = None
    if spec.deployment:
        dm_full = full_name(namespace, Plural.DEPLOYED_MODELS, spec.output_model)
        dm = deployed_model(
            name=spec.output_model,
            namespace=namespace,
            deployment=spec.deployment,
            job=name,
            job_uid=uid,
        )
        if api.create_graft(Plural.DEPLOYED_MODELS, dm) is None:
            existing = api.get_graft(Plural.DEPLOYED_MODELS, namespace, spec.output_model)
            if existing is not None and not made_by(existing, name, uid):
                # Training worked and the Model is published; only the loading was not done.
                message += (
                    f"; NOT loaded into {spec.deployment}: DeployedModel {dm_full} already exists "
                    "and was not created by this job"
                )
                api.event(obj, "Warning", "DeployedModelExists", message)
                dm_full = None
        if dm_full:
            message += f"; loading into {refs['deployment'].full_name} (DeployedModel {dm_full})"
    return TrainingOutcome(
        Progress.succeeded("Trained", message),
        job_name=jname,
        output_uri=out_uri,
        output_model=out_full,
        deployed_model=dm_full,
        summary=result,
        job=state,
    )


def inputs_ready(
    api: Api, obj: Obj, spec: FineTuningJobSpec, refs: dict[str, Ref], settings: Settings
) -> Progress | tuple[ReadyDataset, str]:
    """Everything the trainer Job needs exists and is Ready; or why it must wait or fail."""
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    out_full = full_name(namespace, Plural.MODELS, spec.output_model)
    taken = output_taken(
        api.get_graft(Plural.MODELS, namespace, spec.output_model), "Model", out_full, name, uid
    )
    if taken is not None:
        return taken
    if spec.deployment:
        taken = output_taken(
            api.get_graft(Plural.DEPLOYED_MODELS, namespace, spec.output_model),
            "DeployedModel",
            full_name(namespace, Plural.DEPLOYED_MODELS, spec.output_model),
            name,
            uid,
        )
        if taken is not None:
            return taken
    dataset_obj = api.cached_graft(Plural.DATASETS, namespace, refs["dataset"].id)
    dataset = dataset_gate(dataset_obj, refs["dataset"])
    if isinstance(dataset, Progress):
        return dataset
    if "evaluation" in refs:
        ref = refs["evaluation"]
        evaluation = dataset_gate(
            api.cached_graft(Plural.DATASETS, namespace, ref.id), ref, "evaluation dataset"
        )
        if isinstance(evaluation, Progress):
            return evaluation
    base = refs["base"]
    base_uri = base_model_gate(
        api.cached_graft(Plural.MODELS, base.account, base.id), base, namespace
    )
    if isinstance(base_uri, Progress):
        return base_uri
    # The data must still be where it was validated (the trainer checks its sha256 too).
    assert dataset_obj is not None
    problem = source_problem(api, namespace, DatasetSpec.model_validate(dataset_obj["spec"]))
    if problem is not None:
        return problem
    out_uri = output_uri(settings, namespace, spec.output_model)
    for uri in (base_uri, out_uri):
        if (missing := missing_claim(api, namespace, uri)) is not None:
            if urlparse(uri).netloc == settings.artifacts_claim():
                missing += "; the operator writes trained adapters there (GRAFT_ARTIFACTS_URI)"
            return Progress.waiting("WaitingForVolume", missing)
    return dataset, base_uri
