"""The liveness probe's view of the reconcile workers."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import kopf
import pytest

from graft.controller.context import Context
from graft.controller.kube import Api
from graft.controller.main import Operator, Running
from graft.core.settings import Settings


def test_running_reconciles_are_stuck_only_past_the_limit() -> None:
    running = Running()
    release = threading.Event()

    def work(what: str) -> None:
        with running.track(what):
            release.wait(10)

    threads = [threading.Thread(target=work, args=(f"models ns/m{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    try:
        assert running.count() == 2
        assert running.stuck(time.monotonic(), 60) == []
        assert running.stuck(time.monotonic() + 120, 60) == ["models ns/m0", "models ns/m1"]
    finally:
        release.set()
        for t in threads:
            t.join()
    assert running.count() == 0


def test_liveness_fails_when_every_worker_is_stuck() -> None:
    op = Operator(Context(api=Api.__new__(Api), settings=replace(Settings(), workers=2)))
    release = threading.Event()

    def stuck(i: int) -> None:
        with op.running.track(f"deployments ns/d{i}"):
            release.wait(10)

    threads = [threading.Thread(target=stuck, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    try:
        assert "2 reconciles running, 0 stuck" in asyncio.run(op.workers_alive())
        op.ctx = replace(op.ctx, settings=replace(op.ctx.settings, stuck_seconds=0.01))
        time.sleep(0.05)
        with pytest.raises(kopf.PermanentError, match="all 2 reconcile workers stuck"):
            asyncio.run(op.workers_alive())
    finally:
        release.set()
        for t in threads:
            t.join()


def test_watches_of_what_graft_creates_select_its_label_on_the_server() -> None:
    """Pods, Jobs, ResourceQuotas and RoleBindings are watched with managed-by=graft as a
    server-side label selector (kopf passes it as labelSelector on the list and the watch)."""
    from kopf._cogs.structs import references

    op = Operator(Context(api=Api.__new__(Api), settings=Settings()))
    registry = kopf.OperatorRegistry()
    op.register(registry)
    settings = kopf.OperatorSettings()
    op.configure(settings)
    selected = {
        r.plural: settings.watching.label_selectors.collect(r)
        for r in (
            references.Resource("", "v1", "pods"),
            references.Resource("batch", "v1", "jobs"),
            references.Resource("", "v1", "resourcequotas"),
            references.Resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
            references.Resource("", "v1", "namespaces"),
            references.Resource("networking.k8s.io", "v1", "networkpolicies"),
            references.Resource("graft.dev", "v1alpha1", "deployments"),
            references.Resource("", "v1", "secrets"),
        )
    }
    graft = ["app.kubernetes.io/managed-by=graft"]
    assert selected == {
        "pods": graft,
        "jobs": graft,
        "resourcequotas": graft,
        "rolebindings": graft,
        "namespaces": graft,
        "networkpolicies": graft,
        "deployments": [],  # Graft's own kinds: every object
        "secrets": [],  # not watched at all
    }
