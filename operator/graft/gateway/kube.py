"""The gateway's view of the cluster: a watch cache of the objects it routes and authenticates
by, and the two writes it makes (a scale from zero, a trainer's progress into its FineTuningJob's
status.progress). The only module of the gateway that imports a cluster client.

One thread per watched resource lists it, then watches from the list's resourceVersion (with
bookmarks), and lists again after a 410 Gone or a broken stream, so a request never waits for
the API server: it reads the last snapshot. FineTuningJobs are watched too: a trainer's progress
report is checked against its job's uid and whether the job has ended. Model-server pods are watched by label
(app.kubernetes.io/component=model-server), never all pods of the cluster. The model servers'
key seed is read once from the operator's namespace (the same Secret the operator derives the
keys from), so the gateway needs no right to read Secrets in tenants' namespaces.

Revocation: deleting an ApiKey or its User reaches the gateway as a watch event, usually within
a second; the catalog drops the key at once (see graft.gateway.catalog.build).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from graft.api.kinds import Plural
from graft.core import keys
from graft.core.serverkeys import progress_token, server_key
from graft.gateway import progress
from graft.gateway.catalog import Catalog, DeploymentEntry, build
from graft.gateway.server import Pod

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""How long one watch request lasts before it is renewed (the API server ends it anyway)."""
REQUEST_TIMEOUT = 30.0
GRAFT_KINDS = (
    Plural.ACCOUNTS,
    Plural.USERS,
    "apikeys",
    Plural.MODELS,
    Plural.DEPLOYMENTS,
    Plural.DEPLOYED_MODELS,
    Plural.FINE_TUNING_JOBS,
    Plural.DATASETS,
)
UNROUTED = frozenset({Plural.FINE_TUNING_JOBS, Plural.DATASETS})
"""Kinds watched for what they are (a trainer's job, the dashboard's datasets), not for routing:
their changes (every progress write is one) do not rebuild the catalog or wake the requests
waiting for a replica."""
PROGRESS_WRITE_TIMEOUT = 10.0
"""Deadline of one write of a job's status.progress (a trainer waits at most 5 s anyway)."""
GATEWAY_FIELD_MANAGER = "graft-gateway"
SEED_FIELD = "seed"
TOKEN_CACHE_SECONDS = 60.0
"""How long a TokenReview's answer is trusted: a deleted ServiceAccount's token keeps working
through the gateway at most this long (Kubernetes' own webhook token cache defaults to 2 min)."""
TOKEN_CACHE_SIZE = 10_000
SA_PREFIX = "system:serviceaccount:"


class _Store:
    """One resource's objects by namespace/name, kept current by one thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, Any] = {}
        self.synced = threading.Event()


class ClusterCache:
    def __init__(
        self,
        api: client.ApiClient,
        operator_namespace: str,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.operator_namespace = operator_namespace
        self.on_change = on_change
        self.stores = {name: _Store(str(name)) for name in (*GRAFT_KINDS, "pods")}
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._pods: list[Pod] | None = None
        self._seed: bytes | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tokens: dict[str, tuple[float, str | None]] = {}  # sha256 -> (until, account)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        for name in self.stores:
            thread = threading.Thread(
                target=self._follow, args=(name,), name=f"watch-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        seed = threading.Thread(target=self._load_seed, name="seed", daemon=True)
        seed.start()
        self._threads.append(seed)

    def stop(self) -> None:
        self._stop.set()

    def synced(self) -> bool:
        return self._seed is not None and all(s.synced.is_set() for s in self.stores.values())

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.synced():
                return True
            time.sleep(0.1)
        return self.synced()

    # --- what the server reads -----------------------------------------------------------------

    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                objects = {n: list(s.objects.values()) for n, s in self.stores.items()}
                self._catalog = build(
                    accounts=objects[Plural.ACCOUNTS],
                    users=objects[Plural.USERS],
                    api_keys=objects["apikeys"],
                    models=objects[Plural.MODELS],
                    deployments=objects[Plural.DEPLOYMENTS],
                    deployed_models=objects[Plural.DEPLOYED_MODELS],
                )
                for problem in self._catalog.problems:
                    log.warning("skipped: %s", problem)
            return self._catalog

    def pods(self) -> list[Pod]:
        with self._lock:
            if self._pods is None:
                self._pods = [
                    p for p in (_pod(o) for o in self.stores["pods"].objects.values()) if p
                ]
            return self._pods

    def server_key(self, account: str, deployment: str) -> str | None:
        return None if self._seed is None else server_key(self._seed, account, deployment)

    def finetuning_job(self, namespace: str, name: str) -> progress.JobRecord | None:
        obj = self.stores[Plural.FINE_TUNING_JOBS].objects.get(f"{namespace}/{name}")
        return None if obj is None else progress.job_record(obj)

    def objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        """The cached objects of a watched Graft kind (its plural) in one namespace, by name;
        the dashboard reads them and must not change them (they are the cache's own)."""
        store = self.stores.get(kind)
        if store is None or kind == "pods":
            return []
        found = [
            o
            for o in list(store.objects.values())
            if (o.get("metadata") or {}).get("namespace") == namespace
        ]
        return sorted(found, key=lambda o: str(o["metadata"].get("name", "")))

    def progress_token(self, namespace: str, job: str, uid: str) -> str | None:
        return None if self._seed is None else progress_token(self._seed, namespace, job, uid)

    async def patch_progress(
        self, namespace: str, name: str, resource_version: str, report: dict[str, Any]
    ) -> progress.Outcome:
        return await asyncio.to_thread(
            self._patch_progress, namespace, name, resource_version, report
        )

    def _patch_progress(
        self, namespace: str, name: str, resource_version: str, report: dict[str, Any]
    ) -> progress.Outcome:
        # The version the cache holds is a precondition: a job that ended since (the operator
        # wrote Succeeded) refuses the write with 409 instead of getting progress after its end.
        body = {"metadata": {"resourceVersion": resource_version}, "status": {"progress": report}}
        try:
            self.custom.patch_namespaced_custom_object_status(
                keys.GROUP,
                keys.VERSION,
                namespace,
                Plural.FINE_TUNING_JOBS,
                name,
                body,
                field_manager=GATEWAY_FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _request_timeout=PROGRESS_WRITE_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 409:
                return progress.Outcome.CONFLICT
            if exc.status == 404:
                return progress.Outcome.GONE
            raise
        return progress.Outcome.WRITTEN

    async def scale_from_zero(self, deployment: DeploymentEntry) -> bool:
        return await asyncio.to_thread(self._scale_from_zero, deployment)

    def _scale_from_zero(self, deployment: DeploymentEntry) -> bool:
        # A JSON patch that tests the current value: when another gateway (or the autoscaler)
        # changed it first, the API server refuses this one and nothing is overwritten.
        patch = [
            {"op": "test", "path": "/spec/replicas", "value": 0},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
        ]
        try:
            self.custom.patch_namespaced_custom_object_scale(
                keys.GROUP,
                keys.VERSION,
                deployment.account,
                Plural.DEPLOYMENTS,
                deployment.id,
                patch,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status in (409, 422):  # the test failed: it is not at zero any more
                return False
            raise
        return True

    async def review_token(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).hexdigest()  # never keep the token itself
        now = time.monotonic()
        cached = self._tokens.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        account = await asyncio.to_thread(self._review, token)
        if len(self._tokens) >= TOKEN_CACHE_SIZE:
            self._tokens = {k: v for k, v in self._tokens.items() if v[0] > now}
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
        self._tokens[digest] = (now + TOKEN_CACHE_SECONDS, account)
        return account

    def _review(self, token: str) -> str | None:
        """A ServiceAccount of an account's namespace that may read the account's Models acts
        for that account; any other identity (a user, a ServiceAccount elsewhere) does not."""
        try:
            review = client.AuthenticationV1Api(self.api).create_token_review(
                client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)),
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            log.warning("TokenReview failed: %s %s", exc.status, _message(exc))
            return None
        status = review.status
        if not status or not status.authenticated or not status.user:
            return None
        username = status.user.username or ""
        if not username.startswith(SA_PREFIX):
            return None
        namespace = username[len(SA_PREFIX) :].split(":", 1)[0]
        if namespace not in self.catalog().limits:  # every Account has an entry
            return None
        access = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=username,
                groups=status.user.groups,
                uid=status.user.uid,
                resource_attributes=client.V1ResourceAttributes(
                    group=keys.GROUP, resource=Plural.MODELS, verb="get", namespace=namespace
                ),
            )
        )
        try:
            answer = client.AuthorizationV1Api(self.api).create_subject_access_review(
                access, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            log.warning("SubjectAccessReview failed: %s %s", exc.status, _message(exc))
            return None
        return namespace if answer.status and answer.status.allowed else None

    # --- the watch threads ---------------------------------------------------------------------

    def _changed(self) -> None:
        with self._lock:
            self._catalog = None
            self._pods = None
        self.on_change()

    def _list(self, name: str) -> tuple[list[dict[str, Any]], str]:
        if name == "pods":
            raw = self.core.list_pod_for_all_namespaces(
                label_selector=f"{keys.COMPONENT}={keys.MODEL_SERVER}",
                _request_timeout=REQUEST_TIMEOUT,
            )
            items = [self.api.sanitize_for_serialization(p) for p in raw.items]
            return items, raw.metadata.resource_version
        found = self.custom.list_cluster_custom_object(
            keys.GROUP, keys.VERSION, name, _request_timeout=REQUEST_TIMEOUT
        )
        return list(found.get("items", [])), found["metadata"]["resourceVersion"]

    def _stream(self, name: str, w: watch.Watch, rv: str) -> Any:
        common: dict[str, Any] = {
            "resource_version": rv,
            "timeout_seconds": WATCH_SECONDS,
            "allow_watch_bookmarks": True,
            "_request_timeout": WATCH_SECONDS + 30,
        }
        if name == "pods":
            return w.stream(
                self.core.list_pod_for_all_namespaces,
                label_selector=f"{keys.COMPONENT}={keys.MODEL_SERVER}",
                **common,
            )
        return w.stream(
            self.custom.list_cluster_custom_object, keys.GROUP, keys.VERSION, name, **common
        )

    def _follow(self, name: str) -> None:
        store = self.stores[name]
        backoff = 0.5
        while not self._stop.is_set():
            try:
                items, rv = self._list(name)
                store.objects = {_key(o): o for o in items}
                store.synced.set()
                self._changed()
                backoff = 0.5
                while not self._stop.is_set():
                    w = watch.Watch()
                    gone = False
                    for event in self._stream(name, w, rv):
                        kind, obj = event["type"], event["object"]
                        if not isinstance(obj, dict):
                            obj = self.api.sanitize_for_serialization(obj)
                        if kind == "ERROR":
                            gone = obj.get("code") == 410
                            break
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            store.objects.pop(_key(obj), None)
                        else:
                            store.objects[_key(obj)] = obj
                        if name not in UNROUTED:
                            self._changed()
                        if self._stop.is_set():
                            break
                    if gone:
                        break  # list again
            except ApiException as exc:
                if exc.status == 410:
                    continue
                log.warning(
                    "watch %s: %s %s; retrying in %.1fs", name, exc.status, _message(exc), backoff
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # a broken stream, a timeout: list again after a pause
                log.warning("watch %s: %s; retrying in %.1fs", name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _load_seed(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                secret = self.core.read_namespaced_secret(
                    keys.SERVER_KEY_SEED_SECRET,
                    self.operator_namespace,
                    _request_timeout=REQUEST_TIMEOUT,
                )
                raw = (secret.data or {}).get(SEED_FIELD)
                if raw:
                    self._seed = base64.b64decode(raw)
                    self._changed()
                    return
                log.warning("secret %s has no %r yet", keys.SERVER_KEY_SEED_SECRET, SEED_FIELD)
            except ApiException as exc:
                # 404: the operator has not made it yet (it does at its first start).
                log.info(
                    "waiting for secret %s/%s: %s",
                    self.operator_namespace,
                    keys.SERVER_KEY_SEED_SECRET,
                    _message(exc),
                )
            except Exception as exc:
                log.warning("reading the key seed: %s", exc)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def _message(exc: ApiException) -> str:
    """The API server's own message (a 403 names the identity and the missing permission)."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _pod(obj: dict[str, Any]) -> Pod | None:
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {})
    deployment = (meta.get("labels") or {}).get(keys.DEPLOYMENT)
    if not deployment or meta.get("deletionTimestamp"):
        return None
    port = 8000
    for container in spec.get("containers", []):
        for p in container.get("ports", []) or []:
            if p.get("name") == "http":
                port = int(p["containerPort"])
    ready = status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions", []) or []
    )
    return Pod(
        uid=str(meta.get("uid", "")),
        name=str(meta.get("name", "")),
        deployment=f"accounts/{meta['namespace']}/deployments/{deployment}",
        ip=status.get("podIP"),
        port=port,
        ready=ready,
    )


def connect() -> client.ApiClient:
    """An API client from the pod's service account, or else the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
