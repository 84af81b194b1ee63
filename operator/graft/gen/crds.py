"""Generate CustomResourceDefinitions from the pydantic API (pure: no Kubernetes imports).

pydantic emits JSON Schema (draft 2020-12) with `$ref`s, `anyOf [X, null]` for optional fields,
`title`s and numeric `exclusiveMinimum`; a CRD needs a *structural* OpenAPI v3 schema. This module
inlines references, drops what Kubernetes rejects and translates the rest.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from graft.api.common import ID_PATTERN, ID_RULE
from graft.api.kinds import ALL_KINDS, Kind
from graft.core.keys import GROUP, VERSION
from graft.core.objects import INSTALLED_LABELS

Schema = dict[str, Any]

ID_VALIDATION = {
    "rule": f"self.metadata.name.matches('{ID_PATTERN}')",
    "message": f"metadata.name {ID_RULE}",
    "reason": "FieldValueInvalid",
}

_DROP = {"title", "$defs", "examples"}


def structural(schema: Schema, defs: dict[str, Schema] | None = None) -> Schema:
    """Turn one pydantic JSON schema into a structural OpenAPI v3 schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = copy.deepcopy(schema)

    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **node}  # the referring field's description wins
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        inner = structural(options[0], defs)
        node = {**inner, **node}
    for key in _DROP:
        node.pop(key, None)
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[flag] = node.pop(bound)
            node[bound] = True

    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
        if "type" not in node:
            node["type"] = "object"
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = structural(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    if node.get("x-kubernetes-int-or-string"):
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return _ordered(node)


_FIRST = ("type", "description")


def _ordered(node: Schema) -> Schema:
    """type and description first, the rest alphabetically, properties in declaration order."""
    keys = [k for k in _FIRST if k in node] + sorted(k for k in node if k not in _FIRST)
    return {k: node[k] for k in keys}


def _type_schema(model: type[Any]) -> Schema:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def openapi_schema(kind: Kind) -> Schema:
    """The whole openAPIV3Schema of one kind."""
    spec = _type_schema(kind.spec)
    if kind.spec_immutable:
        spec.setdefault("x-kubernetes-validations", []).append(
            {
                "rule": "self == oldSelf",
                "message": f"{kind.kind} spec is immutable: create a new {kind.kind} instead of changing this one",
            }
        )
    status = _type_schema(kind.status)
    root: Schema = {
        "type": "object",
        "description": kind.description,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object.",
            },
            "kind": {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this object represents.",
            },
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [ID_VALIDATION],
    }
    if kind.spec_required:
        root["required"] = ["spec"]
    else:
        spec["default"] = {}
    return root


def crd(kind: Kind) -> Schema:
    """The CustomResourceDefinition of one kind."""
    subresources: Schema = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    columns = []
    for c in kind.printer_columns():
        column: Schema = {"name": c.name, "type": c.type, "jsonPath": c.json_path}
        if c.description:
            column["description"] = c.description
        if c.priority:
            column["priority"] = c.priority
        columns.append(column)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": dict(INSTALLED_LABELS),
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": str(kind.plural),
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["graft"],
            },
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


HEADER = "# Generated by `graft crds` from operator/graft/api. Do not edit by hand.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into directory; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ALL_KINDS:
        path = directory / f"{kind.crd_name}.yaml"
        path.write_text(render(kind))
        paths.append(path)
    return paths
