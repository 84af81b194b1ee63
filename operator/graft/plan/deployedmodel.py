"""Which DeployedModels a Deployment admits, and what a DeployedModel's status says (pure).

Every DeployedModel of a Deployment is judged together, oldest first, so the Deployment
reconciler (which puts admitted addons on new pods' command lines) and the DeployedModel
reconciler (which loads them into running pods) always agree on who is in.
"""

from __future__ import annotations

from dataclasses import dataclass

from graft.api.common import Condition
from graft.api.serving import DeployedModelStatus
from graft.core.conditions import set_condition


@dataclass(frozen=True)
class ModelFacts:
    """What the admission needs to know about an addon Model."""

    full_name: str
    kind: str
    base_full_name: str | None
    lora_rank: int | None
    path: str | None  # where the model server finds the adapter; None if it cannot
    not_ready: str | None = None  # why the Model is not Ready (None: it is)
    failed: bool = False  # the Model is not Ready for good (only a spec change fixes it)


@dataclass(frozen=True)
class DeploymentFacts:
    full_name: str
    base_full_name: str
    enable_addons: bool
    max_addons: int
    max_addon_rank: int


@dataclass(frozen=True)
class Candidate:
    """One DeployedModel pointing at the Deployment."""

    name: str
    created: str
    model: ModelFacts | None  # None: the Model does not exist (yet)
    model_ref: str


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    reason: str
    message: str
    waiting: bool = False  # True: may change by itself (a Model appears); False: spec problem


def judge(deployment: DeploymentFacts, candidates: list[Candidate]) -> dict[str, Verdict]:
    """A verdict for every candidate; at most max_addons are admitted, oldest first."""
    verdicts: dict[str, Verdict] = {}
    admitted = 0
    for c in sorted(candidates, key=lambda c: (c.created, c.name)):
        verdict = _single(deployment, c)
        if verdict is None:
            if admitted >= deployment.max_addons:
                verdict = Verdict(
                    False,
                    "TooManyAddons",
                    f"{deployment.full_name} already holds maxAddons={deployment.max_addons} addons; "
                    "delete one of its DeployedModels or raise spec.maxAddons",
                )
            else:
                admitted += 1
                verdict = Verdict(True, "Admitted", "")
        verdicts[c.name] = verdict
    return verdicts


def _single(d: DeploymentFacts, c: Candidate) -> Verdict | None:
    m = c.model
    if m is None:
        return Verdict(
            False, "ModelNotFound", f"model {c.model_ref} does not exist (yet)", waiting=True
        )
    if m.kind != "PeftAddon":
        return Verdict(
            False,
            "NotAnAddon",
            f"{m.full_name} is a {m.kind} model; a DeployedModel loads a PeftAddon (a Deployment serves its base model)",
        )
    if not d.enable_addons:
        return Verdict(
            False,
            "AddonsDisabled",
            f"{d.full_name} does not enable addons (spec.enableAddons is false)",
        )
    if m.base_full_name != d.base_full_name:
        return Verdict(
            False,
            "BaseModelMismatch",
            f"{m.full_name} is built on {m.base_full_name}, but {d.full_name} serves {d.base_full_name}",
        )
    if m.not_ready is not None:
        # Its adapter has not been read (yet): its rank is unknown and it may not be one.
        if m.failed:
            return Verdict(False, "ModelInvalid", f"{m.full_name} is not usable: {m.not_ready}")
        return Verdict(
            False, "ModelNotReady", f"{m.full_name} is not Ready yet: {m.not_ready}", waiting=True
        )
    if m.lora_rank is not None and m.lora_rank > d.max_addon_rank:
        return Verdict(
            False,
            "RankTooHigh",
            f"{m.full_name} has LoRA rank {m.lora_rank}, above {d.full_name}'s maxAddonRank={d.max_addon_rank}",
        )
    if m.path is None:
        return Verdict(
            False, "UnsupportedModelSource", f"the model servers cannot read {m.full_name}'s source"
        )
    return None


@dataclass(frozen=True)
class PodLoad:
    """What one ready replica serves, as observed over HTTP."""

    pod: str
    serves: bool
    error: str | None = None  # the server refused: its own message
    waiting: str | None = None  # the server did not answer (yet)


def deployed_model_status(
    *,
    generation: int,
    full_name: str,
    served_name: str | None,
    verdict: Verdict,
    pods: list[PodLoad],
    previous: list[Condition],
    now: str,
) -> DeployedModelStatus:
    def cond(conds: list[Condition], ok: bool, reason: str, message: str) -> list[Condition]:
        return set_condition(conds, "Ready", ok, reason, message, generation=generation, now=now)

    if not verdict.admitted:
        return DeployedModelStatus(
            observed_generation=generation,
            name=full_name,
            state="Waiting" if verdict.waiting else "Failed",
            served_name=served_name,
            conditions=cond(previous, False, verdict.reason, verdict.message),
            replicas=None,
            loaded_replicas=None,
        )
    loaded = sum(1 for p in pods if p.serves)
    errors = [f"{p.pod}: {p.error}" for p in pods if p.error]
    pending = "; ".join(f"{p.pod}: {p.waiting}" for p in pods if p.waiting)
    if not pods:
        conditions = cond(
            previous, False, "NoReadyReplicas", "the deployment has no ready replica to load into"
        )
        state = "Waiting"
    elif loaded == len(pods):
        conditions = cond(
            previous, True, "Loaded", f"served by {loaded}/{len(pods)} ready replicas"
        )
        state = "Ready"
    elif errors:
        conditions = cond(
            previous,
            False,
            "LoadFailed",
            f"served by {loaded}/{len(pods)} ready replicas; "
            + "; ".join(errors)
            + (f"; waiting for {pending}" if pending else ""),
        )
        state = "Failed"
    else:
        detail = f"served by {loaded}/{len(pods)} ready replicas"
        if pending:
            detail += f"; waiting for {pending}"
        conditions = cond(previous, False, "Loading", detail)
        state = "Progressing"
    return DeployedModelStatus(
        observed_generation=generation,
        name=full_name,
        state=state,
        served_name=served_name,
        conditions=conditions,
        replicas=len(pods),
        loaded_replicas=loaded,
    )
