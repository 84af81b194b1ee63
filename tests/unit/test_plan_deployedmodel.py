"""Admission of DeployedModels into a Deployment, and DeployedModel status (pure)."""

from __future__ import annotations

import pytest

from graft.plan.deployedmodel import (
    Candidate,
    DeploymentFacts,
    ModelFacts,
    PodLoad,
    Verdict,
    deployed_model_status,
    judge,
)

BASE = "accounts/a/models/base"
DEP = DeploymentFacts(
    full_name="accounts/a/deployments/d",
    base_full_name=BASE,
    enable_addons=True,
    max_addons=2,
    max_addon_rank=16,
)


def addon(
    name: str,
    rank: int | None = 8,
    base: str = BASE,
    kind: str = "PeftAddon",
    path: str | None = "/a",
) -> ModelFacts:
    return ModelFacts(
        full_name=f"accounts/a/models/{name}",
        kind=kind,
        base_full_name=base,
        lora_rank=rank,
        path=path,
    )


def cand(name: str, created: str, model: ModelFacts | None) -> Candidate:
    return Candidate(name=name, created=created, model=model, model_ref=name)


@pytest.mark.parametrize(
    ("deployment", "model", "reason"),
    [
        (DEP, addon("x", base="accounts/a/models/other"), "BaseModelMismatch"),
        (DeploymentFacts(DEP.full_name, BASE, False, 2, 16), addon("x"), "AddonsDisabled"),
        (DEP, addon("x", rank=32), "RankTooHigh"),
        (DEP, addon("x", kind="Base", base=None), "NotAnAddon"),
        (DEP, None, "ModelNotFound"),
        (DEP, addon("x", path=None), "UnsupportedModelSource"),
    ],
)
def test_rejections(deployment: DeploymentFacts, model: ModelFacts | None, reason: str) -> None:
    verdict = judge(deployment, [cand("dm", "T1", model)])["dm"]
    assert not verdict.admitted
    assert verdict.reason == reason
    assert verdict.waiting is (reason == "ModelNotFound")


def test_rank_message_names_both_ranks() -> None:
    verdict = judge(DEP, [cand("dm", "T1", addon("x", rank=32))])["dm"]
    assert "32" in verdict.message
    assert "maxAddonRank=16" in verdict.message


def test_unknown_rank_is_admitted() -> None:
    assert judge(DEP, [cand("dm", "T1", addon("x", rank=None))])["dm"].admitted


def test_an_addon_whose_adapter_was_not_read_is_not_loaded() -> None:
    """Its rank is unknown and it may not be an adapter at all: it waits for the inspection,
    and a Model that failed it is refused for good; neither takes a slot."""
    inspecting = ModelFacts(
        "accounts/a/models/x", "PeftAddon", BASE, None, "/a", not_ready="Inspecting: Job x"
    )
    failed = ModelFacts(
        "accounts/a/models/y", "PeftAddon", BASE, None, "/a", "InvalidAdapter: r=0", True
    )
    verdicts = judge(
        DEP,
        [cand("x", "T1", inspecting), cand("y", "T2", failed), cand("z", "T3", addon("z"))],
    )
    assert (verdicts["x"].reason, verdicts["x"].waiting) == ("ModelNotReady", True)
    assert "Inspecting: Job x" in verdicts["x"].message
    assert (verdicts["y"].reason, verdicts["y"].waiting) == ("ModelInvalid", False)
    assert "InvalidAdapter: r=0" in verdicts["y"].message
    assert verdicts["z"].admitted


def test_oldest_are_admitted_up_to_max_addons() -> None:
    verdicts = judge(
        DEP,
        [
            cand("c", "T3", addon("c")),
            cand("a", "T1", addon("a")),
            cand("bad", "T0", addon("b", rank=99)),
            cand("b", "T2", addon("b")),
        ],
    )
    assert [n for n, v in sorted(verdicts.items()) if v.admitted] == ["a", "b"]
    assert verdicts["c"].reason == "TooManyAddons"
    assert verdicts["bad"].reason == "RankTooHigh"  # a rejected one takes no slot


def status(verdict: Verdict, pods: list[PodLoad]):  # type: ignore[no-untyped-def]
    return deployed_model_status(
        generation=1, full_name="accounts/a/deployedmodels/dm", served_name="accounts/a/models/x",
        verdict=verdict, pods=pods, previous=[], now="T",
    )  # fmt: skip


ADMITTED = Verdict(True, "Admitted", "")


def test_ready_only_when_every_ready_replica_serves_it() -> None:
    st = status(ADMITTED, [PodLoad("p1", True), PodLoad("p2", True)])
    assert (st.loaded_replicas, st.replicas, st.state) == (2, 2, "Ready")
    assert st.conditions[0].status == "True"
    st = status(ADMITTED, [PodLoad("p1", True), PodLoad("p2", False, waiting="connection refused")])
    assert (st.loaded_replicas, st.state, st.conditions[0].reason) == (1, "Progressing", "Loading")
    assert "connection refused" in st.conditions[0].message


def test_server_refusal_is_reported_with_its_message() -> None:
    st = status(ADMITTED, [PodLoad("p1", False, error="HTTP 400: bad weights")])
    assert st.conditions[0].reason == "LoadFailed"
    assert "p1: HTTP 400: bad weights" in st.conditions[0].message
    assert st.state == "Failed"


def test_no_ready_replicas_is_not_ready() -> None:
    st = status(ADMITTED, [])
    assert st.conditions[0].reason == "NoReadyReplicas"
    assert st.conditions[0].status == "False"


def test_rejected_status() -> None:
    st = status(Verdict(False, "AddonsDisabled", "no"), [])
    assert (st.state, st.conditions[0].reason, st.loaded_replicas) == (
        "Failed",
        "AddonsDisabled",
        None,
    )
