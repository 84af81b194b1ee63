"""Model reconciler: validate what can be validated without downloading weights, record the
adapter's rank and target modules where its adapter_config.json is readable, and say where the
model is used. Deletion of a used Model waits (see `deletion_blockers`)."""

from __future__ import annotations

import logging
import urllib.request
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from graft.api.kinds import Plural
from graft.api.models import ModelKind, ModelSpec, ModelStatus
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.status import publish
from graft.core.conditions import conditions_of, now_rfc3339
from graft.core.names import InvalidReference, full_name, parse_ref
from graft.core.objects import Obj, is_terminating
from graft.plan.model import (
    ADAPTER_CONFIG,
    ModelProblem,
    check_base,
    check_source,
    in_use,
    in_use_message,
    model_status,
    parse_adapter_config,
    record_adapter,
    validated,
)

log = logging.getLogger(__name__)

PLURAL = Plural.MODELS


def read_adapter_config(uri: str) -> dict[str, Any] | None:
    """adapter_config.json of an addon, when the operator can read it cheaply; None otherwise."""
    parsed = urlparse(uri)
    text: str | None = None
    try:
        if parsed.scheme == "file":
            with open(f"{parsed.path.rstrip('/')}/{ADAPTER_CONFIG}", encoding="utf-8") as f:
                text = f.read()
        elif parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(f"{uri.rstrip('/')}/{ADAPTER_CONFIG}", timeout=5) as r:
                text = r.read(1 << 20).decode()
    except OSError:
        return None
    if text is None:
        return None
    return parse_adapter_config(uri, text)


def validate(api: Api, namespace: str, spec: ModelSpec, status: ModelStatus) -> None:
    check_source(spec)
    if spec.kind != ModelKind.PEFT_ADDON:
        return
    try:
        ref = parse_ref(spec.base_model or "", Plural.MODELS, account=namespace)
    except InvalidReference as exc:
        raise ModelProblem("InvalidBaseModel", str(exc)) from exc
    check_base(ref, api.get_graft(Plural.MODELS, ref.account, ref.id), namespace)
    config = read_adapter_config(spec.source.uri)
    if config is not None:
        record_adapter(config, status)


def used_by(api: Api, namespace: str, name: str, kind: str) -> tuple[list[str], list[str]]:
    """(Deployments serving this base model, DeployedModels loading this addon), full names."""
    me = (namespace, name)
    deployments, deployed = [], []
    if kind == ModelKind.BASE:
        for d in api.list_graft(Plural.DEPLOYMENTS, namespace):
            if _refers(d, "baseModel", namespace) == me:
                deployments.append(full_name(namespace, Plural.DEPLOYMENTS, d["metadata"]["name"]))
    else:
        for dm in api.list_graft(Plural.DEPLOYED_MODELS, namespace):
            if _refers(dm, "model", namespace) == me:
                deployed.append(
                    full_name(namespace, Plural.DEPLOYED_MODELS, dm["metadata"]["name"])
                )
                dep = _refers(dm, "deployment", namespace, Plural.DEPLOYMENTS)
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
    generation = obj["metadata"].get("generation", 0)
    status = ModelStatus(observed_generation=generation, name=full_name(namespace, PLURAL, name))
    try:
        spec = ModelSpec.model_validate(obj.get("spec") or {})
        validate(api, namespace, spec, status)
    except ValidationError as exc:
        problem: ModelProblem | None = ModelProblem("InvalidSpec", str(exc))
    except ModelProblem as exc:
        problem = exc
    else:
        problem = None
    if is_terminating(obj):
        return  # the deletion handler owns the status now
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
    publish(api, obj, PLURAL, status, warning=problem is not None)


def deletion_blockers(api: Api, namespace: str, name: str) -> str | None:
    """Why this Model cannot go yet (it is in use), or None. Also says so in its status."""
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None:
        return None
    kind = str((obj.get("spec") or {}).get("kind", ""))
    deployments, deployed = used_by(api, namespace, name, kind)
    users = deployed if kind == ModelKind.PEFT_ADDON else deployments
    if not users:
        return None
    message = in_use_message(users)
    generation = obj["metadata"].get("generation")
    status = in_use(obj.get("status") or {}, message, generation, now_rfc3339())
    publish(api, obj, PLURAL, status, warning=True)
    return message
