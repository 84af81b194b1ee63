"""The lookups between Graft objects, as index functions of one object (pure).

Each function says which full names an object points at through its spec; the operator's cache
(graft.controller.store) keeps an index of each, so "the DeployedModels of this Deployment" or
"what uses this Model" is a dictionary read. Without a cache (a kind not primed), the same
function filters a listing, so both ways answer alike.

A reference the object cannot resolve (invalid) points at nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from graft.api.kinds import Plural
from graft.core.names import InvalidReference, parse_ref
from graft.core.objects import Obj

Indexer = Callable[[Obj], Iterable[str]]


def _refs(obj: Obj, fields: tuple[str, ...], plural: str) -> list[str]:
    namespace = obj["metadata"].get("namespace") or ""
    spec = obj.get("spec") or {}
    out = []
    for field in fields:
        text = spec.get(field)
        if not isinstance(text, str) or not text:
            continue
        try:
            out.append(parse_ref(text, plural, account=namespace).full_name)
        except InvalidReference:
            continue
    return out


def deployment_of(obj: Obj) -> list[str]:
    """A DeployedModel: the Deployment it loads into."""
    return _refs(obj, ("deployment",), Plural.DEPLOYMENTS)


def models_used(obj: Obj) -> list[str]:
    """A Deployment (its base model) or a DeployedModel (its addon): the Model it uses."""
    return _refs(obj, ("baseModel", "model"), Plural.MODELS)


def user_of(obj: Obj) -> list[str]:
    """An ApiKey: its User (an ID in the key's own account)."""
    return _refs(obj, ("user",), Plural.USERS)


def finetuning_inputs(obj: Obj) -> list[str]:
    """A FineTuningJob: its datasets and its base model."""
    return [
        *_refs(obj, ("dataset", "evaluationDataset"), Plural.DATASETS),
        *_refs(obj, ("baseModel",), Plural.MODELS),
    ]


BY_DEPLOYMENT = "deployment"
USES_MODEL = "model"
BY_USER = "user"
INPUTS = "inputs"

INDICES: dict[tuple[str, str], Indexer] = {
    (Plural.DEPLOYED_MODELS, BY_DEPLOYMENT): deployment_of,
    (Plural.DEPLOYED_MODELS, USES_MODEL): models_used,
    (Plural.DEPLOYMENTS, USES_MODEL): models_used,
    (Plural.API_KEYS, BY_USER): user_of,
    (Plural.FINE_TUNING_JOBS, INPUTS): finetuning_inputs,
}
"""(kind, index) -> the index function: every index the operator keeps."""
