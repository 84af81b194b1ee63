"""Reads shared by reconcilers: referenced Models, a Deployment's addons and its ready pods, a
User's ApiKeys and the ApiKeys that wait for their Account."""

from __future__ import annotations

from urllib.parse import urlparse

from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.models import ModelSpec
from graft.api.serving import DeploymentSpec
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.core.names import InvalidReference, Ref, full_name, parse_ref
from graft.core.objects import Obj, condition, is_ready, is_terminating
from graft.core.serverkeys import server_key
from graft.plan.apikey import WAITING_FOR_ACCOUNT
from graft.plan.deployedmodel import Candidate, DeploymentFacts, ModelFacts, Verdict, judge
from graft.plan.deployment import selector_string
from graft.plan.engines import PORT
from graft.plan.indices import BY_DEPLOYMENT, BY_USER
from graft.plan.model import not_ready
from graft.plan.storage import addon_path


def model_facts(ctx: Context, ref: Ref) -> ModelFacts | None:
    obj = ctx.api.cached_graft(Plural.MODELS, ref.account, ref.id)
    if obj is None:
        return None
    try:
        spec = ModelSpec.model_validate(obj.get("spec") or {})
    except ValidationError:
        return None
    base: str | None = None
    if spec.base_model:
        try:
            base = parse_ref(spec.base_model, Plural.MODELS, account=ref.account).full_name
        except InvalidReference:
            base = None
    path = addon_path(spec.source.uri, ctx.settings.artifacts_claim())
    status = obj.get("status") or {}
    rank = status.get("loraRank")
    return ModelFacts(
        full_name=ref.full_name,
        kind=str(spec.kind),
        base_full_name=base,
        lora_rank=rank if isinstance(rank, int) else None,
        path=path,
        not_ready=not_ready(obj),
        failed=status.get("state") == "Failed",
    )


def missing_claim(api: Api, namespace: str, uri: str) -> str | None:
    """Why a pvc:// URI cannot be mounted in `namespace` yet (its claim does not exist there),
    or None: it can, or it is not a pvc:// URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "pvc" or api.get_pvc(namespace, parsed.netloc) is not None:
        return None
    return f"PersistentVolumeClaim {parsed.netloc} does not exist (yet) in namespace {namespace}"


def deployment_facts(namespace: str, name: str, spec: DeploymentSpec) -> DeploymentFacts:
    try:
        base = parse_ref(spec.base_model, Plural.MODELS, account=namespace).full_name
    except InvalidReference:
        base = spec.base_model
    return DeploymentFacts(
        full_name=full_name(namespace, Plural.DEPLOYMENTS, name),
        base_full_name=base,
        enable_addons=spec.enable_addons,
        max_addons=spec.max_addons,
        max_addon_rank=spec.max_addon_rank,
    )


def api_keys_of(api: Api, namespace: str, user: str) -> list[str]:
    """The names of the ApiKeys of a User (spec.user is an ID in the User's own account)."""
    return [
        key["metadata"]["name"]
        for key in api.cached_index(
            Plural.API_KEYS, BY_USER, full_name(namespace, Plural.USERS, user), namespace
        )
        if not is_terminating(key)
    ]


def api_keys_waiting_for_account(api: Api, namespace: str) -> list[str]:
    """The names of the ApiKeys of an account that wait for the operator's access to its
    Secrets (Ready reason WaitingForAccount)."""
    return [
        key["metadata"]["name"]
        for key in api.cached_list(Plural.API_KEYS, namespace)
        if (condition(key, "Ready") or {}).get("reason") == WAITING_FOR_ACCOUNT
        and not is_terminating(key)
    ]


def deployed_models_of(api: Api, namespace: str, deployment: str) -> list[Obj]:
    """The DeployedModels in the account that point at this Deployment (not being deleted)."""
    me = full_name(namespace, Plural.DEPLOYMENTS, deployment)
    return [
        dm
        for dm in api.cached_index(Plural.DEPLOYED_MODELS, BY_DEPLOYMENT, me, namespace)
        if not is_terminating(dm)
    ]


def addon_verdicts(
    ctx: Context, namespace: str, deployment: DeploymentFacts, dms: list[Obj]
) -> tuple[dict[str, Verdict], dict[str, ModelFacts]]:
    """Judge every DeployedModel of a Deployment; also return the Models they name."""
    candidates, models = [], {}
    for dm in dms:
        ref_text = (dm.get("spec") or {}).get("model", "")
        try:
            ref = parse_ref(ref_text, Plural.MODELS, account=namespace)
            facts = model_facts(ctx, ref) if ref.account == namespace else None
        except InvalidReference:
            facts = None
        name = dm["metadata"]["name"]
        if facts is not None:
            models[name] = facts
        candidates.append(
            Candidate(
                name=name,
                created=dm["metadata"].get("creationTimestamp") or "",
                model=facts,
                model_ref=ref_text,
            )
        )
    return judge(deployment, candidates), models


def server_api_key(ctx: Context, namespace: str, deployment: str) -> str:
    """The API key the Deployment's model servers require."""
    return server_key(ctx.server_key_seed, namespace, deployment)


def ready_pod_urls(api: Api, namespace: str, deployment: str) -> list[tuple[str, str]]:
    """(pod name, base URL) of the Deployment's Ready pods that have an IP."""
    out = []
    for pod in api.list_pods(namespace, selector_string(deployment)):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and is_ready(pod) and not is_terminating(pod):
            out.append((pod["metadata"]["name"], f"http://{ip}:{PORT}"))
    return sorted(out)
