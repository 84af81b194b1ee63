"""Model reconciler: validate what can be validated without downloading weights, have an
addon's adapter_config.json read by an inspection Job in the Model's namespace (the operator
itself never fetches a URI a tenant names), record its rank and target modules, and say where
the model is used. Deletion of a used Model waits (see `release`)."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.models import ModelKind, ModelSpec, ModelStatus
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.lookup import missing_claim
from graft.controller.rechecks import UNWATCHED, look_again
from graft.controller.status import publish
from graft.core import keys
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.names import InvalidReference, full_name, parse_ref
from graft.core.objects import Obj, Owner, is_terminating, owned_by
from graft.core.settings import Settings
from graft.plan.indices import USES_MODEL
from graft.plan.jobs import (
    INSPECTOR_CONTAINER,
    inspector_job,
    job_name,
    observe_job,
    source_digest,
)
from graft.plan.model import (
    AdapterFacts,
    ModelProblem,
    check_base,
    check_source,
    in_use,
    in_use_message,
    inspection_outcome,
    model_status,
    validated,
)

log = logging.getLogger(__name__)

PLURAL = Plural.MODELS


def validate(api: Api, obj: Obj, spec: ModelSpec, status: ModelStatus, settings: Settings) -> None:
    """Raise the ModelProblem that keeps the Model from being Ready, if any."""
    check_source(spec)
    if spec.kind != ModelKind.PEFT_ADDON:
        return
    namespace = obj["metadata"]["namespace"]
    try:
        ref = parse_ref(spec.base_model or "", Plural.MODELS, account=namespace)
    except InvalidReference as exc:
        raise ModelProblem("InvalidBaseModel", str(exc)) from exc
    check_base(ref, api.cached_graft(Plural.MODELS, ref.account, ref.id), namespace)
    inspect_adapter(api, obj, spec.source.uri, settings).record(status)


def inspect_adapter(api: Api, obj: Obj, uri: str, settings: Settings) -> AdapterFacts:
    """The adapter's facts: from status when this source was inspected before, else from the
    inspection Job, which this creates (or replaces, when it read another source)."""
    recorded = AdapterFacts.recorded(obj.get("status") or {}, uri)
    if recorded is not None:
        return recorded
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    jname = job_name(name, "inspect")
    job = api.get_job(namespace, jname)
    if job is not None and not owned_by(job, uid):
        raise ModelProblem(
            "Inspecting",
            f"Job {jname} of an earlier Model named {name} still exists; waiting for the "
            "garbage collector to delete it",
            waiting=True,
        )
    if job is not None:
        read = (job["metadata"].get("annotations") or {}).get(keys.INSPECTED_SOURCE)
        if read != source_digest(uri):
            api.delete_job(namespace, jname, job["metadata"]["uid"])
            log.info("deleted inspection Job %s/%s: the source changed", namespace, jname)
            raise ModelProblem(
                "Inspecting",
                f"the source changed; replacing inspection Job {jname}",
                waiting=True,
            )
    if job is None:
        if (missing := missing_claim(api, namespace, uri)) is not None:
            raise ModelProblem("WaitingForVolume", missing, waiting=True)
        manifest = inspector_job(owner=Owner.of(obj), uri=uri, settings=settings)
        job = api.create_job(manifest) or api.get_job(namespace, jname)
        if job is None:
            raise ModelProblem("Inspecting", f"creating inspection Job {jname}", waiting=True)
        log.info("created inspection Job %s/%s", namespace, jname)
    pods = api.job_pods(namespace, job["metadata"]["uid"])
    return inspection_outcome(uri, jname, observe_job(job, pods, INSPECTOR_CONTAINER))


def used_by(
    api: Api, namespace: str, name: str, kind: str, public: bool = False
) -> tuple[list[str], list[str]]:
    """(Deployments serving this base model, DeployedModels loading this addon), full names;
    of every account when the model is public, else of its own."""
    me = full_name(namespace, PLURAL, name)
    scope = None if public else namespace
    deployments, deployed = [], []
    if kind == ModelKind.BASE:
        for d in api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, me, scope):
            where = d["metadata"]["namespace"]
            deployments.append(full_name(where, Plural.DEPLOYMENTS, d["metadata"]["name"]))
    else:
        for dm in api.cached_index(Plural.DEPLOYED_MODELS, USES_MODEL, me, scope):
            where = dm["metadata"]["namespace"]
            deployed.append(full_name(where, Plural.DEPLOYED_MODELS, dm["metadata"]["name"]))
            dep = _refers(dm, "deployment", where, Plural.DEPLOYMENTS)
            if dep is not None:
                deployments.append(full_name(dep[0], Plural.DEPLOYMENTS, dep[1]))
    return sorted(set(deployments)), sorted(deployed)


def _refers(
    obj: Obj, field: str, namespace: str, plural: str = Plural.MODELS
) -> tuple[str, str] | None:
    try:
        ref = parse_ref((obj.get("spec") or {}).get(field, ""), plural, account=namespace)
    except InvalidReference:
        return None
    return ref.account, ref.id


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None:
        return
    if is_terminating(obj):
        release(api, obj)
        return
    protected = keys.IN_USE_FINALIZER in (obj["metadata"].get("finalizers") or [])
    if bool(users_of(api, obj)) != protected:
        # The in-use finalizer is on a Model while something uses it, and only then: deleting
        # an unused Model never waits for the operator.
        if protected:
            api.remove_finalizer(PLURAL, obj, keys.IN_USE_FINALIZER)
        else:
            api.add_finalizer(PLURAL, obj, keys.IN_USE_FINALIZER)
        # Go on with what was written: a finalizer's event is metadata only, and no reconcile
        # follows it.
        obj = api.get_graft(PLURAL, namespace, name)
        if obj is None:
            return
        if is_terminating(obj):
            release(api, obj)
            return
    generation = obj["metadata"].get("generation", 0)
    status = ModelStatus(observed_generation=generation, name=full_name(namespace, PLURAL, name))
    try:
        spec = ModelSpec.model_validate(obj.get("spec") or {})
        if spec.kind == ModelKind.PEFT_ADDON:
            status.job_name = job_name(name, "inspect")
        validate(api, obj, spec, status, ctx.settings)
    except ValidationError as exc:
        problem: ModelProblem | None = ModelProblem("InvalidSpec", str(exc))
    except ModelProblem as exc:
        problem = exc
    else:
        problem = None
    deployments, message = [], ""
    if problem is None:
        deployments = used_by(api, namespace, name, str(spec.kind))[0]
        message = validated(spec, status)
    status = model_status(
        status,
        generation=generation,
        problem=problem,
        message=message,
        deployments=deployments,
        previous=conditions_of(obj),
        now=now_rfc3339(),
    )
    publish(
        api,
        obj,
        PLURAL,
        status,
        warning=problem is not None,
        quiet={"Inspecting"},
    )
    if problem is not None and problem.reason in UNWATCHED:
        look_again(ctx, PLURAL, namespace, name, conditions_of(obj))


def users_of(api: Api, obj: Obj) -> list[str]:
    """What keeps a Model from going: the Deployments serving a base model, the DeployedModels
    loading an addon (of every account when it is public)."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    kind = str(spec.get("kind", ""))
    deployments, deployed = used_by(
        api, meta["namespace"], meta["name"], kind, bool(spec.get("public"))
    )
    return deployed if kind == ModelKind.PEFT_ADDON else deployments


def release(api: Api, obj: Obj) -> None:
    """A deleted Model goes when nothing uses it; until then its status says what does. Called
    by the events of the Model and of what uses it, never by a timer: a blocked deletion makes
    no writes while it waits."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    users = users_of(api, obj)
    if not users:
        api.remove_finalizer(PLURAL, obj, keys.IN_USE_FINALIZER)
        log.info("released deleted Model %s/%s: nothing uses it", namespace, name)
        return
    message = in_use_message(users)
    status = in_use(obj.get("status") or {}, message, meta.get("generation"), now_rfc3339())
    publish(api, obj, PLURAL, status, warning=True)
