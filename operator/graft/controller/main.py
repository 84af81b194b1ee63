"""kopf wiring only: settings, handler registration, and `run()`. The work is in the reconcilers."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from graft import keys, logs
from graft.controller import deployment
from graft.k8s import Api, load_config
from graft.names import InvalidReference, parse_ref

log = logging.getLogger(__name__)

# How often every object is reconciled even when no event arrives (missed events, dependencies
# in other namespaces). Tests lower it to see convergence quickly.
RESYNC_SECONDS = float(os.environ.get("GRAFT_RESYNC_SECONDS", "60"))

_api: Api | None = None
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def api() -> Api:
    global _api  # noqa: PLW0603 - one client per process, made after the kubeconfig is loaded
    if _api is None:
        load_config()
        _api = Api()
    return _api


@contextmanager
def exclusive(kind: str, namespace: str, name: str) -> Iterator[None]:
    """One reconcile at a time per object; kopf runs sync handlers on a thread pool."""
    with _locks_guard:
        lock = _locks.setdefault((kind, namespace, name), threading.Lock())
    with lock:
        yield


def reconcile_deployment(namespace: str, name: str) -> None:
    with exclusive("deployments", namespace, name):
        deployment.reconcile(api(), namespace, name)


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


def _on_deployment(namespace: str | None, name: str | None, **_: Any) -> None:
    assert namespace is not None
    assert name is not None
    reconcile_deployment(namespace, name)


GRAFT_DEPLOYMENTS = (keys.GROUP, keys.VERSION, "deployments")

for register in (
    kopf.on.create(*GRAFT_DEPLOYMENTS),
    kopf.on.update(*GRAFT_DEPLOYMENTS, field="spec"),
    kopf.on.resume(*GRAFT_DEPLOYMENTS),
    kopf.timer(
        *GRAFT_DEPLOYMENTS, interval=RESYNC_SECONDS, idle=None, initial_delay=RESYNC_SECONDS
    ),
):
    register(_on_deployment)


def _reconcile_soft(namespace: str, name: str) -> None:
    # Triggered by another object's event: a failure is retried by the next event or the resync.
    try:
        reconcile_deployment(namespace, name)
    except Exception:
        log.exception("reconciling deployment %s/%s failed; it will be retried", namespace, name)


@kopf.on.event(
    "v1", "pods", labels={keys.COMPONENT: keys.MODEL_SERVER, keys.MANAGED_BY: keys.MANAGED_BY_VALUE}
)
def model_server_pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    owner = labels.get(keys.DEPLOYMENT)
    if namespace and owner:
        _reconcile_soft(namespace, owner)


@kopf.on.event(keys.GROUP, keys.VERSION, "models")
def model_event(namespace: str | None, name: str | None, **_: Any) -> None:
    """A base model appeared, changed or went: reconcile the Deployments of its account using it."""
    if not namespace or not name:
        return
    for dep in api().list_graft("deployments", namespace):
        try:
            ref = parse_ref(dep.get("spec", {}).get("baseModel", ""), "models", account=namespace)
        except InvalidReference:
            continue
        if (ref.account, ref.id) == (namespace, name):
            _reconcile_soft(namespace, dep["metadata"]["name"])


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
