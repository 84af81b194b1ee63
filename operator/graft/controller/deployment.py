"""Deployment reconciler: read everything, plan with pure functions, act, write status once.

Create, update, resume, the periodic resync and events of the Deployment's pods and of Models all
call `reconcile()`, which reads fresh state from the API server each time, so it does not matter
which event arrived or whether one was missed.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.models import ModelKind, ModelSpec
from graft.api.serving import DeploymentSpec
from graft.controller.context import Context
from graft.controller.kube import Api, error_message
from graft.controller.lookup import (
    addon_verdicts,
    deployed_models_of,
    deployment_facts,
    ready_pod_urls,
    server_api_key,
)
from graft.controller.modelclient import ModelServerError
from graft.controller.status import publish
from graft.core import keys
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.names import InvalidReference, full_name, parse_ref
from graft.core.objects import Obj, Owner, is_ready, is_terminating, labels_of
from graft.plan.deployment import (
    SURGE_REFUSED,
    BlockedBy,
    ObservedPod,
    PodPlan,
    autoscaling_of,
    deployment_status,
    invalid_spec_status,
    model_server_pod,
    pod_plan,
    pod_spec,
    resource_requirements,
    selector_string,
    server_key_secret,
    server_key_secret_name,
    service,
    spec_hash,
    spec_problem,
)
from graft.plan.engines import Addon, ServerSpec
from graft.plan.storage import Location, UnsupportedSource, addons_claim_mount, locate

log = logging.getLogger(__name__)

PLURAL = Plural.DEPLOYMENTS


def observe_pod(pod: Obj) -> ObservedPod:
    meta = pod["metadata"]
    return ObservedPod(
        name=meta["name"],
        spec_hash=labels_of(pod).get(keys.SPEC_HASH),
        ready=is_ready(pod),
        terminating=is_terminating(pod),
        finished=(pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        created=meta.get("creationTimestamp") or "",
    )


def resolve_base_model(
    api: Api, spec: DeploymentSpec, namespace: str
) -> tuple[Location, str] | BlockedBy:
    """The base model's location and served name, or why it cannot be served."""
    try:
        ref = parse_ref(spec.base_model, Plural.MODELS, account=namespace)
    except InvalidReference as exc:
        return BlockedBy("InvalidBaseModel", str(exc), waiting=False)
    model = api.cached_graft(Plural.MODELS, ref.account, ref.id)
    if model is None:
        return BlockedBy(
            "BaseModelNotFound", f"base model {ref.full_name} does not exist (yet)", waiting=True
        )
    try:
        model_spec = ModelSpec.model_validate(model.get("spec") or {})
    except ValidationError as exc:
        return BlockedBy(
            "InvalidBaseModel",
            f"base model {ref.full_name} has an invalid spec: {exc}",
            waiting=True,
        )
    if model_spec.kind != ModelKind.BASE:
        return BlockedBy(
            "BaseModelNotBase",
            f"{ref.full_name} is a {model_spec.kind} model; a Deployment serves a Base model (load addons with a DeployedModel)",
            waiting=False,
        )
    if ref.account != namespace and not model_spec.public:
        return BlockedBy(
            "BaseModelNotShared",
            f"{ref.full_name} belongs to account {ref.account} and is not public",
            waiting=False,
        )
    if ref.account != namespace and urlparse(model_spec.source.uri).scheme == "pvc":
        # A claim name means a claim in the pod's own namespace: this account's claim of that
        # name (its own data, or nothing) would be served under the other account's model name.
        return BlockedBy(
            "BaseModelNotReachable",
            f"{ref.full_name} is on a PersistentVolumeClaim of account {ref.account}, which "
            f"model servers in account {namespace} cannot mount",
            waiting=False,
        )
    try:
        location = locate(model_spec.source.uri)
    except UnsupportedSource as exc:
        return BlockedBy("UnsupportedModelSource", str(exc), waiting=False)
    return location, ref.full_name


def desired_pod_spec(
    spec: DeploymentSpec,
    location: Location,
    served_name: str,
    image: str,
    *,
    addons: tuple[Addon, ...] = (),
    addons_claim: str | None = None,
    key_secret: str | None = None,
) -> dict[str, Any]:
    if addons_claim:
        extra = addons_claim_mount(addons_claim)
        location = Location(
            path=location.path,
            volumes=[*location.volumes, *extra.volumes],
            mounts=[*location.mounts, *extra.mounts],
        )
    res = spec.resources
    server = ServerSpec(
        model_path=location.path,
        served_name=served_name,
        image=image,
        enable_addons=spec.enable_addons,
        max_addons=spec.max_addons,
        max_addon_rank=spec.max_addon_rank,
        addons=addons,
        extra_args=tuple(spec.engine_args or ()),
        resources=resource_requirements(res.gpus, res.gpu_resource, res.cpu, res.memory),
        mounts=tuple(location.mounts),
        env=tuple(e.wire() for e in spec.env or ()),
        api_key_secret=key_secret,
    )
    return pod_spec(spec, server, location.volumes)


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return  # owned pods and Service go with it (garbage collection)
    owner = Owner.of(obj)
    previous = conditions_of(obj)
    try:
        spec = DeploymentSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        # Admitted under an older CRD: a condition, not a retry loop.
        status = invalid_spec_status(
            owner, full_name(namespace, PLURAL, name), str(exc), previous, now_rfc3339()
        )
        publish(api, obj, PLURAL, status, warning=True)
        return

    selector = selector_string(name)
    raw_pods = api.list_pods(namespace, selector)
    pods = [observe_pod(p) for p in raw_pods]
    resolved = spec_problem(spec, ctx.settings.image_allowed) or resolve_base_model(
        api, spec, namespace
    )
    current_hash: str | None = None
    blocked: BlockedBy | None = None
    if isinstance(resolved, BlockedBy):
        blocked = resolved
    else:
        location, served_name = resolved
        # The addon set is not part of the template hash: adding or removing an addon never
        # restarts a pod. Running pods get addons over HTTP (DeployedModel reconciler); pods
        # created from now on start with the whole current set on their command line.
        addons = admitted_addons(ctx, namespace, name, spec, served_name)
        claim = addons_claim(ctx, namespace, spec)
        image = spec.image or ctx.settings.engine_image(spec.engine)
        key_secret = server_key_secret_name(name)
        # Nor are what the user did not ask for: the operator's default image for the engine
        # (an operator upgrade does not restart every Deployment) and whether the artifacts
        # claim exists yet (pods created once it does mount it).
        current_hash = spec_hash(
            desired_pod_spec(
                spec,
                location,
                served_name,
                spec.image or f"<the operator's {spec.engine} image>",
                key_secret=key_secret,
            )
        )
        ensure_service(api, owner)
        strategy = spec.strategy
        plan = pod_plan(
            spec.replicas,
            current_hash,
            pods,
            max_surge=strategy.max_surge,
            max_unavailable=strategy.max_unavailable,
        )
        if not plan.empty:
            template = desired_pod_spec(
                spec,
                location,
                served_name,
                image,
                addons=addons,
                addons_claim=claim,
                key_secret=key_secret,
            )
            pod = model_server_pod(owner, template, current_hash)
            if plan.create:
                ensure_server_key(api, owner, server_api_key(ctx, namespace, name))
            uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in raw_pods}
            created, blocked = execute_plan(api, owner, plan, pod, uids)
            if blocked is not None and plan.create and "RollingUpdate" in plan.reasons:
                # No room above spec.replicas (an exact quota): replace one at a time.
                one_by_one = pod_plan(
                    spec.replicas,
                    current_hash,
                    pods,
                    max_surge=0,
                    max_unavailable=strategy.max_unavailable,
                    surge_refused=True,
                )
                extra = PodPlan(delete=tuple(d for d in one_by_one.delete if d not in plan.delete))
                execute_plan(api, owner, extra, pod, uids)
                plan = PodPlan(plan.create, plan.delete + extra.delete, plan.reasons)
                blocked = BlockedBy(
                    SURGE_REFUSED,
                    f"a pod above spec.replicas was refused ({blocked.message}); replacing "
                    "pods one at a time",
                    waiting=True,
                )
            before = sum(1 for p in pods if not p.terminating)
            record_plan_events(
                api, obj, desired=spec.replicas, before=before, created=created, plan=plan
            )
            pods = [observe_pod(p) for p in api.list_pods(namespace, selector)]

    status = deployment_status(
        owner=owner,
        spec=spec,
        full_name=full_name(namespace, PLURAL, name),
        pods=pods,
        current_hash=current_hash,
        blocked=blocked,
        previous=previous,
        now=now_rfc3339(),
        autoscaling=autoscaling_of(obj.get("status")),
    )
    if spec.enable_addons and (blocked is None or blocked.reason == SURGE_REFUSED):
        status.addons = served_addons(ctx, namespace, name)
    # Ready=False while replicas come up is routine (the plan's own Events say what it did).
    publish(api, obj, PLURAL, status, warning=blocked is not None, quiet={"ReplicasNotReady"})


def addons_claim(ctx: Context, namespace: str, spec: DeploymentSpec) -> str | None:
    """The artifacts claim, when addons are enabled and the account has it: trained addons
    live there, and a running replica cannot mount a volume later."""
    claim = ctx.settings.artifacts_claim()
    if not spec.enable_addons or claim is None:
        return None
    return claim if ctx.api.get_pvc(namespace, claim) is not None else None


def admitted_addons(
    ctx: Context, namespace: str, name: str, spec: DeploymentSpec, served_name: str
) -> tuple[Addon, ...]:
    if not spec.enable_addons:
        return ()
    facts = deployment_facts(namespace, name, spec)
    dms = deployed_models_of(ctx.api, namespace, name)
    verdicts, models = addon_verdicts(ctx, namespace, facts, dms)
    # Only addons some replica has really loaded go on the command line: a broken adapter
    # must not keep new replicas from starting.
    loaded = {dm["metadata"]["name"] for dm in dms if is_ready(dm)}
    out = []
    for dm, verdict in verdicts.items():
        model = models.get(dm)
        if verdict.admitted and dm in loaded and model is not None and model.path is not None:
            out.append(Addon(name=model.full_name, path=model.path, base_model_name=served_name))
    return tuple(sorted(set(out), key=lambda a: a.name))


def served_addons(ctx: Context, namespace: str, name: str) -> list[str] | None:
    """The addons every ready replica really serves (GET /v1/models, all replicas at once);
    None if none answered."""
    common: set[str] | None = None
    pods = {url: pod for pod, url in ready_pod_urls(ctx.api, namespace, name)}
    key = server_api_key(ctx, namespace, name)

    def again() -> None:
        ctx.kick(PLURAL, namespace, name)

    for url, answer in ctx.servers.served(pods, key, then=again).items():
        if isinstance(answer, ModelServerError):
            log.debug("pod %s/%s did not say what it serves: %s", namespace, pods[url], answer)
            continue
        served = {m.id for m in answer if m.parent is not None}
        common = served if common is None else common & served
    return None if common is None else sorted(common)


def execute_plan(
    api: Api, owner: Owner, plan: PodPlan, pod: Obj, uids: dict[str, str]
) -> tuple[int, BlockedBy | None]:
    """Create and delete pods as planned; return how many were created and, if admission
    refused a pod (a ResourceQuota, a policy), why."""
    created, blocked = 0, None
    for _ in range(plan.create):
        try:
            made = api.create_pod(pod)
        except ApiException as exc:
            if exc.status == 422:
                # The API server refuses the pod itself (a quantity such as cpu: abc admitted by
                # an older CRD): only a spec change helps, so say so instead of retrying.
                blocked = BlockedBy("InvalidSpec", error_message(exc), waiting=False)
                break
            if exc.status != 403:
                raise
            blocked = BlockedBy("PodCreationForbidden", error_message(exc), waiting=True)
            break
        created += 1
        log.info("created pod %s/%s", owner.namespace, made["metadata"]["name"])
    for name in plan.delete:
        if api.delete_pod(owner.namespace, name, uids.get(name)):
            log.info("deleted pod %s/%s", owner.namespace, name)
    return created, blocked


def ensure_server_key(api: Api, owner: Owner, key: str) -> None:
    """The Secret the new pods read their API key from. Created before pods are, and only
    then (a steady state makes no calls); one that exists is left alone (the operator may not
    read Secrets), so a tenant who replaces it only locks the operator out of their own pods."""
    try:
        api.create_secret(server_key_secret(owner, key))
    except ApiException as exc:
        if exc.status == 403 and "is being terminated" in error_message(exc):
            return
        raise


def ensure_service(api: Api, owner: Owner) -> None:
    desired = service(owner)
    existing = api.get_service(owner.namespace, desired["metadata"]["name"])
    if existing is not None and _service_matches(existing, desired):
        return
    try:
        api.apply(desired)
    except ApiException as exc:
        if exc.status == 403 and "is being terminated" in error_message(exc):
            return  # the account's namespace is going away, and this Deployment with it
        raise


def _service_matches(existing: Obj, desired: Obj) -> bool:
    e_meta, d_meta = existing["metadata"], desired["metadata"]
    if any((e_meta.get("labels") or {}).get(k) != v for k, v in d_meta["labels"].items()):
        return False
    if [r.get("uid") for r in e_meta.get("ownerReferences") or []] != [
        r["uid"] for r in d_meta["ownerReferences"]
    ]:
        return False
    spec = existing.get("spec") or {}
    if spec.get("selector") != desired["spec"]["selector"]:
        return False
    ports = [
        {k: p.get(k) for k in ("name", "port", "targetPort", "protocol")}
        for p in spec.get("ports") or []
    ]
    return bool(ports == desired["spec"]["ports"])


def record_plan_events(
    api: Api, obj: Obj, *, desired: int, before: int, created: int, plan: PodPlan
) -> None:
    if created:
        reason = "RollingUpdate" if "RollingUpdate" in plan.reasons else "ScalingUp"
        message = f"created {created} model-server pod(s); {before} existed, {desired} wanted"
        api.event(obj, "Normal", reason, message)
    if plan.delete:
        reason = "ScalingDown" if "ScalingDown" in plan.reasons else "RollingUpdate"
        message = f"deleted model-server pod(s) {', '.join(plan.delete)}; {desired} wanted"
        api.event(obj, "Normal", reason, message)
