"""Model reconciler: validate what can be validated without downloading weights, record the
adapter's rank and target modules where its adapter_config.json is readable, and say where the
model is used. Deletion of a used Model waits (see `deletion_blockers`)."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from graft.api.common import Condition
from graft.api.models import ModelKind, ModelSpec, ModelStatus
from graft.controller.kube import Api, Obj
from graft.controller.status import write_status
from graft.core.conditions import now_rfc3339, set_condition
from graft.core.names import InvalidReference, full_name, parse_ref

log = logging.getLogger(__name__)

PLURAL = "models"
SUPPORTED_SCHEMES = ("hf", "s3", "pvc", "http", "https", "file")


class ModelProblem(Exception):
    def __init__(self, reason: str, message: str, waiting: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.waiting = reason, message, waiting


def read_adapter_config(uri: str) -> dict[str, Any] | None:
    """adapter_config.json of an addon, when the operator can read it cheaply; None otherwise."""
    parsed = urlparse(uri)
    text: str | None = None
    try:
        if parsed.scheme == "file":
            with open(f"{parsed.path.rstrip('/')}/adapter_config.json", encoding="utf-8") as f:
                text = f.read()
        elif parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(f"{uri.rstrip('/')}/adapter_config.json", timeout=5) as r:
                text = r.read(1 << 20).decode()
    except OSError:
        return None
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ModelProblem(
            "InvalidAdapter", f"{uri}/adapter_config.json is not JSON: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise ModelProblem("InvalidAdapter", f"{uri}/adapter_config.json is not a JSON object")
    return config


def validate(api: Api, namespace: str, spec: ModelSpec, status: ModelStatus) -> None:
    scheme = urlparse(spec.source.uri).scheme
    if scheme not in SUPPORTED_SCHEMES:
        raise ModelProblem(
            "UnsupportedSource",
            f"{scheme}:// is not a supported source ({', '.join(SUPPORTED_SCHEMES)})",
        )
    if spec.kind != ModelKind.PEFT_ADDON:
        return
    try:
        ref = parse_ref(spec.base_model or "", "models", account=namespace)
    except InvalidReference as exc:
        raise ModelProblem("InvalidBaseModel", str(exc)) from exc
    base = api.get_graft("models", ref.account, ref.id)
    if base is None:
        raise ModelProblem(
            "BaseModelNotFound", f"base model {ref.full_name} does not exist (yet)", waiting=True
        )
    base_spec = ModelSpec.model_validate(base.get("spec") or {})
    if base_spec.kind != ModelKind.BASE:
        raise ModelProblem(
            "BaseModelNotBase", f"{ref.full_name} is a {base_spec.kind} model, not a Base model"
        )
    if ref.account != namespace and not base_spec.public:
        raise ModelProblem(
            "BaseModelNotShared",
            f"{ref.full_name} belongs to account {ref.account} and is not public",
        )
    config = read_adapter_config(spec.source.uri)
    if config is not None:
        rank = config.get("r")
        modules = config.get("target_modules")
        if not isinstance(rank, int) or rank < 1:
            raise ModelProblem(
                "InvalidAdapter", f"adapter_config.json has no valid LoRA rank r (got {rank!r})"
            )
        status.lora_rank = rank
        if isinstance(modules, list):
            status.target_modules = sorted(str(m) for m in modules)
        elif isinstance(modules, str):
            status.target_modules = [modules]


def used_by(api: Api, namespace: str, name: str, kind: str) -> tuple[list[str], list[str]]:
    """(Deployments serving this base model, DeployedModels loading this addon), full names."""
    me = (namespace, name)
    deployments, deployed = [], []
    if kind == ModelKind.BASE:
        for d in api.list_graft("deployments", namespace):
            if _refers(d, "baseModel", namespace) == me:
                deployments.append(full_name(namespace, "deployments", d["metadata"]["name"]))
    else:
        for dm in api.list_graft("deployedmodels", namespace):
            if _refers(dm, "model", namespace) == me:
                deployed.append(full_name(namespace, "deployedmodels", dm["metadata"]["name"]))
                dep = _refers(dm, "deployment", namespace, "deployments")
                if dep is not None:
                    deployments.append(full_name(dep[0], "deployments", dep[1]))
    return sorted(set(deployments)), sorted(deployed)


def _refers(obj: Obj, field: str, namespace: str, plural: str = "models") -> tuple[str, str] | None:
    try:
        ref = parse_ref((obj.get("spec") or {}).get(field, ""), plural, account=namespace)
    except InvalidReference:
        return None
    return ref.account, ref.id


def reconcile(api: Api, namespace: str, name: str) -> None:
    obj = api.get_graft(PLURAL, namespace, name)
    if obj is None:
        return
    meta = obj["metadata"]
    generation = meta.get("generation", 0)
    previous_status = obj.get("status") or {}
    previous = [Condition.model_validate(c) for c in previous_status.get("conditions") or []]
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
    now = now_rfc3339()
    if meta.get("deletionTimestamp"):
        return  # the deletion handler owns the status now
    if problem is None:
        deployments, _ = used_by(api, namespace, name, str(spec.kind))
        status.deployments = deployments or None
        status.conditions = set_condition(
            previous, "Ready", True, "Validated", "", generation=generation, now=now
        )
        status.state = "Ready"
    else:
        status.conditions = set_condition(
            previous,
            "Ready",
            False,
            problem.reason,
            problem.message,
            generation=generation,
            now=now,
        )
        status.state = "Waiting" if problem.waiting else "Failed"
        old = next((c for c in previous if c.type == "Ready"), None)
        if old is None or old.reason != problem.reason:
            api.event(obj, "Warning", problem.reason, problem.message)
    write_status(api, obj, previous_status, status.wire(), PLURAL)


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
    message = f"deletion waits: still used by {', '.join(users)}"
    previous_status = obj.get("status") or {}
    previous = [Condition.model_validate(c) for c in previous_status.get("conditions") or []]
    conditions = set_condition(
        previous,
        "Ready",
        False,
        "InUse",
        message,
        generation=obj["metadata"].get("generation"),
        now=now_rfc3339(),
    )
    new = {**previous_status, "conditions": [c.wire() for c in conditions], "state": "Terminating"}
    if new != previous_status:
        api.event(obj, "Warning", "InUse", message)
    write_status(api, obj, previous_status, new, PLURAL)
    return message
