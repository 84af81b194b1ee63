"""Which Model events its users act on (graft.plan.relevance): spec, readiness, deletion; not
status details or annotations."""

from __future__ import annotations

import copy
from typing import Any

from graft.plan.relevance import Relevance, model_facts


def model(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u1", "generation": 1, "annotations": {}},
        "spec": {"kind": "Base"},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Validated"}],
            **status,
        },
    }


def test_noise_is_not_a_change_but_what_users_act_on_is() -> None:
    seen = Relevance()
    first = model()
    assert seen.changed("acme", "base", model_facts(first))  # first sight

    noise = copy.deepcopy(first)
    noise["metadata"]["annotations"]["graft.dev/last-handled-configuration"] = "{...}"
    noise["metadata"]["finalizers"] = ["graft.dev/in-use-protection"]
    noise["status"]["deployments"] = ["accounts/acme/deployments/chat"]
    noise["status"]["conditions"][0]["lastTransitionTime"] = "2026-11-28T18:00:00Z"
    noise["status"]["conditions"][0]["message"] = "used by 1 Deployment"
    assert not seen.changed("acme", "base", model_facts(noise))

    for change in (
        lambda m: m["metadata"].update(generation=2),  # a new spec
        lambda m: m["status"].update(observedGeneration=2),  # status of the new spec
        lambda m: m["status"]["conditions"][0].update(status="False", reason="Invalid"),
        lambda m: m["status"]["conditions"][0].update(reason="Inspecting"),
        lambda m: m["metadata"].update(deletionTimestamp="2026-11-28T18:00:00Z"),
        lambda m: m["metadata"].update(uid="u2"),  # deleted and made again
    ):
        changed = copy.deepcopy(noise)
        change(changed)
        assert seen.changed("acme", "base", model_facts(changed)), changed
        assert not seen.changed("acme", "base", model_facts(changed))  # once
        assert seen.changed("acme", "base", model_facts(noise))  # and back


def test_deletion_is_always_a_change_and_forgets_the_object() -> None:
    seen = Relevance()
    facts = model_facts(model())
    assert seen.changed("acme", "base", facts)
    assert seen.changed("acme", "base", facts, deleted=True)
    assert len(seen) == 0
    assert seen.changed("acme", "base", facts)  # seen anew
    assert seen.changed("acme", "other", facts)  # another name is another object


def test_a_model_without_status_yet() -> None:
    seen = Relevance()
    bare = {"metadata": {"uid": "u1", "generation": 1}}
    assert seen.changed("acme", "new", model_facts(bare))
    assert not seen.changed("acme", "new", model_facts(bare))
    assert seen.changed("acme", "new", model_facts(model()))
