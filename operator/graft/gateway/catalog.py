"""What the gateway knows of the cluster, and the answers it draws from it: who a key belongs to,
which models an account may use, and which Deployments can serve a requested model.

Built from the objects the watch cache holds (plain dicts, as the API server sends them), so it is
pure and testable without a cluster; the cache rebuilds it when something changes and every
request reads one immutable snapshot.

Who may use what (the hosted platform's rules, on Graft's kinds):

- An account uses its own Models, through its own Deployments and DeployedModels.
- A public base Model may be used by every account: through the caller's own Deployments of it
  or, when the caller has none, through the Deployments of the account that publishes it (the
  publisher serves its public model to everyone, and pays for it). Never through a third
  account's Deployments: that account pays for its own replicas only.
- Addons are never public (the API refuses it), so an addon is served to its own account only.
- A name in another account is refused with 403 without looking it up, unless it is a public
  model: whether a private model of someone else exists is none of the caller's business.

A request names its model by full name (`accounts/<a>/models/<id>`, base or addon, or
`accounts/<a>/deployedmodels/<id>`) or by a bare model ID of the caller's own account. The
replicas list a model under its full model name, so that is what the request is sent with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from graft.api.kinds import Plural
from graft.api.tenancy import Role
from graft.core.names import InvalidReference, is_id, parse_ref
from graft.gateway import errors
from graft.gateway.apikeys import StoredKey
from graft.gateway.limits import AccountLimits, limits_of

Obj = Mapping[str, Any]
ROLES = frozenset(r.value for r in Role)


@dataclass(frozen=True)
class ModelEntry:
    full_name: str
    account: str
    kind: str  # Base or PeftAddon
    public: bool
    created: int  # seconds since the epoch, for /v1/models


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class DeploymentEntry:
    full_name: str
    account: str
    id: str
    base_model: str  # full name
    replicas: int
    autoscaling: Autoscaling | None


@dataclass(frozen=True)
class DeployedModelEntry:
    full_name: str
    account: str
    model: str  # the addon's full name
    deployment: str  # full name


@dataclass(frozen=True)
class Target:
    """Where a request goes: the name the replicas serve it under, and the Deployments that
    may serve it to this caller, best first."""

    requested: str
    served_name: str
    owner: str  # account that owns the model (for metrics and messages)
    deployments: tuple[DeploymentEntry, ...]


@dataclass(frozen=True)
class Listed:
    id: str
    owned_by: str
    created: int
    parent: str | None = None


@dataclass
class Catalog:
    keys: dict[str, StoredKey] = field(default_factory=dict)
    limits: dict[str, AccountLimits] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    deployments: dict[str, DeploymentEntry] = field(default_factory=dict)
    deployed_models: dict[str, DeployedModelEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # objects skipped, for the logs

    def key(self, key_id: str) -> StoredKey | None:
        return self.keys.get(key_id)

    def limits_of(self, account: str) -> AccountLimits:
        return self.limits.get(account, AccountLimits())

    # --- routing -------------------------------------------------------------------------------

    def resolve(self, account: str, requested: str) -> Target | errors.ApiError:
        """The Target for a request of `account` for the model named `requested`, or the
        error to answer (403 another account's, 404 unknown or not deployed)."""
        parts = requested.split("/")
        if len(parts) == 1:
            if not is_id(requested):
                return errors.model_not_found(requested)
            return self._model_target(account, f"accounts/{account}/models/{requested}", requested)
        if len(parts) != 4 or parts[0] != "accounts":
            return errors.model_not_found(requested)
        owner, plural = parts[1], parts[2]
        if plural == Plural.DEPLOYED_MODELS:
            if owner != account:
                return errors.permission_denied(requested, account)
            found = self.deployed_models.get(requested)
            deployment = self.deployments.get(found.deployment) if found else None
            if found is None or deployment is None:
                return errors.model_not_found(requested)
            return Target(requested, found.model, account, (deployment,))
        if plural != Plural.MODELS:
            return errors.model_not_found(requested)
        return self._model_target(account, requested, requested)

    def _model_target(self, account: str, full: str, requested: str) -> Target | errors.ApiError:
        model = self.models.get(full)
        if model is None or (model.account != account and not model.public):
            if full.split("/")[1] != account:
                return errors.permission_denied(requested, account)
            return errors.model_not_found(requested)
        deployments = self._serving(account, model)
        if not deployments:
            return errors.model_not_found(requested)
        return Target(requested, full, model.account, deployments)

    def _serving(self, account: str, model: ModelEntry) -> tuple[DeploymentEntry, ...]:
        if model.kind == "PeftAddon":
            names = {
                d.deployment for d in self.deployed_models.values() if d.model == model.full_name
            }
            found = [self.deployments[n] for n in sorted(names) if n in self.deployments]
            return tuple(d for d in found if d.account == account)
        bases = [d for d in self.deployments.values() if d.base_model == model.full_name]
        own = sorted((d for d in bases if d.account == account), key=lambda d: d.full_name)
        if own or not model.public:
            return tuple(own)
        return tuple(
            sorted((d for d in bases if d.account == model.account), key=lambda d: d.full_name)
        )

    def visible(self, account: str) -> list[Listed]:
        """What GET /v1/models shows `account`: every model it can send a request for now or
        after a scale-up (own or public, with a Deployment that may serve it), and its
        DeployedModels by their own names."""
        listed: list[Listed] = []
        for model in sorted(self.models.values(), key=lambda m: m.full_name):
            if model.account != account and not model.public:
                continue
            if self._serving(account, model):
                listed.append(Listed(model.full_name, model.account, model.created))
        for dm in sorted(self.deployed_models.values(), key=lambda d: d.full_name):
            if dm.account == account and dm.deployment in self.deployments:
                created = self.models[dm.model].created if dm.model in self.models else 0
                listed.append(Listed(dm.full_name, account, created, parent=dm.model))
        return listed


# --- building a catalog from the objects the cache holds ---------------------------------------


def _created(obj: Obj) -> int:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return 0
    try:
        return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _deleting(obj: Obj) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def _expiry(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _role(user: Obj) -> str | None:
    role = (user.get("spec") or {}).get("role")
    return str(role) if role in ROLES else None


def build(
    *,
    accounts: Iterable[Obj] = (),
    users: Iterable[Obj] = (),
    api_keys: Iterable[Obj] = (),
    models: Iterable[Obj] = (),
    deployments: Iterable[Obj] = (),
    deployed_models: Iterable[Obj] = (),
) -> Catalog:
    """A Catalog from the cached objects. An object that does not make sense (a hand-edited
    status, a reference that does not parse) is skipped and named in `problems`, never fatal:
    one tenant's odd object must not take the gateway down for everyone."""
    cat = Catalog()
    for obj in accounts:
        name = obj["metadata"]["name"]
        try:
            cat.limits[name] = limits_of(obj.get("spec") or {})
        except (ValueError, TypeError) as exc:
            cat.problems.append(f"account {name}: limits ignored: {exc}")

    live_users = {
        (u["metadata"]["namespace"], u["metadata"]["name"]): _role(u)
        for u in users
        if not _deleting(u)
    }
    for obj in api_keys:
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        ns = meta["namespace"]
        key_id, key_hash = status.get("keyId"), status.get("keyHash")
        # A key works while its ApiKey and its User exist (either one's deletion revokes it at
        # once, before garbage collection has caught up) and until it expires.
        if not key_id or not key_hash or _deleting(obj) or (ns, spec.get("user")) not in live_users:
            continue
        try:
            expires = _expiry(spec.get("expiresAt") or status.get("expiresAt"))
        except ValueError:
            cat.problems.append(f"apikey {ns}/{meta['name']}: unreadable expiresAt")
            continue
        role = live_users[(ns, spec.get("user"))]
        cat.keys[key_id] = StoredKey(key_id, key_hash, ns, expires, role)

    for obj in models:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if _deleting(obj):
            continue
        ns, name = meta["namespace"], meta["name"]
        full = f"accounts/{ns}/models/{name}"
        cat.models[full] = ModelEntry(
            full, ns, str(spec.get("kind", "Base")), bool(spec.get("public")), _created(obj)
        )

    for obj in deployments:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if _deleting(obj):
            continue
        ns, name = meta["namespace"], meta["name"]
        try:
            base = parse_ref(str(spec.get("baseModel", "")), Plural.MODELS, account=ns).full_name
        except InvalidReference as exc:
            cat.problems.append(f"deployment {ns}/{name}: {exc}")
            continue
        auto = spec.get("autoscaling")
        autoscaling = (
            Autoscaling(int(auto.get("minReplicas", 0)), int(auto.get("maxReplicas", 1)))
            if auto
            else None
        )
        full = f"accounts/{ns}/deployments/{name}"
        cat.deployments[full] = DeploymentEntry(
            full, ns, name, base, int(spec.get("replicas", 1)), autoscaling
        )

    for obj in deployed_models:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if _deleting(obj):
            continue
        ns, name = meta["namespace"], meta["name"]
        try:
            model = parse_ref(str(spec.get("model", "")), Plural.MODELS, account=ns).full_name
            dep = parse_ref(
                str(spec.get("deployment", "")), Plural.DEPLOYMENTS, account=ns
            ).full_name
        except InvalidReference as exc:
            cat.problems.append(f"deployedmodel {ns}/{name}: {exc}")
            continue
        full = f"accounts/{ns}/deployedmodels/{name}"
        cat.deployed_models[full] = DeployedModelEntry(full, ns, model, dep)
    return cat
