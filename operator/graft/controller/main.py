"""kopf wiring only: settings, handler registration, and `run()`. The work is in the reconcilers.

Every kind is reconciled level-triggered: create, update (of the spec), resume and a periodic
resync all call the kind's `reconcile(api, namespace, name)`, one at a time per object; events of
other objects (pods, models, ...) call it too. Each reconcile reads fresh state, so it does not
matter which trigger fired or whether one was missed.

Adding a kind: write `graft/controller/<kind>.py` with `reconcile()`, then add a section to
this file that calls `level_triggered()` and registers any extra triggers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from graft.controller import (
    account,
    dataset,
    deployedmodel,
    deployment,
    finetuning,
    logs,
    lookup,
    model,
    user,
)
from graft.controller.kube import Api, load_config
from graft.core import keys
from graft.core.names import InvalidReference, full_name, parse_ref

log = logging.getLogger(__name__)

# How often every object is reconciled even when no event arrives (missed events, dependencies
# in other namespaces). Tests lower it to see convergence quickly.
RESYNC_SECONDS = float(os.environ.get("GRAFT_RESYNC_SECONDS", "60"))

Reconcile = Callable[[Api, str, str], None]
"""reconcile(api, namespace, name); namespace is "" for cluster-scoped kinds."""

_api: Api | None = None
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()
_reconcilers: dict[str, Reconcile] = {}


def api() -> Api:
    global _api  # noqa: PLW0603 - one client per process, made after the kubeconfig is loaded
    if _api is None:
        load_config()
        _api = Api()
    return _api


@contextmanager
def exclusive(plural: str, namespace: str, name: str) -> Iterator[None]:
    """One reconcile at a time per object; kopf runs sync handlers on a thread pool."""
    with _locks_guard:
        lock = _locks.setdefault((plural, namespace, name), threading.Lock())
    with lock:
        yield


def reconcile(plural: str, namespace: str, name: str) -> None:
    with exclusive(plural, namespace, name):
        _reconcilers[plural](api(), namespace, name)


def reconcile_soft(plural: str, namespace: str, name: str) -> None:
    """Reconcile triggered by another object's event: a failure is retried by the next event
    or the resync, so it is logged, not raised."""
    try:
        reconcile(plural, namespace, name)
    except Exception:
        log.exception("reconciling %s %s/%s failed; it will be retried", plural, namespace, name)


def level_triggered(plural: str, fn: Reconcile) -> None:
    """Register create, spec update, resume and the resync timer of a Graft kind on `fn`."""
    _reconcilers[plural] = fn
    resource = (keys.GROUP, keys.VERSION, plural)

    def handler(namespace: str | None, name: str | None, **_: Any) -> None:
        assert name is not None
        reconcile(plural, namespace or "", name)

    handler.__name__ = handler.__qualname__ = f"reconcile_{plural}"
    kopf.on.create(*resource)(handler)
    kopf.on.update(*resource, field="spec")(handler)
    kopf.on.resume(*resource)(handler)
    kopf.timer(*resource, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)(handler)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=keys.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=keys.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = keys.FINALIZER
    # Graft records its own, deliberate Events; kopf would post one per log line.
    settings.posting.enabled = False
    settings.execution.max_workers = int(os.environ.get("GRAFT_WORKERS", "8"))
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    api()


def run(
    namespace: list[str] | None = None, liveness: str | None = None, verbose: bool = False
) -> int:
    """Run the operator until interrupted."""
    logs.configure(verbose)
    kopf.run(
        standalone=True,
        clusterwide=not namespace,
        namespaces=namespace or [],
        liveness_endpoint=liveness,
    )
    return 0


# --- Deployment ------------------------------------------------------------------------------

level_triggered("deployments", deployment.reconcile)


@kopf.on.event(
    "v1", "pods", labels={keys.COMPONENT: keys.MODEL_SERVER, keys.MANAGED_BY: keys.MANAGED_BY_VALUE}
)
def model_server_pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A replica came, went or changed readiness: the Deployment and its addons follow."""
    owner = labels.get(keys.DEPLOYMENT)
    if namespace and owner:
        reconcile_soft("deployments", namespace, owner)
        for dm in lookup.deployed_models_of(api(), namespace, owner):
            reconcile_soft("deployedmodels", namespace, dm["metadata"]["name"])


@kopf.on.event(keys.GROUP, keys.VERSION, "models")
def model_event(namespace: str | None, name: str | None, **_: Any) -> None:
    """A model appeared, changed or went: reconcile what uses it in its account."""
    if not namespace or not name:
        return
    for dep in api().list_graft("deployments", namespace):
        try:
            ref = parse_ref(dep.get("spec", {}).get("baseModel", ""), "models", account=namespace)
        except InvalidReference:
            continue
        if (ref.account, ref.id) == (namespace, name):
            reconcile_soft("deployments", namespace, dep["metadata"]["name"])
    for dm in api().list_graft("deployedmodels", namespace):
        if (dm.get("spec") or {}).get("model") in (name, full_name(namespace, "models", name)):
            reconcile_soft("deployedmodels", namespace, dm["metadata"]["name"])


# --- Model -----------------------------------------------------------------------------------

level_triggered("models", model.reconcile)


@kopf.on.delete(keys.GROUP, keys.VERSION, "models")
def model_deleted(namespace: str | None, name: str | None, **_: Any) -> None:
    """A Model in use by a Deployment or DeployedModel is not deleted out from under it."""
    assert namespace is not None
    assert name is not None
    with exclusive("models", namespace, name):
        blocker = model.deletion_blockers(api(), namespace, name)
    if blocker:
        raise kopf.TemporaryError(blocker, delay=max(2.0, RESYNC_SECONDS / 4))


# --- DeployedModel ---------------------------------------------------------------------------

level_triggered("deployedmodels", deployedmodel.reconcile)


@kopf.on.event(keys.GROUP, keys.VERSION, "deployedmodels")
def deployed_model_event(namespace: str | None, spec: Mapping[str, Any], **_: Any) -> None:
    """The Deployment's addon set changed: new pods must start with it, status must say it."""
    if not namespace:
        return
    try:
        ref = parse_ref(str(spec.get("deployment", "")), "deployments", account=namespace)
    except InvalidReference:
        return
    if ref.account == namespace:
        reconcile_soft("deployments", namespace, ref.id)


@kopf.on.delete(keys.GROUP, keys.VERSION, "deployedmodels")
def deployed_model_deleted(namespace: str | None, name: str | None, **_: Any) -> None:
    assert namespace is not None
    assert name is not None
    with exclusive("deployedmodels", namespace, name):
        deployedmodel.unload_everywhere(api(), namespace, name)


# --- Account and User ------------------------------------------------------------------------

# How soon a deleted Account whose namespace still holds Graft resources is looked at again.
ACCOUNT_DELETION_RETRY_SECONDS = min(RESYNC_SECONDS, 10.0)

level_triggered("accounts", account.reconcile)
level_triggered("users", user.reconcile)


@kopf.on.delete(keys.GROUP, keys.VERSION, "accounts")
def account_deleted(name: str | None, **_: Any) -> None:
    """Hold Graft's finalizer while the account's namespace holds what must not go with it."""
    assert name is not None
    with exclusive("accounts", "", name):
        waiting = account.finalize(api(), name)
    if waiting:
        raise kopf.TemporaryError(waiting, delay=ACCOUNT_DELETION_RETRY_SECONDS)


@kopf.on.delete(keys.GROUP, keys.VERSION, "users")
def user_deleted(namespace: str | None, name: str | None, uid: str | None, **_: Any) -> None:
    """Revoke the User's access before the User object disappears."""
    assert namespace
    assert name
    assert uid
    with exclusive("users", namespace, name):
        user.revoke(api(), namespace, name, uid)


@kopf.on.event(
    "v1",
    "resourcequotas",
    labels={keys.MANAGED_BY: keys.MANAGED_BY_VALUE, keys.COMPONENT: keys.ACCOUNT_QUOTA},
)
def account_quota_event(labels: Mapping[str, str], **_: Any) -> None:
    """The API server counted usage (or someone changed the quota): refresh the Account."""
    name = labels.get(keys.ACCOUNT)
    if name:
        reconcile_soft("accounts", "", name)


# --- Dataset and FineTuningJob ---------------------------------------------------------------

dataset.config()  # a wrong GRAFT_* Job setting stops the operator at start, naming the variable

level_triggered("datasets", dataset.reconcile)
level_triggered("finetuningjobs", finetuning.reconcile)


@kopf.on.event("batch", "v1", "jobs", labels={keys.MANAGED_BY: keys.MANAGED_BY_VALUE})
def graft_job_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A validation or trainer Job progressed: its Dataset or FineTuningJob follows."""
    if not namespace:
        return
    if owner := labels.get(keys.DATASET):
        reconcile_soft("datasets", namespace, owner)
    if owner := labels.get(keys.FINETUNING_JOB):
        reconcile_soft("finetuningjobs", namespace, owner)


def _unfinished_finetuning_jobs(
    namespace: str, plural: str, name: str, fields: tuple[str, ...]
) -> list[str]:
    """FineTuningJobs of the account that have not ended and name this object in `fields`."""
    wanted = (name, full_name(namespace, plural, name))
    out = []
    for ftj in api().list_graft("finetuningjobs", namespace):
        conditions = (ftj.get("status") or {}).get("conditions") or []
        if any(
            c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True"
            for c in conditions
        ):
            continue
        spec = ftj.get("spec") or {}
        if any(spec.get(f) in wanted for f in fields):
            out.append(ftj["metadata"]["name"])
    return out


@kopf.on.event(keys.GROUP, keys.VERSION, "datasets")
def dataset_event(namespace: str | None, name: str | None, **_: Any) -> None:
    """A Dataset was validated (or failed): the FineTuningJobs waiting for it follow."""
    if namespace and name:
        for job in _unfinished_finetuning_jobs(
            namespace, "datasets", name, ("dataset", "evaluationDataset")
        ):
            reconcile_soft("finetuningjobs", namespace, job)


@kopf.on.event(keys.GROUP, keys.VERSION, "models")
def model_event_for_training(namespace: str | None, name: str | None, **_: Any) -> None:
    """A base model became Ready (or went): the FineTuningJobs of its account waiting for it
    follow (jobs of other accounts using a public model notice at their next resync)."""
    if namespace and name:
        for job in _unfinished_finetuning_jobs(namespace, "models", name, ("baseModel",)):
            reconcile_soft("finetuningjobs", namespace, job)
