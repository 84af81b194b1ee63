"""`LLM`: a model (base or LoRA addon) served by a Graft Deployment, called through the gateway.

- "on-demand": the LLM has a Deployment of its own, named by `id` (its signature). `.apply()`
  server-side applies it (field manager graft-sdk: re-running updates the same object, never a
  second one) with the base model (the addon's, for an addon) and addons enabled, so an addon
  trained later loads into it without a rollout; for an addon, a DeployedModel loads it there.
- "shared": no Deployment of its own. A Ready Deployment of the account that serves the base
  model with addons enabled is used (or the one named by `deployment=`, as `graft load-lora`
  does); for an addon, `.apply()` creates the DeployedModel there.

Requests go through the gateway with the caller's API key, in the `openai` package's own types:
`llm.chat.completions.create(messages=...)` is `openai.OpenAI(base_url=<gateway>/v1).chat.
completions.create(model=<the model's full name>, messages=...)`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from graft.api.common import ConditionStatus
from graft.core import keys
from graft.core.names import InvalidReference, parse_ref
from graft.sdk import ids
from graft.sdk.connection import AccountBound, Connection, Obj
from graft.sdk.dataset import condition, is_true
from graft.sdk.errors import ConfigError, GraftError, NotFound, NotReady, Timeout

if TYPE_CHECKING:
    from graft.sdk.dataset import Dataset
    from graft.sdk.finetuning import SupervisedFineTuningJob

DeploymentType = Literal["on-demand", "shared"]
POLL = 1.0


@dataclass(frozen=True)
class ModelInfo:
    """A resolved model: its full name, ID, account, kind, and its base model's full name."""

    full_name: str
    account: str
    id: str
    kind: str  # Base or PeftAddon
    base_full_name: str

    @property
    def is_addon(self) -> bool:
        return self.kind == "PeftAddon"


def ref_full_name(ref: str, plural: str, account: str) -> str:
    """The full name of a reference (ID or full name) seen from `account`; '' when invalid."""
    try:
        return parse_ref(ref, plural, account=account).full_name
    except InvalidReference:
        return ""


class _Completions:
    """`.create(...)` of an openai resource, with `model` set to the LLM's full name."""

    def __init__(self, llm: LLM, attribute: str) -> None:
        self._llm = llm
        self._attribute = attribute

    def create(self, **kwargs: Any) -> Any:
        kwargs.setdefault("model", self._llm.model_name)
        target = self._llm.openai
        for part in self._attribute.split("."):
            target = getattr(target, part)
        return target.create(**kwargs)


class _Chat:
    def __init__(self, llm: LLM) -> None:
        self.completions = _Completions(llm, "chat.completions")


class LLM(AccountBound):
    """A model and where it is served (see the module's docstring)."""

    def __init__(
        self,
        model: str,
        id: str | None = None,
        deployment_type: DeploymentType = "on-demand",
        *,
        account: str | None = None,
        connection: Connection | None = None,
        engine: str | None = None,
        replicas: int | None = None,
        deployment_spec: Mapping[str, Any] | None = None,
        deployment: str | None = None,
    ) -> None:
        if deployment_type not in ("on-demand", "shared"):
            raise ConfigError(
                f"deployment_type {deployment_type!r}: use 'on-demand' (a Deployment of its "
                "own, named by id) or 'shared' (an existing Deployment of the base model)"
            )
        if deployment_type == "on-demand" and not id:
            raise ConfigError(
                "an on-demand LLM needs id=...: the name of its Deployment (its signature; "
                "re-running with the same id re-uses it)"
            )
        self.model = model
        self.id = ids.to_id(id, default="llm") if id else None
        self.deployment_type = deployment_type
        self._account = account
        self._connection = connection
        self.engine = engine
        self.replicas = replicas
        self.deployment_spec = dict(deployment_spec or {})
        self._info: ModelInfo | None = None
        if deployment and deployment_type != "shared":
            raise ConfigError(
                "deployment= names the existing Deployment of a shared LLM; an on-demand LLM's "
                "Deployment is its id"
            )
        self._shared_deployment = ids.to_id(deployment, default="llm") if deployment else None
        self._deployed_model: str | None = None
        self._openai: Any = None
        self.chat = _Chat(self)
        self.completions = _Completions(self, "completions")

    def __repr__(self) -> str:
        return (
            f"LLM(model={self.model!r}, id={self.id!r}, deployment_type={self.deployment_type!r})"
        )

    # --- Identity -------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The name requests carry: the model's full name accounts/<account>/models/<id>."""
        full = ref_full_name(self.model, "models", self.account)
        if not full:
            raise ConfigError(
                f"model {self.model!r} is neither a model ID nor accounts/<account>/models/<id>"
            )
        return full

    @property
    def info(self) -> ModelInfo:
        """The model, read from the API server (once): base or addon, and its base."""
        if self._info is None:
            self._info = self._resolve()
        return self._info

    def _resolve(self) -> ModelInfo:
        conn = self.connection
        try:
            ref = parse_ref(self.model, "models", account=conn.account)
        except InvalidReference as exc:
            raise ConfigError(f"model: {exc}") from None
        if ref.account != conn.account:
            # Another account's model can be used only when public, and only a Base model can
            # be public; a member cannot read that account's objects anyway.
            return ModelInfo(ref.full_name, ref.account, ref.id, "Base", ref.full_name)
        obj = conn.get("models", ref.id)
        if obj is None:
            raise NotFound(
                f"model {ref.id!r} does not exist in account {conn.account!r}; create the Model "
                "first (graft get models lists them)",
                resource=ref.full_name,
            )
        spec = obj.get("spec") or {}
        kind = str(spec.get("kind") or "Base")
        base = ref.full_name
        if kind == "PeftAddon":
            base = ref_full_name(str(spec.get("baseModel") or ""), "models", conn.account)
        return ModelInfo(ref.full_name, ref.account, ref.id, kind, base)

    @property
    def deployment(self) -> str | None:
        """The Deployment's ID: `id` (on-demand), the one found (shared, after apply)."""
        return self.id if self.deployment_type == "on-demand" else self._shared_deployment

    def _base_ref(self) -> str:
        """The base model as the Deployment names it: its ID in this account, else full name."""
        info = self.info
        ref = parse_ref(info.base_full_name, "models", account=self.account)
        return ref.id if ref.account == self.account else ref.full_name

    # --- Apply ----------------------------------------------------------------------------------

    def deployment_body(self) -> Obj:
        """The Deployment the SDK applies for an on-demand LLM (only the fields it owns)."""
        assert self.id is not None
        spec: dict[str, Any] = {"baseModel": self._base_ref(), "enableAddons": True}
        if self.engine:
            spec["engine"] = self.engine
        if self.replicas is not None:
            spec["replicas"] = self.replicas
        spec.update(self.deployment_spec)
        return {
            "metadata": {"name": self.id, "labels": {keys.MANAGED_BY: keys.SDK_FIELD_MANAGER}},
            "spec": spec,
        }

    def apply(self) -> LLM:
        """Create or update what serves the model (idempotent)."""
        conn = self.connection
        if self.deployment_type == "on-demand":
            conn.apply("deployments", self.deployment_body())
        elif self._shared_deployment is None:
            self._shared_deployment = self.find_shared_deployment()
        if self.info.is_addon:
            self._deployed_model = self._apply_deployed_model()
        return self

    @property
    def deployment_url(self) -> str:
        """The dashboard page of this LLM's Deployment on the gateway (GRAFT_GATEWAY_URL):
        replicas, what each serves, conditions. A shared LLM knows its Deployment after
        apply()."""
        deployment = self.deployment
        if deployment is None:
            raise ConfigError(
                "a shared LLM finds its Deployment in apply() (or name it: deployment=...); "
                "call apply() before deployment_url"
            )
        return self.connection.dashboard_url("deployments", deployment)

    @property
    def deployed_model(self) -> str | None:
        """The DeployedModel that loads the addon (after apply), by ID."""
        return self._deployed_model

    def find_shared_deployment(self) -> str:
        """A Ready Deployment of the account serving the base model with addons enabled."""
        base = self.info.base_full_name
        serving = [
            d
            for d in self.connection.list("deployments")
            if ref_full_name(
                str((d.get("spec") or {}).get("baseModel") or ""), "models", self.account
            )
            == base
        ]
        usable = [
            d
            for d in serving
            if (d.get("spec") or {}).get("enableAddons") or not self.info.is_addon
        ]
        ready = sorted(str(d["metadata"]["name"]) for d in usable if is_true(d, "Ready"))
        if ready:
            return ready[0]
        if not serving:
            missing = f"no Deployment in account {self.account!r} serves base model {base}"
        elif not usable:
            names = ", ".join(sorted(d["metadata"]["name"] for d in serving))
            missing = f"Deployments {names} serve {base} but without enableAddons: true"
        else:
            names = ", ".join(sorted(d["metadata"]["name"] for d in usable))
            missing = f"Deployments {names} serve {base} but none is Ready"
        raise NotReady(
            f"a shared LLM needs a Ready Deployment of its base model with addons enabled: "
            f"{missing}; create one (LLM(model=..., id=..., deployment_type='on-demand').apply()) "
            "or wait for it",
            resource=self.model_name,
        )

    def _apply_deployed_model(self) -> str:
        """The DeployedModel loading the addon into the Deployment: an existing one, else one
        the SDK applies (labelled graft.dev/sdk-llm)."""
        conn = self.connection
        deployment = self.deployment
        assert deployment is not None
        info = self.info
        target = conn.full_name("deployments", deployment)
        for dm in conn.list("deployedmodels"):
            spec = dm.get("spec") or {}
            if (
                ref_full_name(str(spec.get("model") or ""), "models", self.account)
                == info.full_name
                and ref_full_name(str(spec.get("deployment") or ""), "deployments", self.account)
                == target
                and not (dm.get("metadata") or {}).get("deletionTimestamp")
            ):
                return str(dm["metadata"]["name"])
        name = ids.pair_id(info.id, deployment)
        conn.apply(
            "deployedmodels",
            {
                "metadata": {
                    "name": name,
                    "labels": {keys.MANAGED_BY: keys.SDK_FIELD_MANAGER, keys.SDK_LLM: deployment},
                },
                "spec": {"model": info.id, "deployment": deployment},
            },
        )
        return name

    def scale(self, replicas: int) -> LLM:
        """Set the on-demand Deployment's replicas (its /scale subresource)."""
        if self.deployment_type != "on-demand" or self.id is None:
            raise ConfigError("only an on-demand LLM has a Deployment of its own to scale")
        self.connection.scale(self.id, replicas)
        return self

    def delete(self) -> None:
        """Delete what apply() created: the SDK's DeployedModel, and an on-demand Deployment."""
        conn = self.connection
        if self.info.is_addon and self.deployment:
            name = self._deployed_model or ids.pair_id(self.info.id, self.deployment)
            obj = conn.get("deployedmodels", name)
            if obj is not None and keys.SDK_LLM in (
                (obj.get("metadata") or {}).get("labels") or {}
            ):
                conn.delete("deployedmodels", name)
        if self.deployment_type == "on-demand" and self.id is not None:
            conn.delete("deployments", self.id)

    def wait_ready(self, timeout: float = 600.0) -> LLM:
        """Wait until the Deployment (and the addon's DeployedModel) is Ready."""
        conn = self.connection
        deadline = time.monotonic() + timeout
        waits: list[tuple[str, str]] = []
        if self.deployment_type == "on-demand" and self.id is not None:
            waits.append(("deployments", self.id))
        elif self._shared_deployment is None:
            self._shared_deployment = self.find_shared_deployment()
        if self.info.is_addon:
            if self._deployed_model is None:
                self._deployed_model = self._apply_deployed_model()
            waits.append(("deployedmodels", self._deployed_model))
        for plural, name in waits:
            while True:
                obj = conn.get(plural, name)
                if obj is None:
                    raise NotFound(
                        f"{plural[:-1]} {name} does not exist; call apply() first",
                        resource=conn.full_name(plural, name),
                    )
                if is_true(obj, "Ready"):
                    break
                ready = condition(obj, "Ready") or {}
                if time.monotonic() >= deadline:
                    raise Timeout(
                        f"not Ready after {timeout:g}s: {ready.get('reason', 'no status yet')}: "
                        f"{ready.get('message', '')}",
                        resource=conn.full_name(plural, name),
                        reason=str(ready.get("reason") or "Timeout"),
                    )
                failed = condition(obj, "Failed") or {}
                if failed.get("status") == ConditionStatus.TRUE.value:
                    raise GraftError(
                        f"{failed.get('reason')}: {failed.get('message', '')}",
                        reason=str(failed.get("reason") or "Failed"),
                        resource=conn.full_name(plural, name),
                    )
                time.sleep(POLL)
        return self

    # --- Inference ------------------------------------------------------------------------------

    @property
    def openai(self) -> Any:
        """The `openai.OpenAI` client on the gateway with the caller's API key."""
        if self._openai is None:
            self._openai = self.connection.openai()
        return self._openai

    # --- Fine-tuning ----------------------------------------------------------------------------

    def create_supervised_fine_tuning_job(
        self,
        name: str,
        dataset_or_id: Dataset | str,
        *,
        epochs: int | None = None,
        learning_rate: float | None = None,
        lora_rank: int | None = None,
        **hyperparameters: Any,
    ) -> SupervisedFineTuningJob:
        """Train an addon on this LLM's base model; the job's output_llm loads it into this LLM's
        Deployment. Re-running with the same name re-uses the job."""
        from graft.sdk.finetuning import SupervisedFineTuningJob

        job = SupervisedFineTuningJob(
            name=name,
            model=self,
            dataset=dataset_or_id,
            epochs=epochs,
            learning_rate=learning_rate,
            lora_rank=lora_rank,
            connection=self.connection,
            **hyperparameters,
        )
        return job.sync()
