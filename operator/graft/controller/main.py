"""kopf wiring only: settings, handler registration, and `run()`. The work is in the reconcilers.

Every kind is reconciled level-triggered by `reconcile(ctx, namespace, name)` of its module. kopf
only watches: its handlers put objects into the operator's cache (graft.controller.store) and
add keys to the work queue (graft.controller.workqueue), whose own workers run the reconciles,
one at a time per object, merging the events that arrive meanwhile. An object is queued when it
is first seen (start-up included), when its generation changes (spec) and when its deletion
starts; events of other objects (pods, models, ...) queue it too, and a jittered resync
(GRAFT_RESYNC_SECONDS) queues it again as a safety net. Each reconcile reads the state it acts on
(its own object and pods fresh, the Graft objects it depends on from the cache), so it does not
matter which trigger fired or whether one was missed.

kopf's handlers here are all event handlers (no create/update/resume handlers, no timers): kopf
writes no progress annotations and puts its finalizer only on DeployedModels, whose deletion
unloads the addon from the model servers (outside the garbage collector's reach).

`run()` reads the settings once, makes the one API client, and registers every handler on a
registry of its own; importing this module registers nothing.

Adding a kind: write `graft/plan/<kind>.py` and `graft/controller/<kind>.py` with
`reconcile()`, then add a section to `Operator.register()` that calls `level_triggered()` and
registers any extra triggers.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any, cast

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from graft.api.kinds import ACCOUNT_PLURALS, Plural
from graft.controller import (
    account,
    apikey,
    dataset,
    deployedmodel,
    deployment,
    finetuning,
    logs,
    lookup,
    model,
    user,
)
from graft.controller.autoscaler import Autoscaler
from graft.controller.context import Context
from graft.controller.kube import Api, TimedApiClient, load_config
from graft.controller.leader import LeaseElector, NoNamespace, standby_health
from graft.controller.metrics import OperatorMetrics, Outcome, serving
from graft.controller.modelclient import Limits, ModelServers
from graft.controller.rechecks import Rechecks
from graft.controller.serverkeys import load_seed
from graft.controller.store import Store
from graft.controller.workqueue import Backoff, Key, WorkQueue
from graft.core import keys
from graft.core.names import InvalidReference, full_name, parse_ref
from graft.core.objects import condition, is_finished, is_terminating
from graft.core.settings import ConfigError, Settings
from graft.plan.deployment import POD_CREATION_FORBIDDEN
from graft.plan.indices import INDICES, INPUTS, USES_MODEL, models_used
from graft.plan.relevance import Relevance, model_facts

log = logging.getLogger(__name__)

EXIT_LEADERSHIP_LOST = 3
# The server-side label selector of every watch of what Graft creates (Pods, Jobs, quotas,
# RoleBindings): the operator's memory and traffic do not grow with the cluster's other objects.
CHILD_SELECTOR = f"{keys.MANAGED_BY}={keys.MANAGED_BY_VALUE}"

Reconcile = Callable[[Context, str, str], None]
"""reconcile(ctx, namespace, name); namespace is "" for cluster-scoped kinds."""


RETRIED_STATUSES = frozenset({409, 429})
"""API answers that waiting fixes: a conflict (someone wrote the object meanwhile) and
throttling; 5xx too."""


def reconcile_outcome(exc: Exception) -> Outcome:
    """What a reconcile's exception means, for graft_operator_reconciles_total: `retry` when
    waiting fixes it (kopf.TemporaryError, a conflict, a throttled, failing or unreachable API
    server), `error` for everything else (a bug, a forbidden or invalid request)."""
    if isinstance(exc, kopf.TemporaryError):
        return Outcome.RETRY
    if isinstance(exc, ApiException):
        status = exc.status or 0
        return Outcome.RETRY if status in RETRIED_STATUSES or status >= 500 else Outcome.ERROR
    if isinstance(exc, OSError | urllib3.exceptions.HTTPError):
        return Outcome.RETRY
    return Outcome.ERROR


class Running:
    """The reconciles running now and since when, for the liveness probe."""

    def __init__(self) -> None:
        self._since: dict[int, tuple[str, float]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def track(self, what: str) -> Iterator[None]:
        ident = threading.get_ident()
        with self._guard:
            self._since[ident] = (what, time.monotonic())
        try:
            yield
        finally:
            with self._guard:
                self._since.pop(ident, None)

    def count(self) -> int:
        with self._guard:
            return len(self._since)

    def stuck(self, now: float, after: float) -> list[str]:
        """What the reconciles running for longer than `after` seconds are busy with."""
        with self._guard:
            return sorted(what for what, since in self._since.values() if now - since > after)


class Operator:
    """The handlers of one operator process, bound to its context."""

    def __init__(
        self,
        ctx: Context,
        metrics: OperatorMetrics | None = None,
        namespaces: list[str] | None = None,
    ) -> None:
        self.rechecks = Rechecks(self.recheck_soon)
        self.store = Store()
        for (plural, index), values in INDICES.items():
            self.store.add_index(plural, index, values)
        ctx.api.store = self.store
        self.ctx = replace(ctx, kick=self.kick, recheck=self.rechecks.schedule)
        self.metrics = metrics or ctx.servers.metrics
        self.namespaces = namespaces or None
        """`graft run --namespace`: the namespaces watched (None: the whole cluster)."""
        workers = self.ctx.settings.workers
        self.queue = WorkQueue(
            self._process,
            workers=workers,
            # One kind may take three quarters of the workers: a restart's 5,000 Models leave
            # room for the Deployments.
            per_kind=max(1, workers - workers // 4),
            backoff=Backoff(first=1.0, cap=self.ctx.settings.resync_seconds),
            after_success=self._resync_later,
        )
        self.metrics.queue_depth.set_function(self.queue.depth)
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._reconcilers: dict[str, Reconcile] = {}
        self._resynced: set[str] = set()
        # What each object's own events last showed that a reconcile must follow (uid,
        # generation, deletion started); present while the object exists.
        self._seen: dict[Key, tuple[Any, ...]] = {}
        self._seen_guard = threading.Lock()
        # What on_children registered: watched with Graft's label selector, server-side.
        self.child_resources: set[tuple[str, ...]] = set()
        self.model_facts = Relevance()
        self.running = Running()
        # Its status writes take the reconcile's lock of the Deployment they write.
        self.autoscaler = Autoscaler(
            self.ctx.api, self.ctx.settings, self.metrics, exclusive=self.exclusive
        )

    def kick(self, plural: str, namespace: str, name: str) -> None:
        """Reconcile an object again soon (a background load that ended asks for it)."""
        self.queue.add((plural, namespace, name))

    def recheck_soon(self, plural: str, namespace: str, name: str) -> None:
        """A re-check a reconcile asked for is due (graft.controller.rechecks). A failed one is
        retried by the queue's backoff."""
        self.queue.add((plural, namespace, name))

    def _process(self, key: Key) -> None:
        self.reconcile(*key)

    def _resync_later(self, key: Key) -> None:
        """After a successful reconcile: queue the object again within the resync interval
        (at a random point of its second half, so objects seen together are not resynced
        together), unless an earlier pass is due already or the object is gone."""
        plural, namespace, _ = key
        if plural not in self._resynced:
            return
        with self._seen_guard:
            if self.store.covers(plural, namespace) and not self.store.has(*key):
                # Gone, though no DELETED event said so (a fresh read found nothing).
                self._seen.pop(key, None)
            if key not in self._seen:
                return
        interval = self.ctx.settings.resync_seconds
        self.queue.add_after(key, interval * random.uniform(0.5, 1.0))

    @contextmanager
    def exclusive(self, plural: str, namespace: str, name: str) -> Iterator[None]:
        """One reconcile at a time per object; kopf runs sync handlers on a thread pool."""
        with self._locks_guard:
            lock = self._locks.setdefault((plural, namespace, name), threading.Lock())
        with lock:
            yield

    def reconcile(self, plural: str, namespace: str, name: str) -> None:
        with (
            self.running.track(f"{plural} {namespace}/{name}"),
            self.exclusive(plural, namespace, name),
            self.metrics.reconcile(plural, reconcile_outcome),
        ):
            log.debug("reconciling %s %s/%s", plural, namespace, name)
            self._reconcilers[plural](self.ctx, namespace, name)

    def enqueue(self, plural: str, namespace: str, name: str) -> None:
        """Reconcile an object soon (another object's event asks for it); merged with any
        reconcile of it that is waiting already."""
        self.queue.add((plural, namespace, name))

    def level_triggered(
        self, registry: kopf.OperatorRegistry, plural: Plural, fn: Reconcile, *, resync: bool = True
    ) -> None:
        """Reconcile a Graft kind with `fn`: its own events keep the cache and queue the object
        when it is first seen, its generation changes or its deletion starts (`observe`); unless
        `resync` is False, every object is queued again within the resync interval. Registered
        before any other handler of the kind, so they see the cache updated."""
        self._reconcilers[plural] = fn
        if resync:
            self._resynced.add(plural)
        resource = (keys.GROUP, keys.VERSION, str(plural))

        def handler(
            type: str | None,
            body: Mapping[str, Any],
            namespace: str | None,
            name: str | None,
            **_: Any,
        ) -> None:
            if name:
                self.own_event(plural, type, body, namespace or "", name)

        handler.__name__ = handler.__qualname__ = f"observe_{plural}"
        kopf.on.event(*resource, registry=registry)(handler)

    def own_event(
        self, plural: str, type: str | None, body: Mapping[str, Any], namespace: str, name: str
    ) -> None:
        """A Graft object's own event: `observe` it; when it appeared, went or changed its
        spec or deletion, what depends on it follows."""
        if not self.observe(plural, type, body, namespace, name) or not namespace:
            return
        if plural in (Plural.DEPLOYMENTS, Plural.DEPLOYED_MODELS):
            self.model_users_changed(namespace, body)
        if plural == Plural.DEPLOYED_MODELS:
            self.deployed_model_changed(namespace, body)

    def observe(
        self, plural: str, type: str | None, body: Mapping[str, Any], namespace: str, name: str
    ) -> bool:
        """One watch event of a Graft object (type None: the start-up listing): keep the cache,
        queue the object when a reconcile must follow. True when it appeared, went, or its
        spec or deletion changed."""
        key = (plural, namespace, name)
        if type == "DELETED":
            self.store.remove(plural, namespace, name)
            with self._seen_guard:
                self._seen.pop(key, None)
            self.queue.forget(key)
            return True
        obj = copy.deepcopy(dict(body))
        self.store.put(plural, obj)
        meta = obj.get("metadata") or {}
        facts = (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))
        with self._seen_guard:
            changed = self._seen.get(key) != facts
            self._seen[key] = facts
        if changed:
            self.queue.add(key)
        return changed

    def prime(self, logger: Any = None, **_: Any) -> None:
        """Start-up, before kopf watches anything: fill the cache with one listing per kind
        (of the watched namespaces), then start the work queue's workers. A kind whose listing
        fails is read from the API server instead (logged)."""
        api = self.ctx.api
        for plural in self._reconcilers:
            try:
                if plural == Plural.ACCOUNTS:
                    items = api.custom.list_cluster_custom_object(
                        keys.GROUP, keys.VERSION, plural
                    ).get("items", [])
                    self.store.prime(plural, items, None)
                elif self.namespaces is None:
                    self.store.prime(plural, api.list_graft_everywhere(plural), None)
                else:
                    items = [o for ns in self.namespaces for o in api.list_graft(plural, ns)]
                    self.store.prime(plural, items, self.namespaces)
            except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
                log.warning(
                    "cannot cache %s (%s): reconciles read them from the API server", plural, exc
                )
        log.info(
            "cached %d Graft objects; starting %d reconcile workers",
            self.store.count(),
            self.ctx.settings.workers,
        )
        self.queue.start()

    def on_children(
        self,
        registry: kopf.OperatorRegistry,
        resource: tuple[str, ...],
        fn: Callable[..., None],
        component: str | None = None,
    ) -> None:
        """Register `fn` on the events of what Graft created (managed-by: graft), only of this
        component when one is given. The API server selects by managed-by (configure() sets
        it for the whole watch of `resource`), so the cluster's other Pods, Jobs, quotas and
        bindings never reach the operator; kopf filters the component in the process."""
        labels = {keys.MANAGED_BY: keys.MANAGED_BY_VALUE}
        if component:
            labels[keys.COMPONENT] = component
        kopf.on.event(*resource, labels=labels, registry=registry)(fn)
        self.child_resources.add(resource)

    def configure(self, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=keys.ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=keys.ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.persistence.finalizer = keys.FINALIZER
        # Graft records its own, deliberate Events; kopf would post one per log line.
        settings.posting.enabled = False
        settings.execution.max_workers = self.ctx.settings.workers
        # No API call waits forever: kopf's own requests and watches have deadlines too.
        api_timeout = self.ctx.settings.api_timeout
        settings.networking.request_timeout = api_timeout
        settings.networking.connect_timeout = min(10.0, api_timeout)
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = min(10.0, api_timeout)
        for resource in sorted(self.child_resources):
            # (group, version, plural) or (version, plural): kopf's own selector keys.
            settings.watching.label_selectors[cast(Any, resource)] = CHILD_SELECTOR

    async def workers_alive(self, **_: Any) -> str:
        """Liveness: fails (HTTP 500 from kopf's liveness endpoint) when every reconcile worker
        has been stuck in one reconcile for longer than GRAFT_STUCK_SECONDS. Async, so it runs on
        the event loop: a sync probe would wait in the workers' queue behind the reconciles it
        is meant to judge (a restart with many objects queues minutes of them)."""
        settings = self.ctx.settings
        stuck = self.running.stuck(time.monotonic(), settings.stuck_seconds)
        if len(stuck) >= settings.workers:
            raise kopf.PermanentError(
                f"all {settings.workers} reconcile workers stuck for over "
                f"{settings.stuck_seconds:g} s: {', '.join(stuck[:5])}"
            )
        return f"{self.running.count()} reconciles running, {len(stuck)} stuck"

    def register(self, registry: kopf.OperatorRegistry) -> None:
        """Every handler of the operator, on `registry`."""
        # Credentials as the kubernetes client finds them (in-cluster, else KUBECONFIG); kopf's
        # default registry would add this by itself, a registry of our own does not.
        kopf.on.login(registry=registry)(kopf.login_via_client)
        kopf.on.startup(registry=registry)(self.configure)
        kopf.on.startup(registry=registry)(self.prime)
        kopf.on.probe(id="workers", errors=kopf.ErrorsMode.PERMANENT, registry=registry)(
            self.workers_alive
        )
        # Every kind's own events first: the cache is updated before any other handler of
        # that event looks at it.
        self.level_triggered(registry, Plural.DEPLOYMENTS, deployment.reconcile)
        # No deletion handler for Models: one in use is held by Graft's in-use finalizer, which
        # its reconcile removes when its or its users' events show it unused.
        self.level_triggered(registry, Plural.MODELS, model.reconcile)
        self.level_triggered(registry, Plural.DEPLOYED_MODELS, deployedmodel.reconcile)
        self.level_triggered(registry, Plural.ACCOUNTS, account.reconcile)
        self.level_triggered(registry, Plural.USERS, user.reconcile)
        # An ApiKey's reconcile asks for its own re-check (ctx.recheck): just after the key
        # expires, else after the resync interval.
        self.level_triggered(registry, Plural.API_KEYS, apikey.reconcile, resync=False)
        self.level_triggered(registry, Plural.DATASETS, dataset.reconcile)
        self.level_triggered(registry, Plural.FINE_TUNING_JOBS, finetuning.reconcile)
        self._register_deployments(registry)
        self._register_deployed_models(registry)
        self._register_tenancy(registry)
        self._register_api_keys(registry)
        self._register_training(registry)

    # --- Deployment ------------------------------------------------------------------------

    def _register_deployments(self, registry: kopf.OperatorRegistry) -> None:
        # The autoscaler sizes what this watch shows it (started by `run()`, in the leader).
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.DEPLOYMENTS, registry=registry)(
            self.autoscaler.observe
        )
        self.on_children(registry, ("v1", "pods"), self.model_server_pod_event, keys.MODEL_SERVER)
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.MODELS, registry=registry)(self.model_event)

    def model_server_pod_event(
        self, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """A replica came, went or changed readiness: the Deployment and its addons follow."""
        owner = labels.get(keys.DEPLOYMENT)
        if namespace and owner:
            self.enqueue(Plural.DEPLOYMENTS, namespace, owner)
            for dm in lookup.deployed_models_of(self.ctx.api, namespace, owner):
                self.enqueue(Plural.DEPLOYED_MODELS, namespace, dm["metadata"]["name"])

    def model_event(
        self,
        namespace: str | None,
        name: str | None,
        body: Mapping[str, Any],
        type: str | None = None,
        **_: Any,
    ) -> None:
        """A model appeared, changed or went: reconcile what uses it in its account (and, when
        it is being deleted, the Model itself: its in-use finalizer). Only when something its
        users act on changed (graft.plan.relevance): not on its status or annotation noise."""
        if not namespace or not name:
            return
        if not self.model_facts.changed(
            namespace, name, model_facts(body), deleted=type == "DELETED"
        ):
            return
        self.model_deletion_event(namespace, name, body)
        me = full_name(namespace, Plural.MODELS, name)
        for plural in (Plural.DEPLOYMENTS, Plural.DEPLOYED_MODELS):
            for obj in self.ctx.api.cached_index(plural, USES_MODEL, me, namespace):
                self.enqueue(plural, namespace, obj["metadata"]["name"])

    # --- Model -----------------------------------------------------------------------------

    def model_deletion_event(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            self.enqueue(Plural.MODELS, namespace, name)

    def model_users_changed(self, namespace: str, body: Mapping[str, Any]) -> None:
        """A Deployment or DeployedModel appeared, went, changed its spec or began its
        deletion: the Model it uses follows (its in-use finalizer comes with the first user and
        goes with the last; a deleted Model waits for its users; its status lists them)."""
        for used in models_used(dict(body)):
            ref = parse_ref(used, Plural.MODELS, account=namespace)
            self.enqueue(Plural.MODELS, ref.account, ref.id)

    # --- DeployedModel ---------------------------------------------------------------------

    def _register_deployed_models(self, registry: kopf.OperatorRegistry) -> None:
        resource = (keys.GROUP, keys.VERSION, Plural.DEPLOYED_MODELS)
        kopf.on.event(*resource, registry=registry)(self.deployed_model_event)
        kopf.on.delete(*resource, registry=registry)(self.deployed_model_deleted)

    def deployed_model_event(
        self, namespace: str | None, spec: Mapping[str, Any], **_: Any
    ) -> None:
        """The Deployment's addon set changed: new pods must start with it, status must say it."""
        if not namespace:
            return
        try:
            ref = parse_ref(str(spec.get("deployment", "")), Plural.DEPLOYMENTS, account=namespace)
        except InvalidReference:
            return
        if ref.account == namespace:
            self.enqueue(Plural.DEPLOYMENTS, namespace, ref.id)

    def deployed_model_changed(self, namespace: str, body: Mapping[str, Any]) -> None:
        """A DeployedModel appeared, went, or changed its spec: the others of its Deployment are
        judged again (one fewer may free the slot a refused one waits for)."""
        spec = body.get("spec") or {}
        try:
            ref = parse_ref(str(spec.get("deployment", "")), Plural.DEPLOYMENTS, account=namespace)
        except InvalidReference:
            return
        for dm in lookup.deployed_models_of(self.ctx.api, namespace, ref.id):
            self.enqueue(Plural.DEPLOYED_MODELS, namespace, dm["metadata"]["name"])

    def deployed_model_deleted(self, namespace: str | None, name: str | None, **_: Any) -> None:
        assert namespace is not None
        assert name is not None
        with self.exclusive(Plural.DEPLOYED_MODELS, namespace, name):
            deployedmodel.unload_everywhere(self.ctx, namespace, name)

    # --- Account and User ------------------------------------------------------------------

    def _register_tenancy(self, registry: kopf.OperatorRegistry) -> None:
        # A User's RoleBinding is owned by the User: deleting the User revokes access through the
        # garbage collector, even while the operator is down, so Users carry no finalizer; a
        # change to the binding reconciles its User.
        self.on_children(
            registry,
            (keys.RBAC_GROUP, "v1", "rolebindings"),
            self.user_binding_event,
            keys.USER_BINDING,
        )
        # No deletion handler: Graft's account finalizer holds a deleted Account while its
        # namespace holds Graft resources, and its reconciler lets it go on the events below.
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.ACCOUNTS, registry=registry)(
            self.account_event
        )
        for plural in ACCOUNT_PLURALS:
            kopf.on.event(keys.GROUP, keys.VERSION, str(plural), registry=registry)(
                self.account_content_event
            )
        self.on_children(
            registry, ("v1", "resourcequotas"), self.account_quota_event, keys.ACCOUNT_QUOTA
        )
        # Someone relabels an account's namespace (Pod Security) or edits its NetworkPolicy:
        # the Account puts them back at once, not at the next resync.
        self.on_children(
            registry, ("v1", "namespaces"), self.account_child_event, keys.ACCOUNT_NAMESPACE
        )
        self.on_children(
            registry,
            ("networking.k8s.io", "v1", "networkpolicies"),
            self.account_child_event,
            keys.ACCOUNT_NETWORK_POLICY,
        )
        self.on_children(
            registry,
            (keys.RBAC_GROUP, "v1", "rolebindings"),
            self.account_secrets_binding_event,
            keys.ACCOUNT_SECRETS_BINDING,
        )

    def account_event(self, name: str | None, body: Mapping[str, Any], **_: Any) -> None:
        """A deleted Account is looked at on its own events (its finalizer)."""
        if name and (body.get("metadata") or {}).get("deletionTimestamp"):
            self.enqueue(Plural.ACCOUNTS, "", name)

    def account_content_event(self, namespace: str | None, type: str | None, **_: Any) -> None:
        """Something in an account's namespace went: a deleted Account waiting for it may go."""
        if not namespace or type != "DELETED":
            return
        owner = self.ctx.api.cached_graft(Plural.ACCOUNTS, "", namespace)
        if owner is not None and is_terminating(owner):
            self.enqueue(Plural.ACCOUNTS, "", namespace)

    def user_binding_event(
        self, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """Someone changed or deleted a User's RoleBinding: the User puts it back."""
        name = labels.get(keys.USER)
        if namespace and name:
            self.enqueue(Plural.USERS, namespace, name)

    def account_quota_event(
        self, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """The API server counted usage (or someone changed the quota): refresh the Account,
        and try again the Deployments whose pods the quota refused (there may be room now)."""
        name = labels.get(keys.ACCOUNT)
        if name:
            self.enqueue(Plural.ACCOUNTS, "", name)
        if namespace:
            for dep in self.ctx.api.cached_list(Plural.DEPLOYMENTS, namespace):
                if (condition(dep, "Ready") or {}).get("reason") == POD_CREATION_FORBIDDEN:
                    self.enqueue(Plural.DEPLOYMENTS, namespace, dep["metadata"]["name"])

    def account_child_event(self, labels: Mapping[str, str], **_: Any) -> None:
        """The account's namespace or NetworkPolicy changed or went: the Account follows."""
        if name := labels.get(keys.ACCOUNT):
            self.enqueue(Plural.ACCOUNTS, "", name)

    def account_secrets_binding_event(
        self, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """The RoleBinding that lets the operator read an account's Secrets appeared, changed
        or went: the Account puts it back if it must, and the account's ApiKeys that waited for
        it go on."""
        name = labels.get(keys.ACCOUNT)
        if name:
            self.enqueue(Plural.ACCOUNTS, "", name)
        if namespace:
            for key in lookup.api_keys_waiting_for_account(self.ctx.api, namespace):
                self.enqueue(Plural.API_KEYS, namespace, key)

    # --- ApiKey ----------------------------------------------------------------------------

    def _register_api_keys(self, registry: kopf.OperatorRegistry) -> None:
        # An ApiKey goes with its User through the garbage collector, even while the operator is
        # down: no finalizer.
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.USERS, registry=registry)(
            self.user_event_for_api_keys
        )
        self.on_children(
            registry,
            (keys.RBAC_GROUP, "v1", "rolebindings"),
            self.api_key_binding_event,
            keys.API_KEY_ACCESS,
        )

    def user_event_for_api_keys(self, namespace: str | None, name: str | None, **_: Any) -> None:
        """A User appeared, became Ready, changed its email or went: its ApiKeys follow."""
        if namespace and name:
            for key in lookup.api_keys_of(self.ctx.api, namespace, name):
                self.enqueue(Plural.API_KEYS, namespace, key)

    def api_key_binding_event(
        self, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> None:
        """Someone changed or deleted the RoleBinding that lets a User read its key: put it back."""
        name = labels.get(keys.API_KEY)
        if namespace and name:
            self.enqueue(Plural.API_KEYS, namespace, name)

    # --- Dataset and FineTuningJob ---------------------------------------------------------

    def _register_training(self, registry: kopf.OperatorRegistry) -> None:
        self.on_children(registry, ("batch", "v1", "jobs"), self.graft_job_event)
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.DATASETS, registry=registry)(
            self.dataset_event
        )
        kopf.on.event(keys.GROUP, keys.VERSION, Plural.MODELS, registry=registry)(
            self.model_event_for_training
        )

    def graft_job_event(self, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        """A validation, trainer or inspection Job progressed (or went): its Dataset,
        FineTuningJob or Model follows."""
        if not namespace:
            return
        if owner := labels.get(keys.MODEL):
            self.enqueue(Plural.MODELS, namespace, owner)
        if owner := labels.get(keys.DATASET):
            self.enqueue(Plural.DATASETS, namespace, owner)
        if owner := labels.get(keys.FINETUNING_JOB):
            self.enqueue(Plural.FINE_TUNING_JOBS, namespace, owner)

    def _unfinished_finetuning_jobs(self, namespace: str, plural: Plural, name: str) -> list[str]:
        """FineTuningJobs of the account that have not ended and use this Dataset or Model."""
        me = full_name(namespace, plural, name)
        return [
            ftj["metadata"]["name"]
            for ftj in self.ctx.api.cached_index(Plural.FINE_TUNING_JOBS, INPUTS, me, namespace)
            if not is_finished(ftj)
        ]

    def dataset_event(self, namespace: str | None, name: str | None, **_: Any) -> None:
        """A Dataset was validated (or failed): the FineTuningJobs waiting for it follow."""
        if namespace and name:
            for job in self._unfinished_finetuning_jobs(namespace, Plural.DATASETS, name):
                self.enqueue(Plural.FINE_TUNING_JOBS, namespace, job)

    def model_event_for_training(self, namespace: str | None, name: str | None, **_: Any) -> None:
        """A base model became Ready (or went): the FineTuningJobs of its account waiting for it
        follow (jobs of other accounts using a public model notice at their next resync)."""
        if namespace and name:
            for job in self._unfinished_finetuning_jobs(namespace, Plural.MODELS, name):
                self.enqueue(Plural.FINE_TUNING_JOBS, namespace, job)


def run(
    namespace: list[str] | None = None,
    liveness: str | None = None,
    verbose: bool = False,
    metrics_url: str = "",
) -> int:
    """Run the operator until interrupted; 2 when its settings are wrong."""
    logs.configure(verbose)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        log.error("invalid operator settings: %s", exc)
        return 2
    metrics = OperatorMetrics(workers=settings.workers)
    with ExitStack() as stack:
        try:
            # From the start, not from leadership on: a standby is scraped too (leader 0).
            stack.enter_context(serving(metrics, metrics_url))
        except ValueError as exc:
            log.error("invalid operator settings: %s", exc)
            return 2
        except OSError as exc:
            log.error(
                "cannot serve metrics at %s: %s; pass another --metrics address, or "
                "--metrics '' to serve none",
                metrics_url,
                exc,
            )
            return 2
        return _lead(settings, metrics, namespace, liveness)


def _lead(
    settings: Settings, metrics: OperatorMetrics, namespace: list[str] | None, liveness: str | None
) -> int:
    """Wait for the Lease, then run kopf while holding it."""
    load_config()
    registry = kopf.OperatorRegistry()
    servers = ModelServers(
        Limits(timeout=settings.server_timeout, load_timeout=settings.server_load_timeout),
        metrics,
    )
    api = Api(TimedApiClient(settings.api_timeout))
    elector = LeaseElector(
        api.client,
        settings.operator_namespace,
        lease_seconds=settings.lease_seconds,
        renew_seconds=settings.lease_seconds / 3,
        metrics=metrics,
    )
    try:
        with standby_health(liveness):
            elector.acquire()
    except NoNamespace as exc:
        log.error("invalid operator settings: %s", exc)
        return 2

    def lost() -> None:
        # Another operator may be acting already: stop at once, without cleaning up.
        log.error("leadership lost: exiting so that only one operator acts")
        logging.shutdown()
        os._exit(EXIT_LEADERSHIP_LOST)

    elector.keep(on_lost=lost)
    operator: Operator | None = None
    try:
        seed = load_seed(api, settings.operator_namespace)
        ctx = Context(api=api, settings=settings, servers=servers, server_key_seed=seed)
        operator = Operator(ctx, metrics, namespaces=namespace)
        operator.register(registry)
        # Only the leader scales: this process holds the Lease from here on, and exits when it
        # loses it.
        operator.autoscaler.start()
        kopf.run(
            registry=registry,
            standalone=True,
            clusterwide=not namespace,
            namespaces=namespace or [],
            liveness_endpoint=liveness,
        )
    finally:
        if operator is not None:
            operator.autoscaler.stop()
            operator.queue.stop()
            operator.rechecks.stop()
        elector.release()
    return 0
