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
from graft.core import keys
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


def used_by(
    api: Api, namespace: str, name: str, kind: str, public: bool = False
) -> tuple[list[str], list[str]]:
    """(Deployments serving this base model, DeployedModels loading this addon), full names;
    of every account when the model is public, else of its own."""
    me = (namespace, name)
    deployments, deployed = [], []

    def listed(plural: str) -> list[Obj]:
        if public:
            return api.list_graft_everywhere(plural)
        return api.list_graft(plural, namespace)

    if kind == ModelKind.BASE:
        for d in listed(Plural.DEPLOYMENTS):
            where = d["metadata"]["namespace"]
            if _refers(d, "baseModel", where) == me:
                deployments.append(full_name(where, Plural.DEPLOYMENTS, d["metadata"]["name"]))
    else:
        for dm in listed(Plural.DEPLOYED_MODELS):
            where = dm["metadata"]["namespace"]
            if _refers(dm, "model", where) == me:
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
    if keys.IN_USE_FINALIZER not in (obj["metadata"].get("finalizers") or []):
        api.add_finalizer(PLURAL, obj, keys.IN_USE_FINALIZER)
        return  # its event brings the next reconcile
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


def release(api: Api, obj: Obj) -> None:
    """A deleted Model goes when nothing uses it; until then its status says what does. Called
    by the events of the Model and of what uses it, never by a timer: a blocked deletion makes
    no writes while it waits."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = obj.get("spec") or {}
    kind = str(spec.get("kind", ""))
    deployments, deployed = used_by(api, namespace, name, kind, bool(spec.get("public")))
    users = deployed if kind == ModelKind.PEFT_ADDON else deployments
    if not users:
        api.remove_finalizer(PLURAL, obj, keys.IN_USE_FINALIZER)
        log.info("released deleted Model %s/%s: nothing uses it", namespace, name)
        return
    message = in_use_message(users)
    status = in_use(obj.get("status") or {}, message, meta.get("generation"), now_rfc3339())
    publish(api, obj, PLURAL, status, warning=True)
