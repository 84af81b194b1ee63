"""DeployedModel reconciler: load an addon into every ready replica of a Deployment at run time,
and report what the replicas really serve (GET /v1/models), not what a call once returned."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.serving import DeployedModelSpec, DeploymentSpec
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.lookup import (
    addon_verdicts,
    deployed_models_of,
    deployment_facts,
    ready_pod_urls,
    server_api_key,
)
from graft.controller.modelclient import ModelServerError, ModelServerUnreachable
from graft.controller.status import publish
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.names import InvalidReference, full_name, parse_ref
from graft.core.objects import Obj, is_terminating
from graft.plan.deployedmodel import ModelFacts, PodLoad, Verdict, deployed_model_status

log = logging.getLogger(__name__)

PLURAL = Plural.DEPLOYED_MODELS


def _deployment_of(
    api: Api, namespace: str, spec: DeployedModelSpec
) -> tuple[str, Obj | None] | Verdict:
    try:
        ref = parse_ref(spec.deployment, Plural.DEPLOYMENTS, account=namespace)
    except InvalidReference as exc:
        return Verdict(False, "InvalidDeployment", str(exc))
    if ref.account != namespace:
        return Verdict(
            False,
            "CrossAccountDeployment",
            f"{ref.full_name} is in another account; load addons into this account's Deployments",
        )
    return ref.id, api.cached_graft(Plural.DEPLOYMENTS, namespace, ref.id)


def judge_this(
    ctx: Context, namespace: str, name: str, spec: DeployedModelSpec
) -> tuple[Verdict, str | None, ModelFacts | None]:
    """This DeployedModel's verdict, judged with all others of its Deployment."""
    found = _deployment_of(ctx.api, namespace, spec)
    if isinstance(found, Verdict):
        return found, None, None
    dep_name, dep = found
    if dep is None:
        where = full_name(namespace, Plural.DEPLOYMENTS, dep_name)
        return (
            Verdict(
                False,
                "DeploymentNotFound",
                f"deployment {where} does not exist (yet)",
                waiting=True,
            ),
            None,
            None,
        )
    try:
        dep_spec = DeploymentSpec.model_validate(dep.get("spec") or {})
    except ValidationError as exc:
        return Verdict(False, "InvalidDeployment", str(exc)), None, None
    facts = deployment_facts(namespace, dep_name, dep_spec)
    verdicts, models = addon_verdicts(
        ctx, namespace, facts, deployed_models_of(ctx.api, namespace, dep_name)
    )
    verdict = verdicts.get(name) or Verdict(
        False, "NotAdmitted", "not among the deployment's DeployedModels"
    )
    return verdict, dep_name, models.get(name)


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None or is_terminating(obj):
        return
    meta = obj["metadata"]
    previous = conditions_of(obj)
    spec = DeployedModelSpec.model_validate(obj.get("spec") or {})
    served_name: str | None = None
    pods: list[PodLoad] = []

    verdict, dep_name, model = judge_this(ctx, namespace, name, spec)
    if model is not None:
        served_name = model.full_name
    if verdict.admitted and dep_name and model is not None and model.path is not None:
        pods = load_everywhere(
            ctx, namespace, dep_name, name, served_name=model.full_name, path=model.path
        )

    status = deployed_model_status(
        generation=meta.get("generation", 0),
        full_name=full_name(namespace, PLURAL, name),
        served_name=served_name,
        verdict=verdict,
        pods=pods,
        previous=previous,
        now=now_rfc3339(),
    )
    # Loading and waiting for a replica are routine; a refusal or a failed load is not.
    publish(
        api,
        obj,
        PLURAL,
        status,
        warning=status.state != "Ready",
        quiet={"Loading", "NoReadyReplicas"},
    )


def load_everywhere(
    ctx: Context, namespace: str, deployment: str, dm: str, *, served_name: str, path: str
) -> list[PodLoad]:
    """Make every ready replica serve the addon; report what each one really serves after.

    All replicas are asked at once; a load that takes longer than the model-server timeout goes
    on in the background and, when it succeeds, kicks this DeployedModel's next reconcile."""
    servers = ctx.servers
    pods = ready_pod_urls(ctx.api, namespace, deployment)
    key = server_api_key(ctx, namespace, deployment)

    def again() -> None:
        ctx.kick(PLURAL, namespace, dm)

    before = servers.served([url for _, url in pods], key, then=again)

    loads: dict[str, Future[None]] = {}
    for pod, url in pods:
        answer = before[url]
        if isinstance(answer, list) and served_name not in {m.id for m in answer}:
            log.info("loading %s into %s/%s", served_name, namespace, pod)
            loads[url] = servers.ensure_loaded(url, served_name, path, key, then=again)
    servers.wait(loads.values())
    done = [url for url, f in loads.items() if f.done() and f.exception() is None]
    after = servers.served(done, key, then=again) if done else {}

    out = []
    for pod, url in pods:
        answer = after.get(url, before[url])
        load = loads.get(url)
        if load is not None and not load.done():
            out.append(PodLoad(pod=pod, serves=False, waiting=f"{pod} is loading it"))
        elif load is not None and isinstance(load.exception(), ModelServerError):
            out.append(_failed(pod, load.exception()))  # type: ignore[arg-type]
        elif isinstance(answer, ModelServerError):
            out.append(_failed(pod, answer))
        else:
            out.append(PodLoad(pod=pod, serves=served_name in {m.id for m in answer}))
    return out


def _failed(pod: str, exc: ModelServerError) -> PodLoad:
    if isinstance(exc, ModelServerUnreachable):
        return PodLoad(pod=pod, serves=False, waiting=str(exc))  # not up yet, or stuck: no failure
    return PodLoad(pod=pod, serves=False, error=str(exc))


def unload_everywhere(ctx: Context, namespace: str, name: str) -> None:
    """Deletion: unload the addon from every ready replica (best effort per pod, all at once)."""
    api = ctx.api
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None:
        return
    spec = DeployedModelSpec.model_validate(obj.get("spec") or {})
    try:
        dep = parse_ref(spec.deployment, Plural.DEPLOYMENTS, account=namespace)
        served_name = parse_ref(spec.model, Plural.MODELS, account=namespace).full_name
    except InvalidReference:
        return
    if dep.account != namespace:
        return
    pods = {url: pod for pod, url in ready_pod_urls(api, namespace, dep.id)}
    key = server_api_key(ctx, namespace, dep.id)
    failures = ctx.servers.unload(pods, served_name, key)
    for url, pod in pods.items():
        if url not in failures:
            log.info("unloaded %s from %s/%s", served_name, namespace, pod)
    if failures:
        # The pod answered and refused, or is unreachable; it will not get the addon again on
        # restart (it is off the command line of new pods), so say so and carry on.
        api.event(
            obj,
            "Warning",
            "UnloadFailed",
            "; ".join(f"{pods[url]}: {err}" for url, err in sorted(failures.items())),
        )
