"""The operator's cache of Graft objects (graft.controller.store), the reads that use it
(`Api.cached_*`) and the events that keep it and queue reconciles (`Operator.observe`)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from graft.api.kinds import Plural
from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.main import Operator
from graft.controller.store import Store
from graft.core.objects import Obj
from graft.core.settings import Settings
from graft.plan.indices import BY_DEPLOYMENT, INDICES, INPUTS, USES_MODEL


def obj(namespace: str, name: str, spec: dict[str, Any] | None = None, **meta: Any) -> Obj:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": meta.pop("uid", f"uid-{name}"),
            "generation": meta.pop("generation", 1),
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            **meta,
        },
        "spec": spec or {},
    }


def store() -> Store:
    s = Store()
    for (plural, index), values in INDICES.items():
        s.add_index(plural, index, values)
    return s


def names(objs: list[Obj]) -> list[str]:
    return [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in objs]


# --- Store ---------------------------------------------------------------------------------------


def test_indices_answer_what_uses_what_and_follow_changes() -> None:
    s = store()
    s.prime(
        Plural.DEPLOYED_MODELS,
        [
            obj("acme", "a1", {"deployment": "chat", "model": "pirate"}),
            obj("acme", "a2", {"deployment": "accounts/acme/deployments/chat", "model": "x"}),
            obj("acme", "a3", {"deployment": "other", "model": "pirate"}),
            obj("beta", "b1", {"deployment": "chat", "model": "accounts/acme/models/pirate"}),
            obj("acme", "bad", {"deployment": "Not An ID!", "model": "pirate"}),
        ],
        None,
    )
    chat = "accounts/acme/deployments/chat"
    pirate = "accounts/acme/models/pirate"
    assert names(s.by_index(Plural.DEPLOYED_MODELS, BY_DEPLOYMENT, chat)) == ["acme/a1", "acme/a2"]
    assert names(s.by_index(Plural.DEPLOYED_MODELS, USES_MODEL, pirate)) == [
        "acme/a1",
        "acme/a3",
        "acme/bad",
        "beta/b1",
    ]
    # A spec change moves the object between index values; a deletion removes it.
    s.put(Plural.DEPLOYED_MODELS, obj("acme", "a1", {"deployment": "other", "model": "y"}))
    s.remove(Plural.DEPLOYED_MODELS, "acme", "a2")
    assert s.by_index(Plural.DEPLOYED_MODELS, BY_DEPLOYMENT, chat) == []
    assert names(s.by_index(Plural.DEPLOYED_MODELS, USES_MODEL, pirate)) == [
        "acme/a3",
        "acme/bad",
        "beta/b1",
    ]
    # Priming again replaces everything, indices included.
    s.prime(Plural.DEPLOYED_MODELS, [obj("acme", "n", {"deployment": "chat"})], None)
    assert names(s.by_index(Plural.DEPLOYED_MODELS, BY_DEPLOYMENT, chat)) == ["acme/n"]
    assert s.by_index(Plural.DEPLOYED_MODELS, USES_MODEL, pirate) == []
    assert s.count() == 1


def test_a_finetuning_job_is_indexed_by_its_datasets_and_base_model() -> None:
    s = store()
    s.prime(
        Plural.FINE_TUNING_JOBS,
        [obj("acme", "j", {"dataset": "d", "evaluationDataset": "e", "baseModel": "b"})],
        None,
    )
    for value in (
        "accounts/acme/datasets/d",
        "accounts/acme/datasets/e",
        "accounts/acme/models/b",
    ):
        assert names(s.by_index(Plural.FINE_TUNING_JOBS, INPUTS, value)) == ["acme/j"]
    assert s.by_index(Plural.FINE_TUNING_JOBS, INPUTS, "accounts/acme/models/d") == []


def test_what_the_cache_hands_out_is_a_copy_without_managed_fields() -> None:
    s = store()
    s.prime(Plural.MODELS, [obj("acme", "m", {"kind": "Base"})], None)
    got = s.get(Plural.MODELS, "acme", "m")
    assert got is not None
    assert "managedFields" not in got["metadata"]
    got["spec"]["kind"] = "changed by a caller"
    listed = s.list(Plural.MODELS, "acme")
    listed[0]["metadata"]["name"] = "changed"
    assert s.get(Plural.MODELS, "acme", "m") == {
        "metadata": {"namespace": "acme", "name": "m", "uid": "uid-m", "generation": 1},
        "spec": {"kind": "Base"},
    }


def test_coverage_is_per_kind_and_per_namespace() -> None:
    s = store()
    assert not s.covers(Plural.MODELS, "acme")
    s.prime(Plural.MODELS, [], None)
    assert s.covers(Plural.MODELS, "acme")
    assert s.covers_all(Plural.MODELS)
    s.prime(Plural.DEPLOYMENTS, [], ["acme"])  # graft run --namespace acme
    assert s.covers(Plural.DEPLOYMENTS, "acme")
    assert not s.covers(Plural.DEPLOYMENTS, "beta")
    assert not s.covers_all(Plural.DEPLOYMENTS)
    # An event of a kind that was never primed is not kept (its reads go to the API server).
    s.put(Plural.USERS, obj("acme", "alice"))
    assert s.get(Plural.USERS, "acme", "alice") is None


# --- Api.cached_* --------------------------------------------------------------------------------


class CountingApi(Api):
    """An Api whose API-server reads answer from a dict and are counted."""

    def __init__(self, objects: dict[str, list[Obj]]) -> None:
        self.objects = objects
        self.requests: list[str] = []

    def get_graft(self, plural: str, namespace: str, name: str) -> Obj | None:
        self.requests.append(f"get {plural} {namespace}/{name}")
        for o in self.objects.get(plural, []):
            if (o["metadata"]["namespace"], o["metadata"]["name"]) == (namespace, name):
                return o
        return None

    def list_graft(self, plural: str, namespace: str) -> list[Obj]:
        self.requests.append(f"list {plural} {namespace}")
        return [o for o in self.objects.get(plural, []) if o["metadata"]["namespace"] == namespace]

    def list_graft_everywhere(self, plural: str) -> list[Obj]:
        self.requests.append(f"list {plural}")
        return list(self.objects.get(plural, []))


DEPLOYMENTS = [
    obj("acme", "chat", {"baseModel": "llama"}),
    obj("acme", "code", {"baseModel": "accounts/acme/models/llama"}),
    obj("acme", "other", {"baseModel": "qwen"}),
    obj("beta", "shared", {"baseModel": "accounts/acme/models/llama"}),
]


@pytest.mark.parametrize("cached", [False, True], ids=["api-server", "cache"])
def test_cached_reads_answer_alike_from_the_cache_and_the_api_server(cached: bool) -> None:
    api = CountingApi({Plural.DEPLOYMENTS: DEPLOYMENTS})
    if cached:
        api.store = store()
        api.store.prime(Plural.DEPLOYMENTS, DEPLOYMENTS, None)
    llama = "accounts/acme/models/llama"
    assert names(api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, llama, "acme")) == [
        "acme/chat",
        "acme/code",
    ]
    assert names(api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, llama, None)) == [
        "acme/chat",
        "acme/code",
        "beta/shared",
    ]
    assert names(api.cached_list(Plural.DEPLOYMENTS, "beta")) == ["beta/shared"]
    got = api.cached_graft(Plural.DEPLOYMENTS, "acme", "other")
    assert got is not None
    assert got["spec"] == {"baseModel": "qwen"}
    assert api.cached_graft(Plural.DEPLOYMENTS, "acme", "missing") is None
    if cached:
        assert api.requests == []
    else:
        assert len(api.requests) == 5


def test_a_namespace_the_cache_does_not_cover_is_read_from_the_api_server() -> None:
    api = CountingApi({Plural.DEPLOYMENTS: DEPLOYMENTS})
    api.store = store()
    api.store.prime(
        Plural.DEPLOYMENTS,
        [d for d in DEPLOYMENTS if d["metadata"]["namespace"] == "acme"],
        ["acme"],
    )
    llama = "accounts/acme/models/llama"
    assert names(api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, llama, "acme")) == [
        "acme/chat",
        "acme/code",
    ]
    assert api.requests == []
    assert api.cached_graft(Plural.DEPLOYMENTS, "beta", "shared") is not None
    assert names(api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, llama, None)) == [
        "acme/chat",
        "acme/code",
        "beta/shared",
    ]
    assert api.requests == ["get deployments beta/shared", "list deployments"]


# --- Operator.observe ----------------------------------------------------------------------------


def operator() -> Operator:
    op = Operator(Context(api=Api.__new__(Api), settings=Settings()))
    op.store.prime(Plural.MODELS, [], None)
    return op


def test_own_events_queue_a_reconcile_only_when_a_reconcile_must_follow() -> None:
    op = operator()
    key = (Plural.MODELS, "acme", "m")
    m = obj("acme", "m", {"kind": "Base"}, resourceVersion="1")
    op.observe(Plural.MODELS, None, m, "acme", "m")  # the start-up listing
    assert op.queue.depth() == 1
    assert op.store.get(Plural.MODELS, "acme", "m") is not None

    op.queue = type(op.queue)(lambda key: None, workers=1)  # an empty queue, not started
    status_only = {
        **m,
        "status": {"state": "Ready"},
        "metadata": {**m["metadata"], "resourceVersion": "2"},
    }
    op.observe(Plural.MODELS, "MODIFIED", status_only, "acme", "m")
    annotated = {**status_only, "metadata": {**status_only["metadata"], "annotations": {"a": "b"}}}
    op.observe(Plural.MODELS, "MODIFIED", annotated, "acme", "m")
    assert op.queue.depth() == 0  # status and annotations: nothing for the reconcile to do
    cached = op.store.get(Plural.MODELS, "acme", "m")
    assert cached is not None
    assert cached["status"] == {"state": "Ready"}

    new_spec = {**annotated, "metadata": {**annotated["metadata"], "generation": 2}}
    op.observe(Plural.MODELS, "MODIFIED", new_spec, "acme", "m")
    assert op.queue.depth() == 1
    op.queue = type(op.queue)(lambda key: None, workers=1)
    deleting = {**new_spec, "metadata": {**new_spec["metadata"], "deletionTimestamp": "now"}}
    op.observe(Plural.MODELS, "MODIFIED", deleting, "acme", "m")
    assert op.queue.depth() == 1

    op.observe(Plural.MODELS, "DELETED", deleting, "acme", "m")
    assert op.store.get(Plural.MODELS, "acme", "m") is None
    op._resync_later(key)
    assert op.queue.delayed() == {}  # a gone object is not resynced


def test_a_reconciled_object_is_resynced_within_the_interval_at_a_random_point() -> None:
    op = operator()
    op._resynced.add(Plural.MODELS)
    for i in range(50):
        op.observe(Plural.MODELS, None, obj("acme", f"m{i}"), "acme", f"m{i}")
        op._resync_later((Plural.MODELS, "acme", f"m{i}"))
    interval = op.ctx.settings.resync_seconds
    delays = sorted(op.queue.delayed().values())
    assert len(delays) == 50
    assert interval * 0.5 - 1 <= delays[0]
    assert delays[-1] <= interval
    assert delays[-1] - delays[0] > interval * 0.1  # spread out, not one burst
    op._resynced.discard(Plural.MODELS)
    op.observe(Plural.MODELS, None, obj("acme", "other"), "acme", "other")
    op._resync_later((Plural.MODELS, "acme", "other"))
    assert (Plural.MODELS, "acme", "other") not in op.queue.delayed()


def test_an_object_a_fresh_read_does_not_find_leaves_the_cache_and_the_resync() -> None:
    """kopf's re-listing after a broken watch sends no DELETED for what went meanwhile: the
    reconcile's own fresh read finds nothing, and that corrects the cache."""

    class Gone(CountingApi):
        # The generated client's method is only handed to _read, which answers instead.
        custom = types.SimpleNamespace(get_namespaced_custom_object=None)

        def _read(self, read: Any, *args: Any) -> Obj | None:
            self.requests.append("get")
            return None

    api = Gone({})
    op = Operator(Context(api=api, settings=Settings()))
    op.store.prime(Plural.DEPLOYMENTS, DEPLOYMENTS, None)
    op._resynced.add(Plural.DEPLOYMENTS)
    key = (Plural.DEPLOYMENTS, "acme", "chat")
    op.observe(Plural.DEPLOYMENTS, None, DEPLOYMENTS[0], "acme", "chat")
    assert Api.get_graft(api, Plural.DEPLOYMENTS, "acme", "chat") is None
    assert op.store.get(Plural.DEPLOYMENTS, "acme", "chat") is None
    assert names(
        api.cached_index(Plural.DEPLOYMENTS, USES_MODEL, "accounts/acme/models/llama", "acme")
    ) == ["acme/code"]
    op._resync_later(key)
    assert key not in op.queue.delayed()


def test_a_quota_change_retries_the_deployments_whose_pods_it_refused() -> None:
    """Raising (or freeing) an account's quota is a ResourceQuota event: the Deployments whose
    pods admission refused try again at once, not at the next resync."""

    def with_ready(name: str, reason: str) -> Obj:
        d = obj("acme", name, {"baseModel": "llama"})
        d["status"] = {"conditions": [{"type": "Ready", "status": "False", "reason": reason}]}
        return d

    op = operator()
    op.store.prime(
        Plural.DEPLOYMENTS,
        [with_ready("big", "PodCreationForbidden"), with_ready("small", "ReplicasNotReady")],
        None,
    )
    op.account_quota_event(namespace="acme", labels={"graft.dev/account": "acme"})
    assert op.queue.waiting() == {
        (Plural.ACCOUNTS, "", "acme"),
        (Plural.DEPLOYMENTS, "acme", "big"),
    }


def test_a_deployed_model_that_goes_has_its_siblings_judged_again() -> None:
    """maxAddons: a refused DeployedModel waits for a slot; the one holding it going (or any
    other of the Deployment appearing, going, changing its spec) queues the others."""
    op = operator()
    first = obj("acme", "first", {"deployment": "chat", "model": "sql"})
    op.store.prime(
        Plural.DEPLOYED_MODELS,
        [
            first,
            obj("acme", "second", {"deployment": "chat", "model": "poem"}),
            obj("acme", "elsewhere", {"deployment": "other", "model": "poem"}),
        ],
        None,
    )
    assert op.observe(Plural.DEPLOYED_MODELS, "DELETED", first, "acme", "first")
    op.deployed_model_changed("acme", first)
    assert op.queue.waiting() == {(Plural.DEPLOYED_MODELS, "acme", "second")}
    # A status write of a sibling is not a change of the set.
    second = obj("acme", "second", {"deployment": "chat", "model": "poem"})
    op.queue = type(op.queue)(lambda key: None, workers=1)
    assert op.observe(Plural.DEPLOYED_MODELS, None, second, "acme", "second")  # first sight
    second["status"] = {"state": "Ready"}
    assert not op.observe(Plural.DEPLOYED_MODELS, "MODIFIED", second, "acme", "second")


def test_a_model_follows_its_users_appearing_and_going_not_their_status() -> None:
    """The in-use finalizer comes with a Model's first user and goes with its last; the
    Model's status lists its Deployments. A user's status write changes neither."""
    op = operator()
    op.store.prime(Plural.DEPLOYMENTS, [], None)
    chat = obj("acme", "chat", {"baseModel": "llama"})
    op.own_event(Plural.DEPLOYMENTS, None, chat, "acme", "chat")
    assert op.queue.waiting() == {
        (Plural.DEPLOYMENTS, "acme", "chat"),
        (Plural.MODELS, "acme", "llama"),
    }
    op.queue = type(op.queue)(lambda key: None, workers=1)
    chat["status"] = {"replicas": 1}
    op.own_event(Plural.DEPLOYMENTS, "MODIFIED", chat, "acme", "chat")
    assert op.queue.waiting() == set()
    shared = obj("beta", "shared", {"baseModel": "accounts/acme/models/llama"})
    op.own_event(Plural.DEPLOYMENTS, "DELETED", shared, "beta", "shared")
    assert op.queue.waiting() == {(Plural.MODELS, "acme", "llama")}
