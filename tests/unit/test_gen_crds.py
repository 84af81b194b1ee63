"""The generated CRDs: structural schemas, the validation rules, and drift from crds/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.api.common import DURATION_PATTERN, ID_PATTERN
from graft.api.kinds import ALL_KINDS, API_KEY, DEPLOYMENT, Kind
from graft.gen import crds as crdgen

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"$ref", "$defs", "title", "allOf", "oneOf", "not", "const", "discriminator"}
BUILTIN_SHORT_NAMES = {
    "cm", "cs", "csr", "crd", "crds", "cj", "deploy", "ds", "ep", "ev", "hpa", "ing", "limits",
    "netpol", "no", "ns", "pc", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc",
    "sts", "svc", "ingclass", "vac",
}  # fmt: skip


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=ALL_KINDS, ids=lambda k: k.kind)
def kind(request: pytest.FixtureRequest) -> Kind:
    k: Kind = request.param
    return k


def schema_of(kind: Kind) -> dict[str, Any]:
    s: dict[str, Any] = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


def test_schema_is_structural(kind: Kind) -> None:
    for path, node in walk(schema_of(kind)):
        assert not FORBIDDEN & node.keys(), f"{kind.kind}{path}: {FORBIDDEN & node.keys()}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
            continue
        assert "anyOf" not in node, f"{kind.kind}{path} has anyOf"
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            f"{kind.kind}{path} has no type"
        )
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert "items" in node, f"{kind.kind}{path}: array without items"
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node


def test_every_field_is_described(kind: Kind) -> None:
    for path, node in walk(schema_of(kind)):
        if path in {"", ".metadata"} or path.endswith("[]") or path.endswith("{}"):
            continue
        assert node.get("description"), f"{kind.kind}{path} has no description for kubectl explain"


def test_specs_refuse_unknown_fields_and_use_camel_case(kind: Kind) -> None:
    assert kind.spec.model_config.get("extra") == "forbid"
    for path, _node in walk(schema_of(kind)):
        leaf = path.rsplit(".", 1)[-1]
        assert "_" not in leaf, f"{kind.kind}{path} is not camelCase"


def test_every_kind_validates_its_name_as_an_id(kind: Kind) -> None:
    rules = schema_of(kind)["x-kubernetes-validations"]
    assert crdgen.ID_VALIDATION in rules
    assert "1-63 characters" in crdgen.ID_VALIDATION["message"]


def test_crd_metadata(kind: Kind) -> None:
    spec = crdgen.crd(kind)["spec"]
    assert spec["group"] == "graft.dev"
    assert spec["names"]["categories"] == ["graft"]
    assert spec["scope"] == ("Namespaced" if kind.namespaced else "Cluster")
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Ready", "State", "Age"} <= columns
    assert len(columns) >= 4


def test_short_names_are_unique_and_do_not_shadow_builtins() -> None:
    names = [n for k in ALL_KINDS for n in k.short_names]
    assert len(names) == len(set(names))
    assert not BUILTIN_SHORT_NAMES & set(names)
    assert {k.kind for k in ALL_KINDS} == {
        "Account", "User", "ApiKey", "Model", "Deployment", "DeployedModel", "Dataset",
        "FineTuningJob",
    }  # fmt: skip


def test_deployment_has_scale_subresource() -> None:
    scale = crdgen.crd(DEPLOYMENT)["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


@pytest.mark.parametrize("kind_name", ["Dataset", "FineTuningJob", "DeployedModel"])
def test_immutable_specs(kind_name: str) -> None:
    kind = next(k for k in ALL_KINDS if k.kind == kind_name)
    rules = schema_of(kind)["properties"]["spec"]["x-kubernetes-validations"]
    assert any(r["rule"] == "self == oldSelf" and "immutable" in r["message"] for r in rules)


def test_mutable_specs_have_no_transition_rule_but_a_public_models_source() -> None:
    found = {}
    for kind in ALL_KINDS:
        if kind.spec_immutable:
            continue
        spec = schema_of(kind)["properties"]["spec"]
        for r in spec.get("x-kubernetes-validations", []):
            if "oldSelf" in r["rule"]:
                found[kind.kind] = r["message"]
    assert list(found) == ["Model"]
    assert found["Model"].startswith("the source of a public model cannot change")


def test_api_key_contract_the_gateway_reads() -> None:
    """The gateway reads ApiKeys from a watch cache: these names and formats are its contract."""
    crd = crdgen.crd(API_KEY)
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ApiKey", "apikeys", ["gkey"])
    assert crd["spec"]["scope"] == "Namespaced"
    schema = schema_of(API_KEY)
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["user"]
    user = spec["properties"]["user"]
    assert user["pattern"] == ID_PATTERN
    assert user["x-kubernetes-validations"] == [
        {
            "rule": "self == oldSelf",
            "message": "spec.user cannot change: create a new ApiKey for the other User",
        }
    ]
    assert spec["properties"]["expiresAt"]["format"] == "date-time"
    assert spec["properties"]["description"]["maxLength"] <= 256
    assert "x-kubernetes-validations" not in spec  # expiresAt and description may change
    status = schema["properties"]["status"]["properties"]
    assert {"keyId", "keyHash", "secretName", "user", "expiresAt", "conditions"} <= set(status)
    assert status["keyId"]["pattern"] == "^[0-9a-f]{16}$"
    assert status["keyHash"]["pattern"] == "^sha256:[0-9a-f]{64}$"
    assert status["expiresAt"]["format"] == "date-time"
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:3] == ["User", "Key", "Expires"]
    assert {"Ready", "Age"} <= set(columns)


def test_committed_crds_match_the_api() -> None:
    """The golden files are the committed crds/: regenerate with `make crds`."""
    for kind in ALL_KINDS:
        committed = (ROOT / "crds" / f"{kind.crd_name}.yaml").read_text()
        assert committed == crdgen.render(kind), (
            f"crds/{kind.crd_name}.yaml drifted: run `make crds`"
        )
        assert yaml.safe_load(committed)["metadata"]["name"] == kind.crd_name


def test_structural_rejects_unions() -> None:
    with pytest.raises(ValueError, match="union"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]})


def test_structural_translates_exclusive_bounds_and_inlines_refs() -> None:
    schema = {
        "$defs": {"Inner": {"title": "Inner", "type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0}}}},
        "type": "object",
        "properties": {"inner": {"anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}], "default": None, "description": "d"}},
    }  # fmt: skip
    out = crdgen.structural(schema)
    inner = out["properties"]["inner"]
    assert inner["description"] == "d"
    assert "default" not in inner
    assert inner["properties"]["x"] == {"type": "number", "exclusiveMinimum": True, "minimum": 0}


def test_autoscaling_bounds_and_windows_are_checked_at_admission() -> None:
    autoscaling = schema_of(DEPLOYMENT)["properties"]["spec"]["properties"]["autoscaling"]
    assert autoscaling["required"] == ["maxReplicas"]
    rules = autoscaling["x-kubernetes-validations"]
    assert any("self.minReplicas <= self.maxReplicas" in r["rule"] for r in rules)
    for window, default in (
        ("scaleUpWindow", "30s"),
        ("scaleDownWindow", "10m"),
        ("scaleToZeroWindow", "1h"),
    ):
        node = autoscaling["properties"][window]
        assert node["default"] == default
        assert node["minLength"] == 2
        (rule,) = node["x-kubernetes-validations"]
        assert rule["rule"] == f"self.matches(r'{DURATION_PATTERN}')"
        assert window in rule["message"]
    target = autoscaling["properties"]["target"]["properties"]["concurrentRequests"]
    assert (target["minimum"], target["exclusiveMinimum"]) == (0, True)


def test_the_scale_selector_is_in_status_for_hpa_and_keda() -> None:
    """labelSelectorPath points at status.selector, which the Deployment status fills: an HPA or
    a KEDA ScaledObject needs it to target deployments.graft.dev through /scale."""
    scale = crdgen.crd(DEPLOYMENT)["spec"]["versions"][0]["subresources"]["scale"]
    path = scale["labelSelectorPath"].lstrip(".").split(".")
    node = schema_of(DEPLOYMENT)
    for part in path:
        node = node["properties"][part]
    assert node["type"] == "string"
