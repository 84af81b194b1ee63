"""The small Kubernetes facts written once: owners, labels, readiness, ownership."""

from __future__ import annotations

import pytest

from graft.core import keys
from graft.core.objects import (
    Owner,
    condition,
    is_finished,
    is_ready,
    is_terminating,
    labels,
    owned_by,
)

DEPLOYMENT = {
    "apiVersion": "graft.dev/v1alpha1",
    "kind": "Deployment",
    "metadata": {"name": "chat", "namespace": "acme", "uid": "u-1", "generation": 4},
}


def test_owner_of_an_object_and_its_reference() -> None:
    owner = Owner.of(DEPLOYMENT)
    assert owner == Owner(kind="Deployment", name="chat", uid="u-1", namespace="acme", generation=4)
    assert owner.reference() == {
        "apiVersion": "graft.dev/v1alpha1",
        "kind": "Deployment",
        "name": "chat",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    account = Owner.of({"kind": "Account", "metadata": {"name": "acme", "uid": "u-2"}})
    assert (account.namespace, account.generation) == ("", 0)


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("Account", "graft.dev/account"),
        ("User", "graft.dev/user"),
        ("ApiKey", "graft.dev/apikey"),
        ("Deployment", "graft.dev/deployment"),
        ("Dataset", "graft.dev/dataset"),
        ("FineTuningJob", "graft.dev/finetuning-job"),
    ],
)
def test_every_owner_kind_names_itself_on_its_children(kind: str, label: str) -> None:
    owner = Owner(kind=kind, name="x", uid="u")
    assert owner.label == label
    assert labels("c", owner)[label] == "x"


def test_labels_are_the_recommended_set_plus_the_owner_and_extras() -> None:
    owner = Owner.of(DEPLOYMENT)
    assert labels(keys.MODEL_SERVER, owner, {keys.SPEC_HASH: "abc"}) == {
        "app.kubernetes.io/managed-by": "graft",
        "app.kubernetes.io/part-of": "graft",
        "app.kubernetes.io/name": "graft",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/instance": "chat",
        "graft.dev/deployment": "chat",
        "graft.dev/spec-hash": "abc",
    }


def ready_pod(status: str) -> dict[str, object]:
    return {"status": {"conditions": [{"type": "Ready", "status": status}]}}


def test_ready_finished_terminating() -> None:
    assert is_ready(ready_pod("True"))
    assert not is_ready(ready_pod("False"))
    assert not is_ready({"status": {}})
    assert not is_ready(None)
    assert condition(ready_pod("False"), "Ready") == {"type": "Ready", "status": "False"}
    assert condition(ready_pod("False"), "Succeeded") is None
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    assert is_finished(failed)
    assert not is_finished(ready_pod("True"))
    assert is_terminating({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert not is_terminating(DEPLOYMENT)


def test_owned_by_compares_uids() -> None:
    child = {"metadata": {"ownerReferences": [Owner.of(DEPLOYMENT).reference()]}}
    assert owned_by(child, "u-1")
    assert not owned_by(child, "u-2")
    assert not owned_by({"metadata": {}}, "u-1")
