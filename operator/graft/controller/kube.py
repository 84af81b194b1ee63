"""The thin I/O layer: every Kubernetes API call Graft's reconcilers make goes through here."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from graft.controller.store import Store
from graft.core import keys
from graft.core.objects import Obj
from graft.plan.indices import INDICES

log = logging.getLogger(__name__)


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def error_message(exc: ApiException) -> str:
    """The API server's own message (e.g. the quota it exceeded), not the HTTP wrapper."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or exc)


def is_not_found(exc: ApiException) -> bool:
    return bool(exc.status == 404)


CONNECT_TIMEOUT_SECONDS = 5.0


class TimedApiClient(client.ApiClient):  # type: ignore[misc]
    """An API client whose every request has a deadline: connecting, and each read of the
    answer, may take `timeout` seconds at most (the client's default is to wait forever)."""

    def __init__(self, timeout: float, configuration: client.Configuration | None = None) -> None:
        super().__init__(configuration)
        self.request_timeout = (min(CONNECT_TIMEOUT_SECONDS, timeout), timeout)

    def call_api(  # type: ignore[no-untyped-def]
        self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None
    ):
        return super().call_api(
            method,
            url,
            header_params=header_params,
            body=body,
            post_params=post_params,
            _request_timeout=_request_timeout or self.request_timeout,
        )


def _add_ops(obj: Obj, finalizer: str) -> list[Obj]:
    meta = obj["metadata"]
    ops: list[Obj] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
    ]
    if meta.get("finalizers"):
        ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": finalizer})
    else:
        ops.append({"op": "add", "path": "/metadata/finalizers", "value": [finalizer]})
    return ops


def _remove_ops(obj: Obj, finalizer: str) -> list[Obj]:
    finalizers = obj["metadata"].get("finalizers") or []
    if finalizer not in finalizers:
        return []
    at = f"/metadata/finalizers/{finalizers.index(finalizer)}"
    return [{"op": "test", "path": at, "value": finalizer}, {"op": "remove", "path": at}]


class Api:
    """A small facade over the generated clients, returning plain dicts.

    The `cached_*` reads answer from the operator's cache of Graft objects (`store`,
    graft.controller.store) when it covers the kind and namespace, else from the API server;
    everything else is a request."""

    store: Store | None = None

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    def _plain(self, obj: Any) -> Obj:
        """A client model object as the plain dict the API server sent."""
        out: Obj = self.client.sanitize_for_serialization(obj)
        return out

    def _read(self, read: Callable[..., Any], *args: Any) -> Obj | None:
        """`read(*args)` as a plain dict; None when the object does not exist."""
        try:
            return self._plain(read(*args))
        except ApiException as exc:
            if is_not_found(exc):
                return None
            raise

    def _delete(self, delete: Callable[..., Any], name: str, *scope: str, uid: str | None) -> bool:
        """`delete(name, *scope)` of the object with this uid only (when given); False when it
        is gone already, or is another object of the same name (the precondition failed)."""
        body = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None
        )
        try:
            delete(name, *scope, body=body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    # --- Graft custom objects -------------------------------------------------------------

    def get_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        """A fresh read. One that finds nothing also drops the object from the cache: kopf's
        re-listing after a broken watch brings no DELETED event for what went meanwhile."""
        found = self._read(
            self.custom.get_namespaced_custom_object,
            keys.GROUP,
            keys.VERSION,
            namespace,
            plural,
            name,
        )
        if found is None and self.store is not None:
            self.store.remove(plural, namespace, name)
        return found

    def list_graft(self, plural: str, namespace: str) -> list[Obj]:
        result = self.custom.list_namespaced_custom_object(
            keys.GROUP, keys.VERSION, namespace, plural
        )
        items: list[Obj] = result.get("items", [])
        return items

    def list_graft_everywhere(self, plural: str) -> list[Obj]:
        """Every object of a namespaced Graft kind, in all accounts."""
        result = self.custom.list_cluster_custom_object(keys.GROUP, keys.VERSION, plural)
        items: list[Obj] = result.get("items", [])
        return items

    def cached_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        """A Graft object another reconcile depends on (namespace "": an Account)."""
        if self._cached(plural, namespace):
            assert self.store is not None
            return self.store.get(plural, namespace, name)
        if not namespace:
            return self.get_graft_cluster(plural, name)
        return self.get_graft(plural, namespace, name)

    def _cached(self, plural: str, namespace: str | None) -> bool:
        """Whether the cache holds every object of `plural` in `namespace` (None: anywhere)."""
        if self.store is None:
            return False
        if namespace is None:
            return self.store.covers_all(plural)
        return self.store.covers(plural, namespace)

    def cached_list(self, plural: str, namespace: str | None) -> list[Obj]:
        """Every object of a namespaced Graft kind in `namespace` (None: in every account)."""
        if self._cached(plural, namespace):
            assert self.store is not None
            return self.store.list(plural, namespace)
        if namespace is None:
            return self.list_graft_everywhere(plural)
        return self.list_graft(plural, namespace)

    def cached_index(self, plural: str, index: str, value: str, namespace: str | None) -> list[Obj]:
        """The objects of `plural` in `namespace` (None: anywhere) whose `index`
        (graft.plan.indices) includes `value`."""
        if self._cached(plural, namespace):
            assert self.store is not None
            found = self.store.by_index(plural, index, value)
            if namespace is None:
                return found
            return [o for o in found if o["metadata"].get("namespace") == namespace]
        indexer = INDICES[(plural, index)]
        return [o for o in self.cached_list(plural, namespace) if value in indexer(o)]

    def add_cluster_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        self._json_patch(plural, "", obj["metadata"]["name"], _add_ops(obj, finalizer))

    def remove_cluster_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        if ops := _remove_ops(obj, finalizer):
            self._json_patch(plural, "", obj["metadata"]["name"], ops)

    def add_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        """Add a finalizer to a namespaced Graft object, unless someone changed it meanwhile
        (the next event brings the change, and the next reconcile adds it)."""
        meta = obj["metadata"]
        self._json_patch(plural, meta["namespace"], meta["name"], _add_ops(obj, finalizer))

    def remove_finalizer(self, plural: str, obj: Obj, finalizer: str) -> None:
        """Remove a finalizer (the one at the index it had when read: the test op makes the
        patch fail instead of removing another one if the list changed)."""
        meta = obj["metadata"]
        if ops := _remove_ops(obj, finalizer):
            self._json_patch(plural, meta["namespace"], meta["name"], ops)

    def _json_patch(self, plural: str, namespace: str, name: str, ops: list[Obj]) -> None:
        """A JSON patch of a Graft object (namespace "": cluster-scoped)."""
        try:
            if namespace:
                self.custom.patch_namespaced_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    namespace,
                    plural,
                    name,
                    ops,
                    field_manager=keys.FIELD_MANAGER,
                    _content_type="application/json-patch+json",
                )
            else:
                self.custom.patch_cluster_custom_object(
                    keys.GROUP,
                    keys.VERSION,
                    plural,
                    name,
                    ops,
                    field_manager=keys.FIELD_MANAGER,
                    _content_type="application/json-patch+json",
                )
        except ApiException as exc:
            # 404: gone; 409/422: changed meanwhile (a failed test op); its event comes next.
            if exc.status not in (404, 409, 422):
                raise

    def patch_graft_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Obj,
        *,
        resource_version: str | None = None,
    ) -> bool:
        """Merge-patch status; keys set to None are removed. namespace "" = cluster-scoped. An
        object that went meanwhile has no status to write: that is not an error (False). With
        `resource_version`, only that version of the object is patched: a 409 Conflict is raised
        when someone wrote it since (the caller read stale state; a retry reads it again)."""
        body: Obj = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            if namespace:
                self.custom.patch_namespaced_custom_object_status(
                    keys.GROUP,
                    keys.VERSION,
                    namespace,
                    plural,
                    name,
                    body,
                    field_manager=keys.FIELD_MANAGER,
                )
            else:
                self.custom.patch_cluster_custom_object_status(
                    keys.GROUP, keys.VERSION, plural, name, body, field_manager=keys.FIELD_MANAGER
                )
        except ApiException as exc:
            if not is_not_found(exc):
                raise
            return False
        return True

    def add_graft_owner(self, plural: str, obj: Obj, reference: Obj) -> Obj | None:
        """Add an ownerReference to a namespaced Graft object, unless someone changed the object
        since it was read (then None: the next reconcile adds it). Returns the patched object."""
        meta = obj["metadata"]
        ops: list[Obj] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if meta.get("ownerReferences"):
            ops.append({"op": "add", "path": "/metadata/ownerReferences/-", "value": reference})
        else:
            ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": [reference]})
        try:
            patched: Obj = self.custom.patch_namespaced_custom_object(
                keys.GROUP,
                keys.VERSION,
                meta["namespace"],
                plural,
                meta["name"],
                ops,
                field_manager=keys.FIELD_MANAGER,
                _content_type="application/json-patch+json",
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                return None
            raise
        return patched

    def scale_graft(
        self, plural: str, namespace: str, name: str, replicas: int, resource_version: str
    ) -> bool:
        """Set spec.replicas through the /scale subresource, as kubectl scale, an HPA or KEDA
        do, and only if the object is still at `resource_version`: False when it changed
        meanwhile (409) or went (404); whoever reads it again decides again."""
        body = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        try:
            self.custom.patch_namespaced_custom_object_scale(
                keys.GROUP,
                keys.VERSION,
                namespace,
                plural,
                name,
                body,
                field_manager=keys.AUTOSCALER_FIELD_MANAGER,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    # --- Pods and Services -----------------------------------------------------------------

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return [self._plain(p) for p in pods.items]

    def create_pod(self, pod: Obj) -> Obj:
        return self._plain(
            self.core.create_namespaced_pod(
                pod["metadata"]["namespace"], pod, field_manager=keys.FIELD_MANAGER
            )
        )

    def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete a pod (only the one with this uid, when given); False when already gone."""
        return self._delete(self.core.delete_namespaced_pod, name, namespace, uid=uid)

    def get_service(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_service, name, namespace)

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply of a namespaced core/v1 object (a Service, a ResourceQuota) under
        Graft's field manager: fields Graft set before and leaves out now are removed."""
        kind, meta = obj["kind"], obj["metadata"]
        patch = {
            "Service": self.core.patch_namespaced_service,
            "ResourceQuota": self.core.patch_namespaced_resource_quota,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
        }[kind]
        return self._plain(
            patch(
                meta["name"],
                meta["namespace"],
                obj,
                field_manager=keys.FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        )

    # --- Events -------------------------------------------------------------------------------

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event on `involved` (best effort: an event is never worth a retry)."""
        meta = involved["metadata"]
        now = datetime.now(UTC)
        namespace = meta.get("namespace") or "default"
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": meta.get("namespace") or "default",
            },
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "graft"},
            "reportingComponent": "graft.dev/operator",
            "reportingInstance": "graft",
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(namespace, body)
        except ApiException as exc:
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc.reason)

    # --- Accounts and Users ---------------------------------------------------------------------

    @property
    def rbac(self) -> Any:
        return client.RbacAuthorizationV1Api(self.client)

    def get_graft_cluster(self, plural: str, name: str) -> Obj | None:
        """A cluster-scoped Graft object (an Account), or None (dropped from the cache, as in
        `get_graft`)."""
        found = self._read(
            self.custom.get_cluster_custom_object, keys.GROUP, keys.VERSION, plural, name
        )
        if found is None and self.store is not None:
            self.store.remove(plural, "", name)
        return found

    def get_namespace(self, name: str) -> Obj | None:
        return self._read(self.core.read_namespace, name)

    def create_namespace(self, namespace: Obj) -> Obj:
        """Create (never apply: an existing namespace must not be adopted); 409 if it exists."""
        return self._plain(self.core.create_namespace(namespace, field_manager=keys.FIELD_MANAGER))

    def patch_namespace_labels(self, name: str, labels: dict[str, str]) -> None:
        self.core.patch_namespace(
            name, {"metadata": {"labels": labels}}, field_manager=keys.FIELD_MANAGER
        )

    @property
    def networking(self) -> Any:
        return client.NetworkingV1Api(self.client)

    def get_network_policy(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.networking.read_namespaced_network_policy, name, namespace)

    def delete_namespace(self, name: str, uid: str) -> bool:
        """Delete the namespace with this uid; False when it is gone or is another one."""
        return self._delete(self.core.delete_namespace, name, uid=uid)

    def get_resource_quota(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_resource_quota, name, namespace)

    def delete_resource_quota(self, namespace: str, name: str, uid: str) -> bool:
        return self._delete(self.core.delete_namespaced_resource_quota, name, namespace, uid=uid)

    def list_graft_names(self, plural: str, namespace: str) -> list[str]:
        """Names of the Graft objects of one kind in a namespace (one page is plenty to show)."""
        result = self.custom.list_namespaced_custom_object(
            keys.GROUP, keys.VERSION, namespace, plural, limit=100
        )
        return [item["metadata"]["name"] for item in result.get("items", [])]

    def get_role_binding(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.rbac.read_namespaced_role_binding, name, namespace)

    def create_role_binding(self, binding: Obj) -> Obj:
        return self._plain(
            self.rbac.create_namespaced_role_binding(
                binding["metadata"]["namespace"], binding, field_manager=keys.FIELD_MANAGER
            )
        )

    def delete_role_binding(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the RoleBinding with this uid; False when it is gone or is another one."""
        return self._delete(self.rbac.delete_namespaced_role_binding, name, namespace, uid=uid)

    def get_role(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.rbac.read_namespaced_role, name, namespace)

    def create_role(self, role: Obj) -> Obj:
        return self._plain(
            self.rbac.create_namespaced_role(
                role["metadata"]["namespace"], role, field_manager=keys.FIELD_MANAGER
            )
        )

    def delete_role(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Role with this uid; False when it is gone or is another one."""
        return self._delete(self.rbac.delete_namespaced_role, name, namespace, uid=uid)

    def cluster_role_exists(self, name: str) -> bool:
        return self._read(self.rbac.read_cluster_role, name) is not None

    # --- Datasets and FineTuningJobs: Jobs, their inputs, their outputs ------------------------

    @property
    def batch(self) -> Any:
        return client.BatchV1Api(self.client)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.batch.read_namespaced_job, name, namespace)

    def create_job(self, job: Obj) -> Obj | None:
        """Create a batch/v1 Job; None when one of that name exists already (a reconcile whose
        status write was lost made it; the caller reads it back)."""
        try:
            return self._plain(
                self.batch.create_namespaced_job(
                    job["metadata"]["namespace"], job, field_manager=keys.FIELD_MANAGER
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Job with this uid now and its pods in the background; False when it is
        gone already (or another Job has the name)."""
        body = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid), propagation_policy="Background"
        )
        try:
            self.batch.delete_namespaced_job(name, namespace, body=body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def job_pods(self, namespace: str, job_uid: str) -> list[Obj]:
        """The pods of the Job with this uid (the Job controller labels them with it)."""
        return self.list_pods(namespace, f"batch.kubernetes.io/controller-uid={job_uid}")

    def get_config_map(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_config_map, name, namespace)

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        """A Secret by name: the operator's own seed Secret, or the Secret of an ApiKey (to check
        that it still holds the key status.keyHash names). Never listed or watched: the RBAC
        allows neither."""
        return self._read(self.core.read_namespaced_secret, name, namespace)

    def delete_secret(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the Secret with this uid; False when it is gone or is another one."""
        return self._delete(self.core.delete_namespaced_secret, name, namespace, uid=uid)

    def create_secret(self, secret: Obj) -> Obj | None:
        """Create a Secret; None when one of that name exists already."""
        try:
            return self._plain(
                self.core.create_namespaced_secret(
                    secret["metadata"]["namespace"], secret, field_manager=keys.FIELD_MANAGER
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def get_pvc(self, namespace: str, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def create_graft(self, plural: str, obj: Obj) -> Obj | None:
        """Create a namespaced Graft object; None when one of that name exists already."""
        meta = obj["metadata"]
        try:
            created: Obj = self.custom.create_namespaced_custom_object(
                keys.GROUP,
                keys.VERSION,
                meta["namespace"],
                plural,
                obj,
                field_manager=keys.FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return created

    def patch_graft_labels(
        self, plural: str, namespace: str, name: str, labels: dict[str, str]
    ) -> None:
        """Merge-patch labels onto a namespaced Graft object (other labels are kept)."""
        self.custom.patch_namespaced_custom_object(
            keys.GROUP,
            keys.VERSION,
            namespace,
            plural,
            name,
            {"metadata": {"labels": labels}},
            field_manager=keys.FIELD_MANAGER,
        )
