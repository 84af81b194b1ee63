"""Model-server pods and Service of a Deployment: builders, the pod plan and status (pure).

The plan is a function of (desired replicas, current template hash, observed pods) only, so the
same inputs always give the same plan, whatever event triggered the reconcile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graft.api.common import Condition
from graft.api.serving import (
    MANAGED_ENGINE_FLAGS,
    AutoscalingStatus,
    DeploymentSpec,
    DeploymentStatus,
)
from graft.core import keys
from graft.core.conditions import set_condition
from graft.core.names import is_dns1035_label
from graft.core.objects import Obj, Owner, labels
from graft.plan.engines import (
    API_KEY_FIELD,
    PORT,
    PORT_NAME,
    ServerSpec,
    container_for,
    engine_volumes,
    overridden_flags,
    reserved_env,
)
from graft.plan.podsecurity import restricted


def selector_labels(deployment: str) -> dict[str, str]:
    return {keys.DEPLOYMENT: deployment, keys.COMPONENT: keys.MODEL_SERVER}


def selector_string(deployment: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(deployment).items()))


def service_name(deployment: str) -> str:
    """The Service is named after the Deployment when that is a valid Service name.

    Graft IDs may start with a digit, Service names may not; those get a stable hashed name
    (reported in status.endpoint) rather than a silently mangled one.
    """
    if is_dns1035_label(deployment):
        return deployment
    return "graft-" + hashlib.sha256(deployment.encode()).hexdigest()[:12]


def endpoint(owner: Owner) -> str:
    return f"http://{service_name(owner.name)}.{owner.namespace}.svc:{PORT}/v1"


def resource_requirements(
    gpus: int, gpu_resource: str, cpu: str | int | None, memory: str | int | None
) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if gpus:
        # Extended resources must have requests == limits.
        requests[gpu_resource] = limits[gpu_resource] = str(gpus)
    if cpu is not None:
        requests["cpu"] = str(cpu)
    if memory is not None:
        requests["memory"] = limits["memory"] = str(memory)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def pod_spec(
    spec: DeploymentSpec, server: ServerSpec, volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The pod's spec; everything that should roll the pods when it changes is in here."""
    pod: dict[str, Any] = {
        "containers": [container_for(spec.engine, server)],
        "enableServiceLinks": False,
        # Model servers call nothing in the cluster: no token to steal from them.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
    }
    volumes = [*volumes, *engine_volumes(spec.engine)]
    if volumes:
        pod["volumes"] = volumes
    if spec.node_selector:
        pod["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    return restricted(pod)


def spec_hash(pod: dict[str, Any]) -> str:
    canonical = json.dumps(pod, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def model_server_pod(owner: Owner, pod: dict[str, Any], template_hash: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            # generateName never truncates: pod names may be 253 characters long.
            "generateName": f"{owner.name}-{template_hash[:5]}-",
            "namespace": owner.namespace,
            "labels": labels(keys.MODEL_SERVER, owner, {keys.SPEC_HASH: template_hash}),
            "ownerReferences": [owner.reference()],
        },
        "spec": pod,
    }


def server_key_secret_name(deployment: str) -> str:
    """The Secret with the API key the Deployment's model servers require (a Graft ID plus this
    suffix is a valid Secret name)."""
    return f"{deployment}-server-key"


def server_key_secret(owner: Owner, key: str) -> dict[str, Any]:
    """The Deployment's server-key Secret, which its pods read the key from: created with its
    first pods, owned by the Deployment (it goes with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": server_key_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels(keys.MODEL_SERVER, owner),
            "ownerReferences": [owner.reference()],
        },
        "stringData": {API_KEY_FIELD: key},
    }


def service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels(keys.MODEL_SERVER, owner),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


@dataclass(frozen=True)
class ObservedPod:
    """The facts about one existing pod that the plan and status need."""

    name: str
    spec_hash: str | None
    ready: bool
    terminating: bool = False
    finished: bool = False  # phase Succeeded or Failed: it will never serve again
    created: str = ""


@dataclass(frozen=True)
class PodPlan:
    create: int = 0
    delete: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return self.create == 0 and not self.delete


def pod_plan(
    desired: int,
    current_hash: str,
    pods: list[ObservedPod],
    *,
    max_surge: int = 1,
    max_unavailable: int = 0,
    surge_refused: bool = False,
) -> PodPlan:
    """Pods to create and delete to reach `desired` ready pods of the current template.

    A rollout keeps at least `desired - max_unavailable` pods ready and at most
    `desired + max_surge` pods in all, as apps/v1 does. When admission refused the surge pod (a
    quota with no room above `desired`), `surge_refused` replaces pods one at a time instead:
    an outdated pod goes first, and its replacement takes its place in the quota.
    """
    live = [p for p in pods if not p.terminating]
    delete: list[str] = [p.name for p in live if p.finished]
    live = [p for p in live if not p.finished]
    current = [p for p in live if p.spec_hash == current_hash]
    outdated = [p for p in live if p.spec_hash != current_hash]
    reasons: list[str] = []
    if outdated and surge_refused:
        max_surge, max_unavailable = 0, max(1, max_unavailable)

    if len(current) > desired:
        # Drop unready pods first, then the newest (they have served least).
        surplus = sorted(current, key=lambda p: p.created, reverse=True)
        surplus.sort(key=lambda p: p.ready)
        delete += [p.name for p in surplus[: len(current) - desired]]
        reasons.append("ScalingDown")

    ready_current = sum(1 for p in current if p.ready)
    unready_outdated = [p for p in outdated if not p.ready]
    ready_outdated = sorted((p for p in outdated if p.ready), key=lambda p: p.created)
    delete += [p.name for p in unready_outdated]
    keep_ready = max(0, desired - max_unavailable)
    removable = max(0, ready_current + len(ready_outdated) - keep_ready)
    delete += [p.name for p in ready_outdated[:removable]]

    # New pods: as many as are missing, within the surge budget once this plan's deletions are
    # done (an unready outdated pod makes room at once).
    missing = max(0, desired - len(current))
    staying = sum(1 for p in live if p.name not in delete)
    create = min(missing, max(0, desired + max_surge - staying)) if outdated else missing
    if create:
        reasons.insert(0, "RollingUpdate" if outdated else "ScalingUp")
    if outdated and "RollingUpdate" not in reasons:
        reasons.append("RollingUpdate")
    return PodPlan(create=create, delete=tuple(delete), reasons=tuple(reasons))


POD_CREATION_FORBIDDEN = "PodCreationForbidden"
"""Ready reason while admission (a ResourceQuota, most often) refuses the Deployment's pods: a
change of the account's quota queues it again. (controller/deployment.py writes it as a literal:
tests/unit/test_argocd_health.py reads the reasons from the source.)"""

SURGE_REFUSED = "SurgeRefused"
"""Progressing reason while admission (a quota) refuses pods above spec.replicas and pods are
replaced one at a time."""


@dataclass(frozen=True)
class BlockedBy:
    """Why no pods can be planned (a spec or dependency problem), as a condition reason."""

    reason: str
    message: str
    waiting: bool  # True: a dependency may appear; False: only a spec change fixes it


def spec_problem(spec: DeploymentSpec, image_allowed: Callable[[str], bool]) -> BlockedBy | None:
    """What in the spec Graft refuses to run. The CRD refuses the same flags and variables at
    admission; this catches objects admitted under an older CRD."""
    flags = overridden_flags(spec.engine_args or [])
    if flags:
        return BlockedBy(
            "InvalidSpec",
            f"engineArgs {' '.join(flags)} would set a flag Graft manages ("
            + ", ".join(f"--{f}" for f in MANAGED_ENGINE_FLAGS)
            + ")",
            waiting=False,
        )
    env = reserved_env([e.name for e in spec.env or ()])
    if env:
        return BlockedBy("InvalidSpec", f"env may not set {', '.join(env)}", waiting=False)
    if spec.image and not image_allowed(spec.image):
        return BlockedBy(
            "ImageNotAllowed",
            f"image {spec.image} is not among the images this cluster's Graft allows "
            "(GRAFT_ALLOWED_IMAGES); leave spec.image out to use the engine's image",
            waiting=False,
        )
    return None


AUTOSCALING = "Autoscaling"
"""The condition the autoscaler (graft.controller.autoscaler) keeps on a Deployment with
spec.autoscaling: True while it acts on metrics, False (NoMetrics) while it has none."""


def autoscaling_of(status: Obj | None) -> AutoscalingStatus | None:
    """status.autoscaling as the object has it; None when absent or not in today's shape (the
    autoscaler writes it again)."""
    raw = (status or {}).get("autoscaling")
    if not isinstance(raw, dict):
        return None
    try:
        return AutoscalingStatus.model_validate(raw)
    except ValueError:
        return None


def without_autoscaling(conditions: list[Condition]) -> list[Condition]:
    return [c for c in conditions if c.type != AUTOSCALING]


def invalid_spec_status(
    owner: Owner, full_name: str, message: str, previous: list[Condition], now: str
) -> DeploymentStatus:
    """The status of a Deployment whose spec Graft cannot read (admitted by an older CRD); the
    autoscaler cannot read it either, so its condition goes too."""
    conditions = set_condition(
        without_autoscaling(previous),
        "Ready",
        False,
        "InvalidSpec",
        message,
        generation=owner.generation,
        now=now,
    )
    return DeploymentStatus(
        observed_generation=owner.generation, name=full_name, state="Failed", conditions=conditions
    )


def deployment_status(
    *,
    owner: Owner,
    spec: DeploymentSpec,
    full_name: str,
    pods: list[ObservedPod],
    current_hash: str | None,
    blocked: BlockedBy | None,
    previous: list[Condition],
    now: str,
    autoscaling: AutoscalingStatus | None = None,
) -> DeploymentStatus:
    """The whole status from what was observed (after the plan ran).

    status.autoscaling and the Autoscaling condition are the autoscaler's, written between
    reconciles: `autoscaling` (what the object has) and the condition in `previous` are carried
    over as they are, since publish() writes the whole status and removes what it lacks. Without
    spec.autoscaling both go."""
    live = [p for p in pods if not p.terminating and not p.finished]
    updated = [p for p in live if current_hash is not None and p.spec_hash == current_hash]
    ready = sum(1 for p in live if p.ready)
    desired = spec.replicas
    gen = owner.generation

    def cond(
        conds: list[Condition], type_: str, ok: bool, reason: str, message: str
    ) -> list[Condition]:
        return set_condition(conds, type_, ok, reason, message, generation=gen, now=now)

    counts = f"{ready}/{desired} replicas ready"
    # A rollout lasts while any pod of an older template is left, terminating ones too; while
    # it does, maxUnavailable replicas may be away and the Deployment is still Ready.
    rolling = any(p.spec_hash != current_hash for p in pods if not p.finished)
    held = blocked is not None and blocked.reason == SURGE_REFUSED and current_hash is not None
    # Once a surge pod was refused, the rest of the rollout replaces one pod at a time: one
    # replica is away by design (the rollout is held, not the Deployment), also in the
    # reconciles that create nothing and so are not refused again.
    converged = (
        len(updated) == len(live) == desired and sum(1 for p in updated if p.ready) == desired
    )
    before = next((c for c in previous if c.type == "Progressing"), None)
    one_at_a_time = held or (
        not converged
        and blocked is None
        and before is not None
        and before.status == "True"
        and before.reason == SURGE_REFUSED
    )
    unavailable = max(spec.strategy.max_unavailable, 1 if one_at_a_time else 0)
    keep = max(1 if desired else 0, desired - unavailable)
    ready_ok = ready >= (keep if rolling or one_at_a_time else desired)

    conditions = list(previous) if spec.autoscaling else without_autoscaling(previous)
    if blocked is None or held:
        conditions = cond(
            conditions,
            "Ready",
            ready_ok,
            "ReplicasReady" if ready_ok else "ReplicasNotReady",
            counts,
        )
    if blocked is not None and held:
        # The rollout is held, not the Deployment: what serves still serves.
        conditions = cond(
            conditions,
            "Progressing",
            True,
            blocked.reason,
            f"{counts}; {len(updated)} of {len(live)} pods on the current template; "
            + blocked.message,
        )
        state = "Progressing"
    elif blocked is not None:
        conditions = cond(conditions, "Ready", False, blocked.reason, blocked.message)
        conditions = cond(conditions, "Progressing", False, blocked.reason, blocked.message)
        state = "Waiting" if blocked.waiting else "Failed"
    elif converged:
        conditions = cond(conditions, "Progressing", False, "Stable", counts)
        state = "Ready"
    else:
        if one_at_a_time:
            why = SURGE_REFUSED  # still replacing one at a time: say so until it is done
        elif len(updated) < len(live):
            why = "RollingUpdate"
        elif len(live) > desired:
            why = "ScalingDown"
        else:
            why = "ScalingUp"
        detail = f"{counts}; {len(updated)} of {len(live)} pods on the current template, {desired} wanted"
        conditions = cond(conditions, "Progressing", True, why, detail)
        state = "Progressing"
    return DeploymentStatus(
        observed_generation=gen,
        name=full_name,
        state=state,
        conditions=conditions,
        replicas=len(live),
        ready_replicas=ready,
        updated_replicas=len(updated),
        selector=selector_string(owner.name),
        endpoint=endpoint(owner),
        autoscaling=autoscaling if spec.autoscaling else None,
    )
